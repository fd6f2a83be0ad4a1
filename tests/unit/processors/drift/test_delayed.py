"""Label-delayed detectors: corrections counted once against the exposure that had time to
receive them, whatever the delays (seconds to days) and however feedback batches interleave
with trace batches."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from schemas import IncidentStatus, default_codec
from streams.config import Settings
from streams.devtools.bench_drift import LOGNORMAL_MEDIAN_MS, LOGNORMAL_SIGMA, TIMINGS, Scenario, Timing, run_timed
from streams.devtools.synthetic import Effect, Slice, synthetic_columns, synthetic_feedback
from streams.pipeline import Pipeline
from streams.processors.baselines import N_AHEAD, N_BUCKETS, SliceStore
from streams.processors.drift import DelayCDF, DriftConfig, DriftEngine

T0 = 1_790_000_000_000
ONE_SLICE = (Slice("acme", "cardiology", 1.0, partition=0),)


def _counted(d) -> int:
    """Events accounted for: in live buckets, folded with their bucket, late, unmatched."""
    return d.live_events() + d.counters["folded_feedback"] + d.counters["late_feedback"] \
        + d.counters["unmatched_feedback"]


def test_corrections_are_not_credited_before_their_exposure():
    """The suspected mechanism, proven on main (6e-era ``DelayedMetrics.mature``): with the delay
    distribution learned, a correction was credited when it arrived while its bucket's exposure was
    credited from the age of the bucket's *middle*, so the corrections of the bucket's first half
    (60 s delays, buckets of 37.5 s) arrived with no exposure, and those of its second half arrived
    after the bucket retired (late, never counted). On main this run of a stationary slice with
    feedback read once per second gave 5 correction_rate incidents ("rose from 0.1045 to 25.45
    (1 traces)") and 49,675 late events. Now: none, and every event is counted."""
    pipe = Pipeline(Settings(), default_codec())
    rng = np.random.default_rng(0)
    fleet = list(ONE_SLICE)
    pending: list = []
    opened = []
    max_s = 0.0
    for b in range(100):
        cols, which = synthetic_columns(rng, fleet, 2000, b * 2000, T0 + b * 2000 * 50, 50.0)
        opened += [e for e in pipe.process_columns(cols) if e.status == IncidentStatus.open]
        pending += synthetic_feedback(rng, cols, which, fleet, lag_ms=(60_000.0, 60_000.0))
        pending.sort(key=lambda x: x[0])
        now = int(cols.event_time_ms[-1])
        while pending and pending[0][0] <= now:  # the feedback consumer: one batch per second
            sec = pending[0][0] // 1000
            k = next((i for i, p in enumerate(pending) if p[0] // 1000 != sec), len(pending))
            chunk, pending = pending[:k], pending[k:]
            events = pipe.apply_corrections([(r, ref) for _, r, ref in chunk], {0: chunk[-1][0]})
            opened += [e for e in events if e.status == IncidentStatus.open]
            st = pipe.engine.store
            max_s = max(max_s, float(st.f["p_s"][: st.n].max()))
    d = pipe.engine.delayed
    assert [e.summary for e in opened] == []
    assert d.counters["feedback_events"] > 40_000
    assert _counted(d) == d.counters["feedback_events"]
    assert d.counters["late_feedback"] == d.counters["unmatched_feedback"] == 0
    assert max_s < Settings().cusum_threshold / 2
    assert pipe.stats["feedback_events"] == d.counters["feedback_events"]  # on the stats line


def test_the_delay_cdf_is_learned_from_truncated_feedback_before_the_horizon():
    """Log-normal delays (median 2 h, p99 48 h) of traces spread over 4 days, seen only once they
    happened: the reverse-hazard estimate matches the true CDF without waiting 7 days."""
    rng = np.random.default_rng(1)
    now = 4 * 86_400_000
    t = rng.uniform(0, now, 200_000)
    d = LOGNORMAL_MEDIAN_MS * np.exp(rng.normal(0, LOGNORMAL_SIGMA, t.size))
    seen = t + d <= now
    cdf = DelayCDF(half_life=1e9)
    cdf.observe(t[seen].astype(np.int64), np.zeros(seen.sum(), np.int64), d[seen])
    cdf.release({0: float(now)})
    for hours in (0.5, 2.0, 12.0, 48.0):
        z = math.log(hours * 3_600_000 / LOGNORMAL_MEDIAN_MS) / (LOGNORMAL_SIGMA * math.sqrt(2))
        true = 0.5 * (1 + math.erf(z))
        assert abs(float(cdf.cdf(np.array([hours * 3_600_000.0]))[0]) - true) < 0.03, hours


def test_a_full_ring_coarsens_and_keeps_every_trace():
    """Days of traces and no feedback: the ring of 32 coarsens (older buckets wider), no trace
    is dropped and the buckets stay in trace-time order without overlap."""
    eng = DriftEngine(DriftConfig(), SliceStore())
    rng = np.random.default_rng(2)
    n = 0
    for _ in range(60):  # 60 x 1,000 traces, one every 6 s: 100 hours
        cols, _ = synthetic_columns(rng, list(ONE_SLICE), 1000, n, T0 + n * 6000, 6000.0)
        eng.process_traces(cols)
        n += 1000
    f = eng.store.f
    row = eng.store.index["tenant|acme|*|*|*"]
    live = f["pb_id"][row] >= 0
    held = f["pa_n"][row] > 0  # the newest ticks, held until a feedback clock reaches them
    assert f["pb_n"][row, live].sum() + f["pa_n"][row].sum() == n
    ring_last_tick = (f["pb_id"][row, live] + f["pb_span"][row, live] - 1).max()
    assert 0 < held.sum() <= N_AHEAD and f["pa_tick"][row, 0] >= ring_last_tick
    assert eng.delayed.counters["admitted_ahead"] > 0  # no feedback at all: the oldest held go in
    assert eng.delayed.counters["coarsened_buckets"] > 0 and N_BUCKETS * 3 // 4 - 1 <= live.sum() <= N_BUCKETS
    ids, span = f["pb_id"][row, live], f["pb_span"][row, live]
    order = np.argsort(ids)
    assert np.all(ids[order][1:] >= (ids + span)[order][:-1])
    assert span[order][0] >= span[order][-1] * 8  # oldest coarse, newest fine


def test_release_with_doubled_corrections_and_clinician_delays_is_named():
    """Corrections x2 on a new release, delays log-normal (median 2 h, p99 48 h), the feedback
    consumer an hour behind: a release regression naming rel-2, the change point in trace time
    near the release's start, and every correction counted."""
    s = Scenario("release_corrections_x2", 0, Effect(correction=2.0), True, "release_regression",
                 warmup=30_000, after=30_000)
    r = run_timed(s, TIMINGS[2], 0, Settings())
    assert r.detected and r.release_id == "rel-2" and r.kind == "release_regression", r.opened
    assert r.false_incidents == 0
    assert r.uncounted == 0 and r.counters["unmatched_feedback"] == 0
    assert abs(r.change_point_error_h) < 12


@functools.cache
def _two_schedules():
    """Corrections x1.5 on rel-2, fast reviewers and a weekend backlog, read on two schedules."""
    s = Scenario("release_corrections_x1.5", 0, Effect(correction=1.5), True, "release_regression",
                 warmup=30_000, after=30_000)
    return run_timed(s, TIMINGS[1], 3, Settings(), schedule=0), run_timed(s, TIMINGS[1], 3, Settings(), schedule=1)


def test_same_detection_whatever_the_interleaving_of_feedback_and_traces():
    """The same input read on two schedules of batch sizes and interleaving: both detect the
    release regression on rel-2, with no false incident and every correction counted."""
    for r in _two_schedules():
        assert r.detected and r.kind == "release_regression" and r.release_id == "rel-2", r.opened
        assert r.false_incidents == 0 and r.uncounted == 0


def test_same_incidents_whatever_the_interleaving_of_feedback_and_traces():
    """The same input read on two schedules of batch sizes and interleaving: the same incidents."""
    a, b = _two_schedules()
    assert a.opened and a.opened == b.opened


def test_redelivered_feedback_counts_once():
    """Every feedback message delivered twice (at-least-once after a crash) through the real
    ingest, join and dedup: the detectors count exactly what one delivery counts."""
    import time

    from streams.devtools.bench_canary import CohortPlan, rollout_records, rollout_steps
    from tests.unit.test_canary_pipeline import _messages

    now = int(time.time() * 1000)
    n = 1500
    steps = rollout_steps(np.random.default_rng(3), [CohortPlan("cardiology", 50.0)], n,
                          t0_ms=now - n * 2000 - 3_600_000)
    msgs = list(_messages(rollout_records(steps), now))

    def run(deliveries: int):
        pipe = Pipeline(Settings(state_dir="/nonexistent"), default_codec())
        for kind, msg in msgs:
            if kind == "trace":
                pipe.on_traces([msg])
            else:
                for _ in range(deliveries):
                    pipe.on_feedback([msg])
        return pipe.engine.delayed

    once, twice = run(1), run(2)
    assert once.counters["feedback_events"] > 100
    assert twice.counters == once.counters and twice.live_events() == once.live_events()
    assert _counted(twice) == twice.counters["feedback_events"]


def test_a_crash_between_checkpoints_counts_the_redelivered_corrections_once():
    """A worker killed between two checkpoints: its slice rows come back from the last one, so the
    feedback it processed since must be counted again when it is redelivered, once. The feedback
    dedup state is written at the same checkpoint (``CheckpointedBackend``); before, its ids
    reached the changelog at once, the restarted worker found them seen, and the corrections since
    the checkpoint were never counted (the chaos run's false correction-rate incidents)."""
    import time

    from streams.devtools.bench_canary import CohortPlan, rollout_records, rollout_steps
    from streams.state import DictBackend
    from tests.unit.test_canary_pipeline import _messages

    now = int(time.time() * 1000)
    n = 1500
    steps = rollout_steps(np.random.default_rng(5), [CohortPlan("cardiology", 50.0)], n,
                          t0_ms=now - n * 2000 - 3_600_000)
    msgs = list(_messages(rollout_records(steps), now))
    checkpoint, crash = len(msgs) // 2, 3 * len(msgs) // 4

    def pipeline(backends, stored=None) -> Pipeline:
        # ``stored``: the traces ClickHouse holds (the crashed worker's index stands for it)
        lookup = None if stored is None else (
            lambda tenant, ids: {i: stored.refs[i] for i in ids if i in stored.refs})
        return Pipeline(Settings(state_dir="/nonexistent"), default_codec(), trace_lookup=lookup, **backends)

    def feed(pipe: Pipeline, part) -> None:
        for kind, msg in part:
            if kind == "trace":
                pipe.on_traces([msg])
            else:
                pipe.on_feedback([msg])

    # never crashed: what the feedback after the checkpoint adds
    ref = pipeline({})
    feed(ref, msgs[:checkpoint])
    at_checkpoint = ref.engine.delayed.counters["feedback_events"]
    new_at_checkpoint = ref.feedback_statuses["new"]
    feed(ref, msgs[checkpoint:])
    since = ref.engine.delayed.counters["feedback_events"] - at_checkpoint
    assert since > 100

    backends = {k: DictBackend() for k in ("baselines", "incidents", "feedback_state", "canary_state")}
    first = pipeline(backends)
    feed(first, msgs[:checkpoint])
    first.flush_state()
    held = first.engine.store.f["pa_n"][: first.engine.store.n].sum()
    assert held > 0  # traces ahead of the feedback clock, held out of the rings: restored with the rows
    feed(first, msgs[checkpoint:crash])  # then SIGKILL: nothing more is written
    restarted = pipeline(backends, stored=first.index)
    feed(restarted, msgs[checkpoint:])  # redelivered from the committed offsets on
    assert restarted.engine.delayed.counters["feedback_events"] == since
    # and the redelivered submissions are new again, as they were the first time
    assert restarted.feedback_statuses.get("new", 0) == ref.feedback_statuses["new"] - new_at_checkpoint


#: the demo's clinicians (``simulate.DEMO_FEEDBACK_DELAY``): log-normal, median 20 min, p99 about 3 h
DEMO_TIMING = Timing("demo_clinicians", "lognormal", median_ms=1_200_000.0, sigma=0.95)


def test_feedback_slower_than_the_maturity_is_not_folded_away():
    """The demo's timing in-process: 20,000 traces over 6 h of a stationary fleet, corrections
    log-normal (median 20 min, p99 3 h), feedback not due by the last trace never read. A bucket
    folds at ``G >= FOLD_AT`` = 0.999, so about 0.1 % of the feedback should come after its
    bucket folded. Before the fix 47 % did (5,688 of 12,150 events): until a tenant's delay
    distribution was learned (200 delays seen, hours here), the maturity step (300 s) folded every
    bucket 5 minutes after its traces, though the delays already observed were far longer."""
    s = Scenario("stationary_control", None, None, False, None, warmup=0, after=20_000)
    r = run_timed(s, DEMO_TIMING, 7, Settings(), step_ms=6 * 3_600_000 / 20_000)
    c = r.counters
    assert c["feedback_events"] > 10_000
    assert c["late_feedback"] <= 0.01 * c["feedback_events"], c
    assert r.uncounted == 0 and c["unmatched_feedback"] == 0
    assert r.false_incidents == 0, r.opened


def _lognormal_stream(rng, hours: float, rate: float, median_ms: float, t0: int = 0):
    """Traces at ``rate``/s over ``hours``, one feedback each after a log-normal delay; the
    feedback seen by the end, in feedback-time order: (trace ms, delay ms, feedback ms)."""
    h_ms = int(hours * 3_600_000)
    tr = np.sort(rng.integers(0, h_ms, int(rate * hours * 3600))) + t0
    d = median_ms * np.exp(rng.normal(0, LOGNORMAL_SIGMA, tr.size))
    fb = tr + d
    keep = fb < t0 + h_ms
    order = np.argsort(fb[keep], kind="stable")
    return tr[keep][order], d[keep][order], fb[keep][order]


def _learn(cdf: DelayCDF, tr, d, fb, learn_every_ms: int = 300_000, batch_ms: int = 60_000) -> None:
    """Feed ``cdf`` as DelayedMetrics does: batches of ``batch_ms`` feedback time, learning on the grid."""
    sec = (fb // batch_ms).astype(np.int64)
    learned = -1
    for idx in np.split(np.arange(len(fb)), np.flatnonzero(np.diff(sec)) + 1):
        cdf.observe(tr[idx], np.zeros(len(idx), np.int64), d[idx])
        grid = (int(fb[idx[-1]]) // learn_every_ms) * learn_every_ms
        if grid > learned:
            learned = grid
            cdf.release({0: float(grid)})


def test_the_pending_aggregate_matches_the_per_event_estimate_and_stays_bounded():
    """The same stream learned exactly (1 ms grid: one entry per trace time, the per-event
    estimate) and with the default grid (trace times rounded up): the CDFs agree within 0.01
    within the support, and the aggregate holds a few thousand entries, not one per delay."""
    rng = np.random.default_rng(5)
    tr, d, fb = _lognormal_stream(rng, 3.0, 4.0, 600_000.0)
    exact = DelayCDF(20_000.0, grid_share=0.0, grid_floor_ms=1)
    agg = DelayCDF(20_000.0)
    _learn(exact, tr, d, fb)
    _learn(agg, tr, d, fb)
    ages = np.exp(np.linspace(np.log(10_000.0), np.log(exact.support_ms()), 100))
    assert exact.support_ms() > 3_600_000
    assert np.abs(agg.cdf(ages) - exact.cdf(ages)).max() < 0.01
    assert agg.pending == exact.pending  # every delay is held, none dropped
    assert len(agg.t) < 2_000 < len(exact.t)
    # on trace times already on the grid the two are identical
    on_grid = DelayCDF(20_000.0, grid_share=0.0, grid_floor_ms=1)
    coarse = DelayCDF(20_000.0, grid_share=0.0, grid_floor_ms=65_536)
    t_grid = (tr // 65_536 + 1) * 65_536
    _learn(on_grid, t_grid, d, fb)
    _learn(coarse, t_grid, d, fb)
    assert np.array_equal(on_grid.a, coarse.a) and np.array_equal(on_grid.b, coarse.b)


def test_a_busy_tenant_keeps_learning_past_fifty_thousand_pending_delays():
    """100 feedback/s (the old queue's cap of 50,000 is reached in minutes): every delay below
    7 days stays pending, and when the delays double the CDF moves with them."""
    rng = np.random.default_rng(6)
    tr, d, fb = _lognormal_stream(rng, 1.0, 100.0, 120_000.0)
    cdf = DelayCDF(20_000.0)
    _learn(cdf, tr, d, fb)
    assert cdf.observed == len(d) > 150_000 and cdf.beyond_horizon == 0
    assert cdf.pending > 50_000
    before = float(cdf.cdf(np.array([120_000.0]))[0])
    assert abs(before - 0.5) < 0.05
    t0 = int(fb[-1]) + 1
    tr2, d2, fb2 = _lognormal_stream(rng, 1.0, 100.0, 480_000.0, t0=t0)
    _learn(cdf, tr2, d2, fb2)
    after = float(cdf.cdf(np.array([120_000.0]))[0])
    assert cdf.pending > 100_000
    assert after < before - 0.15  # four times longer delays: F(2 min) falls
    cdf.observe(np.array([0]), np.array([0]), np.array([8 * 86_400_000.0]))
    assert cdf.beyond_horizon == 1


def test_the_delay_model_survives_a_restart_and_a_redelivered_batch_counts_once():
    """Through the pipeline's checkpoint path (``flush_state`` into the state backends, a new
    ``Pipeline`` on the same backends): the restored delay model gives the same CDF and support,
    a feedback batch delivered again after the restart learns nothing twice, and state written
    before the delay model existed (no ``delay|`` key) still loads."""
    import time

    from streams.devtools.bench_canary import CohortPlan, rollout_records, rollout_steps
    from streams.processors.drift import DelayModel
    from streams.state import DictBackend
    from tests.unit.test_canary_pipeline import _messages

    now = int(time.time() * 1000)
    n = 1500
    steps = rollout_steps(np.random.default_rng(3), [CohortPlan("cardiology", 50.0)], n,
                          t0_ms=now - n * 2000 - 3_600_000)
    msgs = list(_messages(rollout_records(steps), now))
    backends = {k: DictBackend() for k in ("baselines", "incidents", "feedback_state", "canary_state")}

    def pipeline() -> Pipeline:
        return Pipeline(Settings(state_dir="/nonexistent"), default_codec(), **backends)

    pipe = pipeline()
    last_feedback = None
    for kind, msg in msgs:
        if kind == "trace":
            pipe.on_traces([msg])
        else:
            pipe.on_feedback([msg])
            last_feedback = msg
    pipe.flush_state()  # the checkpoint
    model = pipe.engine.delayed.delays
    tenants = {t for t, _ in model.cdfs}
    assert tenants and all(backends["baselines"].get(DelayModel.state_key(t)) for t in tenants)
    learned = model.cdfs[(next(iter(tenants)), None)]
    assert learned.observed > 100

    restarted = pipeline()
    # a batch redelivered after the restart: its feedback is known (feedback-seen), nothing relearned
    restarted.on_feedback([last_feedback])
    restored = restarted.engine.delayed.delays
    ages = np.exp(np.linspace(0.0, np.log(7 * 86_400_000.0), 50))
    for key, cdf in model.cdfs.items():
        restored.model_for(*key)  # read from the backend when first needed
        got = restored.cdfs[key]
        assert got.observed == cdf.observed and got.pending == cdf.pending and got.seen == cdf.seen
        assert np.array_equal(got.a, cdf.a) and np.array_equal(got.b, cdf.b)
        assert got.support_ms() == cdf.support_ms() and np.array_equal(got.cdf(ages), cdf.cdf(ages))
    assert restored.model_for(*next(iter(model.cdfs))) is not None or learned.seen < restored.min_samples

    # old state: the same slice rows without the delay model load, and the model starts empty
    old = {k: v for k, v in backends["baselines"].data.items() if not k.startswith(DelayModel.KEY_PREFIX)}
    backends["baselines"] = DictBackend()
    backends["baselines"].data.update(old)
    fresh = pipeline()
    fresh.on_feedback([last_feedback])
    assert all(c.observed == 0 for c in fresh.engine.delayed.delays.cdfs.values())
    with pytest.raises(ValueError, match="delay model state of tenant 'acme'"):
        DelayModel.decode(b"not an archive", "acme")
