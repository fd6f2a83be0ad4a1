"""Valid sample records for tests (plain Avro-shaped dicts, timestamps in epoch ms)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

MANIFEST = {"release_id": "rel-1", "model": "gpt-x-2026-10", "prompt_version": "p-14", "tool_schema_version": "t-3",
            "policy_version": "pol-7", "retrieval_index_version": "idx-22"}


def now_ms() -> int:
    return int(time.time() * 1000)


def trace(i: int = 0, **over: Any) -> dict[str, Any]:
    base = {
        "trace_id": f"tr-{i:08d}", "tenant_id": "acme", "cohort": "cardiology", "workflow": "soap_note",
        "intent": "follow_up", "agent_id": "scribe-1", "session_id": f"s-{i // 3}", "event_time": now_ms() - 60_000,
        "release": dict(MANIFEST), "rollout": None, "latency_ms": 1234.5, "input_tokens": 1800, "output_tokens": 420,
        "cost_usd": 0.0123, "confidence": 0.83, "outcome": "success",
        "tool_calls": [{"name": "ehr_lookup", "status": "ok", "latency_ms": 120.0}],
        "retrieval_queries": 2, "retrieval_hits": 2, "policy_blocked": False, "retries": 0, "fallback_used": False,
        "output_sha256": hashlib.sha256(f"o{i}".encode()).hexdigest(), "attributes": {"channel": "ambient"},
    }
    base.update(over)
    return base


def feedback(i: int = 0, trace_id: str = "tr-00000000", **over: Any) -> dict[str, Any]:
    base = {
        "feedback_id": f"fb-{i:08d}", "trace_id": trace_id, "tenant_id": "acme", "session_id": None,
        "source": "clinician_edit", "category": "omission", "regulatory_tags": [], "severity": "medium",
        "original_output_hash": hashlib.sha256(b"o").hexdigest(), "corrected_text": "Added the missing allergy list.",
        "edit_diff": None, "reviewer_id": "rev-7", "reviewer_role": "physician", "event_time": now_ms() - 30_000,
    }
    base.update(over)
    return base
