"""The evaluation store on real chDB: the crafted feedback stream through the processing core
(``Pipeline``), written with ``ClickHouseSink``, read through the analyst views and exported.

The same stream runs through the real worker and broker in ``test_feedback_worker.py``."""

from __future__ import annotations

import hashlib
import json

import pytest

from schemas import default_codec
from streams.evalset import build_evalset
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.sinks.clickhouse import ClickHouseSink
from tests.feedback_stream import EXPECTED, PHI_LEAKS, crafted_stream

pytestmark = pytest.mark.integration


def feedback_final(sink: ClickHouseSink) -> list[tuple]:
    """Every column of every unique correction, in key order."""
    return sink.query("SELECT * FROM {db}.feedback FINAL ORDER BY tenant_id, dedup_key")


def patterns_final(sink: ClickHouseSink) -> list[tuple]:
    """Pattern rows without their refresh time."""
    return sink.query("SELECT * EXCEPT refreshed_at FROM {db}.feedback_patterns FINAL "
                      "ORDER BY tenant_id, cohort, pattern_id")


def check_crafted_outcome(sink: ClickHouseSink, replays: int = 0) -> None:
    """Assert what the crafted stream must aggregate to (``tests/feedback_stream.EXPECTED``);
    ``replays`` = how many times the whole feedback stream was sent again."""
    q = sink.query
    status = dict(q("SELECT dedup_status, count() FROM {db}.feedback_submissions FINAL GROUP BY dedup_status"))
    want = dict(EXPECTED["status"])
    want["replay"] += replays * EXPECTED["submissions"]
    assert status == want
    assert q("SELECT count() FROM {db}.feedback FINAL")[0][0] == EXPECTED["unique"]
    # the near-duplicate and the resubmit folded into the first correction of their trace
    (row,) = q("SELECT dedup_status, submissions, agreement_count, reviewer_role, confidence FROM {db}.feedback FINAL "
               "WHERE trace_id = 'tr-t-a-001'")
    assert row[:4] == ("near_duplicate", 3, 2, "physician")
    assert row[4] == pytest.approx(1.0 * 1.0 * 0.91 * 0.9, abs=1e-6)  # clinician_edit x physician x 2 x high
    # conflicts: both sides kept and flagged, the rule's winner recorded
    conflicts = q("SELECT trace_id, category, reviewer_role, resolution, resolution_rule, resolved_against != '' "
                  "FROM {db}.v_feedback_conflicts ORDER BY trace_id, resolution")
    assert len(conflicts) == EXPECTED["conflict_rows"]
    assert {(c[1], c[2]) for c in conflicts if c[3] == "lost"} == EXPECTED["lost"]
    assert {c[4] for c in conflicts} == {"role_weight"} and all(c[5] for c in conflicts)
    # scope ladder
    scopes = {(r[0], r[1], r[2], r[3]): r[4] for r in q(
        "SELECT scope, tenant_id, cohort, category, tenants FROM {db}.feedback_patterns FINAL")}
    for k, tenants in EXPECTED["scopes"].items():
        assert scopes.get(k) == tenants, (k, scopes)
    assert {k for k in scopes if k[0] in ("segment", "global_candidate")} == {
        k for k in EXPECTED["scopes"] if k[0] in ("segment", "global_candidate")}
    assert q("SELECT count() FROM {db}.feedback_patterns FINAL WHERE scope IN ('segment', 'global_candidate') "
             "AND tenant_id != ''")[0][0] == 0
    by_scope = dict(q("SELECT scope, count() FROM {db}.v_feedback_scope WHERE tenant_id = 't-a' GROUP BY scope"))
    assert by_scope["tenant"] == 3 and by_scope["segment"] == 1 and by_scope["global_candidate"] == 1
    # no PHI anywhere: every String column of the feedback tables and patterns
    for table in ("feedback", "feedback_submissions", "feedback_patterns", "dead_letters"):
        cols = [c for c, t in q("SELECT name, type FROM system.columns WHERE database = {d:String} AND "
                                "table = {t:String}", {"d": sink.db, "t": table}) if "String" in t]
        dump = json.dumps(q(f"SELECT {', '.join(cols)} FROM {{db}}.{table}"), default=str)
        for leak in PHI_LEAKS:
            assert leak not in dump, (table, leak)
    (text, tpl) = q("SELECT corrected_text, template FROM {db}.feedback FINAL WHERE trace_id = 'tr-t-a-000'")[0]
    assert "[NAME]" in text and "[RECORD_ID]" in text and "[PHONE]" in text and "[EMAIL]" in text
    assert tpl.startswith("added missing allergy list patient <name> dob <date>")


