"""``selfheal bench-drift``: detection quality on a scenario suite, next to river's raw detectors.

Every scenario drives the real processing core (:meth:`Pipeline.process_columns` for traces and
:meth:`Pipeline.apply_corrections` for delayed feedback, i.e. everything after Avro decoding) with
synthetic traffic from :mod:`streams.devtools.synthetic`: a fleet of 6 tenants / 8 tenant×cohort slices at
20 traces/s of event time, feedback arriving 30-240 s after its trace.

Scenarios (each regression runs with several seeds; the change starts after 40,000 warm-up traces):

=============================  ==============================================  ====================
scenario                       change (affected slice)                         expected
=============================  ==============================================  ====================
release_corrections_latency    new release: corrections x2, latency x1.4       release_regression
release_corrections_x1.5       new release: corrections x1.5                   release_regression
release_escalations_x2         new release: escalations x2                     release_regression
release_latency_tail           new release: 10% of runs x2.3 slower (+32% p95) release_regression
infra_latency_tail             same tail, no release (infrastructure)          output_drift
tool_outage                    failures x3, tool failures x3, no release        workflow_drift
release_policy_blocks_x4       new release: policy blocks x4                   safety (release named)
input_mix_shift                intent mix moves, no release                    input_drift
release_truncation             new release: output tokens x0.6                 release_regression
seasonal_all_tenants           every slice: intent mix moves, latency x1.15    platform-wide, no release blamed
stationary_control             nothing changes (long run)                      no incident
noisy_low_traffic              40 tenants at 0.25% traffic each, stationary    no incident
=============================  ==============================================  ====================

Scores: ``recall`` (regressions with an incident on the affected tenant after the change),
``median/p90_delay_traces`` (traces *of the affected slice* between the change and the first
incident), ``false_incidents_per_million`` (incidents that open where nothing changed, per million
traces processed, over every scenario), ``kind_accuracy``, ``release_attribution_accuracy`` (the
new release named for release scenarios, no release otherwise), ``cross_tenant_misattributions``
(incidents whose evidence traces belong to another tenant). The baselines run river's ``ADWIN``
and ``PageHinkley`` (default parameters) on the raw per-trace metrics of every tenant×cohort
slice (latency ms, output tokens, failure / escalation / policy-block / correction indicators,
corrections known immediately); alarms on one slice within 2,000 traces count as one incident.
They only detect, so kind and release scores do not apply to them.

``--timed`` (:func:`run_timed_suite`) runs the delayed-label scenarios with real timing instead:
corrections x1.5 and x2 on a new release, one trace every 10 s (days of event time), feedback
delayed log-normally (median 2 h, p99 48 h), or by fast reviewers plus office hours with a
weekend backlog, or read by a feedback consumer an hour behind the trace consumer; every input is
read twice on two schedules of batch sizes and interleaving, and the incidents must be the same.
Scores: recall, release attribution, delay in affected-slice traces from the injection (the
slice's first post-change trace) to the detection (the incident's ``detected_at``, a feedback time
for a delayed-label alarm; never from its change point, which may precede the injection) and in
hours after the first correction of a post-change trace of the slice arrived, change-point error
in trace time, false incidents per million,
corrections uncounted (events not in a live bucket, folded, late or unmatched).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from schemas import IncidentStatus
from streams.config import Settings
from streams.devtools.synthetic import Effect, Slice, synthetic_columns, synthetic_feedback
from streams.pipeline import Pipeline

FLEET = (
    Slice("acme", "cardiology", 0.18, partition=0),
    Slice("acme", "oncology", 0.08, partition=0),
    Slice("globex", "primary_care", 0.20, partition=1),
    Slice("globex", "pediatrics", 0.07, partition=1),
    Slice("initech", "cardiology", 0.15, partition=2),
    Slice("umbrella", "orthopedics", 0.12, partition=3),
    Slice("hooli", "dermatology", 0.10, partition=4),
    Slice("stark", "primary_care", 0.10, partition=5),
)
NEW_RELEASE = "rel-2"
STEP_MS = 50.0  # 20 traces/s fleet-wide
T0_MS = 1_790_000_000_000
SEASONAL_INTENTS = (0.15, 0.25, 0.30, 0.30)
#: river baselines: alarms on a slice within this many traces count as one incident
COOLDOWN_TRACES = 2000


@dataclass(frozen=True)
class Scenario:
    """One scenario: which slice changes (index into the fleet), how, and what should be said."""

    name: str
    affected: int | None
    effect: Effect | None
    release: bool
    expected_kind: str | None
    everywhere: bool = False  # apply the effect to every slice (seasonal)
    warmup: int = 40_000
    after: int = 60_000
    fleet: tuple[Slice, ...] = FLEET


SCENARIOS = (
    Scenario("release_corrections_latency", 0, Effect(correction=2.0, latency=1.4), True, "release_regression"),
    Scenario("release_corrections_x1.5", 0, Effect(correction=1.5), True, "release_regression"),
    Scenario("release_escalations_x2", 2, Effect(escalation=2.0), True, "release_regression"),
    Scenario("release_latency_tail", 4, Effect(latency_tail_share=0.10, latency_tail_factor=2.3), True,
             "release_regression"),
    Scenario("infra_latency_tail", 5, Effect(latency_tail_share=0.10, latency_tail_factor=2.3), False, "output_drift"),
    Scenario("tool_outage", 2, Effect(failure=3.0, tool_failure=3.0), False, "workflow_drift"),
    Scenario("release_policy_blocks_x4", 6, Effect(policy_block=4.0), True, "safety"),
    Scenario("input_mix_shift", 1, Effect(intent_p=SEASONAL_INTENTS), False, "input_drift"),
    Scenario("release_truncation", 7, Effect(output_tokens=0.6), True, "release_regression"),
    Scenario("seasonal_all_tenants", None, Effect(intent_p=SEASONAL_INTENTS, latency=1.15), False, "platform",
             everywhere=True),
)
NOISY_FLEET = FLEET[:4] + tuple(Slice(f"clinic-{i:02d}", ("cardiology", "primary_care")[i % 2], 0.0025,
                                      partition=i % 6) for i in range(40))
STATIONARY = (
    Scenario("stationary_control", None, None, False, None, warmup=0, after=3_000_000),
    Scenario("noisy_low_traffic", None, None, False, None, warmup=0, after=2_000_000, fleet=NOISY_FLEET),
)


@dataclass
class RunResult:
    """Outcome of one scenario run."""

    scenario: str
    seed: int
    traces: int
    detected: bool = False
    delay_traces: int | None = None
    kind: str | None = None
    release_id: str | None = None
    false_incidents: int = 0
    cross_tenant: int = 0
    incidents: list[dict[str, Any]] = field(default_factory=list)


def _fleet_for(s: Scenario, changed: bool) -> list[Slice]:
    out = []
    for i, sl in enumerate(s.fleet):
        hit = s.effect is not None and changed and (s.everywhere or i == s.affected)
        out.append(replace(sl, effect=s.effect if hit else Effect(),
                           release=NEW_RELEASE if hit and s.release else sl.release))
    return out


def run_selfheal(s: Scenario, seed: int, settings: Settings, batch: int = 2000) -> RunResult:
    """Run one scenario through the pipeline core; score its incidents."""
    rng = np.random.default_rng(seed)
    pipe = Pipeline(settings, _codec())
    pipe.releases.update({r: {"release_id": r, "model": "m", "prompt_version": "p", "tool_schema_version": "t",
                              "policy_version": "x", "retrieval_index_version": "i"} for r in ("rel-1", NEW_RELEASE)})
    res = RunResult(s.name, seed, s.warmup + s.after)
    tenant_of = np.empty(s.warmup + s.after, dtype=np.int16)
    tenants = sorted({sl.tenant for sl in s.fleet})
    t_index = {t: i for i, t in enumerate(tenants)}
    affected = s.fleet[s.affected] if s.affected is not None else None
    slice_traces = 0  # traces of the affected slice since the change
    pending: list[tuple[int, dict, Any]] = []
    first_by_id: dict[str, dict[str, Any]] = {}
    off = 0
    total = s.warmup + s.after
    while off < total:
        n = min(batch, total - off)
        changed = off >= s.warmup
        fleet = _fleet_for(s, changed)
        cols, which = synthetic_columns(rng, fleet, n, off, T0_MS + int(off * STEP_MS), STEP_MS)
        tenant_of[off : off + n] = [t_index[t] for t in cols.tenant_id]
        in_slice = np.zeros(n, dtype=bool)
        if affected is not None and changed:
            in_slice = which == s.affected
        events = pipe.process_columns(cols)
        pos_of = {tid: i for i, tid in enumerate(cols.trace_id)} if events else {}
        for e in events:
            at = pos_of.get(e.detected_at_trace_id)
            seen = slice_traces + (int(in_slice[: at + 1].sum()) if at is not None else int(in_slice.sum()))
            _record(res, e, first_by_id, seen, changed, s, tenant_of)
        slice_traces += int(in_slice.sum())
        pending.extend(synthetic_feedback(rng, cols, which, fleet))
        now = int(cols.event_time_ms[-1])
        pending.sort(key=lambda x: x[0])
        k = next((i for i, p in enumerate(pending) if p[0] > now), len(pending))
        due, pending = pending[:k], pending[k:]
        for e in pipe.apply_corrections([(rec, ref) for _, rec, ref in due], dict.fromkeys(range(6), now)):
            _record(res, e, first_by_id, slice_traces, changed, s, tenant_of)
        off += n
    first = next((i for i in res.incidents if i["on_change"]), None)
    if first is not None:
        res.detected = True
        res.delay_traces = first["delay"]
        final = first_by_id[first["incident_id"]]
        res.kind = final["kind"]
        res.release_id = final["release_id"]
    return res


def _record(res: RunResult, e, first_by_id: dict, seen: int, changed: bool, s: Scenario, tenant_of: np.ndarray) -> None:
    tenant = e.slice.tenant_id
    if e.incident_id in first_by_id:  # later revision: keep the latest classification
        if e.status != IncidentStatus.resolved or "superseded" not in e.summary:
            first_by_id[e.incident_id].update(kind=e.kind.value, release_id=e.release_id)
        return
    if e.status == IncidentStatus.resolved:
        return
    if s.everywhere:
        on_change = changed and tenant is None
    else:
        on_change = changed and s.affected is not None and tenant == s.fleet[s.affected].tenant
    entry = {"incident_id": e.incident_id, "tenant": tenant, "layer": e.slice.layer, "metric": e.metric,
             "kind": e.kind.value, "release_id": e.release_id, "on_change": on_change, "delay": seen}
    first_by_id[e.incident_id] = entry
    res.incidents.append(entry)
    # a tenant incident during a seasonal change is expected until the platform episode forms
    if not on_change and not (s.everywhere and changed):
        res.false_incidents += 1
    tenants = sorted({sl.tenant for sl in s.fleet})
    owners = {tenants[int(tenant_of[int(t[1:])])] for t in e.evidence_trace_ids if t.startswith("x")}
    if tenant is not None and owners - {tenant}:
        res.cross_tenant += 1


def run_river(s: Scenario, seed: int, kind: str, batch: int = 5000) -> RunResult:
    """The same traffic scored by river's raw ``ADWIN`` / ``PageHinkley`` per tenant×cohort slice,
    on the raw metrics: latency (ms), output tokens, and per-trace failure, escalation, policy-block
    and correction indicators (corrections seen immediately: an advantage over the real pipeline)."""
    from river import drift

    rng = np.random.default_rng(seed)
    res = RunResult(s.name, seed, s.warmup + s.after)
    make = (lambda: drift.ADWIN()) if kind == "adwin" else (lambda: drift.PageHinkley())
    dets: dict[tuple[int, int], Any] = {}
    quiet_until: dict[int, int] = {}  # per slice: alarms are one "incident" per cooldown window
    slice_traces = 0
    off = 0
    total = s.warmup + s.after
    while off < total:
        n = min(batch, total - off)
        changed = off >= s.warmup
        fleet = _fleet_for(s, changed)
        cols, which = synthetic_columns(rng, fleet, n, off, T0_MS, STEP_MS)
        fb = {rec["trace_id"] for _, rec, _ in synthetic_feedback(rng, cols, which, fleet)}
        corr = np.fromiter((t in fb for t in cols.trace_id), dtype=float, count=n)
        metrics = np.stack([cols.latency_ms, cols.output_tokens, (cols.outcome == 1).astype(float),
                            (cols.outcome == 2).astype(float), cols.policy_blocked.astype(float), corr], axis=1)
        for i in range(n):
            sl = int(which[i])
            hit = s.affected == sl and changed
            if hit:
                slice_traces += 1
            row = metrics[i]
            fired = False
            for m in range(metrics.shape[1]):
                d = dets.get((sl, m))
                if d is None:
                    d = dets[(sl, m)] = make()
                d.update(float(row[m]))
                fired = fired or d.drift_detected
            if fired and off + i >= quiet_until.get(sl, -1):
                quiet_until[sl] = off + i + COOLDOWN_TRACES
                on_change = changed and (s.everywhere or sl == s.affected)
                if on_change and not res.detected:
                    res.detected, res.delay_traces = True, slice_traces
                elif not on_change:
                    res.false_incidents += 1
        off += n
    return res


def _codec():
    from schemas import default_codec

    return default_codec()


def _quantile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    return float(np.quantile(np.asarray(values, dtype=float), q))


def summarise(results: list[RunResult], with_classification: bool) -> dict[str, Any]:
    """Aggregate scores over runs (see module docstring)."""
    regress = [r for r in results if r.scenario in {s.name for s in SCENARIOS} and r.scenario != "seasonal_all_tenants"]
    detected = [r for r in regress if r.detected]
    delays = [r.delay_traces for r in detected if r.delay_traces is not None]
    traces = sum(r.traces for r in results)
    out: dict[str, Any] = {
        "recall": len(detected) / len(regress) if regress else None,
        "median_delay_traces": _quantile(delays, 0.5),
        "p90_delay_traces": _quantile(delays, 0.9),
        "false_incidents_per_million": sum(r.false_incidents for r in results) / traces * 1e6,
        "false_incidents": sum(r.false_incidents for r in results),
        "traces": traces,
    }
    if with_classification:
        expected = {s.name: s for s in SCENARIOS}
        classified = [r for r in results if r.detected and r.scenario in expected]
        kind_ok = [
            (r.kind in ("input_drift", "output_drift") and r.release_id is None) if expected[r.scenario].expected_kind
            == "platform" else r.kind == expected[r.scenario].expected_kind for r in classified]
        rel_ok = [(r.release_id == NEW_RELEASE) == expected[r.scenario].release for r in classified]
        seasonal = [r for r in results if r.scenario == "seasonal_all_tenants"]
        out.update({
            "kind_accuracy": sum(kind_ok) / len(kind_ok) if kind_ok else None,
            "release_attribution_accuracy": sum(rel_ok) / len(rel_ok) if rel_ok else None,
            "cross_tenant_misattributions": sum(r.cross_tenant for r in results),
            "seasonal_release_regressions": sum(1 for r in seasonal for i in r.incidents
                                                if i["kind"] == "release_regression"),
        })
    per: dict[str, Any] = {}
    for name in dict.fromkeys(r.scenario for r in results):
        rs = [r for r in results if r.scenario == name]
        d = [r.delay_traces for r in rs if r.detected and r.delay_traces is not None]
        per[name] = {"runs": len(rs), "detected": sum(r.detected for r in rs),
                     "median_delay_traces": _quantile(d, 0.5), "false_incidents": sum(r.false_incidents for r in rs)}
        if with_classification:
            per[name]["kinds"] = sorted({r.kind for r in rs if r.kind})
            per[name]["releases"] = sorted({str(r.release_id) for r in rs if r.detected})
    out["per_scenario"] = per
    return out


def run_suite(seeds: int = 5, river: bool = True, settings: Settings | None = None, quick: bool = False,
              progress=None) -> dict[str, Any]:
    """Run every scenario (``seeds`` seeds for regressions, one long stationary run each) and
    return the JSON-able report. ``quick`` shortens stationary runs tenfold (smoke tests)."""
    settings = settings or Settings()
    stationary = [replace(s, after=s.after // 10) for s in STATIONARY] if quick else list(STATIONARY)
    t0 = time.perf_counter()
    results: list[RunResult] = []
    jobs = [(s, seed) for s in SCENARIOS for seed in range(seeds)] + [(s, 100) for s in stationary]
    for i, (s, seed) in enumerate(jobs):
        results.append(run_selfheal(s, seed, settings))
        if progress:
            progress(f"selfheal {s.name} seed {seed}", i + 1, len(jobs))
    report: dict[str, Any] = {"selfheal": summarise(results, True)}
    if river:
        short = [replace(s, after=min(s.after, 500_000)) for s in stationary]
        rjobs = [(s, 0) for s in SCENARIOS] + [(s, 100) for s in short]
        for kind in ("adwin", "pagehinkley"):
            rr = []
            for i, (s, seed) in enumerate(rjobs):
                rr.append(run_river(s, seed, kind))
                if progress:
                    progress(f"river {kind} {s.name}", i + 1, len(rjobs))
            report[f"river_{kind}"] = summarise(rr, False)
    report["settings"] = {"cusum_threshold": settings.cusum_threshold, "rate_shift": settings.rate_shift,
                          "mean_shift_sigma": settings.mean_shift_sigma, "warmup_traces": settings.warmup_traces,
                          "feedback_maturity_s": settings.feedback_maturity_s, "seeds": seeds,
                          "layers": list(settings.layers)}
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    report["runs"] = [asdict(r) | {"incidents": r.incidents[:20]} for r in results]
    return report


def calibrate(thresholds: list[float], traces: int = 1_000_000, progress=None) -> list[dict[str, Any]]:
    """False incidents per million on the stationary scenarios (``traces`` each) for each CUSUM
    threshold ``h``: the calibration curve behind ``cusum_threshold``."""
    out = []
    for h in thresholds:
        settings = Settings(cusum_threshold=h)
        runs = [run_selfheal(replace(s, after=traces), 100, settings) for s in STATIONARY]
        total = sum(r.traces for r in runs)
        false = sum(r.false_incidents for r in runs)
        out.append({"cusum_threshold": h, "traces": total, "false_incidents": false,
                    "false_incidents_per_million": false / total * 1e6})
        if progress:
            progress(f"h={h}: {false} false incidents in {total:,} traces", len(out), len(thresholds))
    return out


def headline(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows ``(score, selfheal, ADWIN, PageHinkley)`` for printing."""
    keys = ("recall", "median_delay_traces", "p90_delay_traces", "false_incidents_per_million", "kind_accuracy",
            "release_attribution_accuracy", "cross_tenant_misattributions")

    def fmt(d: dict | None, k: str) -> str:
        if d is None or d.get(k) is None:
            return "n/a"
        v = d[k]
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return [(k, fmt(report.get("selfheal"), k), fmt(report.get("river_adwin"), k),
             fmt(report.get("river_pagehinkley"), k)) for k in keys]


