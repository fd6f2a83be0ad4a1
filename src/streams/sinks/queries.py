"""ClickHouse sink, the read side: queries that can only return one tenant's rows
(:class:`TenantQueries`, from :meth:`streams.sinks.clickhouse.ClickHouseSink.for_tenant`), the
trace-reference lookup the worker joins feedback with, and the release scorecard query.

Every query binds its values as parameters (``{name:Type}``); none is formatted into SQL text.
On a ClickHouse server the row policies in ``deploy/clickhouse/`` enforce the same tenant scope.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streams.errors import TenantScopeError
from streams.processors.feedback.traces import TRACE_REF_COLUMNS

if TYPE_CHECKING:  # the sink imports this module; the reverse is for type hints only
    from streams.sinks.clickhouse import ClickHouseSink

#: tenant slug, matched with fullmatch (``$`` alone would accept a trailing newline)
TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: the ``traces`` table expression of each trace-reference column (TRACE_REF_COLUMNS, the feedback
#: join of older traces); the SELECT below is generated in the order of that tuple
_TRACE_REF_SQL = {
    "trace_id": "trace_id", "cohort": "cohort", "workflow": "workflow", "release_id": "release_id",
    "partition": "source_partition", "session_id": "session_id", "event_time_ms": "toUnixTimestamp64Milli(event_time)",
    "tool": "arrayFirst((n, s) -> s != 'ok', tool_names, tool_statuses)", "rollout_arm": "rollout_arm",
    "candidate_release_id": "candidate_release_id", "stage_pct": "rollout_stage_pct", "offset": "source_offset",
}
TRACE_REFS_QUERY = ("SELECT " + ", ".join(_TRACE_REF_SQL[c] for c in TRACE_REF_COLUMNS)
                    + " FROM {db}.traces WHERE tenant_id = {tenant:String} AND trace_id IN {ids:Array(String)}")


class TenantQueries:
    """Read helpers that can only return one tenant's rows.

    Every query binds ``tenant_id`` as a parameter (``{tenant:String}``) in its WHERE clause; no
    value is ever formatted into SQL text, and the other arguments are bound and type-checked too.
    The tenant id must be a tenant slug (``[a-z0-9][a-z0-9_-]{0,62}``, whole string): anything else
    (quotes, NUL, newlines, look-alike Unicode letters, over-long ids) is refused before a query
    runs. On a ClickHouse server, the row policies in ``deploy/clickhouse/`` enforce the same
    isolation for analysts who query directly (docs/reliability.md).

    Raises:
        TenantScopeError: invalid tenant id, or an argument of the wrong type or range.
    """

    MAX_LIMIT = 10_000
    MAX_IDS = 100_000

    def __init__(self, sink: ClickHouseSink, tenant_id: str) -> None:
        if not isinstance(tenant_id, str) or not TENANT_RE.fullmatch(tenant_id):
            raise TenantScopeError(f"tenant_id={tenant_id!r:.80} is not a valid tenant slug ({TENANT_RE.pattern})")
        self.sink = sink
        self.tenant_id = tenant_id

    def _q(self, sql: str, **params: Any) -> list[tuple]:
        return self.sink.query(sql, {"tenant": self.tenant_id, **params})

    @classmethod
    def _limit(cls, limit: int) -> int:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= cls.MAX_LIMIT:
            raise TenantScopeError(f"limit={limit!r:.40} must be an int in 1..{cls.MAX_LIMIT}")
        return limit

    @staticmethod
    def _text(name: str, value: str | None) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > 256:
            raise TenantScopeError(f"{name}={value!r:.40} must be a string of at most 256 characters")
        return value

    def incidents(self, status: str | None = None, limit: int = 100) -> list[tuple]:
        """Latest revision of this tenant's incidents, newest first: ``[(incident_id, status, kind,
        layer, cohort, workflow, metric, baseline, observed, severity, action, release_id, summary)]``."""
        return self._q(
            "SELECT incident_id, status, kind, layer, cohort, workflow, metric, baseline, observed, severity, "
            "action, release_id, summary FROM {db}.incidents FINAL WHERE tenant_id = {tenant:String} "
            "AND ({status:String} = '' OR status = {status:String}) ORDER BY last_seen DESC LIMIT {limit:UInt32}",
            status=self._text("status", status), limit=self._limit(limit))

    def trace_count(self, cohort: str | None = None) -> int:
        """Distinct traces of this tenant (optionally one cohort)."""
        return self._q(
            "SELECT count() FROM {db}.traces FINAL WHERE tenant_id = {tenant:String} "
            "AND ({cohort:String} = '' OR cohort = {cohort:String})", cohort=self._text("cohort", cohort))[0][0]

    def scorecards(self, release_id: str) -> tuple[list[tuple], list[tuple]]:
        """This tenant's current verdicts of ``release_id`` (highest revision per scorecard) and
        their scorecards.

        Returns:
            ``(verdicts, metrics)``: verdict rows ``(verdict_id, revision, tenant_id, cohort,
            workflow, arm, stage_pct, verdict, risk_class, guardrail_fired, reason,
            samples_control, samples_candidate, exposure, emitted_at)`` ordered by cohort,
            workflow, arm; metric rows ``(verdict_id, metric, role, status, unit, control,
            candidate, delta, ci_low, ci_high, p_value, samples_control, samples_candidate)``.
        """
        return release_scorecards(self.sink, self._text("release_id", release_id), self.tenant_id)

    def golden_set(self, since_ms: int, until_ms: int, cohort: str | None = None, release_id: str | None = None,
                   include_lost: bool = False) -> list[dict[str, Any]]:
        """This tenant's corrections joined to their trace's release manifest (``v_golden_set``),
        for traces with ``since_ms <= trace event time < until_ms`` (epoch ms), optionally one
        cohort and release; corrections that lost a conflict only with ``include_lost``.
        Deterministic order: trace event time, trace id, dedup key. Returns dicts by column name.

        Raises:
            TenantScopeError: a non-int time bound or an over-long cohort / release id.
        """
        sql = ("SELECT * FROM {db}.v_golden_set WHERE tenant_id = {tenant:String} "
               "AND trace_event_time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
               "AND trace_event_time < fromUnixTimestamp64Milli({until:Int64}, 'UTC') "
               "AND ({cohort:String} = '' OR cohort = {cohort:String}) "
               "AND ({release:String} = '' OR release_id = {release:String}) "
               "AND ({include_lost:Bool} OR usable) "
               "ORDER BY trace_event_time, trace_id, dedup_key")
        for name, v in (("since_ms", since_ms), ("until_ms", until_ms)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TenantScopeError(f"{name}={v!r:.40} must be an int (epoch ms)")
        params = {"tenant": self.tenant_id, "since": since_ms, "until": until_ms,
                  "cohort": self._text("cohort", cohort), "release": self._text("release_id", release_id),
                  "include_lost": bool(include_lost)}
        return self.sink.query_dicts(sql, params)

    def content_refs(self, trace_ids: Sequence[str]) -> dict[str, dict[str, dict[str, str | None] | None]]:
        """Input and original-output references of this tenant's traces among ``trace_ids``
        (migration 0041): ``{trace_id: {"input_ref": {uri, text, sha256} | None, "output_ref": ...}}``,
        parts ``None`` where empty, a reference ``None`` when it has no part."""
        ids = list(trace_ids)
        if len(ids) > self.MAX_IDS or not all(isinstance(t, str) for t in ids):
            raise TenantScopeError(f"trace_ids must be at most {self.MAX_IDS} strings")
        if not ids:
            return {}
        rows = self._q("SELECT trace_id, input_ref_uri, input_ref_text, input_ref_sha256, output_ref_uri, "
                       "output_ref_text, output_ref_sha256 FROM {db}.traces FINAL WHERE tenant_id = {tenant:String} "
                       "AND trace_id IN {ids:Array(String)}", ids=ids)

        def ref(uri: str, text: str, sha: str) -> dict[str, str | None] | None:
            return {"uri": uri or None, "text": text or None, "sha256": sha or None} if uri or text or sha else None

        return {r[0]: {"input_ref": ref(*r[1:4]), "output_ref": ref(*r[4:7])} for r in rows}

    def feedback(self, limit: int = 100) -> list[tuple]:
        """This tenant's unique corrections (FINAL), newest first: ``[(feedback_id, trace_id, category,
        severity, source, release_id, corrected_text)]`` (text redacted at ingest)."""
        return self._q(
            "SELECT feedback_id, trace_id, category, severity, source, release_id, corrected_text "
            "FROM {db}.feedback FINAL WHERE tenant_id = {tenant:String} ORDER BY event_time DESC LIMIT {limit:UInt32}",
            limit=self._limit(limit))

    def dead_letters(self, limit: int = 100) -> list[tuple]:
        """This tenant's rejected records, newest first: ``[(dead_letter_id, source_topic, source_partition,
        source_offset, record_index, error_class, field, value, message)]`` (value and message redacted)."""
        return self._q(
            "SELECT dead_letter_id, source_topic, source_partition, source_offset, record_index, error_class, field, "
            "value, message FROM {db}.dead_letters FINAL WHERE tenant_id = {tenant:String} "
            "ORDER BY occurred_at DESC LIMIT {limit:UInt32}", limit=self._limit(limit))

    def trace_refs(self, trace_ids: Sequence[str]) -> list[tuple]:
        """Slice of this tenant's traces among ``trace_ids`` (the feedback join of older traces):
        one row per trace found, columns named by
        :data:`~streams.processors.feedback.traces.TRACE_REF_COLUMNS` (read them with
        ``TraceRef.from_row``); ``tool`` is the first failing tool (``""`` when every call was ok),
        ``rollout_arm`` ``""`` outside a rollout. Ids of other tenants' traces return nothing."""
        ids = list(trace_ids)
        if len(ids) > self.MAX_IDS or not all(isinstance(t, str) for t in ids):
            raise TenantScopeError(f"trace_ids must be at most {self.MAX_IDS} strings")
        if not ids:
            return []
        return self._q(TRACE_REFS_QUERY, ids=ids)

    def stored_traces(self, trace_ids: Sequence[str]) -> list[tuple]:
        """What the duplicate check compares of this tenant's stored traces among ``trace_ids``
        (table ``trace_ids``): rows ``(trace_id, event_time_ms, latency_ms, output_tokens, outcome,
        release_id, source_partition, source_offset)``, one per trace and source position.

        Raises:
            TenantScopeError: more than ``MAX_IDS`` ids, or not strings.
        """
        ids = list(trace_ids)
        if len(ids) > self.MAX_IDS or not all(isinstance(t, str) for t in ids):
            raise TenantScopeError(f"trace_ids must be at most {self.MAX_IDS} strings")
        if not ids:
            return []
        if any(ID_SEPARATOR in t for t in ids):  # never in practice; the slower general form
            return self._q(STORED_TRACES_QUERY.format(ids="{ids:Array(String)}"), ids=ids)
        return self._q(STORED_TRACES_QUERY.format(ids=STORED_TRACES_JOINED), ids=ID_SEPARATOR.join(ids))


