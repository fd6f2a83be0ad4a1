"""Feedback aggregation: join each item to its trace, deduplicate, reconcile and score
corrections, and turn them into rows and detector events.

Modules: :mod:`~streams.processors.feedback.traces` (:class:`TraceRef`, the recent-trace index and
the join's waiting rule), :mod:`~streams.processors.feedback.processor` (:class:`FeedbackProcessor`:
dedup statuses, state, rows), :mod:`~streams.processors.feedback.corrections` (the pure rules:
near-duplicates, contradictions, templates and patterns, confidence, conflict resolution).
Method and measured figures: docs/feedback.md.
"""

from streams.processors.feedback.processor import (
    STATUSES,
    FeedbackProcessor,
    FeedbackResult,
    conflict_id,
    dedup_key,
    normalise_correction,
)
from streams.processors.feedback.traces import TRACE_REF_COLUMNS, TraceIndex, TraceRef

__all__ = ["STATUSES", "TRACE_REF_COLUMNS", "FeedbackProcessor", "FeedbackResult", "TraceIndex", "TraceRef",
           "conflict_id", "dedup_key", "normalise_correction"]
