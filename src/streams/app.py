"""The faust application: topics, changelog tables and the agents that run the pipeline.

Topology (all topics keyed by tenant_id, ``Settings.partitions`` partitions)::

    agent.traces.v1   ──► process_traces ──► ClickHouse traces, incidents, dead_letters, rollout verdicts
                                          ├─► agent.incidents.v1
                                          ├─► agent.rollout-verdicts.v1
                                          └─► agent.deadletter.v1
    agent.feedback.v1 ──► process_feedback ─► ClickHouse feedback (+ incidents, dead_letters, verdicts)

    changelog tables: baselines (slice rows), incident-state (open incidents, episodes),
                      feedback-seen (replay/resubmit ids), canary-state (rollout scorecards)

Delivery: agents read batches with ``stream.noack_take``; an :class:`OffsetSequencer` releases
each partition's messages strictly in offset order from the committed offset (faust re-delivers
and reorders around rebalances, see :mod:`streams.faust_fixes`), and a batch is acknowledged
only after its ClickHouse rows are written and its topic and changelog messages are acknowledged
by the broker (:class:`ChangelogAcks`). An exception inside a batch exits the process (exit code 70)
without acknowledging, so the batch is redelivered to the restarted worker: at-least-once, with
idempotent sinks and replay guards making redelivery harmless.

Shutdown (SIGTERM/SIGINT): faust stops fetching and stops the agents without waiting for the
batch in flight (``stream_wait_empty`` off); the offsets of processed batches (their state
already acknowledged in the changelogs) are committed and the process exits 0. A batch in flight, or one
that cannot finish (ClickHouse refusing writes: :meth:`ClickHouseSink.abort` ends its retries;
feedback still waiting for its traces, then abandoned), is not committed: the next worker gets
it again. A watchdog
ends the process with :data:`SHUTDOWN_FORCED_EXIT_CODE` if it is still alive
``Settings.shutdown_timeout_s`` after the signal; nothing is lost then either (no commit without
the sink write before it).

Throughput note: faust costs ~115 µs per Kafka message (profiled, BENCHMARKS.md), so the SDK
sends batches of traces per message and the agents work per batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import KafkaException
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from tenacity import Retrying, before_sleep_log, retry_if_exception_type, stop_after_delay, wait_exponential

from schemas import default_codec
from schemas.codec import AvroCodec
from streams import faust_fixes
from streams.config import Settings
from streams.errors import ChangelogError, TopicNotReadyError
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.processors.feedback import TraceRef
from streams.sequencer import OffsetSequencer
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import TABLES, committed_offsets, ensure_topics

log = logging.getLogger("selfheal.worker")
#: a batch failed (e.g. ClickHouse down for longer than sink_retry_s): exit without acknowledging
CRASH_EXIT_CODE = 70
#: records per consumer fetch batch (faust broker_max_poll_records)
MAX_POLL_RECORDS = 500
#: feedback channel capacity, messages: room for a fetch batch above faust's pause mark (80 %)
FEEDBACK_BUFFER = 10 * MAX_POLL_RECORDS
#: still running shutdown_timeout_s after SIGTERM/SIGINT: ended by the watchdog (EX_TEMPFAIL)
SHUTDOWN_FORCED_EXIT_CODE = 75


class ChangelogAcks:
    """The worker's changelog sends (all tables) not yet acknowledged by the broker.

    A batch's offsets may be committed only once the state updates it caused are durable in
    their changelogs, else a crash loses them for good while the batch counts as done. faust's
    commit-time flush does not ensure this: it gives up after 0.1 s in which no message left its
    producer buffer (faust-streaming 0.15.3 ``ProducerBuffer.flush_atmost``), and a failed send
    only logs. Measured: after a broker restart the baselines changelog ended 12 traces behind
    ClickHouse on 133 slices; with the changelog producer stalled, offsets were committed and a
    SIGKILL lost every held update (tests/integration/test_faults.py). So each agent calls
    :meth:`wait` after its batch's state writes and before :func:`faust_fixes.mark_processed`.
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


