"""Count-based figures for the canary scorecards (``selfheal bench-canary``) and the synthetic
rollouts the unit tests use: staged rollouts straight into
:class:`~streams.processors.columns.TraceColumns` plus correction events, no Kafka, no Avro.

- :func:`null_false_rollback`: many null releases (the candidate behaves exactly like the
  control) through the sequential tests, vectorised, looking after *every* stratum; the share
  rolled back is the false rollback rate (target <= alpha). A fixed-sample z-test looked at as
  often is run on the same data for comparison.
- :func:`false_promotion`: releases whose harmful-event rate is exactly at the non-inferiority
  margin; the share shown non-inferior is the false promotion rate of one metric (<= alpha).
- :func:`decision_times`: simulated effects through :class:`CanaryMonitor` end to end
  (buckets, feedback maturity, thresholds): traces until the first promote/rollback verdict.

All figures are counts (traces, rates over simulated runs), never wall-clock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from schemas.verdict import RolloutVerdict, Verdict
from streams.devtools.synthetic import INPUT_TOKENS, LATENCY_MS, OUTPUT_TOKENS, WORKFLOW_P, WORKFLOWS
from streams.processors.canary import (
    GRID,
    N_CANARY_METRICS,
    CanaryConfig,
    CanaryMonitor,
    MixtureTest,
    stratum_loglik,
)
from streams.processors.columns import TraceColumns
from streams.processors.feedback import TraceRef
from streams.state import DictBackend

#: base rates of the harmful events (as in streams.devtools.simulate's fleet)
CORRECTION_P = np.array([0.14, 0.16, 0.10, 0.08, 0.11])  # per workflow
SAFETY_SHARE = 0.08  # share of corrections that are unsafe-recommendation / medication-error feedback
P_FAIL, P_ESC, P_ABANDON, P_POLICY = 0.02, 0.04, 0.01, 0.005
#: per-metric base rates of the null simulation (correction_rate ... safety_feedback_rate): the
#: share of traces with the metric's harmful event (0/1 outcomes, as the monitor counts them)
NULL_RATES = np.array([0.13, 0.07, 0.04, 0.05, 0.10, 0.005, 0.01])


@dataclass
class ArmEffect:
    """Multiplicative effects of the candidate (1.0 = none). Rates multiply probabilities;
    ``latency``/``cost`` multiply every quantile; ``safety`` multiplies the share of
    corrections that are safety feedback."""

    correction: float = 1.0
    safety: float = 1.0
    latency: float = 1.0
    cost: float = 1.0
    escalation: float = 1.0
    failure: float = 1.0
    policy_block: float = 1.0


@dataclass
class CohortPlan:
    """One cohort of a synthetic rollout: its stage, compared arm and the candidate's effect."""

    cohort: str
    stage_pct: float = 25.0
    effect: ArmEffect = field(default_factory=ArmEffect)
    arm: str = "canary"
    tenant: str = "acme"
    release: str = "rel-cand"
    partition: int = 0


@dataclass
class Step:
    """One processing step of a synthetic rollout: a trace batch, then the feedback that came due."""

    cols: TraceColumns
    feedback: list[tuple[str, TraceRef, bool]]
    feedback_wm: dict[int, int]
    feedback_ms: list[int]  # event time of each feedback item, ms
    #: cumulative traces and candidate traces per cohort after this step
    traces: dict[str, int]
    candidates: dict[str, int]


