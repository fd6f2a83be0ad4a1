"""Canary scorecards: the monitor's verdicts on crafted rollouts, state that survives a restart,
rollback incidents, settings. (The sequential test itself: test_sequential.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from schemas import CandidateArm, IncidentKind, IncidentStatus, RiskClass, Verdict
from streams.devtools.bench_canary import (
    ArmEffect,
    CohortPlan,
    monitor_config,
    rollout_steps,
    run_monitor,
)
from streams.processors.canary import M_CORR, CanaryMonitor
from streams.processors.drift import DriftConfig, DriftEngine
from streams.processors.incidents import IncidentManager
from streams.state import DictBackend


# ---------------------------------------------------------------------------- the monitor
def _run(plans, traces, seed=1, cfg=None, backend=None):
    mon = CanaryMonitor(cfg or monitor_config(), backend or DictBackend())
    emitted = []
    for step in rollout_steps(np.random.default_rng(seed), plans, traces):
        emitted += mon.on_traces(step.cols) + mon.on_feedback(step.feedback, step.feedback_wm)
        mon.flush()
    return mon, [e.verdict for e in emitted]


def _cohort(verdicts, cohort, workflow=None, arm=CandidateArm.canary):
    return [v for v in verdicts if v.cohort == cohort and v.workflow == workflow and v.arm == arm]


#: 1.5x corrections with the same rate of safety feedback (in the simulation safety feedback is a
#: share of the corrections)
MORE_CORRECTIONS = ArmEffect(correction=1.5, safety=1 / 1.5)


def test_harmless_release_is_promoted_and_a_cohort_with_more_corrections_rolled_back_alone():
    plans = [CohortPlan("cardiology", 25.0), CohortPlan("oncology", 25.0, MORE_CORRECTIONS)]
    _, verdicts = _run(plans, 16_000)
    card, onc = _cohort(verdicts, "cardiology"), _cohort(verdicts, "oncology")
    assert card[-1].verdict == Verdict.promote and all(v.verdict != Verdict.rollback for v in card)
    assert onc[-1].verdict == Verdict.rollback and all(v.verdict != Verdict.promote for v in onc)
    last = onc[-1]
    assert last.regressed_metrics == ["correction_rate"] and last.guardrail_fired is None
    corr = next(e for e in last.scorecard if e.metric == "correction_rate")
    assert corr.status.value == "harm" and corr.ci_low > 0 and corr.p_value <= last.alpha_rollback
    assert 1.2 <= corr.candidate / corr.control <= 1.9  # about 1.5x
    assert last.evidence_trace_ids and last.exposure > last.samples_candidate > 0
    # ids: one scorecard per cohort x arm, revisions count up, changes flagged
    assert len({v.verdict_id for v in onc}) == 1 and [v.revision for v in onc] == list(range(len(onc)))
    assert onc[0].changed and any(v.changed and v.verdict == Verdict.rollback for v in onc)


def test_safety_guardrail_blocks_regardless_of_better_success_metrics():
    plans = [CohortPlan("cardiology", 25.0, ArmEffect(safety=4.0, correction=0.8, latency=0.9, escalation=0.7))]
    _, verdicts = _run(plans, 14_000, seed=4)
    card = _cohort(verdicts, "cardiology")
    assert all(v.verdict != Verdict.promote for v in card)
    last = card[-1]
    assert last.verdict == Verdict.rollback and last.guardrail_fired == "safety_feedback_rate"
    assert "guardrail safety_feedback_rate fired" in last.reason
    lat = next(e for e in last.scorecard if e.metric == "latency_p95")
    assert lat.candidate < lat.control  # the success metrics look better, the guardrail still blocks


def test_shadow_traces_are_compared_but_not_exposure():
    plans = [CohortPlan("cardiology", 25.0, ArmEffect(latency=1.6), arm="shadow")]
    _, verdicts = _run(plans, 4_000)
    shadow = _cohort(verdicts, "cardiology", arm=CandidateArm.shadow)
    assert shadow and not _cohort(verdicts, "cardiology")  # no canary scorecard
    assert all(v.exposure == 0 for v in shadow) and shadow[-1].samples_candidate > 0
    assert shadow[-1].verdict == Verdict.rollback and "latency_p95" in shadow[-1].regressed_metrics


def test_high_risk_workflows_get_their_own_stricter_scorecards():
    _, verdicts = _run([CohortPlan("cardiology", 25.0)], 3_000)
    hr = _cohort(verdicts, "cardiology", workflow="patient_message_reply")
    std = _cohort(verdicts, "cardiology")
    assert hr and std and hr[0].verdict_id != std[0].verdict_id
    assert hr[-1].risk_class == RiskClass.high and hr[-1].alpha_promote == 0.01 and hr[-1].min_samples == 2000
    assert std[-1].risk_class == RiskClass.standard and std[-1].alpha_promote == 0.05
    assert std[-1].alpha_rollback == pytest.approx(0.05 / 7)


def test_evidence_carries_over_stages_while_minimum_samples_count_per_stage():
    cfg = monitor_config()
    mon = CanaryMonitor(cfg, DictBackend())
    first = run_monitor(mon, rollout_steps(np.random.default_rng(2), [CohortPlan("c", 25.0)], 16_000),
                        stop_when_decided=False)["c"]
    assert first.verdict == Verdict.promote and first.last.stage_pct == 25.0
    # the rollout widens to 50 %: same scorecard, hold until the new stage has its samples
    later = rollout_steps(np.random.default_rng(3), [CohortPlan("c", 50.0)], 3_000, t0_ms=1_790_100_000_000,
                          prefix="d", offset0=16_000)
    out = []
    for step in later:
        out += [e.verdict for e in mon.on_traces(step.cols) + mon.on_feedback(step.feedback, step.feedback_wm)]
    widened = [v for v in out if v.stage_pct == 50.0 and v.workflow is None]
    assert widened and widened[0].verdict == Verdict.hold and widened[0].verdict_id == first.last.verdict_id
    assert "samples at stage 50%" in widened[0].reason
    assert widened[-1].verdict == Verdict.promote  # non-inferiority carried over; 500 samples in the new stage


def test_restarted_monitor_continues_exactly_and_redelivered_traces_count_once():
    plans = [CohortPlan("cardiology", 25.0), CohortPlan("oncology", 25.0, MORE_CORRECTIONS)]
    steps = list(rollout_steps(np.random.default_rng(7), plans, 6_000))
    ref = CanaryMonitor(monitor_config(), DictBackend())
    expected = []
    for s in steps:
        expected += ref.on_traces(s.cols) + ref.on_feedback(s.feedback, s.feedback_wm)
    backend = DictBackend()
    mon = CanaryMonitor(monitor_config(), backend)
    got = []
    half = len(steps) // 2
    for s in steps[:half]:
        got += mon.on_traces(s.cols) + mon.on_feedback(s.feedback, s.feedback_wm)
        mon.flush()
    mon = CanaryMonitor(monitor_config(), backend)  # a new worker: state from the changelog only
    got += mon.on_traces(steps[half - 1].cols)  # the last batch redelivered: counted once
    assert mon.stats["replayed_traces"] == steps[half - 1].cols.n
    for s in steps[half:]:
        got += mon.on_traces(s.cols) + mon.on_feedback(s.feedback, s.feedback_wm)
        mon.flush()
    assert [e.verdict for e in got] == [e.verdict for e in expected]


def test_verdicts_are_emitted_on_change_and_at_most_once_per_interval_otherwise():
    cfg = monitor_config(verdict_interval_ms=1_800_000)
    _, verdicts = _run([CohortPlan("oncology", 25.0, MORE_CORRECTIONS)], 8_000, cfg=cfg)
    onc = _cohort(verdicts, "oncology")
    times = [v.emitted_at.timestamp() * 1000 for v in onc]
    for prev, v, t_prev, t in zip(onc, onc[1:], times, times[1:], strict=False):
        assert v.changed == (v.verdict != prev.verdict)
        if not v.changed:
            assert t - t_prev >= 1_800_000
    assert sum(v.changed for v in onc) <= 3  # hold -> rollback (sticky)


def test_feedback_after_its_bucket_matured_is_not_counted():
    mon = CanaryMonitor(monitor_config(), DictBackend())
    steps = list(rollout_steps(np.random.default_rng(5), [CohortPlan("c", 25.0)], 3_000))
    for s in steps:
        mon.on_traces(s.cols)
        mon.on_feedback(s.feedback, s.feedback_wm)
    # corrections for the very first traces arrive now: their buckets matured long ago
    late = [(tid, ref, False) for tid, ref, _ in steps[0].feedback] or [
        (steps[1].feedback[0][0], steps[1].feedback[0][1], False)]
    before = mon.groups["acme|rel-cand|c|*"].scorecards["canary"].counts[M_CORR].copy()
    mon.on_feedback(late, {})
    assert mon.stats["late_feedback"] >= len(late)
    assert (mon.groups["acme|rel-cand|c|*"].scorecards["canary"].counts[M_CORR] == before).all()


# ---------------------------------------------------------------------------- rollback incidents
def test_rollback_opens_one_release_regression_incident_and_further_cohorts_update_it():
    engine = DriftEngine(DriftConfig())
    backend = DictBackend()
    mgr = IncidentManager(engine.store, backend)
    plans = [CohortPlan("oncology", 25.0, ArmEffect(correction=1.8)),
             CohortPlan("cardiology", 25.0, ArmEffect(correction=1.8))]
    _, verdicts = _run(plans, 8_000)
    rollbacks = [v for v in verdicts if v.verdict == Verdict.rollback and v.workflow is None]
    assert {v.cohort for v in rollbacks} == {"oncology", "cardiology"}
    events = [e for e in (mgr.on_rollback(v, 0) for v in rollbacks) if e is not None]
    assert events[0].status == IncidentStatus.open and events[0].kind == IncidentKind.release_regression
    assert events[0].release_id == "rel-cand" and events[0].action.value == "roll_back"
    assert events[0].detector == "canary_msprt" and events[0].severity.value == "high"
    assert {e.incident_id for e in events} == {events[0].incident_id}, "one incident per episode"
    assert [e.status for e in events[1:]] == [IncidentStatus.updated], "the second cohort updates it once"
    assert any(s.startswith("rollout:cardiology/*/canary@25%") for s in events[-1].also_seen)
    # a restarted manager reloads it and keeps the same id; the episode is not re-opened
    mgr2 = IncidentManager(engine.store, backend)
    mgr2.load({0})
    assert mgr2.on_rollback(rollbacks[-1], 0) is None
    with pytest.raises(ValueError, match="needs a rollback"):
        mgr2.on_rollback(next(v for v in verdicts if v.verdict != Verdict.rollback), 0)


def test_settings_read_high_risk_patterns_from_a_comma_separated_variable(monkeypatch):
    from streams.config import Settings
    from streams.pipeline import canary_config

    monkeypatch.setenv("SELFHEAL_CANARY_HIGH_RISK_WORKFLOWS", "triage, med_*")
    monkeypatch.setenv("SELFHEAL_CANARY_ALPHA", "0.02")
    cfg = canary_config(Settings())
    assert cfg.high_risk_workflows == ("triage", "med_*") and cfg.alpha == 0.02
    assert cfg.is_high_risk("med_reconciliation") and cfg.is_high_risk("triage")
    assert not cfg.is_high_risk("soap_note") and not cfg.is_high_risk("triage_followup")
    monkeypatch.setenv("SELFHEAL_CANARY_MARGIN", "1.0")
    with pytest.raises(ValueError, match="canary_margin"):
        Settings()


def test_traffic_without_rollouts_writes_no_canary_state():
    from streams.devtools.synthetic import Slice, synthetic_columns

    backend = DictBackend()
    mon = CanaryMonitor(monitor_config(), backend)
    cols, _ = synthetic_columns(np.random.default_rng(0), [Slice("acme", "cardiology", 1.0)], 2000, 0,
                                1_790_000_000_000)
    assert mon.on_traces(cols) == [] and mon.on_feedback([], {0: 1_790_000_500_000}) == []
    assert mon.flush() == 0 and backend.data == {}


def test_strata_width_comes_from_its_own_setting_not_from_feedback_maturity(monkeypatch):
    from streams.config import Settings
    from streams.pipeline import canary_config

    monkeypatch.setenv("SELFHEAL_FEEDBACK_MATURITY_S", "120")
    cfg = canary_config(Settings())
    assert cfg.maturity_ms == 120_000 and cfg.bucket_ms == 75_000 and cfg.lateness_ms == 75_000
    monkeypatch.setenv("SELFHEAL_CANARY_BUCKET_S", "30")
    assert canary_config(Settings()).bucket_ms == 30_000
    with pytest.raises(ValueError, match="bucket_ms"):
        monitor_config(bucket_ms=0)
