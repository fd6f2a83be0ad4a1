"""Offline replay: recorded traces and feedback through the in-process :class:`~streams.pipeline.Pipeline`
with the current and with candidate settings, and the scorecard of what changes (``selfheal replay``).

A change to detectors, thresholds or layers is proven on recorded traffic before shadow and
canary. The recorded traffic is read from ClickHouse, where the worker stored it:

- **traces** (``traces`` FINAL, one row per trace id) are rebuilt as the pipeline's input: one
  ``AgentTraceBatch`` Avro message per original Kafka message (``source_partition``,
  ``source_offset``), encoded with the current contract and decoded again by the pipeline's own ingest;
- **feedback**: every submission (``feedback_submissions`` FINAL) with its correction's fields
  (``feedback`` FINAL by ``dedup_key``: category, severity, tags, redacted text, reviewer hash),
  one ``FeedbackBatch`` per original message, records in their original index order.

Order: the worker's own batches, in the order it processed them: every stored trace and
submission carries ``batch_seq`` (the pipeline's processing sequence number of its batch) and
``batch_pos`` (its position in the batch), migration 0040. That matters: the label-delayed
Poisson CUSUMs step once per batch and a new release is cut at batch boundaries, so the same
records in other batches can alarm a few traces earlier or later (measured on the recorded test
run: 64-message batches moved the latency incident by 140 traces and lost a correction-rate
incident). Rows stored before that migration (``batch_seq = 0``) replay first, approximately:
each partition's messages in offset order (the per-slice replay guard counts a lower offset as
a redelivery), partitions merged by the running maximum of their event times, a feedback
message after the trace messages up to its event time (as the worker's join wait orders them),
consecutive trace messages in batches of ``take_max_messages``. The ingest's event-time window
is checked against each batch's own latest event time, not the wall clock, so old recordings
replay.

Reference: the incidents the production worker emitted (``incidents`` FINAL) whose tenant was
replayed and that were first seen in the range. A replay with unchanged settings from the start
of the recording reproduces them (tests/integration/test_replay.py); a replay that starts later
starts from empty baselines and will differ until they warm up.

Matching (:func:`compare`): the same ``incident_id`` (slice at opening, metric group, episode) is
the same incident; it *moved* when its kind, slice, release, metric or the trace it was
detected at changed (delay in traces of its tenant, positive = later). Unmatched incidents of the same
tenant and metric group whose slices overlap (cohort, workflow and release equal or unspecified
on one side) are paired by nearest first-seen time as moved; the rest *appeared* or *disappeared*.

False positives: when the store has an ``incident_actions`` table (operator actions on
incidents), incidents labelled false positive there are counted as avoided (gone in the
candidate) or kept; without the table the scorecard says so.

Deterministic: no wall-clock value enters the processing or the result; the same store, range
and settings give the same :class:`ReplayResult` (and byte-identical JSON) twice, also across
processes with different hash seeds.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from schemas import Incident
from schemas.codec import AvroCodec, default_codec
from streams.config import Settings
from streams.errors import ConfigError
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.processors.feedback import TraceRef
from streams.sinks.clickhouse import ClickHouseSink
from streams.state import DictBackend

TRACE_BATCH = "selfheal.v1.AgentTraceBatch"
FEEDBACK_BATCH = "selfheal.v1.FeedbackBatch"
#: labels of ``incident_actions`` rows that mark an incident as a false positive (the action
#: ``mark_false_positive`` of agent.incident-actions.v1, and looser labels of hand-made tables)
FALSE_POSITIVE_LABELS = ("mark_false_positive", "false_positive", "false-positive", "fp")
#: settings that change nothing in a replay (connections, worker plumbing): not listed as changed
_PLUMBING = ("kafka_", "clickhouse_", "topic_prefix", "app_id", "state_dir", "web_", "faust_", "stats_",
             "shutdown_", "sink_retry", "changelog_", "commit_", "broker_", "partitions", "replication")

_TRACE_COLUMNS = (
    "tenant_id, cohort, workflow, toUnixTimestamp64Milli(event_time) AS event_ms, trace_id, intent, agent_id, "
    "session_id, release_id, model, prompt_version, tool_schema_version, policy_version, retrieval_index_version, "
    "rollout_arm, rollout_stage_pct, candidate_release_id, latency_ms, input_tokens, output_tokens, cost_usd, "
    "confidence, outcome, tool_names, tool_statuses, tool_latency_ms, retrieval_queries, retrieval_hits, "
    "policy_blocked, retries, fallback_used, output_sha256, attributes, source_partition, source_offset, batch_seq, "
    "batch_pos, input_ref_uri, input_ref_text, input_ref_sha256, output_ref_uri, output_ref_text, output_ref_sha256")
_RANGE = ("({all_tenants:Bool} OR tenant_id IN {tenants:Array(String)}) "
          "AND event_time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
          "AND event_time < fromUnixTimestamp64Milli({until:Int64}, 'UTC')")
TRACES_QUERY = (f"SELECT {_TRACE_COLUMNS} FROM {{db}}.traces FINAL WHERE {_RANGE} "
                "ORDER BY batch_seq, batch_pos, source_partition, source_offset, event_time, trace_id")
FEEDBACK_QUERY = (
    "SELECT s.source_partition AS partition, s.source_offset AS offset, s.record_index AS record_index, "
    "s.batch_seq AS batch_seq, s.batch_pos AS batch_pos, s.feedback_id AS feedback_id, s.trace_id AS trace_id, "
    "s.tenant_id AS tenant_id, s.category AS category, "
    "toUnixTimestamp64Milli(s.event_time) AS event_ms, f.session_id AS session_id, f.source AS source, "
    "f.regulatory_tags AS regulatory_tags, f.severity AS severity, f.original_output_hash AS original_output_hash, "
    "f.corrected_text AS corrected_text, f.edit_diff AS edit_diff, f.reviewer_id_hash AS reviewer_id, "
    "f.reviewer_role AS reviewer_role, f.dedup_key != '' AS joined "
    "FROM (SELECT * FROM {db}.feedback_submissions FINAL WHERE "
    + _RANGE + ") AS s LEFT JOIN (SELECT * FROM {db}.feedback FINAL WHERE " + _RANGE.split(" AND ")[0]
    + ") AS f ON s.tenant_id = f.tenant_id AND s.dedup_key = f.dedup_key "
    "ORDER BY batch_seq, batch_pos, partition, offset, record_index")
INCIDENTS_QUERY = (
    "SELECT incident_id, tenant_id, status, kind, layer, cohort, workflow, slice_release_id, metric_group, metric, "
    "release_id, severity, detected_at_trace_id, toUnixTimestamp64Milli(first_seen) AS first_seen_ms "
    "FROM {db}.incidents FINAL WHERE ({all_tenants:Bool} OR tenant_id IN {tenants:Array(String)}) "
    "AND first_seen >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
    "AND first_seen < fromUnixTimestamp64Milli({until:Int64}, 'UTC') ORDER BY incident_id")


# ---------------------------------------------------------------------------------------- settings
def candidate_settings(base: Settings, env_file: str | None = None, assignments: Sequence[str] = ()) -> Settings:
    """``base`` with the values of an env file (``SELFHEAL_NAME=value`` lines, python-dotenv) and
    then of ``NAME=VALUE`` assignments (``NAME`` a setting, with or without ``SELFHEAL_``, any
    case) applied on top, validated by :class:`Settings` as the environment would be.

    Raises:
        ConfigError: an unreadable env file, an assignment without ``=``, an unknown setting
            name, or a value the setting rejects (the message names the setting and value).
    """
    overrides: dict[str, Any] = {}
    pairs: list[tuple[str, str | None, str]] = []
    if env_file:
        try:
            values = dotenv_values(env_file)
        except OSError as exc:
            raise ConfigError(f"--env-file {env_file}: {exc.strerror}") from None
        pairs += [(k, v, f"{env_file}: {k}") for k, v in values.items()]
    for a in assignments:
        name, sep, value = a.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {a!r}: expected NAME=VALUE, e.g. CUSUM_THRESHOLD=14")
        pairs.append((name.strip(), value.strip(), f"--set {name.strip()}"))
    for name, value, where in pairs:
        key = name.lower().removeprefix("selfheal_")
        if key not in Settings.model_fields:
            raise ConfigError(f"{where}: unknown setting {name!r} (README \"Settings\" lists them)")
        overrides[key] = value
    if not overrides:
        return base
    data = base.model_dump()
    data.update(overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        raise ConfigError(f"SELFHEAL_{loc.upper()}={overrides.get(loc, err.get('input'))!r}: {err['msg']}") from None


def changed_settings(a: Settings, b: Settings) -> dict[str, list[Any]]:
    """Settings that differ between ``a`` and ``b`` and act on processing: ``{name: [a, b]}``
    (connection and worker plumbing left out), sorted by name, values JSON-ready."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    return {k: [da[k], db[k]] for k in sorted(da) if da[k] != db[k] and not k.startswith(_PLUMBING)}