def rollout_steps(rng: np.random.Generator, plans: Sequence[CohortPlan], traces_per_cohort: int, *,
                  t0_ms: int = 1_790_000_000_000, cohort_interval_ms: float = 2000.0, batch: int = 256,
                  lag_ms: tuple[int, int] = (20_000, 260_000), prefix: str = "c", offset0: int = 0) -> Iterator[Step]:
    """Synthetic traffic of ``plans`` (equal shares), ``traces_per_cohort`` traces each.

    Every cohort gets one trace per ``cohort_interval_ms`` of event time on average (the demo's
    busiest rollout cohort gets one per ~2.4 s); arms are drawn per trace with the stage's
    probability; corrections follow each trace after a uniform ``lag_ms`` and are delivered in
    the first step whose traces have reached their event time. Trace ``i`` has source offset
    ``offset0 + i`` (one Kafka message per trace).
    """
    k = len(plans)
    n = traces_per_cohort * k
    step_ms = cohort_interval_ms / k
    which = rng.integers(0, k, n)
    stage = np.array([p.stage_pct for p in plans])[which]
    cand = rng.random(n) < stage / 100.0
    arm_code = np.array([1 if p.arm == "canary" else 2 for p in plans])[which]
    arm = np.where(cand, arm_code, 0).astype(np.int8)
    eff = [p.effect for p in plans]

    def factor(name: str) -> np.ndarray:
        return np.where(cand, np.array([getattr(e, name) for e in eff])[which], 1.0)

    wf = rng.choice(len(WORKFLOWS), size=n, p=WORKFLOW_P / WORKFLOW_P.sum())
    lat = LATENCY_MS[wf] * np.exp(rng.normal(0, 0.35, n)) * factor("latency")
    inp = np.maximum(1, np.round(INPUT_TOKENS[wf] * np.exp(rng.normal(0, 0.25, n))))
    out = np.maximum(1, np.round(OUTPUT_TOKENS[wf] * np.exp(rng.normal(0, 0.3, n))))
    cost = (inp * 2.5e-6 + out * 1e-5) * factor("cost")
    u = rng.random(n)
    p_fail, p_esc = P_FAIL * factor("failure"), P_ESC * factor("escalation")
    outcome = np.where(u < p_fail, 1, np.where(u < p_fail + p_esc, 2, np.where(u < p_fail + p_esc + P_ABANDON, 3, 0)))
    blocked = rng.random(n) < P_POLICY * factor("policy_block")
    corrected = rng.random(n) < np.minimum(CORRECTION_P[wf] * factor("correction"), 1.0)
    safety = corrected & (rng.random(n) < np.minimum(SAFETY_SHARE * factor("safety"), 1.0))
    t = (t0_ms + np.arange(n) * step_ms).astype(np.int64)
    fb_time = t + rng.integers(lag_ms[0], lag_ms[1] + 1, n)
    ids = [f"{prefix}{i}" for i in range(n)]
    pending = sorted((int(fb_time[i]), i) for i in np.flatnonzero(corrected).tolist())
    cursor = 0
    traces = {p.cohort: 0 for p in plans}
    cands = {p.cohort: 0 for p in plans}
    for s in range(0, n, batch):
        e = min(s + batch, n)
        sl = slice(s, e)
        w = which[sl]
        cols = TraceColumns(
            records=[], trace_id=ids[s:e], tenant_id=[plans[i].tenant for i in w.tolist()],
            cohort=[plans[i].cohort for i in w.tolist()], workflow=[WORKFLOWS[x] for x in wf[sl].tolist()],
            intent=[None] * (e - s), release_id=[plans[i].release for i in w.tolist()],
            partition=np.array([plans[i].partition for i in w.tolist()], dtype=np.int32),
            offset=np.arange(offset0 + s, offset0 + e, dtype=np.int64), event_time_ms=t[sl], latency_ms=lat[sl],
            input_tokens=inp[sl], output_tokens=out[sl], cost_usd=cost[sl], confidence=np.full(e - s, np.nan),
            outcome=outcome[sl].astype(np.int8), policy_blocked=blocked[sl], tool_failure=np.zeros(e - s, bool),
            retrieval_miss=np.zeros(e - s, bool), fallback_used=np.zeros(e - s, bool), rollout_arm=arm[sl],
            candidate_release_id=[plans[i].release for i in w.tolist()], stage_pct=stage[sl].astype(np.float64))
        for i in range(s, e):
            traces[plans[which[i]].cohort] += 1
            cands[plans[which[i]].cohort] += int(cand[i])
        now = int(t[e - 1])
        fb: list[tuple[str, TraceRef, bool]] = []
        fb_ms: list[int] = []
        wm: dict[int, int] = {}
        while cursor < len(pending) and pending[cursor][0] <= now:
            ft, i = pending[cursor]
            cursor += 1
            p = plans[which[i]]
            ref = TraceRef(tenant_id=p.tenant, cohort=p.cohort, workflow=WORKFLOWS[wf[i]], release_id=p.release,
                           partition=p.partition, event_time_ms=int(t[i]), rollout_arm=int(arm[i]),
                           candidate_release_id=p.release, stage_pct=float(stage[i]))
            fb.append((ids[i], ref, bool(safety[i])))
            fb_ms.append(ft)
            wm[p.partition] = max(wm.get(p.partition, -1), ft)
        yield Step(cols, fb, wm, fb_ms, dict(traces), dict(cands))


INCUMBENT = {"release_id": "rel-base", "model": "model-a", "prompt_version": "p-1", "tool_schema_version": "t-1",
             "policy_version": "pol-1", "retrieval_index_version": "idx-1"}
OUTCOMES = ("success", "failure", "escalated", "abandoned")


