"""Feedback dedup and trace join."""

from __future__ import annotations

import json

import pytest

from streams.privacy import Redactor
from streams.processors.columns import RawMessage
from streams.processors.feedback import FeedbackProcessor, TraceIndex, TraceRef, dedup_key, normalise_correction
from streams.state import DictBackend
from tests.factories import feedback

REF = TraceRef(tenant_id="acme", cohort="cardiology", workflow="soap_note", release_id="rel-1", partition=0,
               session_id="s-1", event_time_ms=1_790_000_000_000)


def proc(index=None):
    return FeedbackProcessor(DictBackend(), index or TraceIndex(), Redactor(), b"k")


def run(p, records):
    src = [RawMessage("agent.feedback.v1", 0, i, b"acme", b"") for i in range(len(records))]
    return p.process(records, [0] * len(records), list(range(len(records))), [REF] * len(records), src)


def test_normalise_correction():
    assert normalise_correction("  Metoprolol 25 MG,  BID. ") == "metoprolol 25 mg bid"
    assert normalise_correction(None) == ""


def test_replays_and_resubmits_are_recognised_and_share_the_dedup_key():
    p = proc()
    first = feedback(1)
    replay = dict(first)
    resubmit = feedback(2, corrected_text="  ADDED the missing allergy   list  ")
    other = feedback(3, category="hallucination")
    res = run(p, [first, replay, resubmit, other])
    assert [r["dedup_status"] for r in res.rows] == ["new", "replay", "resubmit", "new"]
    assert res.rows[0]["dedup_key"] == res.rows[1]["dedup_key"] == res.rows[2]["dedup_key"] != res.rows[3]["dedup_key"]
    assert len(res.corrections) == 2  # only new corrections count for detection
    # a restarted worker with the same state still knows them
    again = run(FeedbackProcessor(p.backend, TraceIndex(), Redactor(), b"k"), [replay])
    assert again.rows[0]["dedup_status"] == "replay" and not again.corrections


def test_dedup_key_depends_on_tenant_trace_category_and_text():
    k = dedup_key("acme", "t1", "omission", "x")
    assert k != dedup_key("globex", "t1", "omission", "x") != dedup_key("acme", "t2", "omission", "x")
    assert k != dedup_key("acme", "t1", "hallucination", "x") and k != dedup_key("acme", "t1", "omission", "y")


def test_reviewer_ids_are_hmac_hashed_per_tenant_and_text_is_redacted():
    res = run(proc(), [feedback(1, corrected_text="Call Dr. House at 617-555-0134 about Patient: John Smith")])
    row = res.rows[0]
    assert "rev-7" not in row["reviewer_id_hash"] and len(row["reviewer_id_hash"]) == 32
    assert "617" not in row["corrected_text"] and "John" not in row["corrected_text"]


def test_unknown_trace_waits_for_the_watermark_then_dead_letters():
    index = TraceIndex()
    p = proc(index)
    fb = feedback(1, trace_id="never-seen")
    refs, waiting = p.resolve([fb], [0])
    assert refs == [None] and waiting == [0]  # no trace watermark yet: wait
    index.add_many([], [], {0: fb["event_time"] + 10_000})
    refs, waiting = p.resolve([fb], [0])
    assert waiting == []
    res = p.process([fb], [0], [5], refs, [RawMessage("agent.feedback.v1", 0, 5, b"acme", b"")])
    (dl,) = res.dead_letters
    assert dl.error_class == "unknown_trace" and dl.field == "trace_id" and dl.value == "never-seen"


# ---------------------------------------------------------------- aggregation (issue 4)

def run_at(p, records, start=0, partition=0):
    """Process records as single-record messages at offsets start, start+1, ..."""
    offs = list(range(start, start + len(records)))
    src = [RawMessage("agent.feedback.v1", partition, o, b"acme", b"") for o in offs]
    return p.process(records, [partition] * len(records), offs, [REF] * len(records), src, [-1] * len(records))


def final(rows):
    """What ReplacingMergeTree(version) ... FINAL keeps: per (tenant, dedup_key) the highest
    version, the last written on ties."""
    out = {}
    for r in rows:
        k = (r["tenant_id"], r["dedup_key"])
        if k not in out or r["version"] >= out[k]["version"]:
            out[k] = r
    return out