# ---------------------------------------------------------------------------------------- recorded input
@dataclass
class Recorded:
    """Recorded traffic, rebuilt as messages in replay order (see the module docstring).

    Attributes:
        steps: ``("traces" | "feedback", [RawMessage])`` in processing order; trace steps hold up
            to ``batch_messages`` messages.
        traces, feedback: records rebuilt.
        trace_ordinal: trace id → its position among its tenant's replayed traces (0-based), the
            unit of detection delays.
        reference: the production incidents in the range (:class:`IncidentView`).
        false_positive_ids: incidents labelled false positive in ``incident_actions``; ``None``
            when the store has no such table.
        skipped_feedback: submissions whose correction row is missing (not replayed, counted).
    """

    steps: list[tuple[str, list[RawMessage]]]
    traces: int
    feedback: int
    trace_ordinal: dict[str, int]
    reference: list[IncidentView]
    false_positive_ids: set[str] | None
    skipped_feedback: int = 0


@dataclass(frozen=True, order=True)
class IncidentView:
    """What the scorecard compares of an incident (its latest revision)."""

    incident_id: str
    tenant_id: str
    metric_group: str
    kind: str
    layer: str
    cohort: str
    workflow: str
    slice_release_id: str
    release_id: str
    metric: str
    severity: str
    status: str
    detected_at_trace_id: str
    first_seen_ms: int

    @classmethod
    def from_incident(cls, inc: Incident) -> IncidentView:
        """The view of an incident event."""
        s = inc.slice
        return cls(inc.incident_id, s.tenant_id or "", inc.metric_group, inc.kind.value, s.layer, s.cohort or "",
                   s.workflow or "", s.release_id or "", inc.release_id or "", inc.metric, inc.severity.value,
                   inc.status.value, inc.detected_at_trace_id, int(inc.first_seen.timestamp() * 1000))

    @property
    def slice(self) -> str:
        """``layer tenant/cohort/workflow@release`` for display."""
        parts = "/".join(x for x in (self.tenant_id, self.cohort, self.workflow) if x)
        return f"{self.layer} {parts}" + (f"@{self.slice_release_id}" if self.slice_release_id else "")


