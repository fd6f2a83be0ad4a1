"""Incident contract: one drift episode per slice and metric group (``avro/incident.avsc``)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from schemas.common import Contract, EventTime, Severity
from schemas.trace import ReleaseManifest


class IncidentStatus(StrEnum):
    """Lifecycle: ``open`` once per episode, then ``updated`` (bounded rate), then ``resolved``."""

    open = "open"
    updated = "updated"
    resolved = "resolved"


class IncidentKind(StrEnum):
    """The drift matrix: what moved.

    - ``input_drift``: the input mix (workflow, intent, tool categories, input tokens) moved;
    - ``output_drift``: output length, confidence, cost or latency moved;
    - ``workflow_drift``: human corrections, escalations, failures, tool failures moved;
    - ``release_regression``: the change starts with a release and its control is stable;
    - ``safety``: policy blocks or unsafe-recommendation feedback moved.
    """

    input_drift = "input_drift"
    output_drift = "output_drift"
    workflow_drift = "workflow_drift"
    release_regression = "release_regression"
    safety = "safety"


class RecommendedAction(StrEnum):
    """What a rollout system or on-call should do."""

    freeze_rollout = "freeze_rollout"
    sample_outputs = "sample_outputs"
    compare_cohorts = "compare_cohorts"
    roll_back = "roll_back"
    observe = "observe"


class Slice(Contract):
    """Where: the layer and the key parts that define it (``None`` = all)."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.Slice"

    layer: str
    tenant_id: str | None = None
    cohort: str | None = None
    workflow: str | None = None
    release_id: str | None = None


class ActionTaken(Contract):
    """One incident action applied by the worker (an :class:`~schemas.action.IncidentAction`, as
    the incident records it)."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.ActionTaken"

    action_id: str
    action: str
    actor: str
    reason: str
    at: EventTime
    until: EventTime | None = None
    release_id: str | None = None
    restored_release_id: str | None = None


class DriftMatrixEntry(Contract):
    """This incident's row of the drift matrix (``docs/drift-matrix.md``): the likely cause, the
    safe fix, the gate a fix must pass before it ships, and whether rollback is always required."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.DriftMatrixEntry"

    likely_cause: str
    safe_fix: str
    validation_gate: str
    rollback_required: bool


class Incident(Contract):
    """An incident event on ``agent.incidents.v1`` (key: ``tenant_id``, ``"platform"`` for a
    platform-wide incident: every event of an incident and of a tenant stays in order on the
    tenant's partition, next to its traces and actions).

    ``baseline``/``observed`` are in the metric's unit (a rate in [0, 1], ms, tokens or USD);
    ``effect`` is ``observed / baseline`` for rates and quantiles, a standardized shift for means.
    ``revision`` increases with each event of the same incident; the ClickHouse sink keeps the
    highest (ReplacingMergeTree version column).
    """

    AVRO_NAME: ClassVar[str] = "selfheal.v1.Incident"

    incident_id: str
    status: IncidentStatus
    revision: int = Field(ge=0)
    kind: IncidentKind
    slice: Slice
    metric_group: str
    metric: str
    baseline: float
    observed: float
    observed_ci_low: float
    observed_ci_high: float
    effect: float
    samples: int = Field(ge=0)
    detector: str
    statistic: float
    threshold: float
    severity: Severity
    action: RecommendedAction
    release_id: str | None = None
    release: ReleaseManifest | None = None
    also_seen: list[str] = Field(default_factory=list)
    summary: str
    evidence_trace_ids: list[str] = Field(max_length=64)
    detected_at_trace_id: str
    first_seen: EventTime
    last_seen: EventTime
    emitted_at: EventTime
    detected_at: EventTime | None = None
    resolution: str | None = None
    acknowledged_by: str | None = None
    suppressed_until: EventTime | None = None
    mitigated_at: EventTime | None = None
    actions: list[ActionTaken] = Field(default_factory=list, max_length=32)
    restore_release_id: str | None = None
    restore_release: ReleaseManifest | None = None
    changed_components: list[str] = Field(default_factory=list)
    drift_matrix: DriftMatrixEntry | None = None
