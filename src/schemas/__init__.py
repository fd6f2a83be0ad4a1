"""selfheal contracts: pydantic v2 models (one module per contract) and their Avro codecs.

The ``.avsc`` files in ``avro/`` are the wire contracts (namespace ``selfheal.v1``); the models
here validate and document the same records, and ``tests/unit/test_contracts.py`` checks both agree
field by field.
"""

from schemas.codec import AvroCodec, CodecError, default_codec
from schemas.common import Severity
from schemas.deadletter import DeadLetter
from schemas.feedback import (
    Feedback,
    FeedbackBatch,
    FeedbackCategory,
    FeedbackSource,
    RegulatoryTag,
    ReviewerRole,
)
from schemas.incident import Incident, IncidentKind, IncidentStatus, RecommendedAction, Slice
from schemas.trace import (
    AgentTrace,
    AgentTraceBatch,
    ContentRef,
    Outcome,
    OutputRef,
    ReleaseManifest,
    Rollout,
    RolloutArm,
    ToolCall,
    ToolStatus,
)
from schemas.verdict import (
    CandidateArm,
    MetricRole,
    MetricStatus,
    RiskClass,
    RolloutVerdict,
    ScorecardEntry,
    Verdict,
)

#: Every contract model, for the model/.avsc agreement test.
CONTRACTS = (
    ReleaseManifest,
    Rollout,
    ToolCall,
    ContentRef,
    OutputRef,
    AgentTrace,
    AgentTraceBatch,
    Feedback,
    FeedbackBatch,
    Slice,
    Incident,
    DeadLetter,
    ScorecardEntry,
    RolloutVerdict,
)

__all__ = [
    "CONTRACTS",
    "AgentTrace",
    "AgentTraceBatch",
    "AvroCodec",
    "CandidateArm",
    "CodecError",
    "ContentRef",
    "DeadLetter",
    "Feedback",
    "FeedbackBatch",
    "FeedbackCategory",
    "FeedbackSource",
    "Incident",
    "IncidentKind",
    "IncidentStatus",
    "MetricRole",
    "MetricStatus",
    "Outcome",
    "OutputRef",
    "RecommendedAction",
    "RegulatoryTag",
    "ReleaseManifest",
    "ReviewerRole",
    "RiskClass",
    "Rollout",
    "RolloutArm",
    "RolloutVerdict",
    "ScorecardEntry",
    "Severity",
    "Slice",
    "ToolCall",
    "ToolStatus",
    "Verdict",
    "default_codec",
]
