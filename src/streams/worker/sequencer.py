"""Exactly-in-order, at-least-once delivery of each partition's events to a batch processor.

faust can hand an agent the same offset twice (re-fetch after a rebalance seek) or a later
offset before an earlier one (messages prefetched before the seek). :class:`OffsetSequencer`
turns that into a clean stream per partition: starting from the committed offset, it releases
offsets strictly in order, recognises duplicates (already processed: acknowledge only), parks
early arrivals until the missing offsets come, and reports partitions the caller must seek back
(:meth:`OffsetSequencer.to_seek`): stuck on a missing offset while later ones are parked, or
behind the high watermark with nothing delivered at all (faust discarded the fetched records
and the consumer's position is already past them). Acknowledgements therefore only ever cover a
contiguous run from the committed offset, so a commit can never skip an unprocessed message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Released:
    """What one :meth:`OffsetSequencer.feed` call decided."""

    ready: list[Any] = field(default_factory=list)  # process now, in this order, then ack
    duplicates: list[Any] = field(default_factory=list)  # already processed: ack without processing


class OffsetSequencer:
    """Per-partition ordering guard. Events need ``.message.topic/.partition/.offset``.

    Args:
        stuck_after_s: seconds. A partition whose next offset has not arrived for this long while
            later ones are parked is reported by :meth:`stuck`; one that received nothing for
            this long while behind its high watermark by :meth:`to_seek`.
    """

    def __init__(self, stuck_after_s: float = 5.0) -> None:
        self.expected: dict[tuple[str, int], int] = {}
        self.parked: dict[tuple[str, int], dict[int, list[Any]]] = {}
        self.waiting_since: dict[tuple[str, int], float] = {}
        self.last_seen: dict[tuple[str, int], float] = {}  # monotonic s of the last event or seek
        self.stuck_after_s = stuck_after_s

    def reset(self, expected: dict[tuple[str, int], int]) -> list[Any]:
        """Start a new assignment generation at the committed offsets ``{(topic, partition): offset}``.

        Returns parked events that are now duplicates (offset below the new start) to acknowledge.
        """
        stale: list[Any] = []
        for tp, events in self.parked.items():
            start = expected.get(tp)
            for off, evs in events.items():
                if start is not None and off < start:
                    stale.extend(evs)
        self.expected = dict(expected)
        self.parked = {tp: {o: e for o, e in evs.items() if o >= expected.get(tp, 0)}
                       for tp, evs in self.parked.items() if tp in expected}
        self.waiting_since = {}
        now = time.monotonic()
        self.last_seen = {tp: now for tp in expected}
        return stale

    def feed(self, events: Iterable[Any]) -> Released:
        """Sort ``events`` into ready (in offset order per partition), duplicates, and parked."""
        out = Released()
        touched: set[tuple[str, int]] = set()
        now = time.monotonic()
        for e in events:
            m = e.message
            tp = (m.topic, m.partition)
            self.last_seen[tp] = now
            exp = self.expected.get(tp)
            if exp is None:  # partition not (yet) known: start from the first offset seen
                exp = self.expected[tp] = m.offset
            if m.offset < exp:
                out.duplicates.append(e)
            else:
                self.parked.setdefault(tp, {}).setdefault(m.offset, []).append(e)
                touched.add(tp)
        for tp in sorted(touched):  # deterministic release order across partitions
            parked = self.parked[tp]
            exp = self.expected[tp]
            while exp in parked:
                first, *dups = parked.pop(exp)
                out.ready.append(first)
                out.duplicates.extend(dups)
                exp += 1
            self.expected[tp] = exp
            if parked:
                self.waiting_since.setdefault(tp, time.monotonic())
            else:
                self.waiting_since.pop(tp, None)
        return out

    def stuck(self, now: float | None = None) -> dict[tuple[str, int], int]:
        """Partitions waiting more than ``stuck_after_s`` (at monotonic ``now`` s) for their next
        offset while later ones are parked: ``{tp: missing offset}``."""
        now = time.monotonic() if now is None else now
        return {tp: self.expected[tp] for tp, since in self.waiting_since.items() if now - since > self.stuck_after_s}

    def to_seek(self, highwater: dict[tuple[str, int], int | None], now: float | None = None
                ) -> dict[tuple[str, int], int]:
        """Partitions to seek back, ``{tp: next offset}``: :meth:`stuck` ones, and those of
        ``highwater`` (``{tp: high watermark}``, ``None`` = unknown) whose next offset is below the
        high watermark while no event arrived for ``stuck_after_s``. Call it only while the
        agent's channel is empty and it waits for its next batch: otherwise a slow agent, not a
        lost fetch, explains the silence."""
        now = time.monotonic() if now is None else now
        out = self.stuck(now)
        for tp, high in highwater.items():
            nxt = self.expected.get(tp)
            if (nxt is not None and high is not None and nxt < high
                    and now - self.last_seen.get(tp, now) > self.stuck_after_s):
                out[tp] = nxt
        return out

    def sought(self, tp: tuple[str, int], now: float | None = None) -> None:
        """The caller sought ``tp`` back to its next offset (at monotonic ``now`` s): wait
        ``stuck_after_s`` again."""
        now = time.monotonic() if now is None else now
        self.last_seen[tp] = now
        if tp in self.waiting_since:
            self.waiting_since[tp] = now

    def parked_count(self) -> int:
        """Events held back, waiting for an earlier offset."""
        return sum(len(v) for evs in self.parked.values() for v in evs.values())