#: the duplicate check's lookup (TenantQueries.stored_traces), on the id-ordered ``trace_ids`` table;
#: ``{ids}`` is the set expression
STORED_TRACES_QUERY = (
    "SELECT trace_id, toUnixTimestamp64Milli(event_time), latency_ms, output_tokens, outcome, release_id, "
    "source_partition, source_offset FROM {{db}}.trace_ids WHERE tenant_id = {{tenant:String}} "
    "AND trace_id IN {ids}")
#: ids bound as one string split by the server: an ``Array(String)`` parameter of 16,384 ids took
#: 263 ms against 65 ms for this form (chDB, same load; scripts/trace_lookup_cost.py)
ID_SEPARATOR = "\x1f"  # ASCII unit separator
STORED_TRACES_JOINED = "(SELECT arrayJoin(splitByChar('\\x1f', {ids:String})))"


def stored_traces_by_tenant(sink: ClickHouseSink, ids: dict[str, Sequence[str]]) -> dict[str, list[tuple]]:
    """The duplicate check's lookup for a whole batch: ``{tenant: [trace_id]}`` → ``{tenant: rows}``,
    rows as :meth:`TenantQueries.stored_traces` returns them, in one query per ``MAX_IDS`` ids
    instead of one per tenant. Each row is returned only under the tenant that asked for its id
    (the query reads ``tenant IN asked AND trace_id IN asked``; pairs nobody asked for are
    dropped here), so no tenant sees another's rows. Measured on embedded chDB (300,000 stored
    ids of 100 tenants, batches of 64 tenants x 256 new ids): 34 CPU-ms per batch against 230 for
    one query per tenant; in the worker the per-tenant lookups were 16 % of its CPU (py-spy,
    BENCHMARKS.md issue 16).

    Raises:
        TenantScopeError: a tenant that is not a tenant slug, or an id that is not a string.
    """
    for tenant, tids in ids.items():
        if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
            raise TenantScopeError(f"tenant_id={tenant!r:.80} is not a tenant slug")
        if not all(isinstance(t, str) for t in tids):
            raise TenantScopeError(f"trace_ids of tenant {tenant} must be strings")
    asked = {(tenant, tid) for tenant, tids in ids.items() for tid in tids}
    pairs = sorted(asked)
    out: dict[str, list[tuple]] = {}
    for lo in range(0, len(pairs), TenantQueries.MAX_IDS):
        chunk = pairs[lo:lo + TenantQueries.MAX_IDS]
        tenants = sorted({t for t, _ in chunk})
        tids = [i for _, i in chunk]
        if any(ID_SEPARATOR in t for t in tids):  # never in practice; the slower general form
            sql, bound = STORED_TRACES_BATCH_QUERY.format(ids="{ids:Array(String)}"), tids
        else:
            sql, bound = STORED_TRACES_BATCH_QUERY.format(ids=STORED_TRACES_JOINED), ID_SEPARATOR.join(tids)
        for tenant, *row in sink.query(sql, {"tenants": tenants, "ids": bound}):
            if (tenant, row[0]) in asked:
                out.setdefault(tenant, []).append(tuple(row))
    return out


