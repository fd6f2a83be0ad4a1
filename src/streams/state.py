"""Where processor state persists between batches: the :class:`StateBackend` protocol.

Incidents, canary scorecards, feedback dedup and the slice baselines each keep their state as
bytes under string keys, written to the source partition of the tenant they belong to. In the
worker a backend is a faust changelog table (the worker's ``TableBackend``), so a restarted or
rebalanced worker resumes from the changelog; in tests and benchmarks it is a
:class:`DictBackend`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class StateBackend(Protocol):
    """Key-value state of one processor (a faust changelog table in the worker, a dict in tests).

    ``put`` names the partition the value belongs to (the tenant's source partition), so the
    changelog keeps a tenant's state with its traffic.
    """

    def get(self, key: str) -> bytes | None:
        """Value of ``key``, or ``None`` when absent."""
        ...

    def put(self, key: str, value: bytes, partition: int) -> None:
        """Store ``value`` under ``key``, in the changelog partition ``partition``."""
        ...

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every stored ``(key, value)`` pair (used to reload state after a rebalance)."""
        ...


class DictBackend:
    """In-memory :class:`StateBackend` (unit tests, benchmarks)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        """Value of ``key`` or ``None``."""
        return self.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        """Store ``value`` (``partition`` is ignored in memory)."""
        self.data[key] = value

    def items(self) -> Iterator[tuple[str, bytes]]:
        """All stored pairs."""
        return iter(list(self.data.items()))


class CheckpointedBackend:
    """A :class:`StateBackend` whose writes reach ``inner`` only at :meth:`flush` (the worker's
    state checkpoint), so they become durable together with the slice rows of the same checkpoint.

    Why: the feedback dedup state (``feedback-seen``) says which feedback was counted; the slice
    rows hold the counts. Written at different times, a crash between them breaks the pair: a
    restarted worker found the redelivered feedback *seen* (its ids were in the changelog at once)
    while its slice rows came from the checkpoint before, so those corrections were never counted
    (measured in the chaos run: a tenant's correction-rate baseline 0.046-0.084 against a true
    0.12-0.13, then a false ``workflow_drift`` once counting resumed; docs/reliability.md). With
    both written at the checkpoint, a crash takes both back to it and the redelivery counts once.

    Reads see the pending writes first. :meth:`flush` writes them in the order of their last
    write (a key written again moves to the end), so a record written last in a batch (the
    feedback processor's per-trace commit record) is still sent last.

    Args:
        inner: where the values persist (a faust changelog table in the worker).
    """

    def __init__(self, inner: StateBackend) -> None:
        self.inner = inner
        #: key -> (value, partition), in order of last write
        self.pending: dict[str, tuple[bytes, int]] = {}

    def get(self, key: str) -> bytes | None:
        """The pending value of ``key``, else ``inner``'s, else ``None``."""
        hit = self.pending.get(key)
        return hit[0] if hit is not None else self.inner.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        """Hold ``value`` for ``key`` (changelog ``partition``) until :meth:`flush`."""
        self.pending.pop(key, None)
        self.pending[key] = (value, partition)

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every pair: ``inner``'s, with the pending values over them."""
        pending = {k: v for k, (v, _) in self.pending.items()}
        for k, v in self.inner.items():
            if k not in pending:
                yield k, v
        yield from pending.items()

    def flush(self) -> int:
        """Write the pending values to ``inner`` (oldest last-write first); returns how many."""
        out, self.pending = self.pending, {}
        for key, (value, partition) in out.items():
            self.inner.put(key, value, partition)
        return len(out)
