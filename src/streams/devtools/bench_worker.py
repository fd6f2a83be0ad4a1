"""``selfheal bench-drift-worker``: detection quality measured through the real worker.

``selfheal bench-drift`` drives the processing core in-process, with feedback applied on the
suite's own schedule. This benchmark checks the same claims where they have to hold: traffic is
produced to the broker by an **independent client** (plain confluent-kafka, Avro encoded with
fastavro straight from the ``avro/*.avsc`` files, single-object encoding as the Avro 1.11
specification defines it; neither the SDK nor :mod:`schemas.codec`), a ``selfheal worker``
subprocess (:class:`~streams.devtools.launcher.WorkerProcess`) consumes traces and feedback on
its own schedule while they are produced, and the incidents are read back from the incident
topic and scored.

Traffic: 8 tenants × 5 cohorts × 4 workflows (160 tenant×cohort×workflow slices, equal tenant
shares), one fleet trace every ``step_ms`` of event time (default 50 ms, 20 traces/s), values
drawn by :func:`streams.devtools.synthetic.synthetic_columns`. Feedback happens a log-normal
delay after its trace (default median 60 s, σ 0.6: ~25 s to ~4 min) and is produced on its own
producer when the trace stream's event time has passed it, in FeedbackBatch messages per tenant:
corrections (``omission``, the synthetic per-workflow rates, 8-16%) and unsafe-recommendation
reports (0.4%); 3% of them are sent again with the same ``feedback_id`` (replays) and 2% again
with a new id and the same text (resubmits), later still. Only ``new`` feedback counts in the
detectors, so neither may move a rate.

Scenarios:

==================  ===============================================  ==========================
scenario            change                                           expected
==================  ===============================================  ==========================
stationary          nothing                                          no incident
tenant_change       after ``change_at`` of the traces, one tenant's   one incident (an episode)
                    intent mix moves in all 5 of its cohorts          on that tenant
==================  ===============================================  ==========================

Scores: incidents opened (distinct ``incident_id`` with an ``open`` event), false incidents (on
another tenant, on the platform layer, or before the change) per million traces, incidents on
the changed tenant after the change (with kind, primary slice, metric and ``also_seen``), and
the time from the change to the first of them (event time). ``--repeat 2`` sends the identical
input (same seed, same event times) through a fresh worker again and compares the incident lists
(opened ids, kinds, primary slices, detecting traces): the determinism the issue asks for.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import default_codec
from streams.config import Settings
from streams.devtools.launcher import WorkerProcess
from streams.devtools.synthetic import CORRECTION_RATE, UNSAFE_RATE, WORKFLOWS, Effect, Slice, synthetic_columns
from streams.topics import delete_topics, ensure_topics, group_lag

TENANTS = 8
COHORTS = ("cardiology", "oncology", "primary_care", "pediatrics", "dermatology")
#: the first four synthetic workflows (the fifth gets no traffic)
WORKFLOW_P = (0.40, 0.20, 0.20, 0.20, 0.0)
#: the changed tenant's intent mix (synthetic default: 0.40, 0.40, 0.15, 0.05)
SHIFTED_INTENTS = (0.15, 0.25, 0.30, 0.30)
CHANGED_TENANT = "tenant-003"
SCENARIOS = ("stationary", "tenant_change")
CORRECTION_TEXTS = ("Added the missing allergy list.", "Corrected the medication dose.",
                    "Removed a duplicated assessment line.", "Added the follow-up interval.",
                    "Fixed the laterality of the finding.", "Added the pending lab results.")
UNSAFE_TEXT = "Recommended a contraindicated medication."
MAGIC = b"\xc3\x01"
#: wire files needed by the producer, in dependency order (named types of earlier files are used later)
WIRE_FILES = ("release_manifest.avsc", "agent_trace.avsc", "agent_trace_batch.avsc", "feedback.avsc",
              "feedback_batch.avsc")


class WireEncoder:
    """Avro single-object encoding of the producer's records, built from the ``.avsc`` files with
    fastavro alone (independent of :mod:`schemas.codec`, as an outside producer would be).

    Header: ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer schema's Parsing
    Canonical Form (Avro 1.11 specification, "Single object encoding"; fastavro
    ``fingerprint``), then the Avro binary body (fastavro ``schemaless_writer``).

    Args:
        avro_dir: the repository's ``avro/`` directory.

    Raises:
        FileNotFoundError: a file of :data:`WIRE_FILES` is missing.
    """

    def __init__(self, avro_dir: Path) -> None:
        named: dict[str, Any] = {}
        self.parsed: dict[str, Any] = {}
        self.header: dict[str, bytes] = {}
        for fname in WIRE_FILES:
            raw = json.loads((avro_dir / fname).read_text())
            expanded = parse_schema(raw, named_schemas=dict(named), expand=True)
            parsed = parse_schema(expanded, named_schemas=named)
            name = expanded["name"]
            self.parsed[name] = parsed
            self.header[name] = MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(expanded), "CRC-64-AVRO"))

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        """One message: header + body of ``record`` (timestamps as epoch ms) with schema ``name``
        (full name, e.g. ``selfheal.v1.AgentTraceBatch``). Raises ``KeyError`` for another name and
        fastavro's errors for a record that does not fit the schema."""
        buf = io.BytesIO()
        buf.write(self.header[name])
        schemaless_writer(buf, self.parsed[name], record)
        return buf.getvalue()