#: :func:`stored_traces_by_tenant`'s query: ``STORED_TRACES_QUERY`` for a set of tenants, tenant first
STORED_TRACES_BATCH_QUERY = (
    "SELECT tenant_id, trace_id, toUnixTimestamp64Milli(event_time), latency_ms, output_tokens, outcome, "
    "release_id, source_partition, source_offset FROM {{db}}.trace_ids "
    "WHERE tenant_id IN {{tenants:Array(String)}} "
    "AND trace_id IN {ids}")


def release_scorecards(sink: ClickHouseSink, release_id: str, tenant: str) -> tuple[list[tuple], list[tuple]]:
    """Latest verdicts of ``release_id`` (``tenant = ''``: every tenant) and their metric rows:
    ``(verdict rows, scorecard metric rows)``, columns as :meth:`TenantQueries.scorecards` lists them.
    The caller scopes ``tenant``; tenant-facing code goes through :class:`TenantQueries`."""
    params = {"tenant": tenant, "release": release_id}
    latest = ("SELECT tenant_id, verdict_id, max(revision) FROM {db}.rollout_verdicts FINAL "
              "WHERE ({tenant:String} = '' OR tenant_id = {tenant:String}) AND release_id = {release:String} "
              "GROUP BY tenant_id, verdict_id")
    verdicts = sink.query(
        "SELECT verdict_id, revision, tenant_id, cohort, workflow, arm, stage_pct, verdict, risk_class, "
        "guardrail_fired, reason, samples_control, samples_candidate, exposure, emitted_at "
        "FROM {db}.rollout_verdicts FINAL WHERE ({tenant:String} = '' OR tenant_id = {tenant:String}) "
        f"AND release_id = {{release:String}} AND (tenant_id, verdict_id, revision) IN ({latest}) "
        "ORDER BY tenant_id, cohort, workflow, arm", params)
    metrics = sink.query(
        "SELECT verdict_id, metric, role, status, unit, control, candidate, delta, ci_low, ci_high, p_value, "
        "samples_control, samples_candidate FROM {db}.rollout_scorecards FINAL "
        "WHERE ({tenant:String} = '' OR tenant_id = {tenant:String}) AND release_id = {release:String} "
        f"AND (tenant_id, verdict_id, revision) IN ({latest})", params)
    return verdicts, metrics
