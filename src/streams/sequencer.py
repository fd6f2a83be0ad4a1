"""Exactly-in-order, at-least-once delivery of each partition's events to a batch processor.

faust can hand an agent the same offset twice (re-fetch after a rebalance seek) or a later
offset before an earlier one (messages prefetched before the seek). :class:`OffsetSequencer`
turns that into a clean stream per partition: starting from the committed offset, it releases
offsets strictly in order, recognises duplicates (already processed: acknowledge only), parks
early arrivals until the missing offsets come, and reports partitions stuck on a missing offset
so the caller can seek back. Acknowledgements therefore only ever cover a contiguous run from
the committed offset, so a commit can never skip an unprocessed message.
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
        stuck_after_s: a partition whose next offset has not arrived for this long while later
            ones are parked is reported by :meth:`stuck` (the caller seeks back to it).
    """

    def __init__(self, stuck_after_s: float = 5.0) -> None:
        self.expected: dict[tuple[str, int], int] = {}
        self.parked: dict[tuple[str, int], dict[int, list[Any]]] = {}
        self.waiting_since: dict[tuple[str, int], float] = {}
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
        return stale

    def feed(self, events: Iterable[Any]) -> Released:
        """Sort ``events`` into ready (in offset order per partition), duplicates, and parked."""
        out = Released()
        touched: set[tuple[str, int]] = set()
        for e in events:
            m = e.message
            tp = (m.topic, m.partition)
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

    def stuck(self) -> dict[tuple[str, int], int]:
        """Partitions waiting too long for their next offset: ``{tp: missing offset}``."""
        now = time.monotonic()
        return {tp: self.expected[tp] for tp, since in self.waiting_since.items() if now - since > self.stuck_after_s}

    def parked_count(self) -> int:
        """Events held back, waiting for an earlier offset."""
        return sum(len(v) for evs in self.parked.values() for v in evs.values())
