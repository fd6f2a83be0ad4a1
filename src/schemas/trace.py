"""Agent trace contract: one structured record per agent run (``avro/agent_trace.avsc``).

Agents emit traces through :class:`streams.sdk.SelfhealProducer`, which validates them with these
models before sending. The worker re-validates on the hot path with the vectorised checks in
:mod:`streams.processors.ingest` and falls back to these models to explain a failing record.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from schemas.common import (
    MAX_ATTRIBUTE_LEN,
    MAX_ATTRIBUTES,
    MAX_COST_USD,
    MAX_LATENCY_MS,
    MAX_RETRIES,
    MAX_TOKENS,
    MAX_TOOL_CALLS,
    Contract,
    EventTime,
    Identifier,
    Label,
    TenantId,
    WindowedEventTime,
)

LatencyMs = Annotated[float, Field(ge=0.0, le=MAX_LATENCY_MS, allow_inf_nan=False)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]


class Outcome(StrEnum):
    """How the run ended (Avro enum ``Outcome``)."""

    success = "success"
    failure = "failure"
    escalated = "escalated"
    abandoned = "abandoned"


class ToolStatus(StrEnum):
    """Result of one tool call (Avro enum ``ToolStatus``)."""

    ok = "ok"
    error = "error"
    timeout = "timeout"
    denied = "denied"


class RolloutArm(StrEnum):
    """Arm of a staged rollout: control serves the incumbent, canary the candidate, shadow runs
    the candidate without serving it (Avro enum ``RolloutArm``)."""

    control = "control"
    canary = "canary"
    shadow = "shadow"


class ReleaseManifest(Contract):
    """Versions deployed for a run; ``release_id`` names the whole manifest."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.ReleaseManifest"

    release_id: Label
    model: Identifier
    prompt_version: Identifier
    tool_schema_version: Identifier
    policy_version: Identifier
    retrieval_index_version: Identifier


class Rollout(Contract):
    """Rollout arm and exposure stage (percent of traffic on the candidate, (0, 100])."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.Rollout"

    arm: RolloutArm
    stage_pct: float = Field(gt=0.0, le=100.0, allow_inf_nan=False)
    candidate_release_id: Label


class ToolCall(Contract):
    """One tool invocation inside a run; ``latency_ms`` in milliseconds."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.ToolCall"

    name: Label
    status: ToolStatus
    latency_ms: LatencyMs


#: longest inline text of a :class:`ContentRef`, chars (larger content goes by ``uri``)
MAX_REF_TEXT = 8_192
MAX_REF_URI = 2_048


class ContentRef(Contract):
    """Where a run's input or original output can be found again (replayable evaluation sets,
    ``streams.evalset``): an external ``uri``, a redacted inline ``text`` of at most
    :data:`MAX_REF_TEXT` chars, and the hex SHA-256 of the full content; every part optional."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.ContentRef"

    uri: str | None = Field(default=None, min_length=1, max_length=MAX_REF_URI)
    text: str | None = Field(default=None, max_length=MAX_REF_TEXT)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class OutputRef(ContentRef):
    """A :class:`ContentRef` of the run's original output (Avro record ``OutputRef``: one record
    cannot use a named type twice under fastavro's schema expansion)."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.OutputRef"


class AgentTrace(Contract):
    """One agent run, as emitted to ``agent.traces.v1`` (key: ``tenant_id``).

    Units: ``latency_ms`` ms, tokens as counts, ``cost_usd`` US dollars, ``confidence`` in [0, 1].
    ``event_time`` must lie between ``now - max_event_age_s`` and ``now + max_clock_skew_s`` when a
    validation context ``{"now_ms", "max_event_age_s", "max_clock_skew_s"}`` is given, and after
    2020-01-01 always.

    Raises:
        pydantic.ValidationError: naming the field (``loc``) and the offending value.
    """

    AVRO_NAME: ClassVar[str] = "selfheal.v1.AgentTrace"

    trace_id: Identifier
    tenant_id: TenantId
    cohort: Label
    workflow: Label
    intent: Label | None = None
    agent_id: Identifier
    session_id: Identifier
    event_time: WindowedEventTime
    release: ReleaseManifest
    rollout: Rollout | None = None
    latency_ms: LatencyMs
    input_tokens: Tokens
    output_tokens: Tokens
    cost_usd: float = Field(ge=0.0, le=MAX_COST_USD, allow_inf_nan=False)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    outcome: Outcome
    tool_calls: list[ToolCall] = Field(default_factory=list, max_length=MAX_TOOL_CALLS)
    retrieval_queries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    retrieval_hits: int = Field(default=0, ge=0, le=MAX_RETRIES)
    policy_blocked: bool = False
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    fallback_used: bool = False
    output_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    attributes: dict[
        Annotated[str, Field(min_length=1, max_length=128)],
        Annotated[str, Field(max_length=MAX_ATTRIBUTE_LEN)],
    ] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)
    input_ref: ContentRef | None = None
    output_ref: OutputRef | None = None

    # a field validator (not a model validator), so the error names the field and its value
    @field_validator("retrieval_hits")
    @classmethod
    def _hits_within_queries(cls, value: int, info: ValidationInfo) -> int:
        queries = info.data.get("retrieval_queries")
        if queries is not None and value > queries:
            raise ValueError(f"retrieval_hits={value} exceeds retrieval_queries={queries}")
        return value


class AgentTraceBatch(Contract):
    """Traces of one tenant in one Kafka message (what the SDK sends; see ``avro/``)."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.AgentTraceBatch"

    batch_id: Identifier
    producer_id: Identifier
    sent_at: EventTime
    traces: list[AgentTrace] = Field(min_length=1)