def _trace_record(r: dict[str, Any]) -> dict[str, Any]:
    """A ``traces`` row back as the ``AgentTrace`` record the producer sent (redacted attributes)."""
    arm = r["rollout_arm"]
    return {
        "trace_id": r["trace_id"], "tenant_id": r["tenant_id"], "cohort": r["cohort"], "workflow": r["workflow"],
        "intent": r["intent"] or None, "agent_id": r["agent_id"], "session_id": r["session_id"],
        "event_time": int(r["event_ms"]),
        "release": {"release_id": r["release_id"], "model": r["model"], "prompt_version": r["prompt_version"],
                    "tool_schema_version": r["tool_schema_version"], "policy_version": r["policy_version"],
                    "retrieval_index_version": r["retrieval_index_version"]},
        "rollout": {"arm": arm, "stage_pct": float(r["rollout_stage_pct"]),
                    "candidate_release_id": r["candidate_release_id"]} if arm else None,
        "latency_ms": float(r["latency_ms"]), "input_tokens": int(r["input_tokens"]),
        "output_tokens": int(r["output_tokens"]), "cost_usd": float(r["cost_usd"]),
        "confidence": None if r["confidence"] is None else float(r["confidence"]), "outcome": r["outcome"],
        "tool_calls": [{"name": n, "status": s, "latency_ms": float(lat)}
                       for n, s, lat in zip(r["tool_names"], r["tool_statuses"], r["tool_latency_ms"], strict=True)],
        "retrieval_queries": int(r["retrieval_queries"]), "retrieval_hits": int(r["retrieval_hits"]),
        "policy_blocked": bool(r["policy_blocked"]), "retries": int(r["retries"]),
        "fallback_used": bool(r["fallback_used"]), "output_sha256": r["output_sha256"] or None,
        "attributes": dict(r["attributes"]),
        **{k: ({p: r[f"{k}_{p}"] or None for p in ("uri", "text", "sha256")}
               if any(r[f"{k}_{p}"] for p in ("uri", "text", "sha256")) else None)
           for k in ("input_ref", "output_ref")},
    }


