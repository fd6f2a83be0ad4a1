"""``selfheal bench-drift-worker`` end to end at smoke size (issue 17): an independent producer
(confluent-kafka + fastavro) → a real ``selfheal worker`` → incidents read back from the topic.

- stationary traffic: every trace and feedback record is processed as sent (the worker's counters
  match the producer's: new, replayed and resubmitted feedback), no dead letter, no incident;
- one tenant's intent mix moves in all five of its cohorts: one incident, on that tenant, after
  the change; the identical input through a second fresh worker gives the same incident, detected
  at the same trace, with the same change point.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from streams.devtools.bench_worker import CHANGED_TENANT, WorkerBenchConfig, comparable, run_once
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

ENV = {"PYTHONPATH": str(ROOT / "src")}


def t0_ms(cfg: WorkerBenchConfig) -> int:
    return int(time.time() * 1000 - cfg.traces * cfg.step_ms - 3_600_000)


def test_stationary_through_the_worker(settings, tmp_path):
    cfg = WorkerBenchConfig(scenario="stationary", traces=20_000, seed=5)
    cfg = replace(cfg, t0_ms=t0_ms(cfg))
    rep = run_once(settings, cfg, tmp_path, timeout_s=240, worker_env=ENV)
    st, sent = rep.worker_stats, rep.sent
    assert rep.dead_letters == {}
    assert st["traces"] == sent["traces"] == 20_000
    assert st["feedback_new"] == sent["corrections"] + sent["unsafe"]
    assert st["feedback_replay"] == sent["replays"] > 0 and st["feedback_resubmit"] == sent["resubmits"] > 0
    assert st["unmatched_feedback"] == 0
    assert rep.incidents == [], rep.incidents
    assert rep.scores["false_incidents"] == 0


def test_one_tenant_change_is_one_incident_on_two_runs(settings, tmp_path):
    cfg = WorkerBenchConfig(scenario="tenant_change", traces=20_000, seed=1, change_at=0.5)
    cfg = replace(cfg, t0_ms=t0_ms(cfg))
    first = run_once(settings, cfg, tmp_path, timeout_s=240, worker_env=ENV)
    assert first.dead_letters == {}
    assert first.scores["change_incidents"] == 1, first.incidents
    assert first.scores["false_incidents"] == 0, first.incidents
    assert first.incidents[0]["tenant_id"] == CHANGED_TENANT and first.incidents[0]["kind"] == "input_drift"
    second = run_once(settings, cfg, tmp_path, timeout_s=240, worker_env=ENV)
    # the same incident, detected at the same trace, with the same change point (first_seen): the
    # alarms' change points are trace times carried across batches, not the batch's first trace
    assert comparable(second.incidents) == comparable(first.incidents)
