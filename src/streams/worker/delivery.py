"""Delivery guarantees of the worker: at-least-once, in offset order, state durable before commit.

Agents read batches with ``stream.noack_take``; each agent's :class:`AgentDelivery` releases
every partition's messages strictly in offset order from the committed offset through an
:class:`~streams.worker.sequencer.OffsetSequencer` (faust re-delivers and reorders around
rebalances, see :mod:`streams.worker.faust_fixes`), and a batch is acknowledged only after its
ClickHouse rows are written and its topic and changelog messages are acknowledged by the broker
(:class:`ChangelogAcks`). An exception inside a batch exits the process
(:data:`CRASH_EXIT_CODE`) without acknowledging, so the batch is redelivered to the restarted
worker: at-least-once, with idempotent sinks and replay guards making redelivery harmless.

Records faust discards in a rebalance are fetched again: each new assignment restarts the
sequencer at the group's committed offsets and seeks there (:meth:`AgentDelivery.restart`), and
a 1 s :class:`SequencerWatchdog` seeks back a partition stuck on a missing offset or idle below its
high watermark. Seeks run in the consumer's own thread (``Consumer.seek_wait``).

Shutdown (SIGTERM/SIGINT, :class:`Shutdown`): faust stops fetching and stops the agents without
waiting for the batch in flight (``stream_wait_empty`` off); the offsets of processed batches
(their state already acknowledged in the changelogs) are committed and the process exits 0. A
batch in flight, or one that cannot finish (ClickHouse refusing writes:
:meth:`ClickHouseSink.abort` ends its retries; feedback still waiting for its traces, then
abandoned), is not committed: the next worker gets it again. A watchdog ends the process with
:data:`SHUTDOWN_FORCED_EXIT_CODE` if it is still alive ``Settings.shutdown_timeout_s`` after the
signal; nothing is lost then either (no commit without the sink write before it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn

import faust
from confluent_kafka import KafkaException
from faust.types import TP
from tenacity import Retrying, before_sleep_log, retry_if_exception_type, stop_after_delay, wait_exponential

from streams.config import Settings
from streams.errors import ChangelogError, TopicNotReadyError
from streams.topics import committed_offsets
from streams.worker.faust_fixes import (
    ProcessedOffsets,
    consumer_flow,
    recovery_diagnostics,
    stalled_changelog_partitions,
)
from streams.worker.sequencer import OffsetSequencer

log = logging.getLogger("selfheal.worker")
#: a batch failed (e.g. ClickHouse down for longer than sink_retry_s): exit without acknowledging
CRASH_EXIT_CODE = 70
#: still running shutdown_timeout_s after SIGTERM/SIGINT: ended by the watchdog (EX_TEMPFAIL)
SHUTDOWN_FORCED_EXIT_CODE = 75

#: ``{(topic, partition): offset}``
Offsets = dict[tuple[str, int], int]


class Abandoned(Exception):
    """Raised inside an agent to give up its batch at shutdown (it is redelivered)."""


class ChangelogAcks:
    """The worker's changelog sends (all tables) not yet acknowledged by the broker.

    A batch's offsets may be committed only once the state updates it caused are durable in
    their changelogs, else a crash loses them for good while the batch counts as done. faust's
    commit-time flush does not ensure this: it gives up after 0.1 s in which no message left its
    producer buffer (faust-streaming 0.15.3 ``ProducerBuffer.flush_atmost``), and a failed send
    only logs. Measured: after a broker restart the baselines changelog ended 12 traces behind
    ClickHouse on 133 slices; with the changelog producer stalled, offsets were committed and a
    SIGKILL lost every held update (tests/integration/test_faults.py). So each agent calls
    :meth:`wait` after its batch's state writes and before :meth:`ProcessedOffsets.mark`.
    """

    def __init__(self) -> None:
        #: faust ``FutureMessage``s (asyncio futures resolved by the broker's acknowledgement)
        self.pending: list[Any] = []

    def add(self, fut: Any) -> None:
        """Track one changelog send (the future ``Table.send_changelog`` returned)."""
        self.pending.append(fut)

    async def wait(self, timeout_s: float) -> int:
        """Wait until every send tracked so far is acknowledged (also those of the other agent's
        batch in flight: it may not have waited yet); returns how many were waited for.

        The futures are not cancelled when the wait times out or the waiting task is cancelled
        (shutdown): faust resolves them later.

        Raises:
            ChangelogError: a send failed, or ``timeout_s`` (s) passed without all acknowledgements.
        """
        futs = list(self.pending)
        if not futs:
            return 0
        _, late = await asyncio.wait(futs, timeout=timeout_s)
        if late:
            topics = sorted({f.message.channel.get_topic_name() for f in late})
            raise ChangelogError(f"{len(late)} of {len(futs)} changelog messages not acknowledged within "
                                 f"{timeout_s:g} s (changelog_ack_timeout_s); topics {topics}")
        for f in futs:
            if f.cancelled() or f.exception() is not None:
                raise ChangelogError(f"changelog send to {f.message.channel.get_topic_name()} failed: "
                                     f"{'cancelled' if f.cancelled() else repr(f.exception())}")
        # keep sends added meanwhile (still in flight, or failed: their waiter raises)
        self.pending = [f for f in self.pending if not f.done() or f.cancelled() or f.exception() is not None]
        return len(futs)


class StateCheckpoint:
    """Batches processed but not yet committable, and their state written once per interval.

    After a batch's sink writes and output messages, an agent hands its events to :meth:`done`.
    The slice state it changed stays in memory (dirty rows of the ``SliceStore``) until the next
    checkpoint, at most ``interval_s`` later (:meth:`run`, also called by a timer so an idle worker
    commits too): every dirty slice is written to its changelog once (``flush``), all changelog
    sends are awaited (:class:`ChangelogAcks`), and only then are the pending batches marked
    processed, so their offsets become committable. This is Kafka Streams' record cache, flushed
    at each commit (``statestore.cache.max.bytes`` with ``commit.interval.ms``): a slice touched by
    many batches in one interval is written once instead of once per batch.

    At-least-once still holds: an offset is committed only after the state of its batch (and of
    every earlier batch) is acknowledged in the changelogs; state may run ahead of the commits,
    as before (a crash redelivers those batches and the per-slice replay guards count them once).
    A crash or stop loses only pending marks, i.e. the batches are redelivered. Pending batches
    of an older consumer generation (a rebalance came between) are not marked; the restarted
    sequencer fetches them again from the committed offsets.

    Args:
        flush: writes the dirty state (``Pipeline.flush_state``).
        acks: the changelog sends to wait for.
        processed: the commit offsets, marked after the waits.
        interval_s: longest time a processed batch waits for its checkpoint (s; 0: every batch,
            the behaviour before).
        ack_timeout_s: ``Settings.changelog_ack_timeout_s`` (s).
        generation: the consumer's assignment generation (``app.rebalancing_count``).
        clock: monotonic seconds.
    """

    def __init__(self, flush: Callable[[], Any], acks: ChangelogAcks, processed: ProcessedOffsets,
                 interval_s: float, ack_timeout_s: float, generation: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.flush = flush
        self.acks = acks
        self.processed = processed
        self.interval_s = interval_s
        self.ack_timeout_s = ack_timeout_s
        self.generation = generation
        self.clock = clock
        #: (consumer generation, events) of the batches processed since the last checkpoint
        self.pending: list[tuple[int, list[Any]]] = []
        self.lock = asyncio.Lock()
        self.last = clock()
        #: checkpoints run, and batches they marked (stats)
        self.checkpoints = 0

    async def done(self, events: list[Any]) -> None:
        """A batch's writes are done: its events wait for the next checkpoint, which runs now if
        ``interval_s`` has passed since the last one.

        Raises:
            ChangelogError: see :meth:`run`.
        """
        self.pending.append((self.generation(), events))
        if self.clock() - self.last >= self.interval_s:
            await self.run()

    async def run(self) -> int:
        """Checkpoint now: flush the dirty state, wait for every changelog acknowledgement, mark
        the pending batches processed. Returns the batches marked.

        Raises:
            ChangelogError: a changelog send failed or was not acknowledged in ``ack_timeout_s``
                (the pending batches stay unmarked: the caller's batch fails, the worker exits).
        """
        async with self.lock:
            batches, self.pending = self.pending, []
            self.last = self.clock()
            if not batches:
                return 0
            try:
                self.flush()
                await self.acks.wait(self.ack_timeout_s)
            except BaseException:
                self.pending[:0] = batches  # not durable: still pending (the worker exits anyway)
                raise
            now = self.generation()
            marked = 0
            for gen, events in batches:
                if gen == now:
                    self.processed.mark(events)
                    marked += 1
            self.checkpoints += 1
            return marked

    async def tick(self) -> None:
        """Timer round: checkpoint if the oldest pending batch has waited ``interval_s``."""
        if self.pending and self.clock() - self.last >= self.interval_s:
            await self.run()


class TableBackend:
    """:class:`~streams.state.StateBackend` over a faust table with raw bytes.

    Writes go to the in-memory store and to the changelog partition given by the caller (the
    tenant's source partition), so the state follows the tenant's partition on rebalance. Every
    changelog send is tracked in ``acks`` (:class:`ChangelogAcks`).
    """

    def __init__(self, table: faust.Table, acks: ChangelogAcks) -> None:
        self.table = table
        self.acks = acks

    def get(self, key: str) -> bytes | None:
        """Value of ``key`` or ``None``."""
        return self.table.data.get(key.encode())

    def put(self, key: str, value: bytes, partition: int) -> None:
        """Set ``key`` and send it to changelog ``partition``."""
        k = key.encode()
        self.table.data[k] = value
        self.acks.add(self.table.send_changelog(partition, k, value, key_serializer="raw", value_serializer="raw"))

    def items(self) -> Iterator[tuple[str, bytes]]:
        """All pairs currently held (the partitions this worker owns)."""
        for k, v in list(self.table.data.items()):
            yield (k.decode() if isinstance(k, bytes) else str(k)), v


def kafka_retrying(settings: Settings) -> Retrying:
    """tenacity policy for admin calls to the broker: ``KafkaException`` and ``TopicNotReadyError``
    retried with exponential backoff (0.2 s doubling to 5 s) for up to ``settings.sink_retry_s``,
    then re-raised (a broker restarting or electing leaders answers with timeouts)."""
    return Retrying(retry=retry_if_exception_type((KafkaException, TopicNotReadyError)),
                    wait=wait_exponential(0.2, max=5.0),
                    stop=stop_after_delay(settings.sink_retry_s), reraise=True,
                    before_sleep=before_sleep_log(log, logging.WARNING))


def committed_offsets_retrying(settings: Settings, topic: str, partitions: list[int]) -> Offsets:
    """:func:`streams.topics.committed_offsets` of the worker's group, retried by :func:`kafka_retrying`.

    Raises:
        KafkaException: still failing after ``settings.sink_retry_s``.
    """
    return kafka_retrying(settings)(committed_offsets, settings, settings.full_app_id, topic, partitions)


class AgentDelivery:
    """One agent's delivery state: its sequencer, the consumer generation the sequencer restarted
    at, a lock over the sequencer's reset, feed and seeks, whether a batch is in hand, and
    parked events a watchdog restart made duplicates.

    Args:
        name: the agent's source, ``"traces"`` or ``"feedback"`` (log lines).
        topic: full name of its source topic.
        partitions: the topic's partition count (a restart covers all: the assignment may move).
        app: the faust app, or a fake with ``rebalancing_count`` and a ``consumer`` offering
            ``assignment()``, ``highwater(tp)`` and ``async seek_wait({tp: offset})``.
        processed: the commit offsets of the source topics (forgotten at each restart).
        committed: ``(topic, partitions) -> {(topic, partition): committed offset}``, blocking
            (run in a thread; the worker passes :func:`committed_offsets_retrying`).
    """

    def __init__(self, name: str, topic: str, partitions: int, app: Any, processed: ProcessedOffsets,
                 committed: Callable[[str, list[int]], Offsets]) -> None:
        self.name = name
        self.topic = topic
        self.partitions = partitions
        self.app = app
        self.processed = processed
        self.committed = committed
        self.sequencer = OffsetSequencer()
        #: consumer generation (``app.rebalancing_count``) the sequencer restarted at
        self.generation = -1
        #: one per agent: its sequencer's reset, feed and seeks
        self.lock = asyncio.Lock()
        #: the agent is between receiving a batch and acknowledging it
        self.busy = False
        #: parked events a watchdog restart made duplicates (acknowledged with the next batch)
        self.stale_acks: list[Any] = []

    async def order(self, events: list[Any]) -> tuple[list[Any], list[Any]]:
        """Sort a batch: ``(ready, ack_after)``, the events to process now in offset order, and
        those to acknowledge only after them (duplicates, stale parked events). A new assignment
        generation restarts the sequencer first; a partition stuck on a missing offset is sought
        back."""
        async with self.lock:
            stale, self.stale_acks = self.stale_acks, []
            if self.app.rebalancing_count != self.generation:  # new assignment: restart at the commits
                stale += await self.restart()
            rel = self.sequencer.feed(events)
            await self.seek_back(self.sequencer.stuck(), "offset missing while later ones are parked")
        return rel.ready, rel.duplicates + stale

    async def restart(self) -> list[Any]:
        """New assignment generation: restart the sequencer at the group's committed offsets and
        seek the owned partitions there. faust seeks to the commits itself, but aiokafka's
        ``seek_to_committed`` skips partitions without a commit or committed at 0, so records
        faust discarded in the rebalance (a fetch cut short, a stream skipping another
        generation's messages) were never fetched again (measured: a replacement worker after a
        SIGKILL waited forever for offset 1). Returns parked events now duplicates. Call it
        holding :attr:`lock`.

        Raises:
            KafkaException: the committed offsets could not be read (after the retries).
        """
        self.generation = self.app.rebalancing_count
        parts = list(range(self.partitions))  # all: the assignment may still move
        self.processed.forget(self.topic, parts)
        start = await asyncio.to_thread(self.committed, self.topic, parts)
        stale = self.sequencer.reset(start)
        await self.seek_back(start, "new assignment: restart at the committed offsets", logging.INFO)
        return stale

    async def seek_back(self, targets: Offsets, why: str, level: int = logging.WARNING) -> None:
        """Seek the partitions of ``targets`` (``{(topic, partition): offset}``) this worker owns.

        Through ``Consumer.seek_wait``, which runs in the consumer's own thread: faust's
        ``Consumer.seek`` calls aiokafka from the event loop's thread, and after such a seek the
        fetcher waited forever (measured: a consumer that never delivered again). A failed seek
        (the partition moved in a rebalance meanwhile, a timeout) is logged; the watchdog
        retries it."""
        try:
            owned = self.app.consumer.assignment()
        except Exception:
            return
        todo = {TP(t, p): o for (t, p), o in targets.items() if TP(t, p) in owned}
        if not todo:
            return
        log.log(level, "%s: seeking %s (%s)", self.name,
                {f"{tp.topic}[{tp.partition}]": o for tp, o in todo.items()}, why)
        try:
            await self.app.consumer.seek_wait(todo)
        except Exception:
            log.warning("%s: seek back failed; retried by the watchdog", self.name, exc_info=True)
            return
        for tp in todo:
            self.sequencer.sought((tp.topic, tp.partition))

    async def check_idle(self) -> None:
        """Watchdog round for this agent while it is idle (no batch in hand, empty channel): apply
        a new assignment generation (the stale events are acknowledged with the next batch), and
        seek back partitions behind their high watermark that received nothing for the
        sequencer's ``stuck_after_s``."""
        async with self.lock:
            if self.app.rebalancing_count != self.generation:
                self.stale_acks += await self.restart()
            try:
                owned = [tp for tp in self.app.consumer.assignment() if tp.topic == self.topic]
                high = {(tp.topic, tp.partition): self.app.consumer.highwater(tp) for tp in owned}
            except Exception:  # assignment changing under us: next tick
                return
            await self.seek_back(self.sequencer.to_seek(high), "behind the high watermark, nothing delivered")

    def position(self, partition: int) -> tuple[int | None, int | None]:
        """(next offset this agent processes, high watermark of the consumer's last fetch) of
        ``partition``; ``None`` where unknown."""
        nxt = self.sequencer.expected.get((self.topic, partition))
        try:
            high = self.app.consumer.highwater(TP(self.topic, partition))
        except Exception:
            high = None
        return nxt, high

    def flow(self) -> dict[str, Any]:
        """The sequencer's next offsets per partition and its parked event count (stats line)."""
        return {"next": {p: o for (_, p), o in sorted(self.sequencer.expected.items())},
                "parked": self.sequencer.parked_count()}


class SequencerWatchdog:
    """Between batches, apply an assignment change (also when no batch comes). An idle agent
    (empty channel, no batch in hand) may wait for records that will never be delivered: faust
    dropped them in a rebalance and no later batch arrives to notice. Each :meth:`tick` (the
    worker runs one per second) restarts such an agent's sequencer on a new generation and seeks
    back partitions behind their high watermark that received nothing for ``stuck_after_s``.

    Args:
        app: the faust app (``rebalancing``, ``flow_control.is_active()``), or a fake.
        agents: the agents' delivery states.
        check_assignment: applies the current partition assignment to the pipeline.
        queued: agent → events waiting in its channel.
        stopping: true once a stop signal came (the watchdog then does nothing).
    """

    def __init__(self, app: Any, agents: list[AgentDelivery], check_assignment: Callable[[], None],
                 queued: Callable[[AgentDelivery], int], stopping: Callable[[], bool]) -> None:
        self.app = app
        self.agents = agents
        self.check_assignment = check_assignment
        self.queued = queued
        self.stopping = stopping

    async def tick(self) -> None:
        """One watchdog round (see the class docstring)."""
        if self.app.rebalancing or self.stopping() or not self.app.flow_control.is_active():
            return
        if not any(a.busy for a in self.agents):  # take a new assignment over before its first batch (and say so)
            try:
                self.check_assignment()
            except Exception:  # the next batch calls it again, and fails the batch if it still fails
                log.warning("applying the new assignment failed; retried", exc_info=True)
        for agent in self.agents:
            if agent.busy or self.queued(agent):
                continue
            await agent.check_idle()

    def flow(self) -> dict[str, Any]:
        """Where events sit (for a stalled worker's log): agent channel depths (events), the
        consumer's paused and buffer-full partitions and flags, recovery, and per source topic the
        sequencer's next offsets and parked events."""
        app = self.app
        state: dict[str, Any] = {
            "queued": {a.name: self.queued(a) for a in self.agents},
            **consumer_flow(app.consumer),
            "in_recovery": bool(app.in_recovery),
            "flow_suspended": not app.flow_control.is_active(),
        }
        for a in self.agents:
            state[a.name] = a.flow()
        return state


class RecoveryWatchdog:
    """Seek back the changelog partitions a table recovery is stuck on (fix 7 of
    :mod:`streams.worker.faust_fixes`): records fetched past the recovery's high watermark that never
    reached it. Each :meth:`tick` (the worker runs one per second) finds them with
    :func:`~streams.worker.faust_fixes.stalled_changelog_partitions` and seeks each to the offset after
    the last record the recovery applied; the recovery skips what it has applied, so a record
    delivered twice is applied once. A partition is sought again at most every ``idle_s``.

    Args:
        app: the faust app, or a fake with ``in_recovery`` and ``consumer.seek_wait``.
        idle_s: seconds without a changelog event of a partition before it counts as stuck.
        clock: monotonic seconds (faust's recovery uses ``time.monotonic``).
        find: ``(app, idle_s, now) -> {tp: offset}`` (default the faust reader above).
    """

    def __init__(self, app: Any, idle_s: float, clock: Callable[[], float] = time.monotonic,
                 find: Callable[[Any, float, float], dict[Any, int]] = stalled_changelog_partitions) -> None:
        self.app = app
        self.idle_s = idle_s
        self.clock = clock
        self.find = find
        self.last_seek: dict[Any, float] = {}
        #: changelog partitions sought back (stats ``recovery_reseeks``)
        self.reseeks = 0

    async def tick(self) -> None:
        """One round; does nothing outside a table recovery."""
        if not getattr(self.app, "in_recovery", False):
            self.last_seek.clear()
            return
        now = self.clock()
        try:
            stuck = self.find(self.app, self.idle_s, now)
        except Exception:  # a rebalance changing the state under us: next tick
            log.debug("recovery watchdog could not read the recovery state", exc_info=True)
            return
        # a partition never sought is sought now; one sought before, once idle_s has passed (a
        # monotonic clock's reference point is undefined: no sentinel time stands for "never")
        todo = {tp: o for tp, o in stuck.items()
                if tp not in self.last_seek or now - self.last_seek[tp] >= self.idle_s}
        if not todo:
            return
        log.warning("table recovery received nothing for %.0f s from changelog partitions fetched past their "
                    "high watermark; seeking them back: %s", self.idle_s,
                    {f"{tp.topic}[{tp.partition}]": o for tp, o in todo.items()})
        try:
            await self.app.consumer.seek_wait(todo)
        except Exception:
            log.warning("seeking the changelog partitions back failed; retried", exc_info=True)
            return
        self.last_seek.update(dict.fromkeys(todo, now))
        self.reseeks += len(todo)


class StallReport:
    """Log what a worker waits on when a rebalance or table recovery lasts ``after_s`` (then every
    ``repeat_s`` while it lasts): :func:`~streams.worker.faust_fixes.recovery_diagnostics` (task
    frames, Kafka fetch state) and the agents' flow. Observability only: it changes nothing.

    Args:
        app: the faust app (``rebalancing``, ``in_recovery``), or a fake.
        flow: the stats line's flow state (:meth:`SequencerWatchdog.flow`).
        after_s: ``Settings.stall_report_s``, s.
        repeat_s: interval between reports of one stall, s.
        clock: monotonic seconds.
        diagnostics: ``app`` → dict (default :func:`recovery_diagnostics`).
    """

    def __init__(self, app: Any, flow: Callable[[], dict[str, Any]], after_s: float, repeat_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 diagnostics: Callable[[Any], dict[str, Any]] = recovery_diagnostics) -> None:
        self.app = app
        self.flow = flow
        self.after_s = after_s
        self.repeat_s = repeat_s
        self.clock = clock
        self.diagnostics = diagnostics
        self.since: float | None = None
        self.next_report = 0.0
        #: stall reports logged (stats)
        self.reports = 0

    async def tick(self) -> None:
        """One round (the worker runs one per second); returns at once unless a report is due."""
        stalled = bool(getattr(self.app, "rebalancing", False) or getattr(self.app, "in_recovery", False))
        now = self.clock()
        if not stalled:
            self.since = None
            return
        if self.since is None:
            self.since, self.next_report = now, now + self.after_s
        if now < self.next_report:
            return
        self.next_report = now + self.repeat_s
        self.reports += 1
        log.warning("rebalance/recovery in progress for %.0f s; waiting on: %s", now - self.since,
                    json.dumps({"flow": self.flow(), **self.diagnostics(self.app)}, default=str))


class Shutdown:
    """Bounded graceful stop (see the module docstring).

    Args:
        timeout_s: ``Settings.shutdown_timeout_s``: the forced exit comes this long after the signal, s.
        commit: coroutine function committing the processed offsets (``app.consumer.commit``).
        exit_process: ends the process at once with a code (``os._exit``; a fake in tests).
    """

    def __init__(self, timeout_s: float, commit: Callable[[], Awaitable[Any]],
                 exit_process: Callable[[int], Any] = os._exit) -> None:
        self.timeout_s = timeout_s
        self.commit = commit
        self.exit = exit_process
        #: called first thing at the stop signal (:meth:`on_stop`)
        self.callbacks: list[Callable[[], None]] = []
        #: set by the SIGTERM/SIGINT handler (:meth:`on_signal`)
        self.stopping = False

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` at the stop signal (the sink's abort: its retry loops end)."""
        self.callbacks.append(callback)

    def on_signal(self) -> None:
        """Begin a bounded shutdown: the :meth:`on_stop` callbacks run (sink retries end), a
        watchdog thread exits the process with :data:`SHUTDOWN_FORCED_EXIT_CODE` after
        ``timeout_s``. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        for callback in self.callbacks:
            callback()
        timeout = self.timeout_s

        def watchdog() -> None:
            time.sleep(timeout)
            log.critical("still running %.0f s after the stop signal; exiting (unacknowledged batches are "
                         "redelivered)", timeout)
            logging.shutdown()
            self.exit(SHUTDOWN_FORCED_EXIT_CODE)

        threading.Thread(target=watchdog, name="selfheal-shutdown-watchdog", daemon=True).start()
        log.info("stop signal: committing processed batches, exiting within %.0f s", timeout)

    async def abandon(self, what: str) -> NoReturn:
        """Shutdown path: leave the current batch uncommitted (redelivered to the next worker),
        commit the processed batches (their changelog messages are acknowledged), exit 0."""
        log.warning("%s abandoned at shutdown; it stays unacknowledged and is redelivered", what)
        try:
            await asyncio.wait_for(self.commit(), timeout=5.0)
        except Exception:
            log.warning("final commit failed; batches processed since the last commit are redelivered",
                        exc_info=True)
        logging.shutdown()
        self.exit(0)
        raise SystemExit(0)  # only reached with a fake exit

    def crash(self, what: str) -> NoReturn:
        """A batch failed: exit with :data:`CRASH_EXIT_CODE` without acknowledging it (call from
        the ``except`` block: the traceback is logged)."""
        log.critical("%s failed; exiting without acknowledging it", what, exc_info=True)
        self.exit(CRASH_EXIT_CODE)
        raise SystemExit(CRASH_EXIT_CODE)  # only reached with a fake exit
