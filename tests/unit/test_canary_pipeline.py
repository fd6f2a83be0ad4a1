"""Rollout traffic through the real pipeline (Avro messages, ingest, feedback join and dedup) and
its verdicts through the real ClickHouse sink (embedded chDB) and ``selfheal scorecard``."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from schemas import IncidentKind, IncidentStatus, RolloutVerdict, Verdict, default_codec
from streams.config import Settings
from streams.devtools.bench_canary import ArmEffect, CohortPlan, rollout_records, rollout_steps
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.sinks.clickhouse import ClickHouseSink
from tests.conftest import ROOT


def _messages(records, now_ms, per_message=200):
    """Records in send order as batch messages (one partition), traces and feedback apart."""
    codec = default_codec()
    off = {"trace": 0, "feedback": 0}
    cur, buf = None, []

    def emit(kind, items):
        name, field = ("selfheal.v1.AgentTraceBatch", "traces") if kind == "trace" else \
            ("selfheal.v1.FeedbackBatch", "items")
        payload = codec.encode(name, {"batch_id": f"b{off[kind]}", "producer_id": "p", "sent_at": now_ms,
                                      field: items})
        msg = RawMessage("traces" if kind == "trace" else "feedback", 0, off[kind], b"acme", payload)
        off[kind] += 1
        return kind, msg

    for kind, rec in records:
        if kind != cur or len(buf) >= per_message:
            if buf:
                yield emit(cur, buf)
            cur, buf = kind, []
        buf.append(rec)
    if buf:
        yield emit(cur, buf)


@pytest.fixture(scope="module")
def run():
    """6,000 traces per cohort at 50 %: cardiology harmless, oncology 1.8x corrections."""
    now = int(time.time() * 1000)
    n = 6_000
    plans = [CohortPlan("cardiology", 50.0), CohortPlan("oncology", 50.0, ArmEffect(correction=1.8, safety=1 / 1.8))]
    steps = rollout_steps(np.random.default_rng(3), plans, n, t0_ms=now - n * 2000 - 3_600_000)
    pipe = Pipeline(Settings(state_dir="/nonexistent"), default_codec())
    verdicts: list[RolloutVerdict] = []
    incidents = []
    dead = []
    for kind, msg in _messages(rollout_records(steps), now):
        out = pipe.on_traces([msg]) if kind == "trace" else pipe.on_feedback([msg])
        verdicts += out.verdicts
        incidents += out.incidents
        dead += out.dead_letters
        pipe.flush_state()
    return pipe, verdicts, incidents, dead


def test_rollout_traffic_through_the_pipeline_yields_verdicts_and_a_rollback_incident(run):
    pipe, verdicts, incidents, dead = run
    assert not dead
    assert pipe.stats["verdicts"] == len(verdicts) > 0
    assert pipe.canary.stats["late_feedback"] == 0  # every correction joined its trace's rollout
    onc = [v for v in verdicts if v.cohort == "oncology" and v.workflow is None]
    card = [v for v in verdicts if v.cohort == "cardiology" and v.workflow is None]
    assert onc[-1].verdict == Verdict.rollback and "correction_rate" in onc[-1].regressed_metrics
    assert all(v.verdict != Verdict.rollback for v in card)
    corr = next(e for e in onc[-1].scorecard if e.metric == "correction_rate")
    assert corr.samples_candidate > 500 and corr.events_candidate > 0  # corrections reached the scorecard
    assert onc[-1].release is not None and onc[-1].release.release_id == "rel-cand"
    rollbacks = [i for i in incidents if i.kind == IncidentKind.release_regression and i.release_id == "rel-cand"]
    assert rollbacks and rollbacks[0].status == IncidentStatus.open and rollbacks[0].slice.cohort == "oncology"
    assert len({i.incident_id for i in rollbacks}) == 1


def test_verdicts_land_in_clickhouse_idempotently_and_the_cli_prints_the_scorecard(run, tmp_path):
    _, verdicts, _, _ = run
    settings = Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch")
    with ClickHouseSink(settings) as sink:
        sink.migrate()
        assert sink.write_verdicts(verdicts) == len(verdicts)
        sink.write_verdicts(verdicts[-5:])  # redelivered events collapse (same verdict id and revision)
        assert sink.query("SELECT count() FROM {db}.rollout_verdicts FINAL")[0][0] == len(verdicts)
        assert sink.query("SELECT count() FROM {db}.rollout_scorecards FINAL")[0][0] == 7 * len(verdicts)
        rows, metrics = sink.for_tenant("acme").scorecards("rel-cand")
        latest = {}
        for v in verdicts:
            latest[v.verdict_id] = v
        assert {(r[0], r[1]) for r in rows} == {(v.verdict_id, v.revision) for v in latest.values()}
        assert len(metrics) == 7 * len(latest)
        onc = next(r for r in rows if r[3] == "oncology" and r[4] == "")
        assert onc[7] == "rollback"
        assert sink.for_tenant("globex").scorecards("rel-cand") == ([], [])  # tenant-scoped
        assert len(sink.scorecards("rel-cand")[0]) == len(latest)  # operator view, every tenant
    env = {"SELFHEAL_CLICKHOUSE_PATH": str(settings.clickhouse_dir), "SELFHEAL_STATE_DIR": str(tmp_path),
           "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "scorecard", "--release", "rel-cand", "--tenant",
                           "acme"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ROLLBACK" in proc.stdout and "correction_rate" in proc.stdout and "acme/oncology" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "streams.cli", "scorecard", "--release", "rel-cand", "--tenant",
                          "Bad Tenant"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a valid tenant slug" in bad.stderr and "Traceback" not in bad.stderr
