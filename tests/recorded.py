"""A recorded demo-like run for replay and report tests: the fleet simulator's traffic
(:class:`~streams.devtools.simulate.FleetSimulator`, one injected release regression, staged
rollouts) batched per tenant as the SDK does, processed by the in-process :class:`Pipeline` in
worker-sized batches (the "production" worker) and written to chDB exactly as the worker writes
(traces, feedback rows and submissions, incident events, rollout verdicts).

Batching differs on purpose from the replay's: production messages hold up to ``trace_msg``
traces, batches ``worker_batch`` messages, and feedback is processed as soon as its message is
full (the traces before it first, as the worker's join wait orders them).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import default_codec
from streams.config import Settings
from streams.devtools.simulate import DEMO_ROLLOUTS, FleetSimulator
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.processors.feedback import TraceRef
from streams.sinks.clickhouse import ClickHouseSink


class _Collect:
    """Stands in for the SDK: records what the simulator sends, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_trace(self, trace: dict[str, Any]) -> None:
        self.sent.append(("t", trace))

    def send_feedback(self, fb: dict[str, Any]) -> None:
        self.sent.append(("f", dict(fb)))

    def flush(self) -> None:
        pass


@dataclass
class ProductionRun:
    """What the in-process production run emitted."""

    incidents: dict[str, Any] = field(default_factory=dict)  # incident_id -> latest event
    traces: int = 0
    feedback: int = 0


def record_run(settings: Settings, traces: int = 12_000, seed: int = 7, trace_msg: int = 40, feedback_msg: int = 8,
               worker_batch: int = 5) -> ProductionRun:
    """Simulate, process and store one run in ``settings``' chDB directory (migrated here)."""
    codec = default_codec()
    sim = FleetSimulator(traces=traces, seed=seed, bad_input=False, span_s=3 * 3600, rollouts=DEMO_ROLLOUTS)
    sdk = _Collect()
    sim.run(sdk)
    run = ProductionRun()
    offsets: dict[tuple[str, int], int] = {}
    with ClickHouseSink(settings) as sink:
        sink.migrate()

        def lookup(tenant: str, ids: list[str]) -> dict[str, TraceRef]:
            return TraceRef.by_trace_id(tenant, sink.for_tenant(tenant).trace_refs(ids))

        pipe = Pipeline(settings, codec, trace_lookup=lookup)

        def message(kind: str, tenant: str, recs: list[dict[str, Any]]) -> RawMessage:
            p = zlib.crc32(tenant.encode()) % settings.partitions
            off = offsets.get((kind, p), 0)
            offsets[(kind, p)] = off + 1
            name, items = ("selfheal.v1.AgentTraceBatch", "traces") if kind == "t" else \
                ("selfheal.v1.FeedbackBatch", "items")
            t = max(r["event_time"] for r in recs)
            value = codec.encode(name, {"batch_id": f"{kind}-{p}-{off}", "producer_id": "test", "sent_at": t,
                                        items: recs})
            return RawMessage(settings.topic("traces" if kind == "t" else "feedback"), p, off, tenant.encode(),
                              value, t)

        def emit(incidents: list[Any]) -> None:
            sink.write_incidents(incidents)
            for inc in incidents:
                run.incidents[inc.incident_id] = inc

        pending: list[RawMessage] = []

        def process_traces() -> None:
            while pending:
                batch, pending[:] = pending[:worker_batch], pending[worker_batch:]
                out = pipe.on_traces(batch)
                if out.cols is not None:
                    sink.write_traces(out.cols, out.attributes, out.batch_seq)
                    run.traces += out.cols.n
                emit(out.incidents)
                sink.write_verdicts(out.verdicts)
                pipe.flush_state()

        tbuf: dict[str, list[dict[str, Any]]] = {}
        fbuf: dict[str, list[dict[str, Any]]] = {}
        for kind, rec in sdk.sent:
            tenant = rec["tenant_id"]
            if kind == "t":
                tbuf.setdefault(tenant, []).append(rec)
                if len(tbuf[tenant]) >= trace_msg:
                    pending.append(message("t", tenant, tbuf.pop(tenant)))
                    if len(pending) >= worker_batch:
                        process_traces()
            else:
                fbuf.setdefault(tenant, []).append(rec)
                if len(fbuf[tenant]) >= feedback_msg:
                    for t in sorted(tbuf):  # the join wait: the traces up to the feedback first
                        pending.append(message("t", t, tbuf.pop(t)))
                    process_traces()
                    _feedback(pipe, sink, run, emit, [message("f", tenant, fbuf.pop(tenant))])
        for t in sorted(tbuf):
            pending.append(message("t", t, tbuf.pop(t)))
        process_traces()
        for t in sorted(fbuf):
            _feedback(pipe, sink, run, emit, [message("f", t, fbuf.pop(t))])
    return run


def _feedback(pipe: Pipeline, sink: ClickHouseSink, run: ProductionRun, emit: Any, msgs: list[RawMessage]) -> None:
    out = pipe.on_feedback(msgs)
    sink.write_feedback(out.rows)
    sink.write_submissions(out.submissions)
    run.feedback += len(out.rows)
    emit(out.incidents)
    sink.write_verdicts(out.verdicts)
    pipe.flush_state()