def test_near_duplicate_from_another_reviewer_shares_the_key_and_raises_agreement():
    p = proc()
    t0 = feedback(0)["event_time"]
    first = feedback(1, corrected_text="Corrected metoprolol dose to 25 mg twice daily.", category="medication_error",
                     severity="high", event_time=t0)
    para = feedback(2, corrected_text="Metoprolol dose corrected to 25mg twice daily", category="medication_error",
                    severity="high", reviewer_id="rev-9", reviewer_role="pharmacist", source="reviewer",
                    event_time=t0 + 1000)
    other_dose = feedback(3, corrected_text="Corrected metoprolol dose to 50 mg twice daily.",
                          category="medication_error", severity="high", reviewer_id="rev-7", event_time=t0 + 2000)
    res = run_at(p, [first, para, other_dose])
    assert [s["dedup_status"] for s in res.submissions] == ["new", "near_duplicate", "new"]
    assert res.submissions[0]["dedup_key"] == res.submissions[1]["dedup_key"] != res.submissions[2]["dedup_key"]
    assert len(res.corrections) == 2  # the near-duplicate does not count as a correction
    rows = final(res.rows)
    assert len(rows) == 2
    agreed = rows[("acme", res.submissions[0]["dedup_key"])]
    assert agreed["dedup_status"] == "near_duplicate" and agreed["agreement_count"] == 2 and agreed["submissions"] == 2
    assert agreed["confidence"] == pytest.approx(1.0 * 1.0 * 0.91 * 0.9, abs=1e-6)
    assert agreed["version"] == t0 + 1000
    # the same reviewer (rev-7) wrote 25 mg and 50 mg: a contradiction, but not a conflict
    assert not any(r["conflict"] for r in rows.values())


def test_conflicting_reviewers_are_both_kept_flagged_and_resolved():
    p = proc()
    t0 = feedback(0)["event_time"]
    nurse = feedback(1, category="omission", corrected_text="Added the missing allergy list.", reviewer_id="rev-1",
                     reviewer_role="nurse", event_time=t0)
    physician = feedback(2, category="hallucination", corrected_text="Removed the allergy list, never discussed.",
                         reviewer_id="rev-2", reviewer_role="physician", event_time=t0 + 1000)
    res = run_at(p, [nurse, physician])
    rows = final(res.rows)
    k_n, k_p = res.submissions[0]["dedup_key"], res.submissions[1]["dedup_key"]
    n, ph = rows[("acme", k_n)], rows[("acme", k_p)]
    assert n["conflict"] and ph["conflict"] and n["conflict_id"] == ph["conflict_id"] != ""
    assert (n["resolution"], ph["resolution"]) == ("lost", "won")
    assert n["resolution_rule"] == "role_weight" and n["resolved_against"] == k_p
    assert n["version"] == t0 + 1  # the nurse's row was rewritten after the physician's arrived
    # two more nurses agree with the first nurse (near-duplicates): role weight still decides
    more = [feedback(3, category="omission", corrected_text="Added missing allergy list", reviewer_id="rev-3",
                     reviewer_role="nurse", event_time=t0 + 2000)]
    rows = final(res.rows + run_at(p, more, start=2).rows)
    assert rows[("acme", k_n)]["agreement_count"] == 2 and rows[("acme", k_n)]["resolution"] == "lost"
    # a physician joins the nurses: role ties at 1.0, the majority (3 reviewers vs 1) wins
    doc = feedback(4, category="omission", corrected_text="added the missing allergy list", reviewer_id="rev-4",
                   reviewer_role="physician", event_time=t0 + 3000)
    res3 = run_at(p, [doc], start=3)
    assert res3.submissions[0]["dedup_status"] == "resubmit"
    rows = final(res.rows + res3.rows)
    assert (rows[("acme", k_n)]["resolution"], rows[("acme", k_p)]["resolution"]) == ("won", "lost")
    assert rows[("acme", k_p)]["resolution_rule"] == "majority"


T0 = feedback(0)["event_time"]


def _stream(t0=T0):
    return [
        feedback(1, event_time=t0),
        feedback(2, category="hallucination", corrected_text="Removed CT scan.", reviewer_id="rev-2",
                 reviewer_role="qa_reviewer", source="reviewer", event_time=t0 + 10),
        feedback(3, corrected_text="Added missing allergy list to the note", reviewer_id="rev-3", event_time=t0 + 20),
        feedback(1, event_time=t0),  # client replay
        feedback(4, corrected_text="  ADDED the missing   allergy list ", event_time=t0 + 30),  # resubmit
    ]


