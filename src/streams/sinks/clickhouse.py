"""ClickHouse sink, the write side: numbered migrations, idempotent arrow inserts (reads: :mod:`streams.sinks.queries`).

Connection: ``SELFHEAL_CLICKHOUSE_URL`` (a real server, ``http(s)://user@host:8123``) or, unset,
embedded chDB through clickhouse-connect (``dsn="chdb:///<state_dir>/clickhouse"``). One process
owns a chDB directory; in embedded mode the worker writes and serves queries.

Idempotence: every table is a ReplacingMergeTree keyed so that a row written twice (redelivery
after a crash, at-least-once) collapses; analysts read with ``FINAL``. The worker acknowledges a
Kafka batch only after its rows are written here (see :mod:`streams.worker.delivery`).

Inserts use ``insert_arrow``, one per table per batch; trace rows are built from the batch's
columns (:func:`trace_table`; rates in BENCHMARKS.md). Failed writes
are retried with exponential backoff (tenacity) while the agent holds the batch, which is the
backpressure: nothing is acknowledged, so nothing is lost, and memory stays bounded by one batch.
:meth:`ClickHouseSink.abort` (worker shutdown) ends a retry loop at once.

Fault injection for tests and ``selfheal chaos`` wraps this sink's ``client`` from outside
(:mod:`streams.worker.faults`); nothing here knows about it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import numpy as np
import pyarrow as pa
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)

from schemas import DeadLetter, Incident, RolloutVerdict
from streams.config import Settings
from streams.errors import ConfigError, SinkError
from streams.processors.columns import ARM_CODES, OUTCOME_CODES, TraceColumns, trace_columns
from streams.sinks.queries import TenantQueries, release_scorecards

log = logging.getLogger(__name__)

MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
TS = pa.timestamp("ms", tz="UTC")
STR_MAP = pa.map_(pa.string(), pa.string())


def safe_url(url: str) -> str:
    """``url`` without user and password (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _scrub(text: str, settings: Settings) -> str:
    """``text`` with the ClickHouse password and URL credentials removed (driver errors may echo them)."""
    if settings.clickhouse_password is not None and settings.clickhouse_password.get_secret_value():
        text = text.replace(settings.clickhouse_password.get_secret_value(), "***")
    if settings.clickhouse_url:
        text = text.replace(settings.clickhouse_url, safe_url(settings.clickhouse_url))
    return text


#: sinks opened in this process and not closed yet: token -> location. A sink dropped without
#: :meth:`ClickHouseSink.close` stays listed: its chDB connection then lives until the garbage
#: collector finds it, possibly until interpreter exit, where an open chDB connection can crash
#: the process (chdb-io/chdb-core #177). The test suite fails on any entry (tests/conftest.py).
_UNCLOSED: dict[int, str] = {}
_UNCLOSED_LOCK = threading.Lock()
_TOKENS = itertools.count()


def _ms_or_none(value: Any) -> int | None:
    """Epoch ms of an optional datetime."""
    return None if value is None else int(value.timestamp() * 1000)


def unclosed_sinks() -> list[str]:
    """Locations (``chdb:///dir`` or a credential-free URL) of the :class:`ClickHouseSink` objects
    opened in this process and not closed, also those garbage-collected without :meth:`~ClickHouseSink.close`;
    in opening order, one entry per sink."""
    with _UNCLOSED_LOCK:
        return [loc for _, loc in sorted(_UNCLOSED.items())]


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with the package: ``[(version, name, sql), ...]`` sorted.

    Raises:
        ConfigError: two migrations share a version number (``schema_migrations`` is keyed by it).
    """
    out = []
    for entry in resources.files("streams.sinks").joinpath("migrations").iterdir():
        m = MIGRATION_RE.match(entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text()))
    out.sort()
    seen: dict[int, str] = {}
    for version, name, _ in out:
        if version in seen:  # schema_migrations is keyed by version: the second would never apply
            raise ConfigError(f"migration version {version:04d} is used twice: {seen[version]!r} and {name!r}")
        seen[version] = name
    return out


#: ClickHouse settings of the ``traces`` insert (see :meth:`ClickHouseSink.write_traces`)
TRACE_INSERT_SETTINGS = {"optimize_on_insert": 0}
#: ``TraceColumns.outcome`` code -> symbol, and ``rollout_arm`` code + 1 -> symbol ("" outside a rollout)
_OUTCOME_SYMBOLS = pa.array(sorted(OUTCOME_CODES, key=OUTCOME_CODES.__getitem__), type=pa.string())
_ARM_SYMBOLS = pa.array(["", *sorted(ARM_CODES, key=ARM_CODES.__getitem__)], type=pa.string())


def _strings(values: Sequence[str | None]) -> pa.Array:
    """A string column, ``None`` stored as ``""`` (the table's columns are not nullable)."""
    return pa.array(values, type=pa.string()).fill_null("")


def trace_table(cols: TraceColumns, attributes: Sequence[dict[str, str]] | None = None,
                batch_seq: int = 0) -> pa.Table:
    """The ``traces`` table rows of a batch as an arrow table, built from its columns: numpy arrays
    wrapped or cast by arrow, enum codes as dictionary arrays over their symbols, tool calls as
    list arrays over the flat calls and their offsets, attribute maps as one flat key and value
    array; no Python object per row. ``attributes`` overrides ``cols.detail.attributes`` (the
    redacted copies). Columns without ``detail`` (built by hand) get it from their records.

    Shapes: one row per trace (``cols.n``), columns in the order of migration 0001, then the
    content references (0041: ``""`` where absent) and ``batch_seq`` / ``batch_pos`` (0040: the
    batch's processing sequence number, each trace's position in it).
    """
    d = cols.detail if cols.detail is not None else trace_columns(
        cols.records, cols.partition.tolist(), cols.offset.tolist()).detail
    attrs = d.attributes if attributes is None else attributes
    tool_off = pa.array(d.tool_offsets, type=pa.int32())
    attr_off = np.zeros(len(attrs) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, attrs), dtype=np.int32, count=len(attrs)), out=attr_off[1:])
    keys = list(itertools.chain.from_iterable(attrs))
    values = list(itertools.chain.from_iterable(map(dict.values, attrs)))
    return pa.table({
        "tenant_id": pa.array(cols.tenant_id, type=pa.string()),
        "cohort": pa.array(cols.cohort, type=pa.string()),
        "workflow": pa.array(cols.workflow, type=pa.string()),
        "event_time": pa.array(cols.event_time_ms, type=pa.int64()).cast(TS),
        "trace_id": pa.array(cols.trace_id, type=pa.string()),
        "intent": _strings(cols.intent),
        "agent_id": pa.array(d.agent_id, type=pa.string()),
        "session_id": pa.array(d.session_id, type=pa.string()),
        "release_id": pa.array(cols.release_id, type=pa.string()),
        "model": pa.array(d.model, type=pa.string()),
        "prompt_version": pa.array(d.prompt_version, type=pa.string()),
        "tool_schema_version": pa.array(d.tool_schema_version, type=pa.string()),
        "policy_version": pa.array(d.policy_version, type=pa.string()),
        "retrieval_index_version": pa.array(d.retrieval_index_version, type=pa.string()),
        "rollout_arm": pa.DictionaryArray.from_arrays(pa.array(cols.rollout_arm.astype(np.int8) + 1), _ARM_SYMBOLS),
        "rollout_stage_pct": pa.array(np.nan_to_num(cols.stage_pct, nan=0.0), type=pa.float64()),
        "candidate_release_id": _strings(cols.candidate_release_id),
        "latency_ms": pa.array(cols.latency_ms, type=pa.float64()),
        "input_tokens": pa.array(cols.input_tokens.astype(np.uint32)),
        "output_tokens": pa.array(cols.output_tokens.astype(np.uint32)),
        "cost_usd": pa.array(cols.cost_usd, type=pa.float64()),
        "confidence": pa.array(cols.confidence, type=pa.float64(), from_pandas=True),
        "outcome": pa.DictionaryArray.from_arrays(pa.array(cols.outcome.astype(np.int8)), _OUTCOME_SYMBOLS),
        "tool_names": pa.ListArray.from_arrays(tool_off, pa.array(d.tool_names, type=pa.string())),
        "tool_statuses": pa.ListArray.from_arrays(tool_off, pa.array(d.tool_statuses, type=pa.string())),
        "tool_latency_ms": pa.ListArray.from_arrays(tool_off, pa.array(d.tool_latency_ms, type=pa.float32())),
        "retrieval_queries": pa.array(d.retrieval_queries.astype(np.uint16)),
        "retrieval_hits": pa.array(d.retrieval_hits.astype(np.uint16)),
        "policy_blocked": pa.array(cols.policy_blocked, type=pa.bool_()),
        "retries": pa.array(d.retries.astype(np.uint16)),
        "fallback_used": pa.array(cols.fallback_used, type=pa.bool_()),
        "output_sha256": _strings(d.output_sha256),
        "attributes": pa.MapArray.from_arrays(pa.array(attr_off), pa.array(keys, type=pa.string()),
                                              pa.array(values, type=pa.string())),
        "source_partition": pa.array(cols.partition.astype(np.uint16)),
        "source_offset": pa.array(cols.offset.astype(np.uint64)),
        **_content_ref_columns(d.input_ref, d.output_ref),
        "batch_seq": pa.array(np.full(cols.n, batch_seq, dtype=np.uint64)),
        "batch_pos": pa.array(np.arange(cols.n, dtype=np.uint32)),
    })