def _feedback_record(r: dict[str, Any]) -> dict[str, Any]:
    """A submission joined to its correction row back as the ``Feedback`` record (redacted text,
    the reviewer's HMAC as reviewer id: agreement counts stay per distinct reviewer)."""
    return {
        "feedback_id": r["feedback_id"], "trace_id": r["trace_id"], "tenant_id": r["tenant_id"],
        "session_id": r["session_id"] or None, "source": r["source"], "category": r["category"],
        "regulatory_tags": list(r["regulatory_tags"]), "severity": r["severity"],
        "original_output_hash": r["original_output_hash"], "corrected_text": r["corrected_text"] or None,
        "edit_diff": r["edit_diff"] or None, "reviewer_id": r["reviewer_id"] or "unknown",
        "reviewer_role": r["reviewer_role"], "event_time": int(r["event_ms"]),
    }


def _messages(rows: list[dict[str, Any]], part: str, off: str, build: Callable[[dict[str, Any]], dict[str, Any]],
              encode: Callable[[list[dict[str, Any]], int], bytes], topic: str) -> list[tuple[int, RawMessage]]:
    """Rows (ordered so that a message's records are consecutive) grouped back into their Kafka
    messages: ``[(order key ms, RawMessage)]``, the key the running maximum of the partition's
    event times (non-decreasing per partition, so a merge by key keeps offset order)."""
    out: list[tuple[int, RawMessage]] = []
    i, n = 0, len(rows)
    run_max: dict[int, int] = {}
    while i < n:
        p, o = int(rows[i][part]), int(rows[i][off])
        j = i
        while j < n and int(rows[j][part]) == p and int(rows[j][off]) == o:
            j += 1
        recs = [build(r) for r in rows[i:j]]
        t = max(int(r["event_time"]) for r in recs)
        run_max[p] = max(run_max.get(p, t), t)
        out.append((run_max[p], RawMessage(topic, p, o, recs[0]["tenant_id"].encode(), encode(recs, t), t)))
        i = j
    return out


def _merged_steps(tmsgs: list[tuple[int, RawMessage]], fmsgs: list[tuple[int, RawMessage]],
                  limit: int) -> list[tuple[str, list[RawMessage]]]:
    """Steps of rows recorded without ``batch_seq`` (before migration 0040): messages merged by
    event time (a feedback message after the trace messages of its time, as the join wait orders
    them), consecutive trace messages batched up to ``limit``."""
    tagged = heapq.merge(((k, 0, m.partition, m.offset, m) for k, m in tmsgs),
                         ((k, 1, m.partition, m.offset, m) for k, m in fmsgs))
    steps: list[tuple[str, list[RawMessage]]] = []
    for _, kind, _, _, msg in tagged:
        name = "traces" if kind == 0 else "feedback"
        if steps and steps[-1][0] == name and len(steps[-1][1]) < limit:
            steps[-1][1].append(msg)
        else:
            steps.append((name, [msg]))
    return steps