def dumps(report: dict[str, Any]) -> str:
    """JSON text of a report."""
    return json.dumps(report, indent=2, default=str)




# ====================================================================== label delays with real timing
#: delayed-label runs: one fleet-wide trace every 10 s of event time, so 100,000 traces span 11.6
#: days and the warm-up 4.6 days (corrections delayed by days need days of traffic)
TIMED_STEP_MS = 10_000.0
HOUR_MS = 3_600_000.0
#: log-normal delays with median 2 h and p99 48 h: sigma = ln(24) / z_0.99
LOGNORMAL_MEDIAN_MS, LOGNORMAL_SIGMA = 2 * HOUR_MS, math.log(24.0) / 2.3263


@dataclass(frozen=True)
class Timing:
    """When feedback happens and when the worker reads it.

    ``delay``: ``lognormal`` (median 2 h, p99 48 h) or ``reviewers`` (60% fast reviewers, median
    5 min; the rest reviewed in working hours, Mon-Fri 08-18 UTC, so a weekend's traces wait for
    Monday). ``feedback_behind_ms``: the feedback consumer reads feedback this long after it
    happened while the trace consumer keeps up (one hour: a lagging feedback consumer).
    ``median_ms`` / ``sigma``: the ``lognormal`` delay's median (ms) and log-scale standard
    deviation (the demo's clinicians: 1,200,000 ms and 0.95, p99 about 3 h).
    """

    name: str
    delay: str
    feedback_behind_ms: float = 0.0
    median_ms: float = LOGNORMAL_MEDIAN_MS
    sigma: float = LOGNORMAL_SIGMA