class ClickHouseSink:
    """Writes selfheal's tables and answers tenant-scoped queries.

    The opener closes it: :meth:`close`, or ``with ClickHouseSink(settings) as sink:``. An embedded
    chDB connection left open at interpreter exit can crash the process (see :func:`unclosed_sinks`).

    Args:
        settings: connection settings (``clickhouse_url`` or ``clickhouse_dir``, database,
            credentials from the environment only).
        retry_s: how long one write is retried before :class:`SinkError` (seconds); the worker
            keeps the batch unacknowledged meanwhile.

    Raises:
        SinkError: the store cannot be opened (e.g. a chDB directory locked by another process).
    """

    def __init__(self, settings: Settings, retry_s: float | None = None) -> None:
        self.settings = settings
        self.db = settings.clickhouse_database
        self.retry_s = settings.sink_retry_s if retry_s is None else retry_s
        # one connection, one caller at a time: chDB (and clickhouse-connect's client) are not safe
        # for concurrent use from the event loop and insert threads (a concurrent query was seen to
        # drop an insert that had reported success)
        self._lock = threading.RLock()
        self._abort = threading.Event()
        #: write attempts that failed (injected or real), for the worker's stats line
        self.failed_attempts = 0
        try:
            if settings.clickhouse_url:
                self.client = clickhouse_connect.get_client(
                    dsn=settings.clickhouse_url,
                    username=settings.clickhouse_user,
                    password=settings.clickhouse_password.get_secret_value() if settings.clickhouse_password else "",
                )
                self.location = safe_url(settings.clickhouse_url)
            else:
                path = Path(settings.clickhouse_dir)
                path.mkdir(parents=True, exist_ok=True)
                self.client = clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}")
                self.location = f"chdb://{path.resolve()}"
        except Exception as exc:
            where = safe_url(settings.clickhouse_url) if settings.clickhouse_url else settings.clickhouse_dir
            raise SinkError(f"cannot open ClickHouse at {where}: {_scrub(str(exc), settings)}") from None
        self._closed = False
        self._token = next(_TOKENS)
        with _UNCLOSED_LOCK:
            _UNCLOSED[self._token] = self.location

    # ------------------------------------------------------------------ schema
    def migrate(self) -> list[int]:
        """Apply pending migrations in order; returns the versions applied now. Idempotent."""
        with self._lock:
            return self._migrate()

    def _migrate(self) -> list[int]:
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        self.client.command(
            f"CREATE TABLE IF NOT EXISTS {self.db}.schema_migrations "
            "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree ORDER BY version")
        done = {r[0] for r in self.client.query(f"SELECT version FROM {self.db}.schema_migrations FINAL").result_rows}
        applied = []
        for version, name, sql in migrations():
            if version in done:
                continue
            code = "\n".join(line for line in sql.format(db=self.db).splitlines() if not line.lstrip().startswith("--"))
            for stmt in (s.strip() for s in code.split(";")):
                if stmt:
                    self.client.command(stmt)
            self.client.insert(f"{self.db}.schema_migrations", [[version, name]], column_names=["version", "name"])
            applied.append(version)
        return applied

    # ------------------------------------------------------------------ writes
    def _retrying(self) -> Retrying:
        """Retries of one write: exponential backoff (0.1 s doubling, at most 10 s) for up to
        ``retry_s``, ended early by :meth:`abort` (tenacity)."""
        return Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=0.1, max=10.0),
            stop=stop_after_delay(self.retry_s) | stop_when_event_set(self._abort),
            sleep=self._abort.wait,  # backoff sleeps end early on abort()
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def _insert(self, table: str, data: pa.Table, settings: dict[str, Any] | None = None) -> int:
        if data.num_rows == 0:
            return 0
        for attempt in self._retrying():
            with attempt:
                try:
                    with self._lock:
                        extra = {"settings": settings} if settings else {}
                        self.client.insert_arrow(f"{self.db}.{table}", data, **extra)
                except Exception as exc:
                    self.failed_attempts += 1
                    raise SinkError(f"insert of {data.num_rows} rows into {self.db}.{table} failed: "
                                    f"{_scrub(str(exc), self.settings)}") from None
        return data.num_rows

    def abort(self) -> None:
        """Stop retrying: a write in its retry loop raises its last error now, later writes fail
        after one attempt. Called when the worker shuts down (its batch stays unacknowledged)."""
        self._abort.set()

    def write_traces(self, cols: TraceColumns, attributes: Sequence[dict[str, str]] | None = None,
                     batch_seq: int = 0) -> int:
        """Insert a batch of validated traces, one ``insert_arrow`` for the batch. ``attributes``
        overrides the records' maps (the redacted copies); ``batch_seq`` is the pipeline's
        processing sequence number of the batch (:attr:`TraceOutput.batch_seq`), stored with each
        trace's position in the batch so a replay (:mod:`streams.replay`) processes them in the
        same batches and order; returns rows written.

        The arrow table comes from the batch's columns (:class:`TraceColumns` and its
        :class:`~streams.processors.columns.TraceDetail`), see :func:`trace_table`. The insert
        skips ClickHouse's merge of the block itself (``optimize_on_insert=0``: with it, the
        engine took 2-3.5 times longer for the same arrow table, BENCHMARKS.md): a batch holds
        each trace once (the pipeline drops replayed trace ids), and redelivered batches collapse
        under ``FINAL`` as before.

        Raises:
            SinkError: after ``retry_s`` of failures.
        """
        return self._insert("traces", trace_table(cols, attributes, batch_seq), TRACE_INSERT_SETTINGS)

    def write_feedback(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert feedback rows (dicts with the ``feedback`` table's columns, times in epoch ms)."""
        if not rows:
            return 0
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        for k in ("event_time", "trace_event_time"):
            if k in cols:
                cols[k] = pa.array(cols[k], type=pa.int64()).cast(TS)
        for k, typ in _FEEDBACK_TYPES.items():
            if k in cols:
                cols[k] = pa.array(cols[k], type=typ)
        return self._insert("feedback", pa.table(cols))

    def refresh_patterns(self, touched: Mapping[str, Iterable[str]] | None = None) -> None:
        """Recompute ``feedback_patterns`` rows (the scope ladder, migration 0010) from ``feedback``
        FINAL: the tenant rows of ``touched`` (tenant → pattern ids) and the segment and global
        rows of those pattern ids; ``None`` recomputes every pattern. Idempotent (a rerun writes
        the same counts with a later ``refreshed_at``). Thresholds: ``feedback_tenant_min_sessions``,
        ``feedback_segment_min_tenants`` (k), ``feedback_global_min_cohorts`` of the settings.

        Raises:
            SinkError: after ``retry_s`` of failures.
        """
        pairs = sorted((t, p) for t, ps in (touched or {}).items() for p in ps if p)
        if touched is not None and not pairs:
            return
        st = self.settings
        params = {"all": touched is None, "tenants": sorted({t for t, _ in pairs}),
                  "patterns": sorted({p for _, p in pairs}), "m": st.feedback_tenant_min_sessions,
                  "k": st.feedback_segment_min_tenants, "c": st.feedback_global_min_cohorts}
        for sql in PATTERN_REFRESH:
            self._command(sql, params)

    def _command(self, sql: str, params: dict[str, Any]) -> None:
        for attempt in self._retrying():
            with attempt:
                try:
                    with self._lock:
                        self.client.command(sql.replace("{db}", self.db), parameters=params)
                except Exception as exc:
                    self.failed_attempts += 1
                    raise SinkError(f"{sql.split(chr(10))[0][:80]}... failed: "
                                    f"{_scrub(str(exc), self.settings)}") from None

    def write_submissions(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert the feedback submission log (one row per Kafka record, ``event_time`` in ms)."""
        if not rows:
            return 0
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["event_time"] = pa.array(cols["event_time"], type=pa.int64()).cast(TS)
        cols["source_partition"] = pa.array(cols["source_partition"], type=pa.uint16())
        cols["source_offset"] = pa.array(cols["source_offset"], type=pa.uint64())
        cols["record_index"] = pa.array(cols["record_index"], type=pa.int32())
        for k, typ in (("batch_seq", pa.uint64()), ("batch_pos", pa.uint32())):
            if k in cols:
                cols[k] = pa.array(cols[k], type=typ)
        return self._insert("feedback_submissions", pa.table(cols))

    def write_baseline_snapshots(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert baseline snapshot rows (:meth:`SliceStore.snapshot_rows`)."""
        if not rows:
            return 0
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["snapshot_at"] = pa.array(cols["snapshot_at"], type=pa.int64()).cast(TS)
        cols["traces"] = pa.array(cols["traces"], type=pa.uint64())
        return self._insert("baseline_snapshots", pa.table(cols))

    def record_evalset_export(self, row: dict[str, Any]) -> int:
        """Insert one ``evalset_exports`` row (tenant_id, version, records_sha256, format_version,
        filter, records; ``exported_at`` is now).

        Raises:
            SinkError: after ``retry_s`` of failures.
        """
        import time

        data = pa.table({
            "tenant_id": [row["tenant_id"]], "version": pa.array([row["version"]], type=pa.uint32()),
            "records_sha256": [row["records_sha256"]],
            "format_version": pa.array([row["format_version"]], type=pa.uint16()), "filter": [row["filter"]],
            "records": pa.array([row["records"]], type=pa.uint64()),
            "exported_at": pa.array([int(time.time() * 1000)], type=pa.int64()).cast(TS),
        })
        return self._insert("evalset_exports", data)

    def write_incidents(self, incidents: Iterable[Incident]) -> int:
        """Insert incident events (every revision; FINAL keeps the latest)."""
        rows = []
        for inc in incidents:
            s = inc.slice
            rows.append({
                "tenant_id": s.tenant_id or "", "incident_id": inc.incident_id, "revision": inc.revision,
                "status": inc.status.value, "kind": inc.kind.value, "layer": s.layer, "cohort": s.cohort or "",
                "workflow": s.workflow or "", "slice_release_id": s.release_id or "", "metric_group": inc.metric_group,
                "metric": inc.metric, "baseline": inc.baseline, "observed": inc.observed,
                "observed_ci_low": inc.observed_ci_low, "observed_ci_high": inc.observed_ci_high, "effect": inc.effect,
                "samples": inc.samples, "detector": inc.detector, "statistic": inc.statistic,
                "threshold": inc.threshold, "severity": inc.severity.value, "action": inc.action.value,
                "release_id": inc.release_id or "",
                "release_manifest": list((inc.release.model_dump() if inc.release else {}).items()),
                "also_seen": inc.also_seen, "summary": inc.summary, "evidence_trace_ids": inc.evidence_trace_ids,
                "detected_at_trace_id": inc.detected_at_trace_id,
                "first_seen": int(inc.first_seen.timestamp() * 1000),
                "last_seen": int(inc.last_seen.timestamp() * 1000),
                "emitted_at": int(inc.emitted_at.timestamp() * 1000),
                "detected_at": int((inc.detected_at or inc.first_seen).timestamp() * 1000),
                "resolution": inc.resolution or "", "acknowledged_by": inc.acknowledged_by or "",
                "suppressed_until": _ms_or_none(inc.suppressed_until), "mitigated_at": _ms_or_none(inc.mitigated_at),
                "restore_release_id": inc.restore_release_id or "", "changed_components": inc.changed_components,
                "likely_cause": inc.drift_matrix.likely_cause if inc.drift_matrix else "",
                "safe_fix": inc.drift_matrix.safe_fix if inc.drift_matrix else "",
                "validation_gate": inc.drift_matrix.validation_gate if inc.drift_matrix else "",
                "rollback_required": bool(inc.drift_matrix and inc.drift_matrix.rollback_required),
            })
        if not rows:
            return 0
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        for k in ("first_seen", "last_seen", "emitted_at", "detected_at", "suppressed_until", "mitigated_at"):
            cols[k] = pa.array(cols[k], type=pa.int64()).cast(TS)
        cols["revision"] = pa.array(cols["revision"], type=pa.uint32())
        cols["samples"] = pa.array(cols["samples"], type=pa.uint64())
        cols["release_manifest"] = pa.array(cols["release_manifest"], type=STR_MAP)
        return self._insert("incidents", pa.table(cols))

    def write_actions(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert ``incident_actions`` ledger rows (``Pipeline.on_actions``; ``at``/``until`` in
        epoch ms, ``until`` may be ``None``); keyed by tenant, incident and action_id, so a
        redelivered action collapses.

        Raises:
            SinkError: after ``retry_s`` of failures.
        """
        if not rows:
            return 0
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        for k in ("at", "until"):
            cols[k] = pa.array(cols[k], type=pa.int64()).cast(TS)
        cols["revision"] = pa.array(cols["revision"], type=pa.uint32())
        return self._insert("incident_actions", pa.table(cols))

    def write_dead_letters(self, letters: Iterable[DeadLetter], redact=None) -> int:
        """Insert dead-letter metadata (the original payload's hash and size, not the payload).

        ``letters`` are stored as given: the worker passes them sealed (redacted once, numeric
        values kept: :func:`streams.processors.deadletters.seal`); ``redact``, if given, is applied
        to ``field``, ``value`` and ``message`` here (callers without that step).
        """
        rows = [
            {"tenant_id": d.tenant_id or "", "dead_letter_id": d.dead_letter_id, "source_topic": d.source_topic,
             "source_partition": d.source_partition, "source_offset": d.source_offset, "record_index": d.record_index,
             "error_class": d.error_class, "field": (redact(d.field) if redact and d.field else d.field) or "",
             "value": (redact(d.value) if redact and d.value else d.value) or "",
             "message": redact(d.message) if redact else d.message, "schema_fingerprint": d.schema_fingerprint or "",
             "payload_sha256": d.payload_sha256 or hashlib.sha256(d.payload).hexdigest(),
             "payload_bytes": d.payload_bytes if d.payload_bytes is not None else len(d.payload),
             "occurred_at": int(d.occurred_at.timestamp() * 1000)}
            for d in letters
        ]
        if not rows:
            return 0
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["occurred_at"] = pa.array(cols["occurred_at"], type=pa.int64()).cast(TS)
        cols["source_partition"] = pa.array(cols["source_partition"], type=pa.uint16())
        cols["source_offset"] = pa.array(cols["source_offset"], type=pa.uint64())
        cols["record_index"] = pa.array(cols["record_index"], type=pa.int32())
        cols["payload_bytes"] = pa.array(cols["payload_bytes"], type=pa.uint32())
        return self._insert("dead_letters", pa.table(cols))

    def write_verdicts(self, verdicts: Iterable[RolloutVerdict]) -> int:
        """Insert rollout verdict events into ``rollout_verdicts`` and their scorecards into
        ``rollout_scorecards`` (one row per metric); returns verdict rows written.

        Raises:
            SinkError: after ``retry_s`` of failures.
        """
        verdicts = list(verdicts)
        if not verdicts:
            return 0
        ms = [int(v.emitted_at.timestamp() * 1000) for v in verdicts]
        head = {
            "tenant_id": [v.tenant_id for v in verdicts], "release_id": [v.release_id for v in verdicts],
            "verdict_id": [v.verdict_id for v in verdicts],
            "revision": pa.array([v.revision for v in verdicts], type=pa.uint32()),
        }
        data = pa.table({
            **head,
            "cohort": [v.cohort for v in verdicts], "workflow": [v.workflow or "" for v in verdicts],
            "arm": [v.arm.value for v in verdicts],
            "stage_pct": pa.array([v.stage_pct for v in verdicts], type=pa.float32()),
            "verdict": [v.verdict.value for v in verdicts], "changed": [v.changed for v in verdicts],
            "risk_class": [v.risk_class.value for v in verdicts], "alpha_promote": [v.alpha_promote for v in verdicts],
            "alpha_rollback": [v.alpha_rollback for v in verdicts], "margin": [v.margin for v in verdicts],
            "min_samples": pa.array([v.min_samples for v in verdicts], type=pa.uint32()),
            "guardrail_fired": [v.guardrail_fired or "" for v in verdicts],
            "regressed_metrics": [v.regressed_metrics for v in verdicts], "reason": [v.reason for v in verdicts],
            "samples_control": pa.array([v.samples_control for v in verdicts], type=pa.uint64()),
            "samples_candidate": pa.array([v.samples_candidate for v in verdicts], type=pa.uint64()),
            "exposure": pa.array([v.exposure for v in verdicts], type=pa.uint64()),
            "evidence_trace_ids": [v.evidence_trace_ids for v in verdicts],
            "release_manifest": pa.array([list((v.release.model_dump() if v.release else {}).items())
                                          for v in verdicts], type=STR_MAP),
            "first_seen": pa.array([int(v.first_seen.timestamp() * 1000) for v in verdicts], type=pa.int64()).cast(TS),
            "emitted_at": pa.array(ms, type=pa.int64()).cast(TS),
            "restore_release_id": [v.restore_release_id or "" for v in verdicts],
            "changed_components": [v.changed_components for v in verdicts],
        })
        rows = [(v, e, t) for v, t in zip(verdicts, ms, strict=True) for e in v.scorecard]
        cards = pa.table({
            "tenant_id": [v.tenant_id for v, _, _ in rows], "release_id": [v.release_id for v, _, _ in rows],
            "verdict_id": [v.verdict_id for v, _, _ in rows],
            "revision": pa.array([v.revision for v, _, _ in rows], type=pa.uint32()),
            "metric": [e.metric for _, e, _ in rows], "cohort": [v.cohort for v, _, _ in rows],
            "workflow": [v.workflow or "" for v, _, _ in rows], "arm": [v.arm.value for v, _, _ in rows],
            "stage_pct": pa.array([v.stage_pct for v, _, _ in rows], type=pa.float32()),
            "verdict": [v.verdict.value for v, _, _ in rows], "role": [e.role.value for _, e, _ in rows],
            "status": [e.status.value for _, e, _ in rows], "unit": [e.unit for _, e, _ in rows],
            **{k: pa.array([getattr(e, k) for _, e, _ in rows], type=pa.float64())
               for k in ("control", "candidate", "delta", "ci_low", "ci_high", "p_value")},
            **{k: pa.array([getattr(e, k) for _, e, _ in rows], type=pa.uint64())
               for k in ("samples_control", "samples_candidate", "events_control", "events_candidate")},
            "emitted_at": pa.array([t for _, _, t in rows], type=pa.int64()).cast(TS),
        })
        n = self._insert("rollout_verdicts", data)
        self._insert("rollout_scorecards", cards)
        return n

    def scorecards(self, release_id: str, tenant_id: str | None = None) -> tuple[list[tuple], list[tuple]]:
        """Current verdicts of a release (highest revision per scorecard) and their scorecard
        rows, for operators across tenants (``tenant_id=None``) or one tenant; see
        :meth:`TenantQueries.scorecards` for the columns. Tenant-facing code uses that method.
        """
        return release_scorecards(self, release_id, tenant_id or "")

    # ------------------------------------------------------------------ reads
    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Run a parameterised query (``{name:Type}`` placeholders) and return its rows.

        For operators and tests; tenant-facing code uses :meth:`for_tenant`.
        """
        with self._lock:
            return self.client.query(sql.replace("{db}", self.db), parameters=parameters or {}).result_rows

    def query_dicts(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Like :meth:`query`, rows as dicts keyed by column name."""
        with self._lock:
            q = self.client.query(sql.replace("{db}", self.db), parameters=parameters or {})
        return [dict(zip(q.column_names, row, strict=True)) for row in q.result_rows]

    def for_tenant(self, tenant_id: str) -> TenantQueries:
        """Query helpers bound to one tenant.

        Raises:
            TenantScopeError: the tenant id is not a valid tenant slug.
        """
        return TenantQueries(self, tenant_id)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def close(self) -> None:
        """Close the connection; idempotent, never raises (it runs in ``finally`` blocks and must
        not hide the error being handled; a failure to close is logged as a warning).

        Ends a write's retry loop first (:meth:`abort`), then waits for a call in flight on another
        thread and closes the clickhouse-connect client: for embedded chDB that closes this
        process's chDB connection, and with the last one the engine and its directory lock.
        Afterwards a write raises :class:`SinkError` after one attempt, a read clickhouse-connect's
        ``ProgrammingError`` ("The client has been closed").
        """
        self._abort.set()  # a retry loop on another thread would otherwise retry on a closed client
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with _UNCLOSED_LOCK:
                _UNCLOSED.pop(self._token, None)
            try:
                self.client.close()
            except Exception:
                log.warning("closing ClickHouse at %s failed", self.location, exc_info=True)

    def __enter__(self) -> ClickHouseSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _empty_strings(n: int) -> pa.Array:
    """``n`` empty strings as an arrow string array (offsets all 0, no data), no Python object per row."""
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.zeros(n + 1, dtype=np.int32)), pa.py_buffer(b""))


def _content_ref_columns(input_refs: Sequence[dict[str, Any] | None],
                         output_refs: Sequence[dict[str, Any] | None]) -> dict[str, pa.Array]:
    """``input_ref_*`` / ``output_ref_*`` columns (migration 0041) of the traces' content
    references (``TraceDetail.input_ref`` / ``output_ref``), ``""`` where absent (the pipeline
    has redacted the texts). Only the traces that carry a reference are read (most carry none):
    the rest of a column is empty strings built without a Python object per row."""
    out: dict[str, pa.Array] = {}
    for k, column in (("input_ref", input_refs), ("output_ref", output_refs)):
        n = len(column)
        rows = list(itertools.compress(range(n), column))  # the traces with a reference
        for part in ("uri", "text", "sha256"):
            if not rows:
                out[f"{k}_{part}"] = _empty_strings(n)
                continue
            values = np.full(n, "", dtype=object)
            values[rows] = [column[i].get(part) or "" for i in rows]
            out[f"{k}_{part}"] = pa.array(values, type=pa.string())
    return out


#: arrow types of ``feedback`` columns that inference would get wrong
_FEEDBACK_TYPES = {"version": pa.uint64(), "submissions": pa.uint32(), "agreement_count": pa.uint16(),
                   "confidence": pa.float32(), "conflict": pa.bool_()}

_PATTERN_COLS = ("scope, tenant_id, cohort, pattern_id, category, workflow, tool, template, release_id, corrections, "
                 "sessions, traces, tenants, cohorts, conflicts, lost, mean_confidence, first_seen, last_seen, "
                 "refreshed_at")
_PATTERN_AGG = ("count(), uniqExact(tenant_id, session_id), uniqExact(tenant_id, trace_id), uniqExact(tenant_id), "
                "uniqExact(cohort), countIf(conflict), countIf(resolution = 'lost'), avg(confidence), min(event_time), "
                "max(event_time), now64(3)")
_PATTERN_GROUP = "pattern_id, category, workflow, tool, template, release_id"
# every correction counts, also one that lost a conflict: counts only grow, so the ladder is
# monotone and the rows do not depend on where batch boundaries fell
_PATTERN_FROM = "FROM {db}.feedback FINAL WHERE pattern_id != '' "
#: INSERT ... SELECT statements of :meth:`ClickHouseSink.refresh_patterns` (tenant, segment, global)
PATTERN_REFRESH = (
    f"INSERT INTO {{db}}.feedback_patterns ({_PATTERN_COLS}) "
    f"SELECT if(uniqExact(session_id) >= {{m:UInt32}}, 'tenant', 'session'), tenant_id, '', {_PATTERN_GROUP}, "
    f"{_PATTERN_AGG} {_PATTERN_FROM}"
    "AND ({all:Bool} OR (tenant_id IN {tenants:Array(String)} AND pattern_id IN {patterns:Array(String)})) "
    f"GROUP BY tenant_id, {_PATTERN_GROUP}",
    f"INSERT INTO {{db}}.feedback_patterns ({_PATTERN_COLS}) "
    f"SELECT 'segment', '', cohort, {_PATTERN_GROUP}, {_PATTERN_AGG} {_PATTERN_FROM}"
    "AND ({all:Bool} OR pattern_id IN {patterns:Array(String)}) "
    f"GROUP BY cohort, {_PATTERN_GROUP} HAVING uniqExact(tenant_id) >= {{k:UInt32}}",
    f"INSERT INTO {{db}}.feedback_patterns ({_PATTERN_COLS}) "
    f"SELECT 'global_candidate', '', '', {_PATTERN_GROUP}, {_PATTERN_AGG} {_PATTERN_FROM}"
    "AND ({all:Bool} OR pattern_id IN {patterns:Array(String)}) "
    f"GROUP BY {_PATTERN_GROUP} HAVING uniqExact(tenant_id) >= {{k:UInt32}} AND uniqExact(cohort) >= {{c:UInt32}}",
)