def rollout_records(steps: Iterator[Step]) -> Iterator[tuple[str, dict]]:
    """The traffic of ``steps`` as contract records in send order: ``("trace", AgentTrace dict)``
    and ``("feedback", Feedback dict)``, feedback after the traces it follows (for the SDK and
    the pipeline). Control traces run the incumbent release ``INCUMBENT``, canary and shadow
    traces the candidate (``release_id`` = the plan's release)."""
    for step in steps:
        c = step.cols
        for i in range(c.n):
            arm = int(c.rollout_arm[i])
            release = INCUMBENT if arm == 0 else dict(INCUMBENT, release_id=c.candidate_release_id[i],
                                                       model="model-b", prompt_version="p-2")
            tid = c.trace_id[i]
            yield "trace", {
                "trace_id": tid, "tenant_id": c.tenant_id[i], "cohort": c.cohort[i], "workflow": c.workflow[i],
                "intent": None, "agent_id": f"{c.workflow[i]}-agent", "session_id": f"s-{tid}",
                "event_time": int(c.event_time_ms[i]), "release": release,
                "rollout": {"arm": ("control", "canary", "shadow")[arm], "stage_pct": float(c.stage_pct[i]),
                            "candidate_release_id": c.candidate_release_id[i]},
                "latency_ms": round(float(c.latency_ms[i]), 2), "input_tokens": int(c.input_tokens[i]),
                "output_tokens": int(c.output_tokens[i]), "cost_usd": round(float(c.cost_usd[i]), 7),
                "confidence": None, "outcome": OUTCOMES[int(c.outcome[i])], "tool_calls": [],
                "retrieval_queries": 0, "retrieval_hits": 0, "policy_blocked": bool(c.policy_blocked[i]),
                "retries": 0, "fallback_used": False, "output_sha256": hashlib.sha256(tid.encode()).hexdigest(),
                "attributes": {}}
        for (tid, ref, safe), t in zip(step.feedback, step.feedback_ms, strict=True):
            yield "feedback", {
                "feedback_id": f"fb-{tid}", "trace_id": tid, "tenant_id": ref.tenant_id, "session_id": None,
                "source": "clinician_edit", "category": "unsafe_recommendation" if safe else "omission",
                "regulatory_tags": [], "severity": "high" if safe else "medium",
                "original_output_hash": hashlib.sha256(tid.encode()).hexdigest(),
                "corrected_text": "Removed the unsafe advice." if safe else "Added the missing follow-up plan.",
                "edit_diff": None, "reviewer_id": "rev-1", "reviewer_role": "physician", "event_time": t}


@dataclass
class Decision:
    """First decisive verdict of one cohort's scorecard (or none within the run)."""

    cohort: str
    verdict: Verdict | None
    traces: int | None  # cohort traces (control + candidate) processed until the verdict
    candidates: int | None  # candidate traces among them
    last: RolloutVerdict | None = None  # the cohort's last verdict event


def run_monitor(monitor: CanaryMonitor, steps: Iterator[Step], stop_when_decided: bool = True,
                n_cohorts: int | None = None, flush_every: int = 0) -> dict[str, Decision]:
    """Drive ``monitor`` with ``steps`` (``on_traces`` then ``on_feedback`` per step, like the
    worker's two agents); returns per scorecard the first promote/rollback and the last verdict,
    keyed by cohort for the cohort's standard-risk scorecard and ``cohort/workflow`` for a
    high-risk workflow's. ``flush_every``: persist state every that many steps (0 = only at the end)."""
    out: dict[str, Decision] = {}
    for n_step, step in enumerate(steps, 1):
        emitted = monitor.on_traces(step.cols) + monitor.on_feedback(step.feedback, step.feedback_wm)
        for em in emitted:
            v = em.verdict
            key = v.cohort if v.workflow is None else f"{v.cohort}/{v.workflow}"
            d = out.setdefault(key, Decision(v.cohort, None, None, None))
            d.last = v
            if d.verdict is None and v.verdict != Verdict.hold:
                d.verdict, d.traces, d.candidates = v.verdict, step.traces[v.cohort], step.candidates[v.cohort]
        if flush_every and n_step % flush_every == 0:
            monitor.flush()
        std = [d for k, d in out.items() if "/" not in k]
        if stop_when_decided and n_cohorts and len(std) == n_cohorts and all(d.verdict for d in std):
            break
    monitor.flush()
    return out


def monitor_config(**over) -> CanaryConfig:
    """:class:`CanaryConfig` with the defaults of ``Settings`` (overridable)."""
    return CanaryConfig(**over)