TIMINGS = (
    Timing("lognormal_2h_p99_48h", "lognormal"),
    Timing("fast_reviewers_weekend_backlog", "reviewers"),
    Timing("feedback_consumer_1h_behind", "lognormal", feedback_behind_ms=HOUR_MS),
)
TIMED_SCENARIOS = (
    Scenario("release_corrections_x1.5", 0, Effect(correction=1.5), True, "release_regression"),
    Scenario("release_corrections_x2", 0, Effect(correction=2.0), True, "release_regression"),
)
TIMED_STATIONARY = Scenario("stationary_control", None, None, False, None, warmup=0, after=1_000_000)


def feedback_delays_ms(rng: np.random.Generator, timing: Timing, trace_ms: np.ndarray) -> np.ndarray:
    """Delay of each feedback after its trace (ms) under ``timing`` (see :class:`Timing`)."""
    n = len(trace_ms)
    if timing.delay == "lognormal":
        return timing.median_ms * np.exp(rng.normal(0.0, timing.sigma, n))
    if timing.delay != "reviewers":
        raise ValueError(f"timing.delay {timing.delay!r} is not lognormal or reviewers")
    fast = rng.random(n) < 0.6
    d_fast = 300_000.0 * np.exp(rng.normal(0.0, 0.8, n))
    # office reviewers: ready after ~1 h, reviewed at the next working minute, then within ~2 h
    ready = trace_ms + HOUR_MS * np.exp(rng.normal(0.0, 0.7, n))
    day_ms = 24 * HOUR_MS
    days = np.floor(ready / day_ms)
    hour = (ready - days * day_ms) / HOUR_MS
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (Mon = 0)
    start = ready.copy()
    late_day = hour >= 18.0
    start = np.where(hour < 8.0, days * day_ms + 8 * HOUR_MS, start)
    start = np.where(late_day, (days + 1) * day_ms + 8 * HOUR_MS, start)
    wd = np.where(late_day, (weekday + 1) % 7, weekday)
    skip = np.where(wd == 5, 2, np.where(wd == 6, 1, 0))  # Saturday, Sunday -> Monday 08:00
    start = np.where(skip > 0, (np.floor(start / day_ms) + skip) * day_ms + 8 * HOUR_MS, start)
    d_office = start - trace_ms + rng.exponential(2 * HOUR_MS, n)
    return np.where(fast, d_fast, d_office)