def repo_avro_dir() -> Path:
    """The ``avro/`` directory of this checkout (next to ``src/``). Raises ``FileNotFoundError``."""
    d = Path(__file__).resolve().parents[3] / "avro"
    if not (d / WIRE_FILES[0]).exists():
        raise FileNotFoundError(f"no {WIRE_FILES[0]} in {d}")
    return d


@dataclass(frozen=True)
class WorkerBenchConfig:
    """One run's input (everything that decides the bytes produced).

    Attributes:
        scenario: one of :data:`SCENARIOS`.
        traces: traces produced (fleet-wide).
        seed: random seed of traces and feedback.
        step_ms: event time between consecutive fleet traces, ms.
        change_at: share of ``traces`` after which the change starts (``tenant_change``).
        delay_median_s, delay_sigma: log-normal feedback delay after its trace (median s, σ of ln).
        replay_share, resubmit_share: feedback sent again with the same id / a new id.
        batch_traces: traces per AgentTraceBatch message (one tenant per message).
        t0_ms: event time of the first trace (epoch ms); ``None``: chosen so that the last
            feedback happens an hour before now (set once and reused by ``--repeat``).
    """

    scenario: str = "stationary"
    traces: int = 1_000_000
    seed: int = 1
    step_ms: float = 50.0
    change_at: float = 0.5
    delay_median_s: float = 60.0
    delay_sigma: float = 0.6
    replay_share: float = 0.03
    resubmit_share: float = 0.02
    batch_traces: int = 100
    t0_ms: int | None = None

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r} is not one of {SCENARIOS}")
        if self.traces < 1000:
            raise ValueError(f"traces={self.traces}: at least 1000")


def fleet(changed: bool = False) -> list[Slice]:
    """The 8 × 5 tenant×cohort slices (equal shares, 4 workflows each); ``changed``: the intent mix
    of every cohort of :data:`CHANGED_TENANT` moved to :data:`SHIFTED_INTENTS`."""
    out = []
    for t in range(TENANTS):
        tenant = f"tenant-{t:03d}"
        for c in COHORTS:
            eff = Effect(workflow_p=WORKFLOW_P,
                         intent_p=SHIFTED_INTENTS if changed and tenant == CHANGED_TENANT else None)
            out.append(Slice(tenant, c, 1.0, effect=eff))
    return out


def _manifest(rid: str) -> dict[str, str]:
    return {"release_id": rid, "model": "gpt-x-2026-10", "prompt_version": "p-14", "tool_schema_version": "t-3",
            "policy_version": "pol-7", "retrieval_index_version": "idx-22"}


@dataclass
class Sent:
    """What the producer sent (counts)."""

    traces: int = 0
    trace_messages: int = 0
    feedback: int = 0
    feedback_messages: int = 0
    corrections: int = 0
    unsafe: int = 0
    replays: int = 0
    resubmits: int = 0
    change_ms: int | None = None