def _recorded_steps(kind: str, rows: list[dict[str, Any]], part: str, off: str,
                    build: Callable[[dict[str, Any]], dict[str, Any]],
                    encode: Callable[[list[dict[str, Any]], int], bytes],
                    topic: str) -> list[tuple[int, str, list[RawMessage]]]:
    """Steps of rows recorded with ``batch_seq``: ``[(batch_seq, kind, messages)]``, the worker's
    own batches (rows ordered by batch_seq, batch_pos)."""
    out: list[tuple[int, str, list[RawMessage]]] = []
    i, n = 0, len(rows)
    while i < n:
        seq = int(rows[i]["batch_seq"])
        j = i
        while j < n and int(rows[j]["batch_seq"]) == seq:
            j += 1
        out.append((seq, kind, [m for _, m in _messages(rows[i:j], part, off, build, encode, topic)]))
        i = j
    return out


def load_recorded(sink: ClickHouseSink, settings: Settings, tenants: Sequence[str], since_ms: int, until_ms: int,
                  codec: AvroCodec | None = None, batch_messages: int | None = None) -> Recorded:
    """Read traces, feedback, production incidents and false-positive labels of ``tenants`` (all
    when empty) with ``since_ms <= event time < until_ms`` (epoch ms) and rebuild the messages.

    Raises:
        TenantScopeError: a tenant id that is not a tenant slug.
        SinkError, clickhouse errors: the store cannot be read.
    """
    for t in tenants:
        sink.for_tenant(t)  # validates the slug (TenantScopeError)
    codec = codec or default_codec()
    params = {"all_tenants": not tenants, "tenants": list(tenants), "since": since_ms, "until": until_ms}
    trace_rows = sink.query_dicts(TRACES_QUERY, params)
    fb_rows = sink.query_dicts(FEEDBACK_QUERY, params)
    skipped = sum(1 for r in fb_rows if not r["joined"])
    fb_rows = [r for r in fb_rows if r["joined"]]

    def trace_batch(recs: list[dict[str, Any]], t: int) -> bytes:
        return codec.encode(TRACE_BATCH, {"batch_id": f"replay-{recs[0]['trace_id']}", "producer_id": "replay",
                                          "sent_at": t, "traces": recs})

    def feedback_batch(recs: list[dict[str, Any]], t: int) -> bytes:
        return codec.encode(FEEDBACK_BATCH, {"batch_id": f"replay-{recs[0]['feedback_id']}",
                                             "producer_id": "replay", "sent_at": t, "items": recs})

    limit = batch_messages or settings.take_max_messages
    legacy_t = sorted((r for r in trace_rows if not r["batch_seq"]),
                      key=lambda r: (r["source_partition"], r["source_offset"], r["event_ms"], r["trace_id"]))
    legacy_f = sorted((r for r in fb_rows if not r["batch_seq"]),
                      key=lambda r: (r["partition"], r["offset"], r["record_index"]))
    steps = _merged_steps(
        _messages(legacy_t, "source_partition", "source_offset", _trace_record, trace_batch, settings.topic("traces")),
        _messages(legacy_f, "partition", "offset", _feedback_record, feedback_batch, settings.topic("feedback")), limit)
    recorded = heapq.merge(
        _recorded_steps("traces", [r for r in trace_rows if r["batch_seq"]], "source_partition", "source_offset",
                        _trace_record, trace_batch, settings.topic("traces")),
        _recorded_steps("feedback", [r for r in fb_rows if r["batch_seq"]], "partition", "offset",
                        _feedback_record, feedback_batch, settings.topic("feedback")), key=lambda x: (x[0], x[1]))
    steps += [(kind, msgs) for _, kind, msgs in recorded]
    # positions in processing order (the order the detectors see), per tenant
    ordinal: dict[str, int] = {}
    per_tenant: dict[str, int] = {}
    by_msg: dict[tuple[int, int], list[str]] = {}
    tenant_of: dict[str, str] = {}
    for r in trace_rows:
        by_msg.setdefault((int(r["source_partition"]), int(r["source_offset"])), []).append(r["trace_id"])
        tenant_of[r["trace_id"]] = r["tenant_id"]
    for name, msgs in steps:
        if name != "traces":
            continue
        for m in msgs:
            for tid in by_msg.pop((m.partition, m.offset), ()):
                t = tenant_of[tid]
                ordinal[tid] = per_tenant.get(t, 0)
                per_tenant[t] = ordinal[tid] + 1
    reference = [IncidentView(**r) for r in sink.query_dicts(INCIDENTS_QUERY, params)]
    return Recorded(steps, len(trace_rows), len(fb_rows), ordinal, sorted(reference),
                    false_positive_labels(sink, tenants), skipped)