def decision_times(effect: ArmEffect, stage_pct: float, runs: int = 20, max_traces: int = 40_000, seed: int = 1,
                   cfg: CanaryConfig | None = None, arm: str = "canary") -> dict:
    """Traces until the first promote/rollback verdict for ``runs`` independent cohorts with
    the candidate's ``effect`` at ``stage_pct``, through :class:`CanaryMonitor`.

    Returns a summary: verdict counts, median / 90th percentile of cohort traces and candidate
    traces until the verdict (over decided runs), and the runs undecided within ``max_traces``.
    """
    rng = np.random.default_rng(seed)
    plans = [CohortPlan(f"run{i:03d}", stage_pct, effect, arm=arm) for i in range(runs)]
    mon = CanaryMonitor(cfg or monitor_config(), DictBackend())
    res = run_monitor(mon, rollout_steps(rng, plans, max_traces), n_cohorts=runs)
    decided = [d for k, d in res.items() if d.verdict is not None and "/" not in k]
    counts = {v.value: sum(1 for d in decided if d.verdict == v) for v in (Verdict.promote, Verdict.rollback)}
    tr = np.array([d.traces for d in decided], dtype=float)
    ca = np.array([d.candidates for d in decided], dtype=float)
    return {
        "runs": runs, "stage_pct": stage_pct, "max_traces": max_traces, **counts,
        "undecided": runs - len(decided),
        "traces_median": float(np.median(tr)) if tr.size else None,
        "traces_p90": float(np.quantile(tr, 0.9)) if tr.size else None,
        "candidate_traces_median": float(np.median(ca)) if ca.size else None,
        "candidate_traces_p90": float(np.quantile(ca, 0.9)) if ca.size else None,
    }