@dataclass
class Worker:
    """Everything the agents share inside one worker process."""

    settings: Settings
    app: faust.App
    codec: AvroCodec
    pipeline: Pipeline
    topics: dict[str, Any]
    sink: ClickHouseSink | None = None
    sink_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    partitions: frozenset[int] = frozenset()
    started_at: float = field(default_factory=time.time)
    #: traces whose rows are durably written (their offsets are committed after), for the stats line
    traces_written: int = 0
    #: tenant → pattern ids written since the last pattern refresh (see ``refresh_patterns``)
    pending_patterns: dict[str, set[str]] = field(default_factory=dict)
    #: the sink while the worker opens it (migrations, first pattern refresh), before ``sink`` is set
    opening_sink: ClickHouseSink | None = None
    #: set by the SIGTERM/SIGINT handler (:meth:`on_stop_signal`)
    stopping: bool = False
    #: the tables' changelog sends a batch waits for before it is marked processed
    changelog_acks: ChangelogAcks = field(default_factory=ChangelogAcks)

    def on_stop_signal(self) -> None:
        """Begin a bounded shutdown: sink retries end, a watchdog thread exits the process with
        :data:`SHUTDOWN_FORCED_EXIT_CODE` after ``settings.shutdown_timeout_s``."""
        if self.stopping:
            return
        self.stopping = True
        for sink in (self.sink, self.opening_sink):
            if sink is not None:
                sink.abort()
        timeout = self.settings.shutdown_timeout_s

        def watchdog() -> None:
            time.sleep(timeout)
            log.critical("still running %.0f s after the stop signal; exiting (unacknowledged batches are "
                         "redelivered)", timeout)
            logging.shutdown()
            os._exit(SHUTDOWN_FORCED_EXIT_CODE)

        threading.Thread(target=watchdog, name="selfheal-shutdown-watchdog", daemon=True).start()
        log.info("stop signal: committing processed batches, exiting within %.0f s", timeout)


def _raw(events: list[Any]) -> list[RawMessage]:
    return [RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value,
                       int((e.message.timestamp or 0) * 1000)) for e in events]