@dataclass
class TimedResult:
    """One delayed-label run: detection, delay in slice traces and hours, counting, and the
    incidents (``(incident id, metric, kind, release)`` of each opened, for the determinism check)."""

    scenario: str
    timing: str
    seed: int
    schedule: int
    traces: int
    detected: bool = False
    release_id: str | None = None
    kind: str | None = None
    delay_traces: int | None = None
    delay_h_after_first_correction: float | None = None
    change_point_error_h: float | None = None
    false_incidents: int = 0
    corrections: int = 0
    uncounted: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    opened: list[tuple[str, str, str, str | None]] = field(default_factory=list)


def run_timed(s: Scenario, timing: Timing, seed: int, settings: Settings, schedule: int = 0,
              step_ms: float = TIMED_STEP_MS, trace_batch_max: int = 3000) -> TimedResult:
    """Run ``s`` with feedback under ``timing``: the same input (traces and feedback, fixed by
    ``seed``) is read by two consumers on their own schedules (``schedule`` seeds the batch sizes:
    traces 50 to ``trace_batch_max`` per batch (3,000 = 8.3 h of event time at the default
    ``step_ms``), feedback 1-500), the feedback one ``feedback_behind_ms`` late and
    never ahead of the traces it refers to (the worker's join); one fleet trace every ``step_ms``
    of event time. Feedback not due by the last trace is never read. Scores the incidents."""
    rng = np.random.default_rng(seed)
    sched = np.random.default_rng(10_000 + schedule)
    pipe = Pipeline(settings, _codec())
    pipe.releases.update({r: {"release_id": r, "model": "m", "prompt_version": "p", "tool_schema_version": "t",
                              "policy_version": "x", "retrieval_index_version": "i"} for r in ("rel-1", NEW_RELEASE)})
    total = s.warmup + s.after
    t_change = T0_MS + int(s.warmup * step_ms)
    chunks: list[Any] = []
    fbs: list[tuple[int, dict, Any]] = []
    slice_times: list[np.ndarray] = []  # event times of the affected slice's traces after the change
    off = 0
    while off < total:
        n = min(2000, total - off)
        changed = off >= s.warmup
        fleet = _fleet_for(s, changed)
        cols, which = synthetic_columns(rng, fleet, n, off, T0_MS + int(off * step_ms), step_ms)
        chunks.append(cols)
        if s.affected is not None and changed:
            slice_times.append(cols.event_time_ms[which == s.affected])
        fb = synthetic_feedback(rng, cols, which, fleet)
        delays = feedback_delays_ms(rng, timing, np.array([ref.event_time_ms for _, _, ref in fb], dtype=np.float64))
        for (_, rec, ref), d in zip(fb, delays.tolist(), strict=True):
            at = ref.event_time_ms + int(d)
            fbs.append((at, dict(rec, event_time=at), ref))
        off += n
    fbs.sort(key=lambda x: (x[0], x[1]["trace_id"]))
    res = TimedResult(s.name, timing.name, seed, schedule, total, corrections=len(fbs))
    # the first correction of a post-change trace of the affected slice to arrive (event time, ms)
    first_post = None
    if s.affected is not None:
        aff = s.fleet[s.affected]
        first_post = next((at for at, _, ref in fbs if ref.event_time_ms >= t_change and ref.tenant_id == aff.tenant
                           and ref.cohort == aff.cohort), None)
    opened: dict[str, Any] = {}  # incident id -> its first event (detection) and latest revision
    latest: dict[str, Any] = {}
    ci, cpos, fi, trace_wm = 0, 0, 0, -1

    def take(events):
        for e in events:
            if e.incident_id not in opened:
                if e.status != IncidentStatus.resolved:
                    opened[e.incident_id] = latest[e.incident_id] = e
            elif e.status != IncidentStatus.resolved or "superseded" not in e.summary:
                latest[e.incident_id] = e if e.status != IncidentStatus.resolved else latest[e.incident_id]

    while ci < len(chunks) or fi < len(fbs):
        t_trace = chunks[ci].event_time_ms[cpos] if ci < len(chunks) else math.inf
        t_fb = fbs[fi][0] + timing.feedback_behind_ms if fi < len(fbs) else math.inf
        fb_ready = fi < len(fbs) and fbs[fi][0] <= trace_wm
        if ci < len(chunks) and (t_trace <= t_fb or not fb_ready):
            c = chunks[ci]
            m = min(int(sched.integers(50, trace_batch_max)), c.n - cpos)
            part = c.slice(cpos, cpos + m)
            cpos += m
            if cpos >= c.n:
                ci, cpos = ci + 1, 0
            trace_wm = max(trace_wm, int(part.event_time_ms.max()))
            take(pipe.process_columns(part))
        elif fb_ready:
            size = int(sched.integers(1, 500))
            j = fi
            while j < len(fbs) and j - fi < size and fbs[j][0] <= trace_wm:
                j += 1
            chunk = fbs[fi:j]
            fi = j
            wm: dict[int, int] = {}
            for at, _, ref in chunk:
                wm[ref.partition] = max(wm.get(ref.partition, -1), at)
            take(pipe.apply_corrections([(rec, ref) for _, rec, ref in chunk], wm))
        else:
            break
    d = pipe.engine.delayed
    res.counters = dict(d.counters)
    layers_metrics = d.counters["feedback_events"]
    res.uncounted = layers_metrics - (d.live_events() + d.counters["folded_feedback"] + d.counters["late_feedback"]
                                      + d.counters["unmatched_feedback"])
    affected_tenant = s.fleet[s.affected].tenant if s.affected is not None else None
    times = np.sort(np.concatenate(slice_times)) if slice_times else np.zeros(0)
    for iid, e in sorted(opened.items(), key=lambda kv: (_ms(kv[1].last_seen), kv[0])):
        last = latest[iid]
        res.opened.append((iid, e.metric, last.kind.value, last.release_id))
        on_change = affected_tenant is not None and e.slice.tenant_id == affected_tenant \
            and _ms(e.last_seen) >= t_change
        if not on_change:
            res.false_incidents += 1
        elif not res.detected:
            res.detected, res.kind, res.release_id = True, last.kind.value, last.release_id
            # from the injection (the affected slice's first post-change trace) to the detection
            # (the alarm's event time, a feedback time for a delayed-label alarm), never from the
            # incident's change point, which may lie before the injection
            detected_ms = _ms(e.detected_at or e.last_seen)
            res.delay_traces = int(np.searchsorted(times, detected_ms, side="right"))
            if first_post is not None:
                res.delay_h_after_first_correction = round((detected_ms - first_post) / HOUR_MS, 2)
            res.change_point_error_h = round((_ms(e.first_seen) - t_change) / HOUR_MS, 2)
    return res