def false_positive_labels(sink: ClickHouseSink, tenants: Sequence[str]) -> set[str] | None:
    """Incident ids labelled false positive in ``incident_actions`` (any of its ``label``,
    ``verdict``, ``action`` or ``kind`` columns equal to one of :data:`FALSE_POSITIVE_LABELS`),
    or ``None`` when the store has no such table (the actions feature is not deployed)."""
    if not sink.query("EXISTS TABLE {db}.incident_actions")[0][0]:
        return None
    cols = {r[0] for r in sink.query("SELECT name FROM system.columns WHERE database = {d:String} "
                                     "AND table = 'incident_actions'", {"d": sink.db})}
    label_cols = [c for c in ("label", "verdict", "action", "kind") if c in cols]
    if "incident_id" not in cols or not label_cols:
        return set()
    cond = " OR ".join(f"lower({c}) IN {{labels:Array(String)}}" for c in label_cols)
    scope = ("" if not tenants or "tenant_id" not in cols
             else " AND tenant_id IN {tenants:Array(String)}")
    rows = sink.query(f"SELECT DISTINCT incident_id FROM {{db}}.incident_actions WHERE ({cond}){scope}",
                      {"labels": list(FALSE_POSITIVE_LABELS), "tenants": list(tenants)})
    return {r[0] for r in rows}


# ---------------------------------------------------------------------------------------- running
@dataclass
class RunResult:
    """One replay of the recorded input with one set of settings.

    Attributes:
        incidents: latest revision of every incident the run emitted, sorted by id.
        events: incident events emitted (open, updated, resolved).
        traces, feedback, dead_letters: records processed, feedback rows, dead letters.
        state: detector state size: ``slices`` (rows in the slice store), ``baseline_bytes``,
            ``incident_bytes``, ``feedback_bytes``, ``canary_bytes`` (serialised state, bytes).
    """

    incidents: list[IncidentView]
    events: int
    traces: int
    feedback: int
    dead_letters: int
    state: dict[str, int]


def run(recorded: Recorded, settings: Settings, sink: ClickHouseSink | None = None, codec: AvroCodec | None = None,
        progress: Callable[[int], None] | None = None,
        observe: Callable[[str, Pipeline, list[RawMessage], Any], None] | None = None) -> RunResult:
    """Replay ``recorded`` through a fresh :class:`Pipeline` with ``settings``.

    Args:
        sink: the store the feedback join looks older traces up in (as the worker does); ``None``:
            only traces of the replay join.
        progress: called with the number of messages of each step once it is processed.
        observe: called after each step with its kind (``traces``, ``feedback``), the pipeline,
            its messages and the pipeline's output (:class:`~streams.pipeline.TraceOutput` or
            :class:`~streams.pipeline.FeedbackOutput`); :mod:`streams.report` samples detector
            state this way.
    """
    backends = {k: DictBackend() for k in ("baselines", "incidents", "feedback", "canary")}
    lookup = None
    if sink is not None:
        def lookup(tenant: str, ids: list[str]) -> dict[str, TraceRef]:
            return TraceRef.by_trace_id(tenant, sink.for_tenant(tenant).trace_refs(ids))
    pipe = Pipeline(settings, codec or default_codec(), baselines=backends["baselines"],
                    incidents=backends["incidents"], feedback_state=backends["feedback"], trace_lookup=lookup,
                    canary_state=backends["canary"])
    latest: dict[str, Incident] = {}
    events = traces = feedback = dls = 0
    for kind, msgs in recorded.steps:
        now = max(m.timestamp_ms for m in msgs)
        out: Any
        if kind == "traces":
            out = pipe.on_traces(msgs, now_ms=now)
            traces += out.cols.n if out.cols is not None else 0
        else:
            out = pipe.on_feedback(msgs, decoded=pipe.decode_feedback(msgs, now_ms=now))
            feedback += len(out.rows)
        emitted, dls = out.incidents, dls + len(out.dead_letters)
        for inc in emitted:
            latest[inc.incident_id] = inc
        events += len(emitted)
        pipe.flush_state()
        if observe is not None:
            observe(kind, pipe, msgs, out)
        if progress is not None:
            progress(len(msgs))
    state = {"slices": pipe.engine.store.n,
             **{f"{k.removesuffix('s')}_bytes" if k != "baselines" else "baseline_bytes":
                sum(len(v) for _, v in b.items()) for k, b in backends.items()}}
    return RunResult(sorted(IncidentView.from_incident(i) for i in latest.values()), events, traces, feedback, dls,
                     state)