def build_app(settings: Settings, codec: AvroCodec | None = None) -> Worker:
    """Create the faust app with its topics, tables and agents.

    Raises:
        ConfigError: invalid settings.
    """
    codec = codec or default_codec()
    state = settings.state_dir / "faust" / settings.full_app_id
    state.mkdir(parents=True, exist_ok=True)
    broker = ";".join(f"kafka://{b}" for b in settings.kafka_bootstrap.split(","))
    app = faust.App(
        settings.full_app_id,
        broker=broker,
        store="memory://",
        datadir=str(state),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        web_enabled=settings.web_enabled,
        web_bind="127.0.0.1",
        web_port=settings.web_port,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=max(settings.broker_session_timeout_s / 4, 1.0),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_buffer_maxsize=max(4 * settings.take_max_messages, 64),
        # bounded fetch batches: the feedback channel (below) always has room for one, so the
        # consumer never blocks on it while feedback waits for its traces (the trace agent would starve)
        broker_max_poll_records=MAX_POLL_RECORDS,
        # rebalances and stops do not wait for fetched events to be acked: commits of the source
        # topics follow processing (faust_fixes.mark_processed), so an event cleared from an agent
        # buffer is simply not committed, and waiting only deadlocked (a rebalance waited for a
        # batch that waited for traces the paused consumer would not fetch; measured: stops ended
        # by the shutdown watchdog, scale-out rebalances that never finished)
        stream_wait_empty=False,
        producer_acks=-1,
        producer_compression_type="lz4",
        producer_max_request_size=2 * 1024 * 1024,
        table_standby_replicas=0,
        broker_credentials=_credentials(settings),
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw",
           "partitions": settings.partitions}
    topics = {name: app.topic(settings.topic(name), **raw)
              for name in ("traces", "incidents", "deadletter", "verdicts")}
    topics["feedback"] = app.topic(settings.topic("feedback"), **raw)
    topics["feedback"].maxsize = FEEDBACK_BUFFER  # faust 0.15.3's app.topic() drops its maxsize argument
    faust_fixes.apply({settings.topic("traces"), settings.topic("feedback")})
    if settings.fault_changelog_hold_file is not None:
        _hold_changelog_while(settings.fault_changelog_hold_file)
    tables = {
        # key_type/value_type bytes make faust use the raw serializer for the changelog, also in
        # recovery (the schema argument alone does not)
        name: app.Table(name, partitions=settings.partitions, key_type=bytes, value_type=bytes)
        for name in TABLES
    }
    worker = Worker(settings=settings, app=app, codec=codec, pipeline=None, topics=topics)  # type: ignore[arg-type]

    def lookup(tenant: str, trace_ids: list[str]) -> dict[str, TraceRef]:
        if worker.sink is None or not trace_ids:
            return {}
        return TraceRef.by_trace_id(tenant, worker.sink.for_tenant(tenant).trace_refs(trace_ids))

    acks = worker.changelog_acks
    worker.pipeline = Pipeline(settings, codec, baselines=TableBackend(tables["baselines"], acks),
                               incidents=TableBackend(tables["incident-state"], acks),
                               feedback_state=TableBackend(tables["feedback-seen"], acks), trace_lookup=lookup,
                               canary_state=TableBackend(tables["canary-state"], acks))

    @app.task
    async def open_sink() -> None:
        # The worker process owns the ClickHouse connection (a chDB directory admits one process).
        def start() -> tuple[ClickHouseSink, list[int]]:
            # one thread for schema changes and the first read: a chDB table created in one thread
            # was seen missing by an immediate query from another thread under load
            sink = worker.opening_sink = ClickHouseSink(settings)
            if worker.stopping:  # the signal came while the sink was being opened
                sink.abort()
            applied = sink.migrate()
            # feedback patterns of batches acknowledged before a crash may not have been refreshed
            sink.refresh_patterns(None)
            return sink, applied

        try:
            sink, applied = await asyncio.to_thread(start)
        except Exception:
            if not worker.stopping:
                raise
            log.warning("ClickHouse start-up ended by the stop signal", exc_info=True)
            return
        worker.sink = sink  # agents start writing only once the schema is in place
        log.info("ClickHouse at %s ready (migrations applied now: %s)", sink.location, applied or "none")

    async def ready_sink() -> ClickHouseSink:
        while worker.sink is None:
            if worker.stopping:  # the sink never opened: the batch is redelivered
                raise _Abandon
            await asyncio.sleep(0.05)
        return worker.sink

    def check_assignment() -> None:
        assigned = frozenset(tp.partition for tp in app.assignor.assigned_actives()
                             if tp.topic == settings.topic("traces"))
        if assigned != worker.partitions:
            worker.pipeline.on_assigned(set(assigned))
            worker.partitions = assigned  # only once applied: a failure is retried
            log.info("owning partitions %s", sorted(assigned))

    async def publish(name: str, items: list[tuple[str | None, bytes]]) -> None:
        futs = [await topics[name].send(key=(k or "").encode(), value=v) for k, v in items]
        if futs:
            await asyncio.gather(*futs)

    async def emit(out_incidents, dead_letters, verdicts=()) -> None:
        sink = await ready_sink()
        if out_incidents or dead_letters or verdicts:
            async with worker.sink_lock:
                await asyncio.to_thread(sink.write_incidents, out_incidents)
                await asyncio.to_thread(sink.write_dead_letters, dead_letters, worker.pipeline.redactor.redact)
                await asyncio.to_thread(sink.write_verdicts, verdicts)
        await publish("incidents", [(i.slice.tenant_id, codec.encode_model(i)) for i in out_incidents])
        # the envelope keeps the original payload (restricted topic, for replay); the value and message
        # it quotes are redacted like everything else that is stored
        red = worker.pipeline.redactor.redact
        await publish("verdicts", [(v.tenant_id, codec.encode_model(v)) for v in verdicts])
        await publish("deadletter", [
            (d.tenant_id, codec.encode_model(d.model_copy(update={"value": red(d.value), "message": red(d.message)})))
            for d in dead_letters])

    async def abandon(what: str) -> None:
        """Shutdown path: leave the current batch uncommitted (redelivered to the next worker),
        commit the processed batches (their changelog messages are acknowledged), exit 0."""
        log.warning("%s abandoned at shutdown; it stays unacknowledged and is redelivered", what)
        try:
            await asyncio.wait_for(app.consumer.commit(), timeout=5.0)
        except Exception:
            log.warning("final commit failed; batches processed since the last commit are redelivered",
                        exc_info=True)
        logging.shutdown()
        os._exit(0)

    sequencers: dict[str, OffsetSequencer] = {}
    generations: dict[str, int] = {}  # consumer generation each sequencer restarted at

    def trace_position(partition: int) -> tuple[int | None, int | None]:
        """(next offset the trace agent processes, high watermark of the consumer's last fetch)."""
        tp = TP(settings.topic("traces"), partition)
        nxt = sequencers["traces"].expected.get((tp.topic, partition))
        try:
            high = app.consumer.highwater(tp)
        except Exception:
            high = None
        return nxt, high

    def traces_behind(partitions: set[int], targets: dict[int, int]) -> list[int]:
        """Trace partitions among ``partitions`` whose agent has not yet reached the high watermark
        the consumer reported when the feedback batch first waited for them (``targets``, filled
        here): a trace produced before its feedback is then not merely unread. A partition without
        a reported high watermark is not held."""
        behind = []
        for p in sorted(partitions):
            nxt, high = trace_position(p)
            if p not in targets and high is not None:
                targets[p] = high
            if targets.get(p, 0) > (nxt or 0):
                behind.append(p)
        return behind

    locks: dict[str, asyncio.Lock] = {}  # one per agent: its sequencer's reset, feed and seeks
    busy: dict[str, bool] = {}  # the agent is between receiving a batch and acknowledging it
    stale_acks: dict[str, list[Any]] = {}  # parked events a watchdog reset made duplicates

    async def seek_back(name: str, targets: dict[tuple[str, int], int], why: str,
                        level: int = logging.WARNING) -> None:
        """Seek the partitions of ``targets`` (``{(topic, partition): offset}``) this worker owns.

        Through ``Consumer.seek_wait``, which runs in the consumer's own thread: faust's
        ``Consumer.seek`` calls aiokafka from the event loop's thread, and after such a seek the
        fetcher waited forever (measured: a consumer that never delivered again). A failed seek
        (the partition moved in a rebalance meanwhile, a timeout) is logged; the watchdog
        retries it."""
        try:
            owned = app.consumer.assignment()
        except Exception:
            return
        todo = {TP(t, p): o for (t, p), o in targets.items() if TP(t, p) in owned}
        if not todo:
            return
        log.log(level, "%s: seeking %s (%s)", name, {f"{tp.topic}[{tp.partition}]": o for tp, o in todo.items()},
                why)
        try:
            await app.consumer.seek_wait(todo)
        except Exception:
            log.warning("%s: seek back failed; retried by the watchdog", name, exc_info=True)
            return
        for tp in todo:
            sequencers[name].sought((tp.topic, tp.partition))

    async def restart(name: str) -> list[Any]:
        """New assignment generation: restart ``name``'s sequencer at the group's committed
        offsets and seek the owned partitions there. faust seeks to the commits itself, but
        aiokafka's ``seek_to_committed`` skips partitions without a commit or committed at 0,
        so records faust discarded in the rebalance (a fetch cut short, a stream skipping
        another generation's messages) were never fetched again (measured: a replacement worker
        after a SIGKILL waited forever for offset 1). Returns parked events now duplicates."""
        generations[name] = app.rebalancing_count
        topic_name = settings.topic(name)
        parts = list(range(settings.partitions))  # all: the assignment may still move
        faust_fixes.forget(topic_name, parts)
        start = await asyncio.to_thread(committed_offsets_retrying, settings, topic_name, parts)
        stale = sequencers[name].reset(start)
        await seek_back(name, start, "new assignment: restart at the committed offsets", logging.INFO)
        return stale

    def sequenced(name: str):
        """Per-agent ordering guard: returns ``order(events) -> (ready, ack_after)``."""
        seq = sequencers[name] = OffsetSequencer()
        generations[name] = -1
        locks[name] = asyncio.Lock()
        busy[name] = False
        stale_acks[name] = []

        async def order(events: list[Any]) -> tuple[list[Any], list[Any]]:
            async with locks[name]:
                stale, stale_acks[name] = stale_acks[name], []
                if app.rebalancing_count != generations[name]:  # new assignment: restart at the commits
                    stale += await restart(name)
                rel = seq.feed(events)
                await seek_back(name, seq.stuck(), "offset missing while later ones are parked")
            return rel.ready, rel.duplicates + stale

        return order

    def queued(name: str) -> int:
        """Events in ``name``'s agent channel (fetched, not yet taken by the agent)."""
        return sum(ch.queue.qsize() for ch in getattr(topics[name], "_subscribers", ()))

    @app.timer(interval=1.0)
    async def sequencer_watchdog() -> None:
        # Between batches, apply an assignment change (also when no batch comes). An idle agent
        # (empty channel, no batch in hand) may wait for records that will never
        # be delivered: faust dropped them in a rebalance and no later batch arrives to notice.
        # Restart its sequencer on a new generation and seek back partitions behind their high
        # watermark that received nothing for stuck_after_s.
        if app.rebalancing or worker.stopping or not app.flow_control.is_active():
            return
        if not any(busy.values()):  # take a new assignment over before its first batch (and say so)
            try:
                check_assignment()
            except Exception:  # the next batch calls it again, and fails the batch if it still fails
                log.warning("applying the new assignment failed; retried", exc_info=True)
        for name, seq in sequencers.items():
            if busy[name] or queued(name):
                continue
            async with locks[name]:
                if app.rebalancing_count != generations[name]:
                    stale_acks[name] += await restart(name)
                try:
                    owned = [tp for tp in app.consumer.assignment() if tp.topic == settings.topic(name)]
                    high = {(tp.topic, tp.partition): app.consumer.highwater(tp) for tp in owned}
                except Exception:  # assignment changing under us: next tick
                    continue
                await seek_back(name, seq.to_seek(high), "behind the high watermark, nothing delivered")

    order_traces = sequenced("traces")
    order_feedback = sequenced("feedback")

    @app.agent(topics["traces"], name="process-traces")
    async def process_traces(stream: faust.StreamT) -> None:
        async for batch in stream.noack_take(settings.take_max_messages, within=settings.take_within_s):
            busy["traces"] = True
            try:
                check_assignment()
                events, ack_after = await order_traces(batch)
                out = worker.pipeline.on_traces(_raw(events))
                sink = await ready_sink()
                if out.cols is not None:
                    async with worker.sink_lock:
                        await asyncio.to_thread(sink.write_traces, out.cols, out.attributes)
                await emit(out.incidents, out.dead_letters, out.verdicts)
                worker.pipeline.flush_state()
                await acks.wait(settings.changelog_ack_timeout_s)
                faust_fixes.mark_processed(events)
                worker.traces_written += out.cols.n if out.cols is not None else 0
            except asyncio.CancelledError:
                raise  # shutting down: the batch stays unacknowledged and is redelivered
            except BaseException:
                if worker.stopping:
                    await abandon("trace batch")
                log.critical("trace batch failed; exiting without acknowledging it", exc_info=True)
                os._exit(CRASH_EXIT_CODE)
            for e in events + ack_after:  # duplicates only after the originals are done
                await stream.ack(e)
            busy["traces"] = False

    @app.agent(topics["feedback"], name="process-feedback")
    async def process_feedback(stream: faust.StreamT) -> None:
        async for batch in stream.noack_take(settings.take_max_messages, within=settings.take_within_s):
            busy["feedback"] = True
            try:
                check_assignment()
                events, ack_after = await order_feedback(batch)
                msgs = _raw(events)
                pipe = worker.pipeline
                await ready_sink()
                decoded = pipe.decode_feedback(msgs)
                # Feedback follows its trace. A record whose trace is not known waits, with no time
                # limit, until the trace agent has read its trace partition up to where it stood when
                # the batch began to wait (a backlog after a restart, a broker outage: the partition
                # watermark mixes tenants, so it alone may pass a trace not read yet); then while
                # the trace watermark is below its event time, for feedback_grace_s; only then is
                # the trace unknown. Meanwhile the feedback channel fills and faust's flow control
                # stops fetching feedback (on_buffer_full), while traces keep coming. (Pausing the
                # partitions here instead lost messages: faust drops fetched records of paused
                # partitions, which the sequencer then waited for forever.)
                deadline: float | None = None
                targets: dict[int, int] = {}
                waited_since = time.monotonic()
                next_note = waited_since + 10.0
                while True:
                    # the trace lookup may query ClickHouse: off the event loop, serialised by the sink
                    refs, waiting = await asyncio.to_thread(pipe.feedback.resolve, decoded.records,
                                                            decoded.partitions)
                    behind = traces_behind({decoded.partitions[i] for i, r in enumerate(refs) if r is None},
                                           targets)
                    if not waiting and not behind:
                        break
                    if time.monotonic() > next_note:
                        next_note += 30.0
                        log.info("%d feedback records waited %.0f s for their traces; trace partitions not "
                                 "read far enough: %s", sum(r is None for r in refs),
                                 time.monotonic() - waited_since,
                                 {p: (trace_position(p)[0], targets[p]) for p in behind} or "none")
                    if behind:
                        deadline = None
                    elif deadline is None:
                        deadline = time.monotonic() + settings.feedback_grace_s
                    elif time.monotonic() > deadline:
                        break
                    if worker.stopping:  # its traces will not come before we stop: not unknown, redeliver
                        raise _Abandon
                    await asyncio.sleep(0.1)  # the trace agent advances the watermark meanwhile
                out = pipe.on_feedback(msgs, decoded, refs)
                if out.rows or out.submissions:
                    async with worker.sink_lock:
                        await asyncio.to_thread(worker.sink.write_feedback, out.rows)
                        await asyncio.to_thread(worker.sink.write_submissions, out.submissions)
                for tenant, ids in out.patterns.items():  # refreshed by refresh_patterns below
                    worker.pending_patterns.setdefault(tenant, set()).update(ids)
                await emit(out.incidents, out.dead_letters, out.verdicts)
                pipe.flush_state()
                await acks.wait(settings.changelog_ack_timeout_s)
                faust_fixes.mark_processed(events)
            except asyncio.CancelledError:
                raise
            except BaseException:
                if worker.stopping:
                    await abandon("feedback batch")
                log.critical("feedback batch failed; exiting without acknowledging it", exc_info=True)
                os._exit(CRASH_EXIT_CODE)
            for e in events + ack_after:
                await stream.ack(e)
            busy["feedback"] = False

    async def refresh_patterns(*_: Any, **__: Any) -> None:
        """Scope ladder: recompute the feedback patterns written since the last refresh
        (idempotent; coalesced on a timer, since one refresh per batch held the sink too long).
        A crash loses only the pending set: the startup refresh recomputes every pattern."""
        if not worker.pending_patterns or worker.sink is None:
            return
        touched, worker.pending_patterns = worker.pending_patterns, {}
        try:
            async with worker.sink_lock:
                await asyncio.to_thread(worker.sink.refresh_patterns, touched)
        except BaseException:
            for tenant, ids in touched.items():
                worker.pending_patterns.setdefault(tenant, set()).update(ids)
            raise

    app.timer(interval=settings.feedback_patterns_refresh_s)(refresh_patterns)
    app.on_before_shutdown.connect(refresh_patterns)  # a graceful stop leaves nothing pending

    @app.timer(interval=settings.stats_interval_s)
    async def report() -> None:
        # one JSON line: pipeline counters, messages the consumer has taken from Kafka (faust's
        # monitor; flat while a stuck batch holds consumption), failed sink writes
        stats = {**worker.pipeline.stats, "traces_written": worker.traces_written,
                 "received": app.monitor.messages_received_total,
                 "sink_failed_attempts": worker.sink.failed_attempts if worker.sink is not None else 0,
                 "flow": flow_state()}
        log.info("stats %s", json.dumps(stats))

    def flow_state() -> dict[str, Any]:
        """Where events sit (for a stalled worker's log): agent channel depths (events), the
        consumer's paused and buffer-full partitions and flags, recovery, and per source topic the
        sequencer's next offsets and parked events."""
        c = app.consumer
        state: dict[str, Any] = {
            "queued": {name: queued(name) for name in ("traces", "feedback")},
            "paused": sorted(f"{tp.topic}:{tp.partition}" for tp in getattr(c, "_paused_partitions", ())),
            "buffer_full": sorted(f"{tp.topic}:{tp.partition}" for tp in getattr(c, "_buffered_partitions", ())),
            "flags": sorted(getattr(getattr(c, "diag", None), "flags", ()) or ()),
            "in_recovery": bool(app.in_recovery),
            "flow_suspended": not app.flow_control.is_active(),
        }
        for name, seq in sequencers.items():
            state[name] = {"next": {p: o for (_, p), o in sorted(seq.expected.items())},
                           "parked": seq.parked_count()}
        return state

    @app.timer(interval=settings.snapshot_interval_s)
    async def snapshot_baselines() -> None:
        # analysts' view of "normal" per slice; idempotent (keyed by slice, metric, time)
        if worker.sink is None:
            return
        rows = worker.pipeline.baseline_snapshot()
        if rows:
            async with worker.sink_lock:
                await asyncio.to_thread(worker.sink.write_baseline_snapshots, rows)

    return worker