def _ms(t) -> int:
    return int(t.timestamp() * 1000) if hasattr(t, "timestamp") else int(t)


def run_timed_suite(seeds: int = 3, stationary_traces: int = 1_000_000, settings: Settings | None = None,
                    progress=None, trace_batch_max: int = 3000) -> dict[str, Any]:
    """Every delayed-label scenario under every timing (``seeds`` runs each, each also replayed
    with a second schedule of batch interleaving), plus one stationary run per timing of
    ``stationary_traces`` (not replayed); trace batches of 50 to ``trace_batch_max`` traces.
    Returns the JSON-able report."""
    settings = settings or Settings()
    jobs = [(s, t, seed) for t in TIMINGS for s in TIMED_SCENARIOS for seed in range(seeds)]
    jobs += [(replace(TIMED_STATIONARY, after=stationary_traces), t, 100) for t in TIMINGS]
    runs: list[TimedResult] = []
    t0 = time.perf_counter()
    for i, (s, t, seed) in enumerate(jobs):
        a = run_timed(s, t, seed, settings, schedule=0, trace_batch_max=trace_batch_max)
        if s.affected is not None:
            b = run_timed(s, t, seed, settings, schedule=1, trace_batch_max=trace_batch_max)
            a.counters["same_incidents_other_schedule"] = int(a.opened == b.opened)
        runs.append(a)
        if progress:
            progress(f"timed {t.name} {s.name} seed {seed}", i + 1, len(jobs))
    rows = []
    for t in TIMINGS:
        for s in (*TIMED_SCENARIOS, TIMED_STATIONARY):
            rs = [r for r in runs if r.timing == t.name and r.scenario == s.name]
            det = [r for r in rs if r.detected]
            traces = sum(r.traces for r in rs)
            rows.append({
                "timing": t.name, "scenario": s.name, "runs": len(rs),
                "recall": len(det) / len(rs) if s.affected is not None else None,
                "release_attribution": (sum(r.release_id == NEW_RELEASE for r in det) / len(det)) if det else None,
                "median_delay_slice_traces": _quantile([r.delay_traces for r in det if r.delay_traces is not None],
                                                       0.5),
                "median_delay_h_after_first_correction": _quantile(
                    [r.delay_h_after_first_correction for r in det if r.delay_h_after_first_correction is not None],
                    0.5),
                "median_change_point_error_h": _quantile(
                    [r.change_point_error_h for r in det if r.change_point_error_h is not None], 0.5),
                "false_incidents_per_million": sum(r.false_incidents for r in rs) / max(traces, 1) * 1e6,
                "corrections": sum(r.corrections for r in rs),
                "uncounted": sum(r.uncounted for r in rs),
                "late": sum(r.counters.get("late_feedback", 0) for r in rs),
                "unmatched": sum(r.counters.get("unmatched_feedback", 0) for r in rs),
                "coarsened_buckets": sum(r.counters.get("coarsened_buckets", 0) for r in rs),
                "admitted_ahead": sum(r.counters.get("admitted_ahead", 0) for r in rs),
                "same_incidents_other_schedule": all(r.counters["same_incidents_other_schedule"] for r in rs)
                if s.affected is not None else None,
            })
    return {"timed": rows, "elapsed_s": round(time.perf_counter() - t0, 1),
            "runs": [asdict(r) for r in runs]}


__all__ = ["SCENARIOS", "STATIONARY", "TIMED_SCENARIOS", "TIMINGS", "Scenario", "Timing", "headline", "run_suite",
           "run_timed", "run_timed_suite"]
