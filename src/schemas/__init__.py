"""selfheal contracts: pydantic v2 models (one module per contract) and their Avro codecs.

The ``.avsc`` files in ``avro/`` are the wire contracts (namespace ``selfheal.v1``); the models
here validate and document the same records, and ``tests/unit/test_contracts.py`` checks both agree
field by field.
"""

from schemas.action import ActionKind, IncidentAction
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
from schemas.incident import (
    ActionTaken,
    DriftMatrixEntry,
    Incident,
    IncidentKind,
    IncidentStatus,
    RecommendedAction,
    Slice,
)
from schemas.platform import PlatformSignal
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
    ActionTaken,
    DriftMatrixEntry,
    Incident,
    DeadLetter,
    ScorecardEntry,
    RolloutVerdict,
    IncidentAction,
    PlatformSignal,
)

__all__ = [
    "CONTRACTS",
    "ActionKind",
    "ActionTaken",
    "AgentTrace",
    "AgentTraceBatch",
    "AvroCodec",
    "CandidateArm",
    "CodecError",
    "ContentRef",
    "DeadLetter",
    "DriftMatrixEntry",
    "Feedback",
    "FeedbackBatch",
    "FeedbackCategory",
    "FeedbackSource",
    "Incident",
    "IncidentAction",
    "IncidentKind",
    "IncidentStatus",
    "MetricRole",
    "MetricStatus",
    "Outcome",
    "OutputRef",
    "PlatformSignal",
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