def _credentials(settings: Settings) -> Any:
    if settings.kafka_sasl_mechanism and settings.kafka_sasl_password:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
        )
    return None


def _kafka_retrying(settings: Settings) -> Retrying:
    """tenacity policy for admin calls to the broker: ``KafkaException`` and ``TopicNotReadyError``
    retried with exponential backoff (0.2 s doubling to 5 s) for up to ``settings.sink_retry_s``,
    then re-raised (a broker restarting or electing leaders answers with timeouts)."""
    return Retrying(retry=retry_if_exception_type((KafkaException, TopicNotReadyError)),
                    wait=wait_exponential(0.2, max=5.0),
                    stop=stop_after_delay(settings.sink_retry_s), reraise=True,
                    before_sleep=before_sleep_log(log, logging.WARNING))


def committed_offsets_retrying(settings: Settings, topic: str, partitions: list[int]) -> dict[tuple[str, int], int]:
    """:func:`streams.topics.committed_offsets` of the worker's group, retried by :func:`_kafka_retrying`.

    Raises:
        KafkaException: still failing after ``settings.sink_retry_s``.
    """
    return _kafka_retrying(settings)(committed_offsets, settings, settings.full_app_id, topic, partitions)


def _hold_changelog_while(path: Path) -> None:
    """TEST HOOK (``Settings.fault_changelog_hold_file``): while ``path`` exists, changelog
    messages wait in faust's producer buffer before reaching the Kafka client, as they do when
    the client waits for a partition leader after a broker restart."""
    send = ProducerBuffer._send_pending

    async def held(self: ProducerBuffer, fut: Any) -> None:
        if fut.message.channel.get_topic_name().endswith("-changelog"):
            while path.exists():
                await asyncio.sleep(0.05)
        await send(self, fut)

    ProducerBuffer._send_pending = held  # type: ignore[method-assign]


