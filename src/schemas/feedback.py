"""Feedback contract: typed human or system feedback on one trace (``avro/feedback.avsc``)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from schemas.common import (
    MAX_TEXT_LEN,
    Contract,
    EventTime,
    Identifier,
    Severity,
    TenantId,
    WindowedEventTime,
)


class FeedbackSource(StrEnum):
    """Who produced the feedback."""

    clinician_edit = "clinician_edit"
    reviewer = "reviewer"
    end_user = "end_user"
    downstream_outcome = "downstream_outcome"
    policy_engine = "policy_engine"


class FeedbackCategory(StrEnum):
    """Failure taxonomy. ``other`` is the Avro enum default, so a newer producer's symbol that an
    older consumer does not know resolves to ``other`` instead of failing."""

    hallucination = "hallucination"
    omission = "omission"
    stale_policy = "stale_policy"
    tool_failure = "tool_failure"
    formatting_error = "formatting_error"
    unsafe_recommendation = "unsafe_recommendation"
    routing_error = "routing_error"
    customer_specific_exception = "customer_specific_exception"
    medication_error = "medication_error"
    coding_error = "coding_error"
    retrieval_miss = "retrieval_miss"
    tone = "tone"
    other = "other"


class RegulatoryTag(StrEnum):
    """Regulatory areas a correction touches."""

    phi_handling = "phi_handling"
    medication_terminology = "medication_terminology"
    consent_language = "consent_language"
    billing_code_accuracy = "billing_code_accuracy"


class ReviewerRole(StrEnum):
    """Role of the person (or system) giving feedback; weights its confidence."""

    physician = "physician"
    nurse = "nurse"
    pharmacist = "pharmacist"
    coder = "coder"
    support_agent = "support_agent"
    qa_reviewer = "qa_reviewer"
    end_user = "end_user"
    system = "system"


#: Categories that count as safety signals in drift detection.
SAFETY_CATEGORIES = frozenset({FeedbackCategory.unsafe_recommendation, FeedbackCategory.medication_error})


class Feedback(Contract):
    """One feedback submission on ``agent.feedback.v1`` (key: ``tenant_id``).

    A replay repeats ``feedback_id``; a resubmit has a new id but the same tenant, trace, category
    and normalised correction (see :mod:`streams.processors.feedback`).

    Raises:
        pydantic.ValidationError: naming the field and value at fault.
    """

    AVRO_NAME: ClassVar[str] = "selfheal.v1.Feedback"

    feedback_id: Identifier
    trace_id: Identifier
    tenant_id: TenantId
    session_id: Identifier | None = None
    source: FeedbackSource
    category: FeedbackCategory
    regulatory_tags: list[RegulatoryTag] = Field(default_factory=list, max_length=8)
    severity: Severity
    original_output_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    corrected_text: str | None = Field(default=None, max_length=MAX_TEXT_LEN)
    edit_diff: str | None = Field(default=None, max_length=MAX_TEXT_LEN)
    reviewer_id: Identifier
    reviewer_role: ReviewerRole
    event_time: WindowedEventTime


class FeedbackBatch(Contract):
    """Feedback of one tenant in one Kafka message (what the SDK sends)."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.FeedbackBatch"

    batch_id: Identifier
    producer_id: Identifier
    sent_at: EventTime
    items: list[Feedback] = Field(min_length=1)