def run_pipeline(settings, traces, feedback, start_offset: int = 0) -> Pipeline:
    codec = default_codec()
    pipe = Pipeline(settings, codec)
    with ClickHouseSink(settings) as sink:
        sink.migrate()
        tmsgs = [RawMessage("traces", 0, i, t["tenant_id"].encode(), codec.encode("selfheal.v1.AgentTrace", t))
                 for i, t in enumerate(traces)]
        out = pipe.on_traces(tmsgs)
        sink.write_traces(out.cols, out.attributes)
        for rnd in range(2):  # the stream, then the same stream again (every message a replay)
            fmsgs = [RawMessage("feedback", 0, start_offset + rnd * 1000 + i, f["tenant_id"].encode(),
                                codec.encode("selfheal.v1.Feedback", f)) for i, f in enumerate(feedback)]
            for chunk in range(0, len(fmsgs), 5):
                res = pipe.on_feedback(fmsgs[chunk:chunk + 5])
                assert not res.dead_letters, res.dead_letters
                sink.write_feedback(res.rows)
                sink.write_submissions(res.submissions)
                sink.refresh_patterns(res.patterns)
            if rnd == 0:
                first = (feedback_final(sink), patterns_final(sink))
        assert (feedback_final(sink), patterns_final(sink)) == first  # replaying everything changes nothing
    return pipe


def test_crafted_stream_dedups_reconciles_scopes_and_redacts(settings, tmp_path):
    traces, feedback = crafted_stream()
    run_pipeline(settings, traces, feedback)
    with ClickHouseSink(settings) as sink:
        check_crafted_outcome(sink, replays=1)
        # every view answers
        for view in ("v_correction_rate", "v_top_failure_categories", "v_feedback_conflicts", "v_golden_set"):
            assert sink.query(f"SELECT count() FROM {{db}}.{view}")[0][0] > 0, view
        (rate,) = sink.query("SELECT traces, corrected_traces, correction_rate FROM {db}.v_correction_rate "
                             "WHERE tenant_id = 't-d'")
        assert rate == (1, 1, 1.0)
        # a refresh of everything reproduces the incremental pattern rows
        before = patterns_final(sink)
        sink.refresh_patterns(None)
        assert patterns_final(sink) == before


def test_export_evalset_is_reproducible_and_tenant_scoped(settings, tmp_path):
    from datetime import UTC, datetime, timedelta

    traces, feedback = crafted_stream()
    run_pipeline(settings, traces, feedback)
    with ClickHouseSink(settings) as sink:
        now = datetime.now(UTC)
        a, n = build_evalset(sink, "t-a", now - timedelta(days=1), now + timedelta(hours=1))
        b, _ = build_evalset(sink, "t-a", now - timedelta(days=1), now + timedelta(hours=1))
        assert a == b and hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
        lines = [json.loads(x) for x in a.decode().splitlines()]
        header, records = lines[0], lines[1:]
        assert header["format_version"] == 2 and header["records"] == n == len(records) == 9
        assert header["records_sha256"] == hashlib.sha256(a.split(b"\n", 1)[1]).hexdigest()
        assert {r["tenant_id"] for r in records} == {"t-a"}
        assert [r["trace_event_time"] for r in records] == sorted(r["trace_event_time"] for r in records)
        rec = next(r for r in records if r["trace_id"] == "tr-t-a-001")
        assert rec["manifest"]["model"] == "gpt-x-2026-10" and rec["original_output_hash"] == rec["trace_output_sha256"]
        assert rec["agreement_count"] == 2 and rec["scope"] == "session"
        assert not any(leak in a.decode() for leak in PHI_LEAKS)
        # losers of a conflict only on request; other filters narrow the set
        lost_set, n_lost = build_evalset(sink, "t-b", now - timedelta(days=1), now, include_lost=True)
        assert n_lost == build_evalset(sink, "t-b", now - timedelta(days=1), now)[1] + 1
        assert b"\"resolution\":\"lost\"" in lost_set
        assert build_evalset(sink, "t-a", now - timedelta(days=1), now, cohort="oncology")[1] == 0
        assert build_evalset(sink, "t-a", now - timedelta(days=1), now, release_id="rel-1")[1] == 9
        with pytest.raises(ValueError, match="must be before"):
            build_evalset(sink, "t-a", now, now)
        from streams.errors import TenantScopeError
        with pytest.raises(TenantScopeError):
            build_evalset(sink, "t-a' OR 1=1 --", now - timedelta(days=1), now)
