"""Feedback dedup and trace join."""

from __future__ import annotations

from streams.processors.feedback import FeedbackProcessor, TraceIndex, TraceRef, dedup_key, normalise_correction
from streams.processors.incidents import DictBackend
from streams.processors.ingest import RawMessage
from streams.redact import Redactor
from tests.factories import feedback

REF = TraceRef("acme", "cardiology", "soap_note", "rel-1", 0, "s-1", 0, 1_790_000_000_000)


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
