"""``selfheal replay`` on recorded runs: a `selfheal demo` run of the real worker (real broker,
chDB) and a demo-like run of the in-process pipeline in worker-sized batches (tests/recorded.py).
Unchanged settings give exactly the production incidents, a lower threshold shows extra ones,
the output is deterministic across processes, and false-positive labels are scored when the
store has them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streams.config import Settings
from streams.replay import candidate_settings, recorded_range, replay
from streams.sinks.clickhouse import ClickHouseSink
from tests.conftest import ROOT, settings_env
from tests.recorded import ProductionRun, record_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Settings, ProductionRun]:
    d = tmp_path_factory.mktemp("recorded")
    settings = Settings(state_dir=d, clickhouse_path=d / "clickhouse", clickhouse_url=None)
    return settings, record_run(settings, traces=12_000)


def _replay(settings: Settings, *sets: str):
    with ClickHouseSink(settings) as sink:
        lo, hi = recorded_range(sink, [])
        return replay(sink, settings, candidate_settings(settings, None, sets), [], lo, hi)


def _cli(settings: Settings, *args: str, seed: str = "0") -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "80",
           "PYTHONHASHSEED": seed, "SELFHEAL_CLICKHOUSE_PATH": str(settings.clickhouse_dir),
           "SELFHEAL_STATE_DIR": str(settings.state_dir)}
    return subprocess.run([sys.executable, "-m", "streams.cli", "replay", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_unchanged_settings_reproduce_the_production_incidents(recorded):
    settings, prod = recorded
    assert prod.incidents, "the recorded run must have incidents to reproduce"
    res = _replay(settings)
    assert sorted(i.incident_id for i in res.reference) == sorted(prod.incidents)
    current = res.runs["current"]
    assert res.vs_reference["current"].identical, res.to_json()["runs"]["current"]["vs_reference"]
    got = {i.incident_id: (i.kind, i.layer, i.cohort, i.workflow, i.slice_release_id, i.release_id,
                           i.detected_at_trace_id, i.status) for i in current.incidents}
    want = {k: (i.kind.value, i.slice.layer, i.slice.cohort or "", i.slice.workflow or "", i.slice.release_id or "",
                i.release_id or "", i.detected_at_trace_id, i.status.value) for k, i in prod.incidents.items()}
    assert got == want
    assert res.candidate_vs_current.identical and res.changed == {}
    assert current.traces == 12_000 and current.state["slices"] > 0 and current.state["baseline_bytes"] > 0
    # the store has the incident_actions ledger (migration 0031) but nobody labelled an incident
    assert res.false_positives() == {"labelled": [], "avoided": [], "kept": []}


def test_a_lower_threshold_shows_the_extra_incidents(recorded):
    settings, _ = recorded
    res = _replay(settings, "CUSUM_THRESHOLD=10")
    assert res.changed == {"cusum_threshold": [18.0, 10.0]}
    cand = res.vs_reference["candidate"]
    assert cand.appeared, "a lower threshold must alarm more"
    assert not cand.disappeared  # every production incident is still there (same or moved earlier)
    assert all(m["delay_traces"] is None or m["delay_traces"] <= 0 for m in cand.moved)
    assert {i.incident_id for i in cand.appeared} == {i.incident_id for i in res.candidate_vs_current.appeared}
    assert res.vs_reference["current"].identical


def test_a_tenant_replays_alone_with_its_own_incidents(recorded):
    settings, prod = recorded
    tenant = "northwind-health"
    with ClickHouseSink(settings) as sink:
        lo, hi = recorded_range(sink, [tenant])
        res = replay(sink, settings, settings, [tenant], lo, hi)
    assert sorted(i.incident_id for i in res.reference) == sorted(
        k for k, i in prod.incidents.items() if i.slice.tenant_id == tenant)
    assert res.vs_reference["current"].identical and res.reference
    assert res.runs["current"].traces < 12_000

def test_the_cli_scorecard_is_deterministic_across_processes(recorded):
    settings, _ = recorded
    runs = [_cli(settings, "--set", "CUSUM_THRESHOLD=10", "--json", seed=seed) for seed in ("1", "2")]
    for p in runs:
        assert p.returncode == 0, p.stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout
    out = json.loads(runs[0].stdout)
    assert out["runs"]["current"]["vs_reference"]["identical"] is True
    assert out["runs"]["candidate"]["vs_reference"]["appeared"]
    table = _cli(settings, "--set", "CUSUM_THRESHOLD=10")
    assert table.returncode == 0, table.stderr[-2000:]
    assert "CUSUM_THRESHOLD 18.0 → 10.0" in table.stdout and "appears" in table.stdout
    assert max(map(len, table.stdout.splitlines())) <= 80
    bad = _cli(settings, "--set", "NOPE=1")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("selfheal: --set NOPE: unknown setting")


def test_false_positive_labels_are_scored_as_avoided_or_kept(recorded):
    settings, prod = recorded
    fp = sorted(prod.incidents)[0]
    with ClickHouseSink(settings) as sink:
        # the ledger (migration 0031) as the worker fills it from agent.incident-actions.v1
        sink.write_actions([{"tenant_id": prod.incidents[fp].slice.tenant_id, "incident_id": fp,
                             "action_id": "a-fp-1", "action": "mark_false_positive", "actor": "oncall",
                             "reason": "benign", "at": 1, "until": None, "release_id": "",
                             "restored_release_id": "", "incident_release_id": "", "incident_kind": "",
                             "metric_group": "", "revision": 1, "status": "resolved"}])
        try:
            lo, hi = recorded_range(sink, [])
            stricter = replay(sink, settings, candidate_settings(settings, None, ["CUSUM_THRESHOLD=60"]), [], lo, hi)
            same = replay(sink, settings, settings, [], lo, hi)
        finally:
            sink.query("TRUNCATE TABLE {db}.incident_actions")
    assert stricter.false_positives() == {"labelled": [fp], "avoided": [fp], "kept": []}
    assert same.false_positives() == {"labelled": [fp], "avoided": [], "kept": [fp]}


def test_rows_stored_before_batch_numbers_replay_in_event_time_order(recorded):
    # a store written before migration 0040 has batch_seq = 0 everywhere (this test runs last on
    # the module's store: it rewrites it)
    settings, prod = recorded
    with ClickHouseSink(settings) as sink:
        for table in ("traces", "feedback_submissions"):
            sink.query(f"ALTER TABLE {{db}}.{table} UPDATE batch_seq = 0, batch_pos = 0 WHERE 1 "
                       "SETTINGS mutations_sync = 1")
        assert sink.query("SELECT countIf(batch_seq != 0) FROM {db}.traces")[0][0] == 0
        lo, hi = recorded_range(sink, [])
        res = replay(sink, settings, settings, [], lo, hi)
    run = res.runs["current"]
    assert run.traces == 12_000 and run.dead_letters == 0 and res.input["feedback_skipped"] == 0
    # approximate: other batches, so detection may shift or a label-delayed incident go missing (seen
    # here: the correction-rate incident), which is why the worker numbers its batches; the
    # trace-based regression is still found
    d = res.vs_reference["current"]
    assert d.same or d.moved, res.to_json()["runs"]["current"]["vs_reference"]
    found = {m["before"].incident_id for m in d.moved} | {x.incident_id for x in d.same}
    assert any(prod.incidents[i].metric_group == "latency" for i in found)

def test_replay_of_a_real_worker_demo_run_reproduces_its_incidents(settings):
    # the production worker: `selfheal demo` (worker subprocess, simulator through the broker)
    env = settings_env(settings)
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--traces", "20000", "--out",
                           str(settings.state_dir / "summary.json")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    demo = settings.model_copy(update={"clickhouse_path": settings.state_dir / "demo" / "clickhouse"})
    with ClickHouseSink(demo) as sink:
        n_batches = sink.query("SELECT uniqExact(batch_seq), countIf(batch_seq = 0) FROM {db}.traces")[0]
        lo, hi = recorded_range(sink, [])
        res = replay(sink, demo, candidate_settings(demo, None, ["CUSUM_THRESHOLD=10"]), [], lo, hi)
    assert n_batches[0] > 1 and n_batches[1] == 0  # the worker numbered every batch it wrote
    assert res.reference, "the demo's injected regression must be among the production incidents"
    assert res.vs_reference["current"].identical, res.to_json()["runs"]["current"]["vs_reference"]
    assert len(res.vs_reference["current"].same) == len(res.reference)
    cand = res.vs_reference["candidate"]
    assert cand.appeared
    # a more sensitive candidate loses no production incident: one it does not reproduce by id or
    # overlapping slice was merged into another of the same tenant and metric group (it alarmed
    # earlier, so the second slice's alarm found the episode open; seen in CI: two northwind-health
    # quality incidents opened by one trace became one)
    flagged = {(x.tenant_id, x.metric_group) for x in res.runs["candidate"].incidents}
    assert all((x.tenant_id, x.metric_group) in flagged for x in cand.disappeared), \
        res.to_json()["runs"]["candidate"]["vs_reference"]