# ---------------------------------------------------------------------------------------- comparing
@dataclass
class Diff:
    """Differences of incident set ``b`` against reference ``a`` (see the module docstring).

    ``moved`` items: ``{"before", "after", "changed": [field names], "delay_traces": int | None}``.
    """

    same: list[IncidentView] = field(default_factory=list)
    moved: list[dict[str, Any]] = field(default_factory=list)
    appeared: list[IncidentView] = field(default_factory=list)
    disappeared: list[IncidentView] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """True when ``b`` has exactly the incidents of ``a``."""
        return not (self.moved or self.appeared or self.disappeared)


_COMPARED = ("kind", "layer", "cohort", "workflow", "slice_release_id", "release_id", "metric", "detected_at_trace_id")


def _overlap(a: IncidentView, b: IncidentView) -> bool:
    return (a.tenant_id == b.tenant_id and a.metric_group == b.metric_group
            and all(not x or not y or x == y for x, y in ((a.cohort, b.cohort), (a.workflow, b.workflow),
                                                           (a.slice_release_id, b.slice_release_id))))


def compare(a: Iterable[IncidentView], b: Iterable[IncidentView], ordinal: dict[str, int]) -> Diff:
    """Match incidents of ``b`` to reference ``a`` (by id, then by overlapping slice and nearest
    first-seen time); ``ordinal`` maps trace ids to their position in their tenant's traffic
    (delays in traces). Deterministic: inputs are sorted first."""
    a_by = {x.incident_id: x for x in sorted(a)}
    b_by = {x.incident_id: x for x in sorted(b)}
    d = Diff()

    def moved(x: IncidentView, y: IncidentView) -> dict[str, Any]:
        ox, oy = ordinal.get(x.detected_at_trace_id), ordinal.get(y.detected_at_trace_id)
        return {"before": x, "after": y, "changed": [f for f in _COMPARED if getattr(x, f) != getattr(y, f)],
                "delay_traces": None if ox is None or oy is None else oy - ox}

    for iid, x in a_by.items():
        y = b_by.get(iid)
        if y is None:
            continue
        if all(getattr(x, f) == getattr(y, f) for f in _COMPARED):
            d.same.append(y)
        else:
            d.moved.append(moved(x, y))
    left_a = [x for i, x in a_by.items() if i not in b_by]
    left_b = [y for i, y in b_by.items() if i not in a_by]
    for x in left_a:
        cands = [y for y in left_b if _overlap(x, y)]
        if cands:
            y = min(cands, key=lambda y: (abs(y.first_seen_ms - x.first_seen_ms), y.incident_id))
            left_b.remove(y)
            d.moved.append(moved(x, y))
        else:
            d.disappeared.append(x)
    d.appeared = left_b
    return d


