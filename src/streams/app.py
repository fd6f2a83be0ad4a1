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
only after its ClickHouse rows are written and its topic messages are delivered; faust flushes
the changelog producer before committing offsets. An exception inside a batch exits the process (exit code 70)
without acknowledging, so the batch is redelivered to the restarted worker: at-least-once, with
idempotent sinks and replay guards making redelivery harmless.

Throughput note: faust costs ~115 µs per Kafka message (profiled, BENCHMARKS.md), so the SDK
sends batches of traces per message and the agents work per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from schemas import default_codec
from schemas.codec import AvroCodec
from streams import faust_fixes
from streams.config import Settings
from streams.pipeline import Pipeline
from streams.processors.feedback import TraceRef
from streams.processors.ingest import ARM_CODES, RawMessage
from streams.sequencer import OffsetSequencer
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import committed_offsets

log = logging.getLogger("selfheal.worker")
CRASH_EXIT_CODE = 70


class TableBackend:
    """:class:`~streams.processors.incidents.StateBackend` over a faust table with raw bytes.

    Writes go to the in-memory store and to the changelog partition given by the caller (the
    tenant's source partition), so the state follows the tenant's partition on rebalance.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def get(self, key: str) -> bytes | None:
        """Value of ``key`` or ``None``."""
        return self.table.data.get(key.encode())

    def put(self, key: str, value: bytes, partition: int) -> None:
        """Set ``key`` and send it to changelog ``partition``."""
        k = key.encode()
        self.table.data[k] = value
        self.table.send_changelog(partition, k, value, key_serializer="raw", value_serializer="raw")

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
    #: tenant → pattern ids written since the last pattern refresh (see ``refresh_patterns``)
    pending_patterns: dict[str, set[str]] = field(default_factory=dict)


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
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_buffer_maxsize=max(4 * settings.take_max_messages, 64),
        # rebalances wait until every fetched event is processed and acked: with False, events
        # cleared from agent buffers were committed as gaps and lost (measured, tests/integration)
        stream_wait_empty=True,
        producer_acks=-1,
        producer_compression_type="lz4",
        producer_max_request_size=2 * 1024 * 1024,
        table_standby_replicas=0,
        broker_credentials=_credentials(settings),
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw",
           "partitions": settings.partitions}
    topics = {name: app.topic(settings.topic(name), **raw)
              for name in ("traces", "feedback", "incidents", "deadletter", "verdicts")}
    faust_fixes.apply({settings.topic("traces"), settings.topic("feedback")})
    tables = {
        # key_type/value_type bytes make faust use the raw serializer for the changelog, also in
        # recovery (the schema argument alone does not)
        name: app.Table(name, partitions=settings.partitions, key_type=bytes, value_type=bytes)
        for name in ("baselines", "incident-state", "feedback-seen", "canary-state")
    }
    worker = Worker(settings=settings, app=app, codec=codec, pipeline=None, topics=topics)  # type: ignore[arg-type]

    def lookup(tenant: str, trace_ids: list[str]) -> dict[str, TraceRef]:
        if worker.sink is None or not trace_ids:
            return {}
        rows = worker.sink.query(
            "SELECT trace_id, cohort, workflow, release_id, source_partition, session_id, "
            "toUnixTimestamp64Milli(event_time), arrayFirst((n, s) -> s != 'ok', tool_names, tool_statuses), "
            "rollout_arm, candidate_release_id, rollout_stage_pct "
            "FROM {db}.traces WHERE tenant_id = {t:String} AND trace_id IN {ids:Array(String)}",
            {"t": tenant, "ids": trace_ids})
        return {r[0]: TraceRef(tenant, r[1], r[2], r[3], int(r[4]), r[5], 0, int(r[6]), r[7],
                               rollout_arm=ARM_CODES.get(r[8], -1), candidate_release_id=r[9], stage_pct=float(r[10]))
                for r in rows}

    worker.pipeline = Pipeline(settings, codec, baselines=TableBackend(tables["baselines"]),
                               incidents=TableBackend(tables["incident-state"]),
                               feedback_state=TableBackend(tables["feedback-seen"]), trace_lookup=lookup,
                               canary_state=TableBackend(tables["canary-state"]))

    @app.task
    async def open_sink() -> None:
        # The worker process owns the ClickHouse connection (a chDB directory admits one process).
        def start() -> tuple[ClickHouseSink, list[int]]:
            # one thread for schema changes and the first read: a chDB table created in one thread
            # was seen missing by an immediate query from another thread under load
            sink = ClickHouseSink(settings)
            applied = sink.migrate()
            # feedback patterns of batches acknowledged before a crash may not have been refreshed
            sink.refresh_patterns(None)
            return sink, applied

        sink, applied = await asyncio.to_thread(start)
        worker.sink = sink  # agents start writing only once the schema is in place
        log.info("ClickHouse at %s ready (migrations applied now: %s)", sink.location, applied or "none")

    async def ready_sink() -> ClickHouseSink:
        while worker.sink is None:
            await asyncio.sleep(0.05)
        return worker.sink

    def check_assignment() -> None:
        assigned = frozenset(tp.partition for tp in app.assignor.assigned_actives()
                             if tp.topic == settings.topic("traces"))
        if assigned != worker.partitions:
            worker.partitions = assigned
            worker.pipeline.on_assigned(set(assigned))
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
        await publish("verdicts", [(v.tenant_id, codec.encode_model(v)) for v in verdicts])
        await publish("deadletter", [(d.tenant_id, codec.encode_model(d)) for d in dead_letters])

    def sequenced(name: str):
        """Per-agent ordering guard: returns ``order(events) -> (ready, ack_after)``."""
        seq = OffsetSequencer()
        seen_generation = [-1]
        topic_name = settings.topic(name)

        async def order(events: list[Any]) -> tuple[list[Any], list[Any]]:
            if app.rebalancing_count != seen_generation[0]:  # new assignment: restart at the commits
                seen_generation[0] = app.rebalancing_count
                parts = sorted(worker.partitions) or list(range(settings.partitions))
                start = await asyncio.to_thread(committed_offsets, settings, settings.full_app_id, topic_name, parts)
                stale = seq.reset(start)
            else:
                stale = []
            rel = seq.feed(events)
            for (topic, partition), offset in seq.stuck().items():
                log.warning("%s[%d]: offset %d missing while later ones arrived; seeking back",
                            topic, partition, offset)
                await app.consumer.seek(TP(topic, partition), offset)
                seq.waiting_since[(topic, partition)] = time.monotonic()
            return rel.ready, rel.duplicates + stale

        return order

    order_traces = sequenced("traces")
    order_feedback = sequenced("feedback")

    @app.agent(topics["traces"], name="process-traces")
    async def process_traces(stream: faust.StreamT) -> None:
        async for batch in stream.noack_take(settings.take_max_messages, within=settings.take_within_s):
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
            except asyncio.CancelledError:
                raise  # shutting down: the batch stays unacknowledged and is redelivered
            except BaseException:
                log.critical("trace batch failed; exiting without acknowledging it", exc_info=True)
                os._exit(CRASH_EXIT_CODE)
            for e in events + ack_after:  # duplicates only after the originals are done
                await stream.ack(e)

    @app.agent(topics["feedback"], name="process-feedback")
    async def process_feedback(stream: faust.StreamT) -> None:
        async for batch in stream.noack_take(settings.take_max_messages, within=settings.take_within_s):
            try:
                check_assignment()
                events, ack_after = await order_feedback(batch)
                msgs = _raw(events)
                pipe = worker.pipeline
                await ready_sink()
                decoded = pipe.decode_feedback(msgs)
                deadline = time.monotonic() + settings.feedback_grace_s
                while True:
                    # the trace lookup may query ClickHouse: off the event loop, serialised by the sink
                    refs, waiting = await asyncio.to_thread(pipe.feedback.resolve, decoded.records,
                                                            decoded.partitions)
                    if not waiting or time.monotonic() > deadline:
                        break
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
            except asyncio.CancelledError:
                raise
            except BaseException:
                log.critical("feedback batch failed; exiting without acknowledging it", exc_info=True)
                os._exit(CRASH_EXIT_CODE)
            for e in events + ack_after:
                await stream.ack(e)

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

    @app.timer(interval=10.0)
    async def report() -> None:
        log.info("stats %s", worker.pipeline.stats)

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


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT (graceful stop: unacknowledged batches
    are redelivered to the next worker)."""
    worker = build_app(settings)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s %(message)s")
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
