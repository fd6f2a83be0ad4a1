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
    Outcome,
    ReleaseManifest,
    Rollout,
    RolloutArm,
    ToolCall,
    ToolStatus,
)

#: Every contract model, for the model/.avsc agreement test.
CONTRACTS = (
    ReleaseManifest,
    Rollout,
    ToolCall,
    AgentTrace,
    AgentTraceBatch,
    Feedback,
    FeedbackBatch,
    Slice,
    Incident,
    DeadLetter,
)

__all__ = [
    "CONTRACTS",
    "AgentTrace",
    "AgentTraceBatch",
    "AvroCodec",
    "CodecError",
    "DeadLetter",
    "Feedback",
    "FeedbackBatch",
    "FeedbackCategory",
    "FeedbackSource",
    "Incident",
    "IncidentKind",
    "IncidentStatus",
    "Outcome",
    "RecommendedAction",
    "RegulatoryTag",
    "ReleaseManifest",
    "ReviewerRole",
    "Rollout",
    "RolloutArm",
    "Severity",
    "Slice",
    "ToolCall",
    "ToolStatus",
    "default_codec",
]
