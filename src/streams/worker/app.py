"""The faust application: topics, changelog tables, and the wiring of the agents.

Topology (all topics keyed by tenant_id, ``Settings.partitions`` partitions)::

    agent.traces.v1   ──► process-traces ──► ClickHouse traces, incidents, dead_letters, rollout verdicts
                                          ├─► agent.incidents.v1
                                          ├─► agent.rollout-verdicts.v1
                                          └─► agent.deadletter.v1
    agent.feedback.v1 ──► process-feedback ─► ClickHouse feedback (+ incidents, dead_letters, verdicts)
    agent.incident-actions.v1 ──► process-actions ─► ClickHouse incident_actions, incidents (next
                                                     revision), dead_letters; agent.incidents.v1
    agent.platform-signals.v1 ──► process-platform-signals (the worker owning the "platform" key's
        partition: platform-wide incidents from every worker's alarms; IncidentManager.on_signals)

    changelog tables: baselines (slice rows), incident-state (open incidents, episodes),
                      feedback-seen (replay/resubmit ids), canary-state (rollout scorecards),
                      quarantine (poison-message failure records, streams.worker.quarantine)

Delivery (at-least-once, in offset order, state acknowledged before commit, slice state written
once per ``checkpoint_interval_s`` (:class:`~streams.worker.delivery.StateCheckpoint`); bounded shutdown):
:mod:`streams.worker.delivery`. The batch skeleton both agents share: :mod:`streams.worker.agents`.

Throughput note: faust costs ~115 µs per Kafka message (profiled, BENCHMARKS.md), so the SDK
sends batches of traces per message and the agents work per batch.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import faust

from schemas import default_codec
from schemas.codec import AvroCodec
from streams.config import KAFKA_MAX_REQUEST_BYTES, Settings
from streams.pipeline import Pipeline
from streams.telemetry import WorkerTelemetry
from streams.topics import TABLES, ensure_topics
from streams.worker import faults, faust_fixes
from streams.worker.agents import ActionStep, Assignment, BatchLoop, FeedbackStep, SignalStep, TraceStep
from streams.worker.delivery import (
    AgentDelivery,
    ChangelogAcks,
    RecoveryWatchdog,
    SequencerWatchdog,
    Shutdown,
    StallReport,
    StateCheckpoint,
    TableBackend,
    committed_offsets_retrying,
    kafka_retrying,
)
from streams.worker.outputs import Outputs
from streams.worker.quarantine import Quarantine
from streams.worker.web import ReadApi, install_views, load_tokens

log = logging.getLogger("selfheal.worker")
#: records per consumer fetch batch (faust broker_max_poll_records)
MAX_POLL_RECORDS = 500
#: feedback channel capacity, messages: room for a fetch batch above faust's pause mark (80 %)
FEEDBACK_BUFFER = 10 * MAX_POLL_RECORDS
SOURCES = ("traces", "feedback", "actions", "signals")
#: cyclic garbage collector thresholds of the worker process (gen0 allocations, gen1, gen2
#: collections). Python's default (700, 10, 10) runs a young collection every 700 container
#: allocations; decoding one batch allocates hundreds of thousands (a dict per trace, per tool
#: call, per manifest), and the collector then spent about a sixth of the processing core's CPU
#: (``streams.devtools.bench.core``: 23,377 / 23,203 traces per CPU-s with the default against
#: 27,830 / 29,008 with these thresholds, alternating runs; BENCHMARKS.md). Reference counting
#: frees almost everything the pipeline allocates, so fewer collections change nothing else.
GC_THRESHOLDS = (50_000, 20, 100)


@dataclass
class Worker:
    """A wired worker process: the faust app and its parts."""

    app: faust.App
    pipeline: Pipeline
    outputs: Outputs
    shutdown: Shutdown
    #: source name (:data:`SOURCES`) → its agent's loop
    loops: dict[str, BatchLoop]
    watchdog: SequencerWatchdog
    #: seeks back changelog partitions a table recovery is stuck on
    recovery_watchdog: RecoveryWatchdog
    #: Prometheus metrics (``/metrics``), reading :meth:`counters`, :meth:`lag` and the open incidents
    telemetry: WorkerTelemetry = field(init=False)

    def __post_init__(self) -> None:
        """Wire the telemetry into the agents' loops (per-batch counts, changelog ack wait) and
        the sink calls (write durations)."""
        self.telemetry = WorkerTelemetry(counters=self.counters, lag=self.lag,
                                         open_incidents=self.pipeline.incidents.open_kinds,
                                         rebalances=lambda: self.app.rebalancing_count)
        for loop in self.loops.values():
            loop.telemetry = self.telemetry
        self.outputs.observe_write = self.telemetry.observe_sink_write

    def counters(self) -> dict[str, int]:
        """Every cumulative counter of the worker, by stats key (the one source of the stats line's
        counters and of the Prometheus counters, :data:`streams.telemetry.STATS_COUNTERS`): the
        pipeline's (:meth:`Pipeline.counters`), traces written, messages the consumer has taken
        from Kafka (faust's monitor; flat while a stuck batch holds consumption), failed sink
        write attempts."""
        return {**self.pipeline.counters(), "traces_written": self.loops["traces"].written,
                "received": self.app.monitor.messages_received_total,
                "sink_failed_attempts": self.outputs.failed_attempts,
                "dead_letter_payloads_left_out": self.outputs.dead_letter_payloads_left_out,
                "quarantined": sum(loop.quarantined for loop in self.loops.values()),
                "recovery_reseeks": self.recovery_watchdog.reseeks}

    def lag(self) -> dict[tuple[str, int], int]:
        """``{(topic, partition): messages}`` between each owned source partition's high watermark
        (of the consumer's last fetch) and the next offset its agent processes; an empty partition (high
        watermark 0) is 0; other partitions with either unknown are left out."""
        out: dict[tuple[str, int], int] = {}
        try:
            owned = list(self.app.consumer.assignment())
        except Exception:  # no consumer yet, or the assignment is changing
            return out
        for loop in self.loops.values():
            d = loop.delivery
            for tp in owned:
                if tp.topic == d.topic:
                    nxt, high = d.position(tp.partition)
                    if high == 0:  # an empty partition: nothing to consume, even before a first message
                        out[(tp.topic, tp.partition)] = 0
                    elif nxt is not None and high is not None:
                        out[(tp.topic, tp.partition)] = max(high - nxt, 0)
        return out

    def stats(self) -> dict[str, Any]:
        """The stats line: :meth:`counters` and where events sit (:meth:`SequencerWatchdog.flow`)."""
        return {**self.counters(), "flow": self.watchdog.flow()}


def build_app(settings: Settings, codec: AvroCodec | None = None) -> Worker:
    """Create the faust app with its topics, tables and agents (nothing runs yet).

    Raises:
        FrameworkVersionError: the installed faust-streaming is not a verified release.
        ConfigError: invalid settings.
    """
    faust_fixes.check_faust_version()
    codec = codec or default_codec()
    app = _faust_app(settings)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw",
           "partitions": settings.partitions}
    topics = {name: app.topic(settings.topic(name), **raw)
              for name in ("traces", "incidents", "deadletter", "verdicts", "actions", "signals")}
    topics["feedback"] = faust_fixes.topic_with_maxsize(app.topic(settings.topic("feedback"), **raw), FEEDBACK_BUFFER)
    processed = faust_fixes.ProcessedOffsets(settings.topic(name) for name in SOURCES)
    faust_fixes.install(processed)
    fault_settings = faults.FaultSettings()
    prepare_sink = faults.install(fault_settings)
    # key_type/value_type bytes make faust use the raw serializer for the changelog, also in
    # recovery (the schema argument alone does not)
    tables = {name: app.Table(name, partitions=settings.partitions, key_type=bytes, value_type=bytes)
              for name in TABLES}

    acks = ChangelogAcks()
    async def commit_checkpointed() -> Any:
        # a stop commits the batches processed since the last checkpoint too, once their state is durable
        await checkpoint.run()
        return await app.consumer.commit()

    shutdown = Shutdown(settings.shutdown_timeout_s, commit=commit_checkpointed)
    outputs = Outputs(settings, codec, topics, stopping=lambda: shutdown.stopping, prepare_sink=prepare_sink)
    shutdown.on_stop(outputs.abort)
    pipeline = Pipeline(settings, codec, baselines=TableBackend(tables["baselines"], acks),
                        incidents=TableBackend(tables["incident-state"], acks),
                        feedback_state=TableBackend(tables["feedback-seen"], acks), trace_lookup=outputs.trace_refs,
                        canary_state=TableBackend(tables["canary-state"], acks), platform_signals=True)
    faults.poison(pipeline, fault_settings)
    assignment = Assignment(app, settings.topic("traces"), pipeline)
    committed = partial(committed_offsets_retrying, settings)
    delivery = {name: AgentDelivery(name, settings.topic(name), settings.partitions, app, processed, committed)
                for name in SOURCES}
    checkpoint = StateCheckpoint(pipeline.flush_state, acks, processed, settings.checkpoint_interval_s,
                                 settings.changelog_ack_timeout_s, generation=lambda: app.rebalancing_count)
    common = {"pipeline": pipeline, "outputs": outputs, "acks": acks, "processed": processed,
              "assignment": assignment, "shutdown": shutdown, "checkpoint": checkpoint,
              "quarantine": Quarantine(TableBackend(tables["quarantine"], acks), settings.poison_max_attempts)}
    loops = {"traces": BatchLoop(settings, delivery["traces"], TraceStep(pipeline, outputs), **common),
             "feedback": BatchLoop(settings, delivery["feedback"],
                                   FeedbackStep(pipeline, outputs, settings.feedback_grace_s,
                                                delivery["traces"].position, lambda: shutdown.stopping), **common),
             "actions": BatchLoop(settings, delivery["actions"],
                                  ActionStep(pipeline, outputs, delivery["traces"].position, lambda: shutdown.stopping),
                                  **common),
             "signals": BatchLoop(settings, delivery["signals"], SignalStep(pipeline, outputs), **common)}
    watchdog = SequencerWatchdog(app, list(delivery.values()), assignment.check,
                                 queued=lambda d: faust_fixes.channel_depth(topics[d.name]),
                                 stopping=lambda: shutdown.stopping)
    worker = Worker(app, pipeline, outputs, shutdown, loops, watchdog,
                    RecoveryWatchdog(app, settings.recovery_reseek_after_s))
    if settings.web_enabled:
        api = ReadApi(app, settings, pipeline, load_tokens(settings),
                      {name: table.changelog_topic.get_topic_name() for name, table in tables.items()})
        install_views(app, api, worker.telemetry)

    @app.agent(topics["traces"], name="process-traces")
    async def process_traces(stream: faust.StreamT) -> None:
        await loops["traces"].run(stream)

    @app.agent(topics["feedback"], name="process-feedback")
    async def process_feedback(stream: faust.StreamT) -> None:
        await loops["feedback"].run(stream)

    @app.agent(topics["actions"], name="process-actions")
    async def process_actions(stream: faust.StreamT) -> None:
        await loops["actions"].run(stream)

    @app.agent(topics["signals"], name="process-platform-signals")
    async def process_signals(stream: faust.StreamT) -> None:
        await loops["signals"].run(stream)

    async def report() -> None:
        log.info("stats %s", json.dumps(worker.stats()))

    async def snapshot_baselines() -> None:
        await outputs.write_baseline_snapshots(pipeline.baseline_snapshot)

    async def checkpoint_state() -> None:
        # an idle worker's processed batches become committable too; a failure is a failed batch
        if shutdown.stopping:
            return
        try:
            await checkpoint.tick()
        except Exception:
            shutdown.crash("state checkpoint")

    app.task(outputs.open)  # agents wait for the sink (Outputs.ready)
    app.timer(interval=min(max(settings.checkpoint_interval_s / 2, 0.1), 1.0))(checkpoint_state)
    app.timer(interval=1.0)(watchdog.tick)
    # app timers start only after table recovery: these two watch the recovery itself
    faust_fixes.add_recovery_timers(app, [StallReport(app, watchdog.flow, settings.stall_report_s).tick,
                                          worker.recovery_watchdog.tick])
    app.timer(interval=settings.feedback_patterns_refresh_s)(outputs.refresh_patterns)
    app.on_before_shutdown.connect(outputs.refresh_patterns)  # a graceful stop leaves nothing pending

    async def final_checkpoint(*_: Any, **__: Any) -> None:
        try:
            await checkpoint.run()
        except Exception:  # not durable: the pending batches stay uncommitted and are redelivered
            log.warning("final state checkpoint failed; its batches are redelivered", exc_info=True)

    app.on_before_shutdown.connect(final_checkpoint)  # faust's final commit then includes them
    app.timer(interval=settings.stats_interval_s)(report)
    app.timer(interval=settings.snapshot_interval_s)(snapshot_baselines)
    return worker


def _faust_app(settings: Settings) -> faust.App:
    """The faust App of ``settings`` (memory tables backed by changelogs, raw serializers)."""
    state = settings.state_dir / "faust" / settings.full_app_id
    state.mkdir(parents=True, exist_ok=True)
    credentials = None
    if settings.kafka_sasl_mechanism and settings.kafka_sasl_password:
        credentials = faust.SASLCredentials(username=settings.kafka_sasl_username or "",
                                            password=settings.kafka_sasl_password.get_secret_value(),
                                            mechanism=settings.kafka_sasl_mechanism)
    return faust.App(
        settings.full_app_id,
        broker=";".join(f"kafka://{b}" for b in settings.kafka_bootstrap.split(",")),
        store="memory://",
        datadir=str(state),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        web_enabled=settings.web_enabled,
        web_bind=settings.web_bind,
        web_host=settings.web_host or socket.gethostname(),
        web_port=settings.web_port,
        # faust's own pages off: /table shows table contents without a token (streams.worker.web)
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=max(settings.broker_session_timeout_s / 4, 1.0),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_buffer_maxsize=max(4 * settings.take_max_messages, 64),
        # bounded fetch batches: the feedback channel (above) always has room for one, so the
        # consumer never blocks on it while feedback waits for its traces (the trace agent would starve)
        broker_max_poll_records=MAX_POLL_RECORDS,
        # rebalances and stops do not wait for fetched events to be acked: commits of the source
        # topics follow processing (ProcessedOffsets in faust_fixes), so an event cleared from an
        # agent buffer is simply not committed, and waiting only deadlocked (a rebalance waited for
        # a batch that waited for traces the paused consumer would not fetch; measured: stops ended
        # by the shutdown watchdog, scale-out rebalances that never finished)
        stream_wait_empty=False,
        producer_acks=-1,
        producer_compression_type="lz4",
        producer_max_request_size=KAFKA_MAX_REQUEST_BYTES,
        table_standby_replicas=0,
        broker_credentials=credentials,
    )


class _Worker(faust_fixes.SignalAwareWorker):
    """faust's Worker with selfheal's INFO log lines on a handler of their own."""

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


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT (bounded graceful stop, see
    :mod:`streams.worker.delivery`: unacknowledged batches are redelivered to the next worker).

    Raises:
        FrameworkVersionError: the installed faust-streaming is not a verified release.
        KafkaException: the topics could not be ensured within ``settings.sink_retry_s``.
    """
    faust_fixes.check_faust_version()  # before touching the broker: the clearest failure first
    # the table changelogs exist before faust's first assignment (streams.topics docstring)
    kafka_retrying(settings)(ensure_topics, settings)
    worker = build_app(settings)
    gc.collect()
    gc.freeze()  # start-up objects (modules, schemas, faust's app) are never garbage: keep them out of collections
    gc.set_threshold(*GC_THRESHOLDS)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s %(message)s")
    try:
        _Worker(worker.app, loglevel=loglevel, quiet=True,
                on_signal=worker.shutdown.on_signal).execute_from_commandline()
    finally:  # execute_from_commandline ends in SystemExit, after faust has stopped
        worker.outputs.close()
