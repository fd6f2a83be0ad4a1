"""Regression / golden sets from the evaluation store: ``selfheal export-evalset``.

One tenant's corrections for a time range (of the corrected traces' event time), optionally one
cohort and release, read through :meth:`TenantQueries.golden_set` (view ``v_golden_set``:
corrections joined to their trace's release manifest) and :meth:`TenantQueries.content_refs`
(the trace's input and output references), written as JSON Lines:

- line 1, the header: ``{"evalset": "selfheal.golden_set", "format_version": 2, "tenant_id",
  "version", "cohort", "release_id", "since", "until", "include_lost", "records",
  "records_sha256"}``;
- one line per correction, ordered by (trace event time, trace id, dedup key): trace and
  correction ids, the original output hash (and the trace's own output hash), the corrected text
  and edit (redacted at ingest and again here), category, severity, tags, confidence, agreement,
  conflict outcome, pattern id and scope, the release ``manifest``, and what a candidate needs
  to be re-run on it: ``input_ref`` and ``original_output`` (``{uri, text, sha256}`` where the
  producer supplied them on the trace, ``AgentTrace.input_ref`` / ``output_ref``; text redacted;
  ``null`` otherwise; the output's sha256 falls back to the trace's ``output_sha256``) and
  ``corrected_output`` (the corrected text).

Reproducible: no wall-clock value is written, keys are sorted, floats rounded to 6 digits, so the
same store and the same arguments give a byte-identical file (``records_sha256`` is the SHA-256 of
the record lines, a content version of the set). Corrections that lost a conflict are left out
unless ``include_lost``.

Versioned (:func:`export_evalset`): each export is recorded in ClickHouse (``evalset_exports``:
tenant, version, records_sha256, filter, records, exported_at; migration 0042), so a later
evaluation run can say which set it was checked on. Versions count per tenant from 1; exporting
content already exported (same ``records_sha256``) reuses its version, so the file stays
byte-identical. The mapping of a record to Langfuse dataset items and Phoenix dataset examples
(:func:`langfuse_item`, :func:`phoenix_example`) is documented in docs/evalsets.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.privacy import Redactor
from streams.sinks.clickhouse import ClickHouseSink

FORMAT_VERSION = 2
MANIFEST_FIELDS = ("model", "prompt_version", "tool_schema_version", "policy_version", "retrieval_index_version")


def _iso(value: Any) -> str:
    """ISO-8601 UTC with milliseconds (``2026-11-20T08:15:00.123Z``)."""
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)


def _ref(ref: dict[str, Any] | None, redactor: Redactor, sha_fallback: str = "") -> dict[str, Any] | None:
    """A content reference for the set (text redacted again), or ``None``."""
    if ref is None and not sha_fallback:
        return None
    ref = ref or {}
    return {"uri": ref.get("uri"), "text": redactor.redact(ref.get("text")), "sha256": ref.get("sha256") or sha_fallback
            or None}


def _record(row: dict[str, Any], redactor: Redactor, refs: dict[str, Any] | None = None) -> dict[str, Any]:
    refs = refs or {}
    return {
        "input_ref": _ref(refs.get("input_ref"), redactor),
        "original_output": _ref(refs.get("output_ref"), redactor, row["trace_output_sha256"] or ""),
        "corrected_output": redactor.redact(row["corrected_text"]) or "",
        "tenant_id": row["tenant_id"], "cohort": row["cohort"], "workflow": row["workflow"],
        "release_id": row["release_id"], "trace_id": row["trace_id"], "dedup_key": row["dedup_key"],
        "feedback_id": row["feedback_id"], "trace_event_time": _iso(row["trace_event_time"]),
        "feedback_event_time": _iso(row["event_time"]), "intent": row["intent"],
        "original_output_hash": row["original_output_hash"], "trace_output_sha256": row["trace_output_sha256"],
        "corrected_text": redactor.redact(row["corrected_text"]) or "",
        "edit_diff": redactor.redact(row["edit_diff"]) or "",
        "category": row["category"], "severity": row["severity"], "regulatory_tags": sorted(row["regulatory_tags"]),
        "source": row["source"], "reviewer_role": row["reviewer_role"],
        "confidence": round(float(row["confidence"]), 6), "agreement_count": int(row["agreement_count"]),
        "submissions": int(row["submissions"]), "conflict": bool(row["conflict"]), "resolution": row["resolution"],
        "pattern_id": row["pattern_id"], "scope": row["scope"] or "session",
        "manifest": {"release_id": row["release_id"], **{k: row[k] for k in MANIFEST_FIELDS}},
    }


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def build_evalset(sink: ClickHouseSink, tenant_id: str, since: datetime, until: datetime, cohort: str | None = None,
                  release_id: str | None = None, include_lost: bool = False,
                  version: int | None = None) -> tuple[bytes, int]:
    """The evalset file's bytes and its number of records (``version`` goes into the header;
    :func:`export_evalset` assigns and records it).

    Args:
        sink: an open store (the worker must not own an embedded chDB directory meanwhile).
        tenant_id: the one tenant exported (tenant-scoped, parameterised query).
        since, until: half-open range of the corrected traces' event time (aware datetimes; naive
            ones are taken as UTC).
        cohort, release_id: optional filters.
        include_lost: also export corrections that lost a conflict.

    Raises:
        TenantScopeError: ``tenant_id`` is not a valid tenant slug.
        ValueError: ``since`` is not before ``until``.
    """
    since, until = (d if d.tzinfo else d.replace(tzinfo=UTC) for d in (since, until))
    if since >= until:
        raise ValueError(f"since={_iso(since)} must be before until={_iso(until)}")
    scoped = sink.for_tenant(tenant_id)
    rows = scoped.golden_set(int(since.timestamp() * 1000), int(until.timestamp() * 1000),
                             cohort=cohort, release_id=release_id, include_lost=include_lost)
    refs = scoped.content_refs(sorted({r["trace_id"] for r in rows}))
    redactor = Redactor()
    body = b"".join(_line(_record(r, redactor, refs.get(r["trace_id"]))) for r in rows)
    header = {"evalset": "selfheal.golden_set", "format_version": FORMAT_VERSION, "tenant_id": tenant_id,
              "version": version,
              "cohort": cohort or None, "release_id": release_id or None, "since": _iso(since), "until": _iso(until),
              "include_lost": include_lost, "records": len(rows), "records_sha256": hashlib.sha256(body).hexdigest()}
    return _line(header) + body, len(rows)


@dataclass(frozen=True)
class EvalsetExport:
    """One recorded export: the file's ``data`` (bytes), ``records``, the tenant's set ``version``
    and ``records_sha256`` (the content hash in the header and the ``evalset_exports`` row)."""

    data: bytes
    records: int
    version: int
    records_sha256: str


def export_evalset(sink: ClickHouseSink, tenant_id: str, since: datetime, until: datetime, cohort: str | None = None,
                   release_id: str | None = None, include_lost: bool = False) -> EvalsetExport:
    """Build the set (:func:`build_evalset`), give it the tenant's next version (or the version
    of an earlier export with the same content hash) and record the export in ``evalset_exports``.

    Raises:
        TenantScopeError, ValueError: as :func:`build_evalset`.
        SinkError: the export row could not be written.
    """
    data, n = build_evalset(sink, tenant_id, since, until, cohort, release_id, include_lost)
    sha = json.loads(data.split(b"\n", 1)[0])["records_sha256"]
    params = {"t": tenant_id, "h": sha}
    same = sink.query("SELECT min(version) FROM {db}.evalset_exports FINAL WHERE tenant_id = {t:String} "
                      "AND records_sha256 = {h:String} HAVING count() > 0", params)
    if same:
        version = int(same[0][0])
    else:
        version = int(sink.query("SELECT max(version) FROM {db}.evalset_exports FINAL WHERE tenant_id = {t:String}",
                                 params)[0][0] or 0) + 1
    data, _ = build_evalset(sink, tenant_id, since, until, cohort, release_id, include_lost, version=version)
    filt = {"cohort": cohort or None, "release_id": release_id or None, "since": _iso(since if since.tzinfo else
            since.replace(tzinfo=UTC)), "until": _iso(until if until.tzinfo else until.replace(tzinfo=UTC)),
            "include_lost": include_lost}
    sink.record_evalset_export({"tenant_id": tenant_id, "version": version, "records_sha256": sha,
                                "format_version": FORMAT_VERSION, "filter": json.dumps(filt, sort_keys=True),
                                "records": n})
    return EvalsetExport(data, n, version, sha)


def langfuse_item(record: dict[str, Any], tenant_id: str, version: int) -> dict[str, Any]:
    """A set record as a Langfuse dataset item (``CreateDatasetItemRequest``: ``id``, ``input``,
    ``expected_output``, ``metadata``, ``source_trace_id``; docs/evalsets.md). The id is stable per
    tenant, version and correction, so a re-import upserts."""
    return {
        "id": f"{tenant_id}-v{version}-{record['dedup_key']}",
        "input": {"input_ref": record["input_ref"], "original_output": record["original_output"]},
        "expected_output": {"text": record["corrected_output"]},
        "metadata": {k: record[k] for k in _METADATA},
        "source_trace_id": record["trace_id"],
    }


def phoenix_example(record: dict[str, Any]) -> dict[str, Any]:
    """A set record as a Phoenix dataset example (``input``, ``output``, ``metadata``: the three
    lists of ``Client().datasets.create_dataset(name=..., inputs=..., outputs=..., metadata=...)``;
    docs/evalsets.md)."""
    return {
        "input": {"input_ref": record["input_ref"], "original_output": record["original_output"]},
        "output": {"corrected_output": record["corrected_output"]},
        "metadata": {"trace_id": record["trace_id"], **{k: record[k] for k in _METADATA}},
    }


#: record fields carried as item metadata in both tools
_METADATA = ("tenant_id", "cohort", "workflow", "intent", "category", "severity", "regulatory_tags", "manifest",
             "feedback_id", "dedup_key", "confidence", "resolution", "trace_event_time")
