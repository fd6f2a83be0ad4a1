"""Feedback follows its trace: how long a feedback batch waits for the traces it refers to.

A feedback record whose trace is not known waits, with no time limit, until the trace agent has
read its trace partition up to where the consumer stood when the batch began to wait (a backlog
after a restart, a broker outage: the partition's event-time watermark mixes tenants, so it alone
may pass a trace not read yet; measured: 6 false ``unknown_trace`` dead letters in the demo before
this rule); then while the trace watermark is below its event time
(the pipeline's ``FeedbackProcessor.resolve`` reports those as waiting), or while the consumer
has not reported the partition's high watermark since its assignment (no target can be set),
for ``feedback_grace_s`` (which every unresolved record gets once nothing is behind: the
consumer's high watermark may be a fetch older than the trace); only then is the trace unknown.
A trace found in ClickHouse but at an offset the trace agent has not passed yet (stored before a
crash, not yet counted again in the restored state) holds its record the same way (:meth:`JoinWait.stored_not_counted`).

Meanwhile the feedback channel fills and faust's flow control stops fetching feedback
(``on_buffer_full``), while traces keep coming. (Pausing the partitions here instead lost
messages: faust drops fetched records of paused partitions, which the sequencer then waited for
forever.) A stop signal gives the batch up: its traces will not come before the worker stops, so
the records are not unknown; the batch is redelivered.

:class:`JoinWait` is the policy, free of faust and of the event loop: give it a clock and the
trace agent's position and it decides, round by round, whether the batch may go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from streams.worker.delivery import Abandoned

log = logging.getLogger("selfheal.worker")

#: (next offset the trace agent processes, high watermark of the consumer's last fetch) of a
#: trace partition; either is ``None`` when unknown
Position = tuple[int | None, int | None]


class JoinWait:
    """One feedback batch's wait for its traces (create one per batch).

    Args:
        grace_s: ``Settings.feedback_grace_s``, s: how long records whose trace partitions are
            read far enough still wait while :meth:`settled` is told some are ``waiting``.
        position: trace partition → :data:`Position` (the trace agent's sequencer and the
            consumer's high watermark).
        clock: monotonic seconds (``time.monotonic``; a fake in tests).
        first_note_s, note_every_s: a still-waiting batch logs a progress line after
            ``first_note_s`` and then every ``note_every_s`` (s).

    Example:
        >>> now = [0.0]
        >>> wait = JoinWait(30.0, position=lambda p: (5, 9), clock=lambda: now[0])
        >>> wait.settled([None], partitions=[0], waiting=[])  # trace partition 0 read to 5 of 9
        False
        >>> wait.targets
        {0: 9}
    """

    def __init__(self, grace_s: float, position: Callable[[int], Position],
                 clock: Callable[[], float] = time.monotonic, first_note_s: float = 10.0,
                 note_every_s: float = 30.0) -> None:
        self.grace_s = grace_s
        self.position = position
        self.clock = clock
        self.note_every_s = note_every_s
        #: monotonic s after which records read far enough are given up (``None``: not started)
        self.deadline: float | None = None
        #: trace partition → high watermark when the batch first waited for it
        self.targets: dict[int, int] = {}
        self.waited_since = clock()
        self.next_note = self.waited_since + first_note_s

    def traces_behind(self, partitions: set[int]) -> list[int]:
        """Trace partitions among ``partitions`` whose agent has not yet reached the high watermark
        the consumer reported when the feedback batch first waited for them (:attr:`targets`, filled
        here): a trace produced before its feedback is then not merely unread. A partition without
        a reported high watermark is not held."""
        behind = []
        for p in sorted(partitions):
            nxt, high = self.position(p)
            if p not in self.targets and high is not None:
                self.targets[p] = high
            if self.targets.get(p, 0) > (nxt or 0):
                behind.append(p)
        return behind

    def stored_not_counted(self, refs: Sequence[Any | None]) -> tuple[list[int], list[int]]:
        """Trace partitions of records whose trace was found in the store (``ref.offset >= 0``)
        at an offset the trace agent has not passed yet: ``(behind, unknown)``, ``unknown`` where
        the agent has no position on the partition.

        After a crash the store holds traces written after the state checkpoint that the restored
        slice rows do not count yet; the trace agent counts them again when it reaches them. A
        correction counted before its trace lands in a bucket without that trace's exposure
        (measured in a chaos run once the dedup state moved to the checkpoint: ``correction_rate
        rose from 0.67 to 164.6`` on a tenant with no change), so it waits like an unknown trace.
        References built by this process (``offset`` -1) are counted already, and an offset at
        or past the consumer's high watermark never will be (the topic was recreated).
        """
        behind: set[int] = set()
        unknown: set[int] = set()
        positions: dict[int, Position] = {}  # one position read per partition, not per record
        for r in refs:
            offset = getattr(r, "offset", -1)  # -1 also for unresolved records (None)
            if offset < 0:
                continue
            if r.partition not in positions:
                positions[r.partition] = self.position(r.partition)
            nxt, high = positions[r.partition]
            if nxt is None:
                unknown.add(r.partition)
            elif nxt <= offset and (high is None or offset < high):
                behind.add(r.partition)
            # an offset at or past the partition's end was stored from an earlier life of the
            # topic (recreated, offsets reset): no read will reach it, so it does not hold
        return sorted(behind), sorted(unknown - behind)

    def settled(self, refs: Sequence[Any | None], partitions: Sequence[int], waiting: Sequence[int]) -> bool:
        """One round: may the batch go on with ``refs``?

        Args:
            refs: per record its trace reference, ``None`` when not found.
            partitions: per record its partition (the trace partition of its tenant).
            waiting: indexes of records whose trace watermark is still below their event time.

        Returns:
            True when every record is resolved or may be given up (no trace partition behind or
            of unknown position and nothing waiting, or the grace period passed); False to wait
            another round.
        """
        parts = {partitions[i] for i, r in enumerate(refs) if r is None}
        behind = self.traces_behind(parts)
        # a partition whose consumer position is not known yet (no fetch answered since the
        # assignment: right after a restart, a rebalance or a broker restart) has no target; its
        # watermark may be another tenant's, so it gets the grace period, not an immediate verdict
        unknown = [p for p in sorted(parts) if p not in self.targets]
        uncounted, unplaced = self.stored_not_counted(refs)
        behind += uncounted
        unknown += unplaced
        # a target is the high watermark of the consumer's *last* fetch, which may predate the
        # trace (a CI chaos run: 7 feedback items dead-lettered 3 s after the worker started, their
        # traces 1-8 offsets past the targets), so an unresolved record always gets the grace period
        if not waiting and not behind and not unknown and not parts:
            return True
        if self.clock() > self.next_note:
            self.next_note += self.note_every_s
            log.info("%d feedback records waited %.0f s for their traces; trace partitions not "
                     "read far enough: %s", sum(r is None for r in refs), self.clock() - self.waited_since,
                     {p: (self.position(p)[0], self.targets.get(p)) for p in behind} or "none")
        if behind:
            self.deadline = None
        elif self.deadline is None:
            self.deadline = self.clock() + self.grace_s
        elif self.clock() > self.deadline:
            return True
        return False

    async def run(self, resolve: Callable[[list[dict[str, Any]], list[int]], tuple[list[Any], list[int]]],
                  records: list[dict[str, Any]], partitions: list[int], stopping: Callable[[], bool],
                  poll_s: float = 0.1) -> list[Any]:
        """Resolve ``records`` until :meth:`settled`; returns the last refs (``None``: unknown trace).

        ``resolve(records, partitions) -> (refs, waiting)`` may query ClickHouse: it runs off the
        event loop (the sink serialises it). Between rounds the trace agent advances meanwhile.

        Raises:
            Abandoned: ``stopping()`` became true while the batch still waited.
        """
        while True:
            refs, waiting = await asyncio.to_thread(resolve, records, partitions)
            if self.settled(refs, partitions, waiting):
                return refs
            if stopping():  # its traces will not come before we stop: not unknown, redeliver
                raise Abandoned("feedback batch still waiting for its traces at shutdown")
            await asyncio.sleep(poll_s)  # the trace agent advances the watermark meanwhile
