"""Regression / golden sets from the evaluation store: ``selfheal export-evalset``.

One tenant's corrections for a time range (of the corrected traces' event time), optionally one
cohort and release, read through :meth:`TenantQueries.golden_set` (view ``v_golden_set``:
corrections joined to their trace's release manifest), written as JSON Lines:

- line 1, the header: ``{"evalset": "selfheal.golden_set", "format_version": 1, "tenant_id",
  "cohort", "release_id", "since", "until", "include_lost", "records", "records_sha256"}``;
- one line per correction, ordered by (trace event time, trace id, dedup key): trace and
  correction ids, the original output hash (and the trace's own output hash), the corrected text
  and edit (redacted at ingest and again here), category, severity, tags, confidence, agreement,
  conflict outcome, pattern id and scope, and the release ``manifest``.

Reproducible: no wall-clock value is written, keys are sorted, floats rounded to 6 digits, so the
same store and the same arguments give a byte-identical file (``records_sha256`` is the SHA-256 of
the record lines, a content version of the set). Corrections that lost a conflict are left out
unless ``include_lost``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from streams.privacy import Redactor
from streams.sinks.clickhouse import ClickHouseSink

FORMAT_VERSION = 1
MANIFEST_FIELDS = ("model", "prompt_version", "tool_schema_version", "policy_version", "retrieval_index_version")


def _iso(value: Any) -> str:
    """ISO-8601 UTC with milliseconds (``2026-11-20T08:15:00.123Z``)."""
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)


def _record(row: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    return {
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
                  release_id: str | None = None, include_lost: bool = False) -> tuple[bytes, int]:
    """The evalset file's bytes and its number of records.

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
    rows = sink.for_tenant(tenant_id).golden_set(int(since.timestamp() * 1000), int(until.timestamp() * 1000),
                                                 cohort=cohort, release_id=release_id, include_lost=include_lost)
    redactor = Redactor()
    body = b"".join(_line(_record(r, redactor)) for r in rows)
    header = {"evalset": "selfheal.golden_set", "format_version": FORMAT_VERSION, "tenant_id": tenant_id,
              "cohort": cohort or None, "release_id": release_id or None, "since": _iso(since), "until": _iso(until),
              "include_lost": include_lost, "records": len(rows), "records_sha256": hashlib.sha256(body).hexdigest()}
    return _line(header) + body, len(rows)
