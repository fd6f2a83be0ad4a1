"""A crafted multi-tenant feedback stream whose aggregation outcome is known by hand.

Tenants and cohorts: t-a, t-b, t-c in cardiology, t-d in oncology. All traces run the same
workflow and release, so a correction's pattern depends on its category and wording only.

What the stream contains (and what ``EXPECTED`` says must come out):

- PHI in a correction (name, date of birth, record number, phone, e-mail);
- an exact replay (same feedback_id twice), a resubmit (new id, same normalised text) and a
  near-duplicate (another reviewer, same correction worded differently) on one trace;
- a category conflict (nurse: omission vs physician: hallucination → physician wins by role
  weight) and an opposite-dose conflict (pharmacist 25 mg vs nurse 50 mg → pharmacist wins);
- scope ladder (k = 3 tenants, 3 sessions): a pattern in 3 sessions of t-a (tenant), one in 2
  sessions of t-a (session), one in t-a, t-b, t-c (segment: cardiology), one in t-a, t-b, t-d
  (global candidate: 3 tenants over 2 cohorts).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from tests.factories import MANIFEST

PHI = ("Patient: Jane Doe, DOB 04/12/1961, MRN: A1234567, call 617-555-0134, jane.doe@example.org")
PHI_LEAKS = ("Jane", "jane", "Doe", "1961", "A1234567", "555-0134", "example.org", "rev-jdoe")
COHORT = {"t-a": "cardiology", "t-b": "cardiology", "t-c": "cardiology", "t-d": "oncology"}
TENANT_TEXT = "Applied clinic template for discharge instructions."
SESSION_TEXT = "Softened wording about smoking status for the patient portal."
SEGMENT_TEXT = "Moved ECG findings under the correct SOAP heading."
GLOBAL_TEXT = "Re-pulled HbA1c results from the chart; lookup had failed."


def _trace(tenant: str, n: int, t_ms: int, session: str | None = None) -> dict[str, Any]:
    tid = f"tr-{tenant}-{n:03d}"
    return {
        "trace_id": tid, "tenant_id": tenant, "cohort": COHORT[tenant], "workflow": "soap_note",
        "intent": "follow_up", "agent_id": "scribe-1", "session_id": session or f"s-{tenant}-{n:03d}",
        "event_time": t_ms, "release": dict(MANIFEST), "rollout": None, "latency_ms": 1234.5,
        "input_tokens": 1800, "output_tokens": 420, "cost_usd": 0.0123, "confidence": 0.83, "outcome": "success",
        "tool_calls": [{"name": "ehr_lookup", "status": "ok", "latency_ms": 120.0}],
        "retrieval_queries": 2, "retrieval_hits": 2, "policy_blocked": False, "retries": 0, "fallback_used": False,
        "output_sha256": hashlib.sha256(tid.encode()).hexdigest(), "attributes": {"channel": "ambient"},
    }


def _fb(fid: str, trace: dict[str, Any], t_ms: int, text: str, category: str = "omission", reviewer: str = "rev-1",
        role: str = "physician", source: str = "clinician_edit", severity: str = "medium") -> dict[str, Any]:
    return {
        "feedback_id": fid, "trace_id": trace["trace_id"], "tenant_id": trace["tenant_id"], "session_id": None,
        "source": source, "category": category,
        "regulatory_tags": ["medication_terminology"] if category == "medication_error" else [],
        "severity": severity, "original_output_hash": trace["output_sha256"], "corrected_text": text,
        "edit_diff": None, "reviewer_id": reviewer, "reviewer_role": role, "event_time": t_ms,
    }


def crafted_stream(now_ms: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(traces, feedback)`` in send order (feedback after all traces). Event times lie in the
    last hour before ``now_ms``."""
    now = now_ms or int(time.time() * 1000)
    t0 = now - 3_600_000
    traces: list[dict[str, Any]] = []

    def tr(tenant: str, session: str | None = None) -> dict[str, Any]:
        traces.append(_trace(tenant, len(traces), t0 + 1000 * len(traces), session))
        return traces[-1]

    phi_tr, dup_tr, conf_tr, dose_tr = tr("t-a"), tr("t-a"), tr("t-b"), tr("t-c")
    ten_trs = [tr("t-a", f"s-a-{i}") for i in range(3)]
    sess_trs = [tr("t-a", f"s-a-{i}") for i in range(2)]  # same sessions as above: 2 distinct
    seg_trs = [tr(t) for t in ("t-a", "t-b", "t-c")]
    glob_trs = [tr(t) for t in ("t-a", "t-b", "t-d")]
    tf = t0 + 600_000
    fb: list[dict[str, Any]] = []

    def add(*args: Any, **kw: Any) -> dict[str, Any]:
        fb.append(_fb(f"fb-{len(fb):03d}", args[0], tf + 1000 * len(fb), *args[1:], **kw))
        return fb[-1]

    add(phi_tr, f"Added missing allergy list. {PHI}", reviewer="rev-jdoe")
    first = add(dup_tr, "Corrected metoprolol dose to 25 mg twice daily.", category="medication_error",
                role="pharmacist", source="reviewer", severity="high")
    fb.append(dict(first))  # exact replay: same id, same content
    add(dup_tr, "  CORRECTED metoprolol dose to 25 MG, twice daily ", category="medication_error",
        role="pharmacist", source="reviewer", severity="high")  # resubmit (same reviewer)
    add(dup_tr, "Metoprolol dose corrected to 25mg twice daily", category="medication_error", reviewer="rev-2",
        role="physician", severity="high")  # near-duplicate by another reviewer
    add(conf_tr, "Added the missing allergy list.", category="omission", reviewer="rev-3", role="nurse")
    add(conf_tr, "Removed the allergy list; it was never discussed.", category="hallucination", reviewer="rev-4",
        role="physician")
    add(dose_tr, "Corrected lisinopril dose to 10 mg daily.", category="medication_error", reviewer="rev-5",
        role="pharmacist", source="reviewer", severity="high")
    add(dose_tr, "Corrected lisinopril dose to 20 mg daily.", category="medication_error", reviewer="rev-6",
        role="nurse", severity="high")
    for t in ten_trs:
        add(t, TENANT_TEXT, category="customer_specific_exception")
    for t in sess_trs:
        add(t, SESSION_TEXT, category="tone")
    for t in seg_trs:
        add(t, SEGMENT_TEXT, category="formatting_error")
    for t in glob_trs:
        add(t, GLOBAL_TEXT, category="tool_failure")
    return traces, fb


#: What the crafted stream must aggregate to.
EXPECTED = {
    "submissions": 20,  # every feedback record, the replay included
    "status": {"new": 17, "replay": 1, "resubmit": 1, "near_duplicate": 1},
    "unique": 17,  # feedback rows after FINAL
    "conflict_rows": 4,
    "lost": {("omission", "nurse"), ("medication_error", "nurse")},
    "scopes": {
        # (scope, tenant_id, cohort, category) → tenants counted
        ("tenant", "t-a", "", "customer_specific_exception"): 1,
        ("session", "t-a", "", "tone"): 1,
        ("segment", "", "cardiology", "formatting_error"): 3,
        ("global_candidate", "", "", "tool_failure"): 3,
    },
}