@dataclass
class ReplayResult:
    """The scorecard (``selfheal replay``): input counts, the reference, one :class:`RunResult`
    per settings (``current``, ``candidate``), each compared with the reference, and the
    candidate compared with the current run."""

    input: dict[str, int]
    reference: list[IncidentView]
    false_positive_ids: set[str] | None
    changed: dict[str, list[Any]]
    runs: dict[str, RunResult]
    vs_reference: dict[str, Diff]
    candidate_vs_current: Diff

    def false_positives(self) -> dict[str, Any] | None:
        """Reference incidents labelled false positive: ``{"labelled", "avoided", "kept"}`` (ids,
        sorted) for the candidate run, or ``None`` without an ``incident_actions`` table."""
        if self.false_positive_ids is None:
            return None
        cand = {i.incident_id for i in self.runs["candidate"].incidents}
        labelled = sorted(i.incident_id for i in self.reference if i.incident_id in self.false_positive_ids)
        gone = {m["before"].incident_id for m in self.vs_reference["candidate"].moved
                if m["after"].incident_id not in cand}
        return {"labelled": labelled, "avoided": [i for i in labelled if i not in cand or i in gone],
                "kept": [i for i in labelled if i in cand and i not in gone]}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (sorted keys when dumped with ``sort_keys``); no wall-clock values."""
        def diff(d: Diff) -> dict[str, Any]:
            return {"identical": d.identical, "same": len(d.same),
                    "moved": [{"before": asdict(m["before"]), "after": asdict(m["after"]), "changed": m["changed"],
                               "delay_traces": m["delay_traces"]} for m in d.moved],
                    "appeared": [asdict(x) for x in d.appeared], "disappeared": [asdict(x) for x in d.disappeared]}

        return {
            "input": self.input, "changed_settings": self.changed,
            "reference": {"incidents": [asdict(x) for x in self.reference],
                          "actions_table": self.false_positive_ids is not None},
            "runs": {k: {"incidents": len(r.incidents), "incident_events": r.events, "traces": r.traces,
                         "feedback_rows": r.feedback, "dead_letters": r.dead_letters, "state": r.state,
                         "vs_reference": diff(self.vs_reference[k])} for k, r in self.runs.items()},
            "candidate_vs_current": diff(self.candidate_vs_current),
            "false_positives": self.false_positives(),
        }


def replay(sink: ClickHouseSink, current: Settings, candidate: Settings, tenants: Sequence[str], since_ms: int,
           until_ms: int, progress: Callable[[int, int], None] | None = None,
           batch_messages: int | None = None) -> ReplayResult:
    """Load the recorded range once and replay it with ``current`` and ``candidate`` settings.

    Args:
        progress: ``progress(done, total)`` in messages over both runs.
        batch_messages: trace messages per pipeline batch (default ``current.take_max_messages``).

    Raises:
        TenantScopeError: an invalid tenant id.
        ValueError: ``since_ms`` is not before ``until_ms``.
    """
    if since_ms >= until_ms:
        raise ValueError(f"since={since_ms} ms must be before until={until_ms} ms")
    codec = default_codec()
    rec = load_recorded(sink, current, tenants, since_ms, until_ms, codec, batch_messages)
    total = 2 * sum(len(m) for _, m in rec.steps)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    runs = {name: run(rec, s, sink, codec, tick) for name, s in (("current", current), ("candidate", candidate))}
    n_msgs = {k: sum(len(m) for kind, m in rec.steps if kind == k) for k in ("traces", "feedback")}
    return ReplayResult(
        input={"traces": rec.traces, "trace_messages": n_msgs["traces"], "feedback": rec.feedback,
               "feedback_messages": n_msgs["feedback"], "feedback_skipped": rec.skipped_feedback,
               "since_ms": since_ms, "until_ms": until_ms},
        reference=rec.reference, false_positive_ids=rec.false_positive_ids,
        changed=changed_settings(current, candidate), runs=runs,
        vs_reference={k: compare(rec.reference, r.incidents, rec.trace_ordinal) for k, r in runs.items()},
        candidate_vs_current=compare(runs["current"].incidents, runs["candidate"].incidents, rec.trace_ordinal))


def recorded_range(sink: ClickHouseSink, tenants: Sequence[str]) -> tuple[int, int] | None:
    """``(first, last + 1)`` event time of the traces and feedback submissions of ``tenants`` (all
    when empty) in epoch ms, or ``None`` when the store holds no trace of them (the default
    replay range: the whole recording)."""
    where = "WHERE ({all_tenants:Bool} OR tenant_id IN {tenants:Array(String)})"
    params = {"all_tenants": not tenants, "tenants": list(tenants)}
    rows = {table: sink.query(
        "SELECT count(), toUnixTimestamp64Milli(min(event_time)), toUnixTimestamp64Milli(max(event_time)) "
        f"FROM {{db}}.{table} {where}", params)[0] for table in ("traces", "feedback_submissions")}
    if not rows["traces"][0]:
        return None
    spans = [r for r in rows.values() if r[0]]  # min/max of no rows would read 1970
    return min(int(r[1]) for r in spans), max(int(r[2]) for r in spans) + 1
