"""The currency of the processors: a Kafka message as consumed, and a batch of traces as columns.

:class:`RawMessage` is what the worker hands the pipeline (faust's raw value serializer);
:class:`TraceColumns` is a batch of validated traces, one numpy array or list per field, which
every processor reads (baselines and drift, canary, the sink, the feedback join). The code
tables map enum symbols of the contract to the small integers the arrays hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from operator import itemgetter
from typing import Any

import numpy as np

#: ``AgentTrace.outcome`` symbol -> ``TraceColumns.outcome`` code
OUTCOME_CODES = {"success": 0, "failure": 1, "escalated": 2, "abandoned": 3}
#: ``AgentTrace.rollout.arm`` symbol -> ``TraceColumns.rollout_arm`` code (-1: not in a rollout)
ARM_CODES = {"control": 0, "canary": 1, "shadow": 2}


@dataclass(slots=True)
class RawMessage:
    """One Kafka message as consumed: bytes plus where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: dict[str, bytes] = field(default_factory=dict)  # by name (streams.signing.header_map)


@dataclass(slots=True)
class TraceDetail:
    """The fields of a batch of traces that only the sink and the feedback join read, columnar.

    Built in the same pass as :class:`TraceColumns` (:func:`trace_columns`), so the sink builds
    its arrow table from arrays and lists, without touching the records again. Shapes: ``(n,)``
    per trace; the tool calls are flat, ``(calls,)``, trace ``i`` owning
    ``tool_*[tool_offsets[i]:tool_offsets[i + 1]]`` (arrow's list layout).
    """

    agent_id: list[str]
    session_id: list[str]
    model: list[str]
    prompt_version: list[str]
    tool_schema_version: list[str]
    policy_version: list[str]
    retrieval_index_version: list[str]
    output_sha256: list[str | None]
    retrieval_queries: np.ndarray  # int64
    retrieval_hits: np.ndarray  # int64
    retries: np.ndarray  # int64
    tool_offsets: np.ndarray  # int64, shape (n + 1,)
    tool_names: list[str]
    tool_statuses: list[str]
    tool_latency_ms: np.ndarray  # float64, shape (calls,)
    attributes: list[dict[str, str]]
    #: the records' optional content references (``ContentRef`` dicts or ``None``; the very dicts
    #: of the records, so the pipeline's in-place redaction of their texts is what the sink stores)
    input_ref: list[dict[str, Any] | None]
    output_ref: list[dict[str, Any] | None]

    def slice(self, start: int, stop: int) -> TraceDetail:
        """Traces ``start:stop`` (their tool calls re-based to offset 0)."""
        off = self.tool_offsets
        lo, hi = int(off[start]), int(off[stop])
        out = {f.name: getattr(self, f.name)[start:stop] for f in fields(self)}
        out.update(tool_offsets=off[start:stop + 1] - lo, tool_names=self.tool_names[lo:hi],
                   tool_statuses=self.tool_statuses[lo:hi], tool_latency_ms=self.tool_latency_ms[lo:hi])
        return TraceDetail(**out)

    def take(self, rows: np.ndarray) -> TraceDetail:
        """Traces at ``rows`` (indexes, in the order given) with their tool calls."""
        idx = rows.tolist()
        off = self.tool_offsets
        counts = (off[1:] - off[:-1])[rows]
        calls = (np.repeat(off[:-1][rows] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
                 + np.arange(int(counts.sum()))).astype(np.intp)
        call_idx = calls.tolist()
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "tool_offsets":
                out[f.name] = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
            elif f.name.startswith("tool_"):
                out[f.name] = v[calls] if isinstance(v, np.ndarray) else [v[j] for j in call_idx]
            else:
                out[f.name] = v[rows] if isinstance(v, np.ndarray) else [v[i] for i in idx]
        return TraceDetail(**out)

    def first_failed_tool(self, rows: Sequence[int]) -> dict[int, str]:
        """``{row: name of its first tool call whose status is not ok}`` for ``rows`` (traces with a
        failed call; a row without one is left out)."""
        off, names, statuses = self.tool_offsets.tolist(), self.tool_names, self.tool_statuses
        out = {}
        for i in rows:
            for j in range(off[i], off[i + 1]):
                if statuses[j] != "ok":
                    out[i] = names[j]
                    break
        return out


@dataclass(slots=True)
class TraceColumns:
    """A batch of valid traces, columnar. Arrays have shape ``(n,)``; units in the names.

    ``records`` keeps the decoded dicts (dead letters and release manifests quote them);
    ``detail`` holds the fields only the sink and the feedback join read (``None`` for synthetic
    columns that have no records).
    """

    records: list[dict[str, Any]]
    trace_id: list[str]
    tenant_id: list[str]
    cohort: list[str]
    workflow: list[str]
    intent: list[str | None]
    release_id: list[str]
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64, source message offset
    event_time_ms: np.ndarray  # int64
    latency_ms: np.ndarray  # float64
    input_tokens: np.ndarray  # float64
    output_tokens: np.ndarray  # float64
    cost_usd: np.ndarray  # float64
    confidence: np.ndarray  # float64, NaN when absent
    outcome: np.ndarray  # int8, OUTCOME_CODES
    policy_blocked: np.ndarray  # bool
    tool_failure: np.ndarray  # bool: any tool call not ok
    retrieval_miss: np.ndarray  # bool: some retrieval query returned nothing usable
    fallback_used: np.ndarray  # bool
    rollout_arm: np.ndarray  # int8, ARM_CODES, -1 = not in a rollout
    candidate_release_id: list[str | None]
    stage_pct: np.ndarray  # float64, NaN = not in a rollout
    detail: TraceDetail | None = None

    @property
    def n(self) -> int:
        """Number of traces."""
        return len(self.trace_id)

    def take(self, rows: np.ndarray) -> TraceColumns:
        """Traces at ``rows`` (indexes, in the order given)."""
        idx = rows.tolist()
        out = {f.name: (v[rows] if isinstance(v, np.ndarray) else [v[i] for i in idx])
               for f in fields(self) if f.name != "detail" for v in (getattr(self, f.name),)}
        return TraceColumns(**out, detail=None if self.detail is None else self.detail.take(rows))

    def slice(self, start: int, stop: int) -> TraceColumns:
        """Traces ``start:stop`` (views of the arrays, copies of the lists)."""
        out = {f.name: getattr(self, f.name)[start:stop] for f in fields(self) if f.name != "detail"}
        return TraceColumns(**out, detail=None if self.detail is None else self.detail.slice(start, stop))


#: top-level fields of an ``AgentTrace`` record, in the order :class:`TraceFields` reads them
TRACE_FIELDS = ("trace_id", "tenant_id", "cohort", "workflow", "intent", "agent_id", "session_id", "event_time",
                "release", "rollout", "latency_ms", "input_tokens", "output_tokens", "cost_usd", "confidence",
                "outcome", "tool_calls", "retrieval_queries", "retrieval_hits", "policy_blocked", "retries",
                "fallback_used", "output_sha256", "attributes")
#: fields of its ``ReleaseManifest``
RELEASE_FIELDS = ("release_id", "model", "prompt_version", "tool_schema_version", "policy_version",
                  "retrieval_index_version")
_TOP = itemgetter(*TRACE_FIELDS)
_RELEASE = itemgetter(*RELEASE_FIELDS)
_TOOL = itemgetter("name", "status", "latency_ms")


class TraceFields:
    """The one pass over decoded ``AgentTrace`` dicts: every field as a sequence over the records.

    ``values[name]`` (length ``n``) for each of :data:`TRACE_FIELDS`, ``release[name]`` for
    :data:`RELEASE_FIELDS`, and the tool calls flat (``tool_names``, ``tool_statuses``,
    ``tool_latency_ms`` of length ``calls``; ``tool_counts`` per trace). The validation
    (:class:`~streams.processors.ingest.TraceFastCheck`) and the columns of the valid traces
    (:meth:`columns`) both read these, so no record is read twice.

    Raises:
        KeyError, TypeError: a record, its release or a tool call lacks a field or is not a dict
            (records from :class:`schemas.codec.AvroCodec` with the current schema never do).
    """

    __slots__ = (
        "n",
        "records",
        "release",
        "tool_calls",
        "tool_counts",
        "tool_latency_ms",
        "tool_names",
        "tool_statuses",
        "values",
    )

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        self.records = records
        n = self.n = len(records)
        top = zip(*map(_TOP, records), strict=True) if n else [()] * len(TRACE_FIELDS)
        self.values: dict[str, Sequence[Any]] = dict(zip(TRACE_FIELDS, top, strict=True))
        rel = zip(*map(_RELEASE, self.values["release"]), strict=True) if n else [()] * len(RELEASE_FIELDS)
        self.release: dict[str, Sequence[Any]] = dict(zip(RELEASE_FIELDS, rel, strict=True))
        calls = self.values["tool_calls"]
        self.tool_counts = np.fromiter(map(len, calls), dtype=np.int64, count=n)
        flat = [c for cs in calls for c in cs]
        self.tool_calls: list[dict[str, Any]] = flat
        names, statuses, lat = zip(*map(_TOOL, flat), strict=True) if flat else ((), (), ())
        self.tool_names: Sequence[str] = names
        self.tool_statuses: Sequence[str] = statuses
        self.tool_latency_ms: Sequence[float] = lat

    def columns(self, rows: np.ndarray | None, partitions: Sequence[int], offsets: Sequence[int]) -> TraceColumns:
        """:class:`TraceColumns` (with :class:`TraceDetail`) of the records at ``rows`` (indexes,
        ascending; ``None``: all), with their source ``partitions`` and ``offsets`` (one per row
        taken)."""
        v, rel = self.values, self.release
        if rows is None or len(rows) == self.n:
            take: Any = list
            counts = self.tool_counts
            call_rows = None
        else:
            idx = rows.tolist()
            take = (lambda seq: [seq[i] for i in idx]) if len(idx) != 1 else (lambda seq: [seq[idx[0]]])
            counts = self.tool_counts[rows]
            starts = np.concatenate(([0], np.cumsum(self.tool_counts)))[rows]
            call_rows = (np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
                         + np.arange(int(counts.sum()))).tolist()
        n = len(rows) if rows is not None else self.n
        f64 = np.float64

        def arr(name: str, dtype: Any) -> np.ndarray:
            return np.fromiter(take(v[name]), dtype=dtype, count=n)

        def flat(seq: Sequence[Any]) -> list[Any]:
            return list(seq) if call_rows is None else [seq[j] for j in call_rows]

        rollouts = take(v["rollout"])
        outcome = take(v["outcome"])
        statuses = flat(self.tool_statuses)
        tool_offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        bad_call = np.fromiter((s != "ok" for s in statuses), dtype=bool, count=len(statuses))
        queries, hits = arr("retrieval_queries", np.int64), arr("retrieval_hits", np.int64)
        detail = TraceDetail(
            agent_id=take(v["agent_id"]), session_id=take(v["session_id"]),
            model=take(rel["model"]), prompt_version=take(rel["prompt_version"]),
            tool_schema_version=take(rel["tool_schema_version"]), policy_version=take(rel["policy_version"]),
            retrieval_index_version=take(rel["retrieval_index_version"]), output_sha256=take(v["output_sha256"]),
            retrieval_queries=queries, retrieval_hits=hits, retries=arr("retries", np.int64),
            tool_offsets=tool_offsets, tool_names=flat(self.tool_names), tool_statuses=statuses,
            tool_latency_ms=np.asarray(flat(self.tool_latency_ms), dtype=f64),
            attributes=take(v["attributes"]),
            input_ref=[r.get("input_ref") for r in take(self.records)],
            output_ref=[r.get("output_ref") for r in take(self.records)])
        return TraceColumns(
            records=take(self.records),
            trace_id=take(v["trace_id"]),
            tenant_id=take(v["tenant_id"]),
            cohort=take(v["cohort"]),
            workflow=take(v["workflow"]),
            intent=take(v["intent"]),
            release_id=take(rel["release_id"]),
            partition=np.asarray(partitions, dtype=np.int32).reshape(n),
            offset=np.asarray(offsets, dtype=np.int64).reshape(n),
            event_time_ms=arr("event_time", np.int64),
            latency_ms=arr("latency_ms", f64),
            input_tokens=arr("input_tokens", f64),
            output_tokens=arr("output_tokens", f64),
            cost_usd=arr("cost_usd", f64),
            confidence=np.fromiter((math.nan if c is None else c for c in take(v["confidence"])), dtype=f64, count=n),
            outcome=np.fromiter(map(OUTCOME_CODES.__getitem__, outcome), dtype=np.int8, count=n),
            policy_blocked=arr("policy_blocked", bool),
            # any tool call not ok: failed calls counted over the trace's range of the flat calls
            tool_failure=np.diff(np.concatenate(([0], np.cumsum(bad_call)))[tool_offsets]) > 0,
            retrieval_miss=hits < queries,
            fallback_used=arr("fallback_used", bool),
            rollout_arm=np.fromiter((-1 if ro is None else ARM_CODES[ro["arm"]] for ro in rollouts), dtype=np.int8,
                                    count=n),
            candidate_release_id=[None if ro is None else ro["candidate_release_id"] for ro in rollouts],
            stage_pct=np.fromiter((math.nan if ro is None else ro["stage_pct"] for ro in rollouts), dtype=f64,
                                  count=n),
            detail=detail,
        )


def trace_columns(records: list[dict[str, Any]], partitions: Sequence[int], offsets: Sequence[int]) -> TraceColumns:
    """Build :class:`TraceColumns` (with :class:`TraceDetail`) from validated trace dicts: one
    pass over the records (:class:`TraceFields`), then per-column array conversions."""
    return TraceFields(records).columns(None, partitions, offsets)