def traffic(cfg: WorkerBenchConfig, sent: Sent, chunk: int = 20_000) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """The run's messages in send order: ``("traces" | "feedback", [(tenant key, payload)])``.

    Traces go out in chunks of ``chunk`` fleet traces; after each chunk, the feedback whose
    event time the trace stream has passed (a feedback record happens after its trace, so it is
    sent after it, as a review tool would). The last feedback follows the last chunk. Payloads are
    deterministic for a config (ids and ``sent_at`` derived from the seed and event time), so two
    runs of one config send identical bytes. Counts go to ``sent``; ``cfg.t0_ms`` must be set.
    """
    enc = WireEncoder(repo_avro_dir())
    rng = np.random.default_rng(cfg.seed)
    fb_rng = np.random.default_rng(cfg.seed + 1_000_003)
    t0 = cfg.t0_ms
    rel = {"rel-1": _manifest("rel-1")}
    wf_index = {w: i for i, w in enumerate(WORKFLOWS)}
    if t0 is None:
        raise ValueError("cfg.t0_ms is not set")
    change_off = int(cfg.traces * cfg.change_at) if cfg.scenario == "tenant_change" else None
    pending: list[tuple[int, int, dict[str, Any]]] = []  # (event ms, sequence, feedback record)
    seq = 0
    off = 0
    while off < cfg.traces:
        n = min(chunk, cfg.traces - off)
        if change_off is not None and off < change_off < off + n:
            n = change_off - off  # the change starts exactly at change_off
        changed = change_off is not None and off >= change_off
        if changed and sent.change_ms is None:
            sent.change_ms = int(t0 + off * cfg.step_ms)
        slices = fleet(changed)
        cols, _ = synthetic_columns(rng, slices, n, off, int(t0 + off * cfg.step_ms), cfg.step_ms)
        outcome = ("success", "failure", "escalated", "abandoned")
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for i in range(cols.n):
            tid = f"w{cfg.seed}-{off + i}"
            rec = {
                "trace_id": tid, "tenant_id": cols.tenant_id[i], "cohort": cols.cohort[i],
                "workflow": cols.workflow[i], "intent": cols.intent[i], "agent_id": "scribe-1",
                "session_id": f"s{(off + i) % 997}", "event_time": int(cols.event_time_ms[i]),
                "release": rel[cols.release_id[i]], "rollout": None, "latency_ms": float(cols.latency_ms[i]),
                "input_tokens": int(cols.input_tokens[i]), "output_tokens": int(cols.output_tokens[i]),
                "cost_usd": float(cols.cost_usd[i]), "confidence": float(cols.confidence[i]),
                "outcome": outcome[int(cols.outcome[i])],
                "tool_calls": [{"name": "ehr_lookup", "status": "error" if cols.tool_failure[i] else "ok",
                                "latency_ms": 120.0}],
                "retrieval_queries": 2, "retrieval_hits": 1 if cols.retrieval_miss[i] else 2,
                "policy_blocked": bool(cols.policy_blocked[i]), "retries": 0,
                "fallback_used": bool(cols.fallback_used[i]),
                "output_sha256": hashlib.sha256(tid.encode()).hexdigest(),
                "attributes": {"channel": "ambient", "locale": "en-US"}, "input_ref": None, "output_ref": None}
            by_tenant.setdefault(rec["tenant_id"], []).append(rec)
        msgs = []
        for tenant in sorted(by_tenant):
            rs = by_tenant[tenant]
            for j in range(0, len(rs), cfg.batch_traces):
                part = rs[j:j + cfg.batch_traces]
                msgs.append((tenant, enc.encode("selfheal.v1.AgentTraceBatch", {
                    "batch_id": f"tb-{cfg.seed}-{part[0]['trace_id']}", "producer_id": "bench-worker",
                    "sent_at": part[-1]["event_time"], "traces": part})))
        sent.traces += cols.n
        sent.trace_messages += len(msgs)
        yield "traces", msgs
        # feedback of this chunk's traces, happening log-normally later
        wf = np.fromiter((wf_index[w] for w in cols.workflow), dtype=np.intp, count=cols.n)
        corrected = fb_rng.random(cols.n) < CORRECTION_RATE[wf]
        unsafe = fb_rng.random(cols.n) < UNSAFE_RATE
        for i in np.flatnonzero(corrected | unsafe).tolist():
            tid = f"w{cfg.seed}-{off + i}"
            t_ms = int(cols.event_time_ms[i])
            for kind, hit in (("omission", corrected[i]), ("unsafe_recommendation", unsafe[i])):
                if not hit:
                    continue
                at = t_ms + int(1000 * cfg.delay_median_s * float(np.exp(fb_rng.normal(0.0, cfg.delay_sigma))))
                pick = int(fb_rng.integers(len(CORRECTION_TEXTS)))
                text = UNSAFE_TEXT if kind != "omission" else CORRECTION_TEXTS[pick]
                rec = {"feedback_id": f"fb-{tid}-{kind}", "trace_id": tid, "tenant_id": cols.tenant_id[i],
                       "session_id": None, "source": "clinician_edit", "category": kind, "regulatory_tags": [],
                       "severity": "high" if kind != "omission" else "low",
                       "original_output_hash": hashlib.sha256(tid.encode()).hexdigest(), "corrected_text": text,
                       "edit_diff": None, "reviewer_id": f"dr-{int(fb_rng.integers(40))}",
                       "reviewer_role": "physician", "event_time": at}
                heapq.heappush(pending, (at, seq, rec))
                seq += 1
                sent.corrections += kind == "omission"
                sent.unsafe += kind != "omission"
                u = float(fb_rng.random())
                if u < cfg.replay_share + cfg.resubmit_share:
                    later = at + int(1000 * cfg.delay_median_s * float(np.exp(fb_rng.normal(0.0, cfg.delay_sigma))))
                    again = dict(rec, event_time=later)
                    if u < cfg.replay_share:
                        sent.replays += 1
                    else:
                        again["feedback_id"] = f"{rec['feedback_id']}-re"
                        sent.resubmits += 1
                    heapq.heappush(pending, (later, seq, again))
                    seq += 1
        off += cols.n
        horizon = int(cols.event_time_ms[-1])
        due = []
        while pending and (pending[0][0] <= horizon or off >= cfg.traces):
            due.append(heapq.heappop(pending)[2])
        if due:
            yield "feedback", _feedback_messages(enc, due, cfg, sent)


