"""Canary verdicts end to end on the real broker and worker: crafted rollouts sent through the SDK,
verdicts on ``agent.rollout-verdicts.v1`` and in ClickHouse, rollback incidents, a killed worker.

The crafted streams are ``streams.devtools.bench_canary`` rollouts (seeded); their statistics do not depend
on Kafka batching (strata are event-time buckets), so the outcome is the one the in-process monitor
reaches on the same data (promote / rollback decided with a margin well inside the stream).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from schemas import CandidateArm, RolloutVerdict, Verdict
from streams.devtools.bench_canary import ArmEffect, CohortPlan, rollout_records, rollout_steps
from streams.sdk import SelfhealProducer
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_topics, group_lag
from tests.conftest import read_contract_topic, wait_caught_up

pytestmark = pytest.mark.integration

RELEASE = "rel-cand"


def crafted(plans, traces_per_cohort, seed):
    """A seeded rollout as contract records in send order, event times ending about an hour ago.

    The start is aligned to the canary's event-time buckets (75 s) as in ``rollout_steps``'s
    default, so the strata, and with them the statistics, are the ones of the in-process run.
    """
    now = int(time.time() * 1000)
    span = traces_per_cohort * 2000
    bucket = 75_000
    t0 = (now - span - 3_600_000) // bucket * bucket + 1_790_000_000_000 % bucket
    steps = rollout_steps(np.random.default_rng(seed), plans, traces_per_cohort, t0_ms=t0, prefix=f"s{seed}-")
    return list(rollout_records(steps))


def send(settings, records):
    with SelfhealProducer(settings) as sdk:
        for kind, rec in records:
            (sdk.send_trace if kind == "trace" else sdk.send_feedback)(rec)


def read_verdicts(settings) -> list[tuple[bytes, RolloutVerdict]]:
    """Every message on the verdicts topic, in partition order: ``(key, verdict)``."""
    return read_contract_topic(settings, "verdicts", RolloutVerdict)


def scorecard_of(verdicts, cohort):
    """The cohort's canary verdict events by revision. Both agents emit verdicts (traces and
    feedback batches), so topic order is not revision order; a consumer keeps the highest revision
    of a verdict id, and a redelivered batch re-emits identical events."""
    card = [v for _, v in verdicts if v.cohort == cohort and v.workflow is None and v.arm == CandidateArm.canary]
    by_rev: dict[tuple[str, int], object] = {}
    for v in card:
        assert by_rev.setdefault((v.verdict_id, v.revision), v) == v, "a revision re-emitted with other content"
    return sorted(card, key=lambda v: v.revision)


def test_harmless_release_is_promoted_and_a_cohort_with_more_corrections_rolled_back_alone(settings,
                                                                                           worker_factory):
    ensure_topics(settings)
    worker = worker_factory()
    plans = [CohortPlan("cardiology", 50.0, release=RELEASE),
             CohortPlan("oncology", 50.0, ArmEffect(correction=1.5, safety=1 / 1.5), release=RELEASE)]
    records = crafted(plans, 6_000, seed=2)
    send(settings, records)
    wait_caught_up(settings, ["traces", "feedback"], timeout_s=600, worker=worker)
    assert worker.stop() == 0
    verdicts = read_verdicts(settings)
    assert verdicts and all(k == b"acme" for k, _ in verdicts), "keyed by tenant"
    card, onc = scorecard_of(verdicts, "cardiology"), scorecard_of(verdicts, "oncology")
    assert card[-1].verdict == Verdict.promote, card[-1].reason
    assert all(v.verdict != Verdict.rollback for v in card)
    assert onc[-1].verdict == Verdict.rollback, onc[-1].reason
    assert all(v.verdict != Verdict.promote for v in onc)
    assert "correction_rate" in onc[-1].regressed_metrics and onc[-1].guardrail_fired is None
    assert card[-1].stage_pct == onc[-1].stage_pct == 50.0 and card[-1].release_id == RELEASE
    # what to restore (the control's release) and what changed (bench_canary's candidate: model, prompt)
    assert onc[-1].restore_release_id == card[-1].restore_release_id == "rel-base"
    assert onc[-1].changed_components == ["model", "prompt"] and onc[-1].drift_matrix.rollback_required
    assert card[-1].drift_matrix is None
    sink = ClickHouseSink(settings)
    try:
        rows, metrics = sink.for_tenant("acme").scorecards(RELEASE)
        current = {(r[3], r[4], r[5]): r[7] for r in rows}  # (cohort, workflow, arm) -> verdict
        assert current[("cardiology", "", "canary")] == "promote"
        assert current[("oncology", "", "canary")] == "rollback"
        assert len(metrics) == 7 * len(rows)
        incidents = sink.query(
            "SELECT kind, cohort, action, metric FROM {db}.incidents FINAL WHERE tenant_id = {t:String} "
            "AND release_id = {r:String}", {"t": "acme", "r": RELEASE})
        assert ("release_regression", "oncology", "roll_back", "correction_rate") in incidents
        assert sink.query("SELECT DISTINCT restore_release_id FROM {db}.incidents FINAL WHERE release_id = "
                          "{r:String}", {"r": RELEASE}) == [("rel-base",)]
        assert all(i[1] != "cardiology" for i in incidents)
        assert sink.query("SELECT count() FROM {db}.dead_letters FINAL")[0][0] == 0
    finally:
        sink.close()


def test_safety_guardrail_rolls_back_despite_better_success_metrics_across_a_killed_worker(settings,
                                                                                          worker_factory):
    ensure_topics(settings)
    plan = CohortPlan("cardiology", 50.0, ArmEffect(safety=4.0, correction=0.8, latency=0.9, escalation=0.7),
                      tenant="globex", release=RELEASE)
    records = crafted([plan], 6_000, seed=1)
    canary_sent = sum(1 for kind, r in records if kind == "trace" and r["rollout"]["arm"] == "canary"
                      and r["workflow"] != "patient_message_reply")
    half = len(records) // 2
    first = worker_factory(name="first")
    send(settings, records[:half])
    # SIGKILL as soon as the first worker has committed part of the stream: the scorecards must
    # come back from the changelog, and batches processed but not acknowledged (redelivered to
    # the second worker) must count once; the final figures hold wherever the kill lands
    topics = [settings.topic("traces"), settings.topic("feedback")]
    deadline = time.monotonic() + 300
    while group_lag(settings, settings.full_app_id, topics)[0] == 0 and time.monotonic() < deadline:
        assert first.alive(), first.log.read_text()[-3000:]
        time.sleep(0.1)
    first.kill()
    second = worker_factory(name="second")
    send(settings, records[half:])
    wait_caught_up(settings, ["traces", "feedback"], timeout_s=600, worker=second)
    assert second.stop() == 0
    verdicts = read_verdicts(settings)
    card = scorecard_of(verdicts, "cardiology")
    assert card and all(v.verdict != Verdict.promote for v in card)
    last = card[-1]
    assert last.verdict == Verdict.rollback and last.guardrail_fired == "safety_feedback_rate"
    lat = next(e for e in last.scorecard if e.metric == "latency_p95")
    assert lat.candidate < lat.control and lat.status.value != "harm"
    # every canary trace counted exactly once across the kill (replay guard + changelog state)
    assert last.exposure == canary_sent
    sink = ClickHouseSink(settings)
    try:
        distinct = {(v.verdict_id, v.revision) for _, v in verdicts}
        assert sink.query("SELECT count() FROM {db}.rollout_verdicts FINAL")[0][0] == len(distinct)
        incidents = sink.query(
            "SELECT kind, metric_group, severity, action FROM {db}.incidents FINAL WHERE tenant_id = {t:String} "
            "AND release_id = {r:String}", {"t": "globex", "r": RELEASE})
        assert ("release_regression", "safety", "critical", "roll_back") in incidents
    finally:
        sink.close()
