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
