"""Rollout verdict contract: promote / hold / rollback for one canary scorecard
(``avro/rollout_verdict.avsc``).

Produced by :mod:`streams.processors.canary` on ``agent.rollout-verdicts.v1`` (key: tenant_id);
rollout systems consume it to widen, wait or revert a release.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from schemas.common import Contract, EventTime, Label, TenantId
from schemas.incident import DriftMatrixEntry
from schemas.trace import ReleaseManifest


class CandidateArm(StrEnum):
    """Which candidate traces a scorecard compares with the control: ``canary`` (served, counts
    as exposure) or ``shadow`` (ran without serving; compared, not exposure)."""

    canary = "canary"
    shadow = "shadow"


class Verdict(StrEnum):
    """The decision: widen the rollout, keep the stage, or revert."""

    promote = "promote"
    hold = "hold"
    rollback = "rollback"


class RiskClass(StrEnum):
    """Workflow risk class (``high``: matches ``SELFHEAL_CANARY_HIGH_RISK_WORKFLOWS``)."""

    standard = "standard"
    high = "high"


class MetricRole(StrEnum):
    """``guardrail`` metrics can only block (roll back); ``success`` metrics must be shown
    non-inferior for a promotion and roll back when shown worse."""

    guardrail = "guardrail"
    success = "success"


class MetricStatus(StrEnum):
    """One metric's state: ``pending`` (no comparable samples yet, e.g. feedback not matured),
    ``inconclusive``, ``non_inferior`` (within the margin, sequentially shown), ``harm`` (worse
    than control, sequentially shown)."""

    pending = "pending"
    inconclusive = "inconclusive"
    non_inferior = "non_inferior"
    harm = "harm"


class ScorecardEntry(Contract):
    """One metric of a scorecard.

    ``control``/``candidate`` are in ``unit`` (a share of traces in [0, 1], p95 latency in ms,
    mean cost in USD). The test itself runs on the share of traces with the metric's harmful
    event; ``delta`` is that rate's relative change ``candidate/control - 1``
    (positive = worse) with its always-valid confidence interval ``[ci_low, ci_high]``, and
    ``p_value`` is the always-valid p-value of "the candidate is no worse".
    """

    AVRO_NAME: ClassVar[str] = "selfheal.v1.ScorecardEntry"

    metric: str
    role: MetricRole
    status: MetricStatus
    unit: str
    control: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float = Field(ge=0.0, le=1.0)
    samples_control: int = Field(ge=0)
    samples_candidate: int = Field(ge=0)
    events_control: int = Field(ge=0)
    events_candidate: int = Field(ge=0)


class RolloutVerdict(Contract):
    """A verdict event on ``agent.rollout-verdicts.v1`` (key: ``tenant_id``).

    One scorecard = (tenant, candidate release, cohort, workflow scope, arm, stage). ``verdict_id``
    is deterministic for the scorecard and ``revision`` grows with each event, so the ClickHouse
    sink (ReplacingMergeTree) and consumers can de-duplicate redelivered events.

    Raises:
        pydantic.ValidationError: naming the field and value at fault.
    """

    AVRO_NAME: ClassVar[str] = "selfheal.v1.RolloutVerdict"

    verdict_id: str
    revision: int = Field(ge=0)
    release_id: Label
    tenant_id: TenantId
    cohort: Label
    workflow: Label | None = None
    arm: CandidateArm
    stage_pct: float = Field(gt=0.0, le=100.0, allow_inf_nan=False)
    verdict: Verdict
    changed: bool
    risk_class: RiskClass
    alpha_promote: float = Field(gt=0.0, lt=1.0)
    alpha_rollback: float = Field(gt=0.0, lt=1.0)
    margin: float = Field(gt=1.0)
    min_samples: int = Field(ge=0)
    guardrail_fired: str | None = None
    regressed_metrics: list[str] = Field(default_factory=list)
    reason: str
    scorecard: list[ScorecardEntry]
    samples_control: int = Field(ge=0)
    samples_candidate: int = Field(ge=0)
    exposure: int = Field(ge=0)
    evidence_trace_ids: list[str] = Field(max_length=64)
    release: ReleaseManifest | None = None
    first_seen: EventTime
    emitted_at: EventTime
    restore_release_id: str | None = None
    restore_release: ReleaseManifest | None = None
    changed_components: list[str] = Field(default_factory=list)
    drift_matrix: DriftMatrixEntry | None = None
