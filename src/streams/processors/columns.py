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
class TraceColumns:
    """A batch of valid traces, columnar. Arrays have shape ``(n,)``; units in the names.

    ``records`` keeps the decoded dicts (the sink writes nested fields from them).
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

    @property
    def n(self) -> int:
        """Number of traces."""
        return len(self.trace_id)

    def slice(self, start: int, stop: int) -> TraceColumns:
        """Traces ``start:stop`` (views of the arrays, copies of the lists)."""
        return TraceColumns(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})


def trace_columns(records: list[dict[str, Any]], partitions: Sequence[int], offsets: Sequence[int]) -> TraceColumns:
    """Build :class:`TraceColumns` from validated trace dicts (one pass per column, no per-row objects)."""
    n = len(records)
    f64 = np.float64
    conf = [r["confidence"] for r in records]
    rollouts = [r["rollout"] for r in records]
    return TraceColumns(
        records=records,
        trace_id=[r["trace_id"] for r in records],
        tenant_id=[r["tenant_id"] for r in records],
        cohort=[r["cohort"] for r in records],
        workflow=[r["workflow"] for r in records],
        intent=[r["intent"] for r in records],
        release_id=[r["release"]["release_id"] for r in records],
        partition=np.asarray(partitions, dtype=np.int32).reshape(n),
        offset=np.asarray(offsets, dtype=np.int64).reshape(n),
        event_time_ms=np.fromiter((r["event_time"] for r in records), dtype=np.int64, count=n),
        latency_ms=np.fromiter((r["latency_ms"] for r in records), dtype=f64, count=n),
        input_tokens=np.fromiter((r["input_tokens"] for r in records), dtype=f64, count=n),
        output_tokens=np.fromiter((r["output_tokens"] for r in records), dtype=f64, count=n),
        cost_usd=np.fromiter((r["cost_usd"] for r in records), dtype=f64, count=n),
        confidence=np.fromiter((math.nan if c is None else c for c in conf), dtype=f64, count=n),
        outcome=np.fromiter((OUTCOME_CODES[r["outcome"]] for r in records), dtype=np.int8, count=n),
        policy_blocked=np.fromiter((r["policy_blocked"] for r in records), dtype=bool, count=n),
        tool_failure=np.fromiter(
            (any(t["status"] != "ok" for t in r["tool_calls"]) for r in records), dtype=bool, count=n),
        retrieval_miss=np.fromiter(
            (r["retrieval_hits"] < r["retrieval_queries"] for r in records), dtype=bool, count=n),
        fallback_used=np.fromiter((r["fallback_used"] for r in records), dtype=bool, count=n),
        rollout_arm=np.fromiter((-1 if ro is None else ARM_CODES[ro["arm"]] for ro in rollouts), dtype=np.int8,
                                count=n),
        candidate_release_id=[None if ro is None else ro["candidate_release_id"] for ro in rollouts],
        stage_pct=np.fromiter((math.nan if ro is None else ro["stage_pct"] for ro in rollouts), dtype=f64, count=n),
    )