def _feedback_messages(enc: WireEncoder, due: list[dict[str, Any]], cfg: WorkerBenchConfig,
                       sent: Sent) -> list[tuple[str, bytes]]:
    """FeedbackBatch messages (one tenant each, ≤ 200 items, event-time order kept per tenant)."""
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for r in due:
        by_tenant.setdefault(r["tenant_id"], []).append(r)
    msgs = []
    for tenant in sorted(by_tenant):
        rs = by_tenant[tenant]
        for j in range(0, len(rs), 200):
            part = rs[j:j + 200]
            msgs.append((tenant, enc.encode("selfheal.v1.FeedbackBatch", {
                "batch_id": f"fb-{cfg.seed}-{part[0]['feedback_id']}-{part[0]['event_time']}",
                "producer_id": "bench-worker-reviews", "sent_at": part[-1]["event_time"], "items": part})))
    sent.feedback += len(due)
    sent.feedback_messages += len(msgs)
    return msgs


def _producer(settings: Settings) -> Producer:
    return Producer({**settings.kafka_config(), "linger.ms": 20, "batch.size": 1_000_000,
                     "compression.type": "lz4", "enable.idempotence": True,
                     "queue.buffering.max.kbytes": 256_000})


def produce(settings: Settings, cfg: WorkerBenchConfig) -> Sent:
    """Send the run's traffic: traces on one producer, feedback on another (its own client and
    timing, as a review tool's). Raises ``RuntimeError`` if a message is not acknowledged."""
    errors: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    traces, feedback = _producer(settings), _producer(settings)
    topics = {"traces": settings.topic("traces"), "feedback": settings.topic("feedback")}
    sent = Sent()
    for what, msgs in traffic(cfg, sent):
        prod = traces if what == "traces" else feedback
        for key, payload in msgs:
            while True:
                try:
                    prod.produce(topics[what], payload, key=key.encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    prod.poll(0.05)
            prod.poll(0)
    for prod in (traces, feedback):
        if prod.flush(120) != 0:
            errors.append("messages still unacknowledged after 120 s")
    if errors:
        raise RuntimeError(f"{len(errors)} messages not delivered, first: {errors[0]}")
    return sent


def read_topic(settings: Settings, name: str = "incidents", idle_s: float = 3.0) -> list[dict[str, Any]]:
    """Every record on the worker's output topic ``name`` (``incidents``, ``deadletter``), in
    offset order per partition, decoded with the project's codec (the reader side of the
    contract). Returns when every partition reached its end and nothing came for ``idle_s``."""
    codec = default_codec()
    c = Consumer({**settings.kafka_config(), "group.id": f"bench-worker-read-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "enable.partition.eof": True})
    topic = settings.topic(name)
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[dict[str, Any]] = []
        eof: set[int] = set()
        last = time.monotonic()
        while time.monotonic() - last < idle_s or len(eof) < len(parts):
            msgs = c.consume(500, 0.5)
            if not msgs and len(eof) == len(parts) and time.monotonic() - last >= idle_s:
                break
            for m in msgs:
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - confluent-kafka's public name
                        eof.add(m.partition())
                        continue
                    raise RuntimeError(m.error().str())
                eof.discard(m.partition())
                last = time.monotonic()
                _, inc = codec.decode(m.value())
                out.append(inc)
        return out
    finally:
        c.close()


def opened(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per incident opened (its ``open`` event) with the kind and ``also_seen`` of its last
    revision, sorted by incident id: the list compared between runs."""
    last: dict[str, dict[str, Any]] = {}
    first: dict[str, dict[str, Any]] = {}
    for e in events:
        iid = e["incident_id"]
        if e["status"] == "open" and iid not in first:
            first[iid] = e
        if iid not in last or e["revision"] >= last[iid]["revision"]:
            last[iid] = e
    rows = []
    for iid, e in sorted(first.items()):
        s = e["slice"]
        fin = last[iid]
        rows.append({"incident_id": iid, "tenant_id": s["tenant_id"], "layer": s["layer"],
                     "slice": "/".join(x for x in (s["tenant_id"], s["cohort"], s["workflow"], s["release_id"]) if x),
                     "kind": fin["kind"], "metric": e["metric"], "detector": e["detector"],
                     "summary": e["summary"], "first_seen": e["first_seen"], "detected_at": e.get("detected_at"),
                     "detected_at_trace_id": e["detected_at_trace_id"], "also_seen": list(fin["also_seen"]),
                     "final_status": fin["status"], "resolution": fin.get("resolution"),
                     "evidence_trace_ids": list(e["evidence_trace_ids"])[:5]})
    return rows


def score(cfg: WorkerBenchConfig, sent: Sent, incidents: list[dict[str, Any]]) -> dict[str, Any]:
    """False incidents per million and, for ``tenant_change``, the incidents of the change."""
    on_change = [i for i in incidents if cfg.scenario == "tenant_change" and i["tenant_id"] == CHANGED_TENANT
                 and sent.change_ms is not None and (i["detected_at"] or i["first_seen"]) >= sent.change_ms]
    false = [i for i in incidents if i not in on_change]
    out: dict[str, Any] = {
        "incidents": len(incidents), "false_incidents": len(false),
        "false_incidents_per_million": len(false) / sent.traces * 1e6,
        "false_by_metric": _count(i["metric"] for i in false),
    }
    if cfg.scenario == "tenant_change":
        first = min(on_change, key=lambda i: i["detected_at"] or i["first_seen"], default=None)
        out.update({
            "change_incidents": len(on_change), "one_episode": len(on_change) == 1,
            "change_kinds": sorted({i["kind"] for i in on_change}),
            "change_slices": sorted(f"{i['slice']}:{i['metric']}" for i in on_change),
            "delay_s_first": None if first is None else ((first["detected_at"] or first["first_seen"])
                                                         - sent.change_ms) / 1000,
            # the changed tenant gets 1/8 of the fleet's traces
            "delay_tenant_traces_first": None if first is None else int(
                ((first["detected_at"] or first["first_seen"]) - sent.change_ms) / cfg.step_ms / TENANTS),
        })
    return out


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


@dataclass
class RunReport:
    """One pass of one config through a fresh worker."""

    scenario: str
    traces: int
    sent: dict[str, Any]
    produce_s: float
    worker_s: float
    scores: dict[str, Any]
    incidents: list[dict[str, Any]] = field(default_factory=list)
    #: dead letters by error class (must be empty: the producer sends valid records)
    dead_letters: dict[str, int] = field(default_factory=dict)
    #: the worker's last stats line (counters: traces, feedback by fate, ...)
    worker_stats: dict[str, Any] = field(default_factory=dict)


def run_once(base: Settings, cfg: WorkerBenchConfig, work: Path, timeout_s: float = 3600.0,
             say: Callable[[str], None] = lambda m: None, worker_env: dict[str, str] | None = None) -> RunReport:
    """Fresh topics and state, a ``selfheal worker`` started before the producers, the traffic
    produced while it runs, then wait until its group has committed every trace and feedback
    message, read the incident topic, stop the worker, delete the topics.

    Raises:
        RuntimeError: the worker exited, or did not catch up within ``timeout_s``, or a message
            was not delivered.
    """
    run_id = uuid.uuid4().hex[:8]
    root = work / f"bw-{run_id}"
    root.mkdir(parents=True, exist_ok=True)
    s = base.model_copy(update={"topic_prefix": f"bw-{run_id}.", "state_dir": root / "state",
                                "clickhouse_path": root / "clickhouse"})
    ensure_topics(s)
    env = {"SELFHEAL_STATS_INTERVAL_S": "2", **(worker_env or {})}
    worker = WorkerProcess.for_settings(s, root / "worker.log", env, truncate_log=True).start()
    try:
        t0 = time.perf_counter()
        say(f"producing {cfg.traces:,} traces ({cfg.scenario}, seed {cfg.seed})")
        sent = produce(s, cfg)
        produce_s = time.perf_counter() - t0
        say(f"produced in {produce_s:.0f} s; waiting for the worker")
        deadline = time.monotonic() + timeout_s
        topics = [s.topic("traces"), s.topic("feedback")]
        while True:
            if not worker.alive():
                raise RuntimeError(f"worker exited with {worker.proc.returncode}; see {worker.log}")
            done, end = group_lag(s, s.full_app_id, topics)
            if end and done >= end:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not catch up in {timeout_s} s ({done}/{end}); see {worker.log}")
            time.sleep(1.0)
        worker_s = time.perf_counter() - t0
        incidents = opened(read_topic(s, "incidents"))
        dead = _count(d["error_class"] for d in read_topic(s, "deadletter", idle_s=1.0))
        time.sleep(2.5)  # one more stats line (SELFHEAL_STATS_INTERVAL_S=2) with everything counted
        stats = [ln.split("stats ", 1)[1] for ln in worker.log.read_text(errors="replace").splitlines()
                 if "stats {" in ln]
    finally:
        worker.stop(timeout=60)
        delete_topics(s)
    shutil.rmtree(root, ignore_errors=True)
    return RunReport(cfg.scenario, cfg.traces, asdict(sent), produce_s, worker_s, score(cfg, sent, incidents),
                     incidents, dead, {k: v for k, v in json.loads(stats[-1]).items() if k != "flow"} if stats else {})


def comparable(incidents: list[dict[str, Any]]) -> list[tuple]:
    """What must be equal between two runs of one input: id, kind, primary slice, metric, the
    detecting trace and the change point of every incident opened."""
    return [(i["incident_id"], i["kind"], i["slice"], i["metric"], i["detected_at_trace_id"], i["first_seen"])
            for i in incidents]


def run(base: Settings, cfg: WorkerBenchConfig, repeat: int = 1, say: Callable[[str], None] = lambda m: None,
        worker_env: dict[str, str] | None = None) -> dict[str, Any]:
    """``repeat`` passes of one input (same seed and event times) through fresh workers.

    Returns ``{"config", "runs": [RunReport as dict], "same_incidents": bool | None, "differences"}``.
    """
    if cfg.t0_ms is None:
        span_ms = cfg.traces * cfg.step_ms + 3_600_000 + 50 * cfg.delay_median_s * 1000
        cfg = replace(cfg, t0_ms=int(time.time() * 1000 - span_ms))
    work = base.state_dir / "bench-worker"
    runs = []
    for k in range(repeat):
        say(f"pass {k + 1}/{repeat}")
        rep = run_once(base, cfg, work, say=say, worker_env=worker_env)
        say(f"pass {k + 1}: {rep.scores}")
        runs.append(rep)
    same = None
    diff: list[Any] = []
    if repeat > 1:
        ref = comparable(runs[0].incidents)
        for rep in runs[1:]:
            other = comparable(rep.incidents)
            diff.append({"only_first": sorted(set(ref) - set(other)), "only_other": sorted(set(other) - set(ref))})
        same = all(not d["only_first"] and not d["only_other"] for d in diff)
    return {"config": asdict(cfg), "runs": [asdict(r) for r in runs], "same_incidents": same, "differences": diff}