def _clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval of a rate (Clopper & Pearson 1934)."""
    a = 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def null_false_rollback(releases: int = 2000, strata: int = 300, stratum_traces: int = 60,
                        stage_pct: float = 25.0, alpha: float = 0.05, scale: float = 0.5, drift_sd: float = 0.3,
                        seed: int = 0, naive: bool = True) -> dict:
    """False rollback rate of null releases, looking after every stratum.

    Each release is a sequence of ``strata`` strata of ``stratum_traces`` traces; a trace is a
    candidate with probability ``stage_pct`` %; both arms share each stratum's base rates
    (``NULL_RATES`` times a log-normal drift factor of sd ``drift_sd`` per stratum: the day's
    rhythm). The seven metrics are tested as in :meth:`CanaryMonitor.decide` (harm test per
    metric at ``alpha / 7``); a release counts as rolled back when any metric's test rejects
    at any look. ``naive``: the same data also go through a one-sided pooled two-proportion
    z-test at ``alpha / 7`` per metric, looked at after every stratum (what a dashboard does).

    Returns:
        ``{"releases", "looks", "rolled_back", "rate", "rate_ci95", "naive_rate", ...}``.
    """
    rng = np.random.default_rng(seed)
    test = MixtureTest(scale)
    r = stage_pct / 100.0
    bound = math.log(N_CANARY_METRICS / alpha)
    z_crit = float(stats.norm.isf(alpha / N_CANARY_METRICS))
    ll = np.zeros((releases, N_CANARY_METRICS, GRID))
    rolled = np.zeros(releases, dtype=bool)
    naive_hit = np.zeros(releases, dtype=bool)
    tot = np.zeros((4, releases, N_CANARY_METRICS))  # n_c, k_c, n_t, k_t
    for _ in range(strata):
        n_t = rng.binomial(stratum_traces, r, releases).astype(float)
        n_c = stratum_traces - n_t
        p = np.minimum(NULL_RATES[None, :] * np.exp(rng.normal(0, drift_sd, (releases, 1))), 1.0)
        k_c = rng.binomial(n_c[:, None].astype(int), p)
        k_t = rng.binomial(n_t[:, None].astype(int), p)
        e_c = np.broadcast_to(n_c[:, None], (releases, N_CANARY_METRICS))
        e_t = np.broadcast_to(n_t[:, None], (releases, N_CANARY_METRICS))
        ll += stratum_loglik(e_c[..., None], e_t[..., None], k_c[..., None], k_t[..., None])
        rolled |= (test.log_harm(ll) >= bound).any(axis=1)
        if naive:
            tot += np.stack([e_c, k_c, e_t, k_t])
            nc, kc, nt, kt = tot
            pooled = (kc + kt) / np.maximum(nc + nt, 1)
            se = np.sqrt(np.maximum(pooled * (1 - pooled) * (1 / np.maximum(nc, 1) + 1 / np.maximum(nt, 1)), 1e-300))
            z = (kt / np.maximum(nt, 1) - kc / np.maximum(nc, 1)) / se
            naive_hit |= ((z > z_crit) & (kc + kt > 0)).any(axis=1)
    k = int(rolled.sum())
    out = {"releases": releases, "looks": strata, "traces_per_release": strata * stratum_traces,
           "stage_pct": stage_pct, "alpha": alpha, "rolled_back": k, "rate": k / releases,
           "rate_ci95": _clopper_pearson(k, releases)}
    if naive:
        kn = int(naive_hit.sum())
        out.update({"naive_rolled_back": kn, "naive_rate": kn / releases,
                    "naive_rate_ci95": _clopper_pearson(kn, releases)})
    return out


def false_promotion(releases: int = 2000, strata: int = 300, stratum_traces: int = 60, stage_pct: float = 25.0,
                    base_rate: float = 0.05, margin: float = 1.5, poisson: bool = False, alpha: float = 0.05,
                    scale: float = 0.5, seed: int = 0) -> dict:
    """Share of releases whose harmful-event rate is exactly ``margin`` x the control's that one
    metric's non-inferiority test nevertheless accepts at some look (false promotion, <= alpha
    for Poisson counts; measured for 0/1 outcomes, where it is approximate)."""
    rng = np.random.default_rng(seed)
    test = MixtureTest(scale)
    j = MixtureTest.margin_index(margin)
    rho = float(np.exp(np.log(margin)))  # the true ratio sits at the margin (>= the grid null)
    r = stage_pct / 100.0
    ll = np.zeros((releases, GRID))
    hit = np.zeros(releases, dtype=bool)
    for _ in range(strata):
        n_t = rng.binomial(stratum_traces, r, releases).astype(float)
        n_c = stratum_traces - n_t
        if poisson:
            k_c, k_t = rng.poisson(n_c * base_rate), rng.poisson(n_t * base_rate * rho)
        else:
            k_c = rng.binomial(n_c.astype(int), base_rate)
            k_t = rng.binomial(n_t.astype(int), min(base_rate * rho, 1.0))
        ll += stratum_loglik(n_c[:, None], n_t[:, None], k_c[:, None], k_t[:, None])
        hit |= test.log_noninferior(ll, j) >= math.log(1 / alpha)
    k = int(hit.sum())
    return {"releases": releases, "looks": strata, "base_rate": base_rate, "margin": margin,
            "counts": "poisson" if poisson else "bernoulli", "promoted": k, "rate": k / releases,
            "rate_ci95": _clopper_pearson(k, releases)}


#: the simulated effects of the decision-time figures (name -> candidate effect)
SCENARIOS: dict[str, ArmEffect] = {
    "harmless": ArmEffect(),
    "corrections x1.5": ArmEffect(correction=1.5, safety=1 / 1.5),
    "corrections x2": ArmEffect(correction=2.0, safety=1 / 2.0),
    "latency x1.5": ArmEffect(latency=1.5),
    "safety feedback x4, better success metrics": ArmEffect(safety=4.0, correction=0.8, latency=0.9, escalation=0.7),
    "policy blocks x4": ArmEffect(policy_block=4.0),
}
#: traces per run before a run counts as undecided, by stage
MAX_TRACES = {5.0: 60_000, 25.0: 25_000}


def report(releases: int = 2000, runs: int = 20, seed: int = 1, alpha: float = 0.05,
           stages: Sequence[float] = (5.0, 25.0), progress=None) -> dict:
    """Every figure of docs/canary.md: null false-rollback rates (peeking after every stratum)
    at each stage and 50 %, false promotion at the margin, and decision times per scenario.
    ``progress(text)`` is called before each part."""
    out: dict = {"alpha": alpha, "null_false_rollback": [], "false_promotion": [], "decision_times": []}
    for stage in (*stages, 50.0):
        if progress:
            progress(f"null releases at {stage:g} %")
        out["null_false_rollback"].append(null_false_rollback(releases=releases, stage_pct=stage, alpha=alpha,
                                                              seed=seed))
    for base, poisson in ((0.13, True), (0.13, False), (0.05, False), (0.20, False)):
        if progress:
            progress(f"false promotion, base rate {base}")
        out["false_promotion"].append(false_promotion(releases=releases, base_rate=base, poisson=poisson,
                                                      alpha=alpha, seed=seed))
    cfg = monitor_config(alpha=alpha)
    for stage in stages:
        for name, effect in SCENARIOS.items():
            if progress:
                progress(f"decision time: {name} at {stage:g} %")
            res = decision_times(effect, stage, runs=runs, max_traces=MAX_TRACES.get(stage, 25_000), seed=seed,
                                 cfg=cfg)
            out["decision_times"].append({"scenario": name, **res})
    return out