def test_redelivery_after_a_crash_gives_the_same_final_rows_whether_or_not_the_state_was_saved():
    clean = proc()
    ref = run_at(clean, _stream())
    want = final(ref.rows)
    statuses = [s["dedup_status"] for s in ref.submissions]
    assert statuses == ["new", "new", "near_duplicate", "replay", "resubmit"]
    # crash after the changelog was written but before ClickHouse: state has it, rows were lost
    ahead = FeedbackProcessor(clean.backend, TraceIndex(), Redactor(), b"k")
    again = run_at(ahead, _stream())
    assert final(again.rows) == want
    assert [s["dedup_status"] for s in again.submissions] == statuses  # submissions keep their status
    assert not again.corrections  # detectors do not count them twice
    # crash before the changelog was written: processed from scratch, same rows
    assert final(run_at(proc(), _stream()).rows) == want


def test_replaying_the_stream_at_new_positions_does_not_change_final():
    p = proc()
    first = run_at(p, _stream())
    second = run_at(p, _stream(), start=100)
    assert {s["dedup_status"] for s in second.submissions} == {"replay"}
    assert all(r["version"] == 0 for r in second.rows)
    assert final(first.rows + second.rows) == final(first.rows)


def test_per_trace_limits_dead_letter_instead_of_growing_state():
    p = FeedbackProcessor(DictBackend(), TraceIndex(), Redactor(), b"k", max_corrections_per_trace=2)
    recs = [feedback(i, category=c) for i, c in enumerate(("omission", "tone", "coding_error"))]
    res = run_at(p, recs)
    assert [s["dedup_status"] for s in res.submissions] == ["new", "new"]
    (dl,) = res.dead_letters
    assert dl.error_class == "feedback_limit" and dl.value == "tr-00000000" and "2 unique corrections" in dl.message


def test_no_phi_in_rows_or_in_the_changelog_state():
    p = proc()
    phi = "Patient: Jane Doe, DOB 04/12/1961, MRN: A1234567, call 617-555-0134, jane.doe@example.org"
    res = run_at(p, [feedback(1, corrected_text=f"Added missing allergy list. {phi}", edit_diff=f"+ {phi}",
                              reviewer_id="dr.jane.smith")])
    stored = b"".join(p.backend.data.values()).decode() + json.dumps(res.rows) + json.dumps(res.submissions)
    for leak in ("Jane", "jane", "Doe", "1961", "A1234567", "555-0134", "617", "example.org", "dr.jane.smith"):
        assert leak not in stored, leak
    (row,) = res.rows
    assert "[NAME]" in row["corrected_text"] and "<name>" in row["template"] and "<phone>" in row["template"]


def test_final_row_keeps_the_first_wording_of_a_resubmitted_correction():
    p = proc()
    t0 = 1_790_000_000_000
    first = feedback(1, corrected_text="Added the missing allergy list.", event_time=t0)
    again = feedback(2, corrected_text="  ADDED THE MISSING ALLERGY   LIST ", event_time=t0 + 1000)
    res = run_at(p, [first, again])
    assert [s["dedup_status"] for s in res.submissions] == ["new", "resubmit"]
    (row,) = final(res.rows).values()
    assert row["corrected_text"] == "Added the missing allergy list." and row["submissions"] == 2


@pytest.mark.parametrize("text", ["Maria Garcia has diabetes", "pt Jose Alvarez, call 415-555-0199",
                                  "Dr. Patel prescribed metformin 500mg to Ahmed Khan"])
def test_issue_18_bare_names_reach_neither_the_row_nor_the_template_nor_the_state(text):
    p = proc()
    res = run_at(p, [feedback(1, corrected_text=text, edit_diff=f"+ {text}")])
    stored = b"".join(p.backend.data.values()).decode() + json.dumps(res.rows) + json.dumps(res.submissions)
    for name in ("Maria", "Garcia", "Jose", "Alvarez", "Patel", "Ahmed", "Khan", "555-0199"):
        assert name not in stored and name.lower() not in stored, name
    (row,) = res.rows
    assert "<name>" in row["template"]