class _Abandon(Exception):
    """Raised inside an agent to give up its batch at shutdown."""


class _SignalAwareWorker(faust.Worker):
    """faust's Worker, telling :class:`Worker` about SIGTERM/SIGINT before faust starts stopping
    (mode's ``_on_sigterm``/``_on_sigint`` are the loop's signal handlers)."""

    def __init__(self, *args: Any, on_signal: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_signal = on_signal

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # faust sets the root handler to its own level (warn by default); selfheal's INFO lines
        # (readiness, partitions, stats) get a handler of their own
        super().on_setup_root_logger(logger, level)
        ours = logging.getLogger("selfheal")
        if not ours.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s %(message)s"))
            ours.addHandler(handler)
            ours.setLevel(logging.INFO)
            ours.propagate = False

    def _on_sigterm(self) -> None:
        self._on_signal()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._on_signal()
        super()._on_sigint()


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT (bounded graceful stop, see the module
    docstring: unacknowledged batches are redelivered to the next worker)."""
    # the table changelogs exist before faust's first assignment (streams.topics docstring)
    _kafka_retrying(settings)(ensure_topics, settings)
    worker = build_app(settings)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s %(message)s")
    _SignalAwareWorker(worker.app, loglevel=loglevel, quiet=True,
                       on_signal=worker.on_stop_signal).execute_from_commandline()
