"""Where a batch's results go: the worker's ClickHouse sink and its output topics.

The worker process owns the ClickHouse connection (a chDB directory admits one process). Every
sink call runs off the event loop (``asyncio.to_thread``) and under one lock, so one caller at a
time uses the connection (see :class:`~streams.sinks.clickhouse.ClickHouseSink`). A write that
keeps failing holds its batch in the sink's retry loop: nothing is acknowledged meanwhile
(backpressure), and :meth:`Outputs.abort` ends the loop at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from schemas.codec import AvroCodec
from streams.config import Settings
from streams.pipeline import StoredTraces, trace_fingerprint
from streams.processors.deadletters import seal
from streams.processors.feedback import TraceRef
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.queries import stored_traces_by_tenant
from streams.worker.delivery import Abandoned

log = logging.getLogger("selfheal.worker")


def incident_key(incident: Any) -> str:
    """The Kafka key of an incident event: its tenant_id, ``"platform"`` for a platform-wide one
    (``avro/incident.avsc``)."""
    return incident.slice.tenant_id or "platform"


class Outputs:
    """The sink's life cycle and writes, the output topics, and the coalesced pattern refresh.

    Args:
        settings: the worker's settings (sink connection).
        codec: encodes incidents, verdicts and dead letters for their topics.
        topics: logical name → faust topic (``incidents``, ``verdicts``, ``deadletter`` used here).
        stopping: true once a stop signal came.
        prepare_sink: applied to the sink after its migrations (the fault hooks of
            :mod:`streams.worker.faults`; identity otherwise).
        observe_write: ``(sink method name, seconds)`` after every sink write call, retries
            included (``streams.telemetry.WorkerTelemetry.observe_sink_write``).
    """

    def __init__(self, settings: Settings, codec: AvroCodec, topics: dict[str, Any], stopping: Callable[[], bool],
                 prepare_sink: Callable[[ClickHouseSink], ClickHouseSink] = lambda sink: sink,
                 observe_write: Callable[[str, float], None] = lambda name, seconds: None) -> None:
        self.observe_write = observe_write
        self.settings = settings
        self.codec = codec
        self.topics = topics
        self.stopping = stopping
        self.prepare_sink = prepare_sink
        #: the sink, once its schema is in place (agents wait for it: :meth:`ready`)
        self.sink: ClickHouseSink | None = None
        #: the sink while the worker opens it (migrations, first pattern refresh), before ``sink`` is set
        self.opening_sink: ClickHouseSink | None = None
        #: one sink caller at a time
        self.lock = asyncio.Lock()
        #: tenant → pattern ids written since the last pattern refresh (see :meth:`refresh_patterns`)
        self.pending_patterns: dict[str, set[str]] = {}
        #: dead letters published without their payload (over the bound, or by setting; stats line)
        self.dead_letter_payloads_left_out = 0

    async def open(self) -> None:
        """Open the sink, apply migrations, refresh every feedback pattern; then agents may write.
        A stop signal meanwhile ends it quietly (the sink's retries are aborted).

        Raises:
            SinkError: the store cannot be opened or migrated (not while stopping).
        """

        def start() -> tuple[ClickHouseSink, list[int]]:
            # one thread for schema changes and the first read: a chDB table created in one thread
            # was seen missing by an immediate query from another thread under load
            sink = self.opening_sink = ClickHouseSink(self.settings)
            if self.stopping():  # the signal came while the sink was being opened
                sink.abort()
            applied = sink.migrate()
            sink = self.opening_sink = self.prepare_sink(sink)
            # feedback patterns of batches acknowledged before a crash may not have been refreshed
            sink.refresh_patterns(None)
            return sink, applied

        try:
            sink, applied = await asyncio.to_thread(start)
        except Exception:
            if not self.stopping():
                raise
            log.warning("ClickHouse start-up ended by the stop signal", exc_info=True)
            return
        self.sink = sink  # agents start writing only once the schema is in place
        log.info("ClickHouse at %s ready (migrations applied now: %s)", sink.location, applied or "none")

    def abort(self) -> None:
        """End the retry loops of the open (or opening) sink: its writes fail now (shutdown)."""
        for sink in (self.sink, self.opening_sink):
            if sink is not None:
                sink.abort()

    def close(self) -> None:
        """Close the open (or opening) sink; idempotent. Called once faust has stopped, so the
        process does not reach interpreter exit with its chDB connection open (issue 13)."""
        for sink in (self.sink, self.opening_sink):
            if sink is not None:
                sink.close()

    @property
    def failed_attempts(self) -> int:
        """Sink write attempts that failed so far (stats line)."""
        return self.sink.failed_attempts if self.sink is not None else 0

    async def ready(self) -> ClickHouseSink:
        """The sink, once open.

        Raises:
            Abandoned: a stop signal came before the sink opened (the batch is redelivered).
        """
        while self.sink is None:
            if self.stopping():  # the sink never opened: the batch is redelivered
                raise Abandoned("the sink did not open before the stop signal")
            await asyncio.sleep(0.05)
        return self.sink

    async def _call(self, *calls: tuple[Any, ...]) -> None:
        """Run the sink calls ``(method, *args)`` in order, in a thread, holding the lock."""
        async with self.lock:
            for method, *args in calls:
                t0 = time.perf_counter()
                await asyncio.to_thread(method, *args)
                self.observe_write(method.__name__, time.perf_counter() - t0)

    def trace_refs(self, tenant: str, trace_ids: list[str]) -> dict[str, TraceRef]:
        """Trace references of ``tenant``'s ``trace_ids`` found in ClickHouse (the feedback join's
        lookup beyond its in-memory index; blocking, called off the event loop)."""
        if self.sink is None or not trace_ids:
            return {}
        return TraceRef.by_trace_id(tenant, self.sink.for_tenant(tenant).trace_refs(trace_ids))

    async def stored_traces(self, ids: dict[str, list[str]]) -> StoredTraces:
        """What the store holds of ``{tenant: [trace_id]}`` (the duplicate check beyond the
        in-memory index, :meth:`Pipeline.unindexed_trace_ids`), fingerprinted in this process."""
        if not ids:
            return {}
        sink = await self.ready()
        found: StoredTraces = {}

        def look() -> None:
            for tenant, rows in stored_traces_by_tenant(sink, ids).items():
                for tid, t_ms, lat, out_tok, outcome, rel, part, off in rows:
                    found.setdefault((tenant, tid), []).append(
                        (trace_fingerprint(t_ms, lat, out_tok, outcome, rel, tenant), int(part), int(off)))

        async with self.lock:
            await asyncio.to_thread(look)
        return found

    async def write_traces(self, cols: Any, attributes: Sequence[dict[str, str]], batch_seq: int = 0) -> None:
        """Insert a trace batch's columns and redacted attribute maps (``batch_seq``: the
        pipeline's processing sequence number of the batch, kept for replays)."""
        sink = await self.ready()
        await self._call((sink.write_traces, cols, attributes, batch_seq))

    async def write_feedback(self, rows: list[dict[str, Any]], submissions: list[dict[str, Any]]) -> None:
        """Insert feedback rows and submissions (one lock hold), and queue their patterns' refresh."""
        sink = await self.ready()
        await self._call((sink.write_feedback, rows), (sink.write_submissions, submissions))

    async def write_actions(self, rows: list[dict[str, Any]]) -> None:
        """Insert incident-action ledger rows (``incident_actions``)."""
        sink = await self.ready()
        await self._call((sink.write_actions, rows))

    def add_patterns(self, patterns: dict[str, set[str]]) -> None:
        """Queue tenant → pattern ids for the next :meth:`refresh_patterns`."""
        for tenant, ids in patterns.items():
            self.pending_patterns.setdefault(tenant, set()).update(ids)

    async def emit(self, incidents: Sequence[Any], dead_letters: Sequence[Any], verdicts: Sequence[Any],
                   redact: Callable[[str], str], signals: Sequence[dict[str, Any]] = ()) -> None:
        """Write incidents, dead letters and rollout verdicts to ClickHouse, then publish them, and
        the platform ``signals`` (``agent.platform-signals.v1``, key ``"platform"``), to their
        topics and wait for the broker's acknowledgements. Dead letters are sealed once
        (:func:`~streams.processors.deadletters.seal`: ``redact`` applied to their quoted text,
        numeric values kept, payload left out above ``dead_letter_max_payload_bytes`` or when
        ``dead_letter_payload`` is off), and that copy goes to both.

        Raises:
            SinkError: a write kept failing; an exception of faust's producer: a send failed.
        """
        sink = await self.ready()
        s = self.settings
        sealed = seal(dead_letters, redact=redact, include_payload=s.dead_letter_payload,
                      max_payload_bytes=s.dead_letter_max_payload_bytes)
        self.dead_letter_payloads_left_out += sum(1 for d in sealed if d.payload_left_out)
        if incidents or sealed or verdicts:
            await self._call((sink.write_incidents, incidents), (sink.write_dead_letters, sealed),
                             (sink.write_verdicts, verdicts))
        codec = self.codec
        # key = tenant_id (incident.avsc): an incident's events, and a tenant's, stay in order on the
        # tenant's partition; platform-wide incidents (no tenant) are keyed "platform"
        await self.publish("incidents", [(incident_key(i), codec.encode_model(i)) for i in incidents])
        await self.publish("verdicts", [(v.tenant_id, codec.encode_model(v)) for v in verdicts])
        await self.publish("signals", [("platform", codec.encode("selfheal.v1.PlatformSignal", sig))
                                       for sig in signals])
        # the envelope keeps the original payload up to the bound (restricted topic, for replay)
        await self.publish("deadletter", [(d.tenant_id, codec.encode_model(d)) for d in sealed])

    async def publish(self, name: str, items: Iterable[tuple[str | None, bytes]]) -> None:
        """Send ``(key, value)`` pairs to topic ``name`` and wait until the broker acknowledged them."""
        futs = [await self.topics[name].send(key=(k or "").encode(), value=v) for k, v in items]
        if futs:
            await asyncio.gather(*futs)

    async def refresh_patterns(self, *_: Any, **__: Any) -> None:
        """Scope ladder: recompute the feedback patterns written since the last refresh
        (idempotent; coalesced on a timer, since one refresh per batch held the sink too long).
        A crash loses only the pending set: the startup refresh recomputes every pattern."""
        if not self.pending_patterns or self.sink is None:
            return
        touched, self.pending_patterns = self.pending_patterns, {}
        try:
            await self._call((self.sink.refresh_patterns, touched))
        except BaseException:
            self.add_patterns(touched)
            raise

    async def write_baseline_snapshots(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        """Write ``snapshot()``'s rows, the analysts' view of "normal" per slice; idempotent (keyed
        by slice, metric, time). Nothing (and no snapshot taken) before the sink is open."""
        if self.sink is None:
            return
        rows = snapshot()
        if rows:
            await self._call((self.sink.write_baseline_snapshots, rows))
