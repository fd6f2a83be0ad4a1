"""Canary scorecards and rollout verdicts: is a release under rollout worse than its control?

What
----
Traces of a staged rollout carry ``rollout = {arm, stage_pct, candidate_release_id}``. For every
candidate release, tenant and cohort, :class:`CanaryMonitor` keeps one *scorecard* per compared
arm (``canary``: the candidate served the run; ``shadow``: it ran without serving), compares its
traces with the *control* traces of the same rollout (same candidate release, tenant, cohort)
and decides ``promote`` / ``hold`` / ``rollback`` for the current exposure stage (the stage of the
latest candidate trace). Evidence accumulates across stages (the test below is indifferent to
the allocation changing), while the minimum sample size counts per stage: after 5 % -> 25 % the
scorecard holds until the new stage has ``min_samples`` again. Seven metrics, each tested as the
per-trace rate of a harmful event:

=====================  =========  ===============================================  ========
metric                 role       harmful event of a trace                         arrives
=====================  =========  ===============================================  ========
correction_rate        success    at least one correction                          feedback
task_success           success    outcome other than ``success``                   trace
escalation_rate        success    outcome ``escalated``                            trace
latency_p95            success    latency in or above the control's p95 bin        trace
cost                   success    cost in or above the control's p90 bin           trace
policy_block_rate      guardrail  ``policy_blocked``                               trace
safety_feedback_rate   guardrail  unsafe-recommendation / med.-error feedback      feedback
=====================  =========  ===============================================  ========

Latency and cost thresholds are the control's running p95/p90 per workflow (log-spaced
histograms, fixed for a stratum when it opens, i.e. from earlier data only), so the latency test
stays quantile-aware and the cost test sees a shift of the distribution's upper part. Workflows
matching ``high_risk_workflows`` (medication, triage, patient-facing) get their own scorecards
(verdict ``workflow`` set, risk class ``high``: promotion at ``high_risk_alpha`` after
``high_risk_min_samples``); a cohort's other workflows share one scorecard (``workflow`` null).

The test
--------
The effect is the candidate/control ratio ``rho`` of a metric's harmful-event rate. Traffic is
cut into *strata*: event-time bucket x workflow. In a stratum with ``E_c`` control and ``E_t``
candidate traces and ``K`` traces with the harmful event (every metric is a 0/1 outcome per
trace; a trace with three corrections counts once), the candidate's share ``k_t`` given ``K``
under ``rho = 1`` is hypergeometric when the rollout assigns arms at random: the ``E_t`` candidate traces are a
random subset of the stratum, whatever the outcomes and however they drift inside it. The test
uses the binomial Binomial(``K``, ``rho E_t / (E_c + rho E_t)``) instead (exact for Poisson counts,
the rare-event limit), and the hypergeometric is smaller in convex order than that binomial
(W. Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 58, 1963,
Thm. 4), so the likelihood ratios below stay supermartingales under ``rho <= 1``. Conditioning on
every stratum's totals removes the unknown base rate and its drift over the day, the workflow
mix and the allocation (5 % or 25 %, uneven or changing) from the test; a stratum of ``n``
traces keeps about ``(n-1)/n`` of the information.

Stratum log-likelihoods ``l(rho) = k_t log rho - K log(E_c + rho E_t)`` are summed on a fixed
grid (``LOG_RHO``: steps of 0.04 in ``log rho``, ``rho`` in about [0.12, 8.3]). The tests are
*mixture* sequential probability ratio tests over the grid (H. Robbins, "Statistical methods
related to the law of the iterated logarithm", Ann. Math. Statist. 41, 1970; the mSPRT of
R. Johari, P. Koomen, L. Pekelis, D. Walsh, "Always valid inference: continuous monitoring of
A/B tests", Operations Research 70(3), 2022), mixing over a normal distribution of sd
``mixture_scale`` on ``log rho`` restricted to the alternative. With the exact conditional
likelihood instead of the mSPRT's normal approximation they are valid at every sample size, for
rare events and uneven allocation:

- **harm** (rollback): ``H0: rho <= 1`` against ``rho > 1``. The mixture likelihood ratio
  ``M_t`` is a non-negative supermartingale under ``H0``, so by Ville's inequality
  ``P(sup_t M_t >= 1/a) <= a`` however often it is looked at; the always-valid p-value is
  ``p_t = min(1, 1 / max_{s<=t} M_s)`` (Johari et al. 2022). Every metric is tested at
  ``alpha / 7`` (Bonferroni), so a release that changes nothing is rolled back with probability
  at most ``alpha`` over all metrics and all looks (measured: docs/canary.md).
- **non-inferiority** (promotion): ``H0: rho >= margin`` against ``rho < margin`` at level
  ``alpha_promote`` (``margin`` rounded down to the grid: conservative). A promotion needs every
  success metric shown non-inferior (an intersection-union test: no multiplicity correction)
  and ``min_samples`` candidate samples in the current stage on every metric, guardrails
  included (their feedback must have matured). Guardrails are never required to be shown
  non-inferior (rare events would take too long): they can only block, by their harm test
  (rollback) or, short of that, while their estimated ratio exceeds ``margin`` (hold), so that a
  rare-event regression is not promoted on the strength of the success metrics before its own
  test has enough events (measured: docs/canary.md).
- **confidence sequence**: the grid points ``rho0`` whose two-sided mixture test at level
  ``alpha / 7`` does not reject (S. R. Howard, A. Ramdas, J. McAuliffe, J. Sekhon,
  "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2), 2021,
  method of mixtures); ``ci_low``/``ci_high`` are its ends minus one, simultaneous over the
  scorecard's seven metrics.

A rejection at any look stands (that is what an always-valid test licenses), so decisions are
sticky: ``rollback`` if any harm test has rejected (``guardrail_fired`` names the guardrail),
else ``promote`` if the promotion rule holds or held earlier in the same stage, else ``hold``.

Delayed labels, shadow traffic
------------------------------
Corrections and safety feedback arrive after their trace. A bucket's strata enter the feedback
metrics only when the partition's trace *and* feedback watermarks are ``maturity_ms`` past the
bucket's end (as the drift detectors do); its trace metrics enter once the trace watermark is
``lateness_ms`` past its end. Feedback after that is stored elsewhere but not counted here.
The correction metrics count *traces with* a correction (replays and resubmits were removed by
:mod:`streams.processors.feedback`, and a trace's further corrections do not count again): a 0/1
outcome, exact under the argument above, where counts with several corrections per trace
would make the binomial too narrow.

Shadow traces are compared like canary traces, in their own scorecard (``arm = shadow``), and
never count as exposure: a verdict's ``exposure`` counts the candidate traces that served users
(canary), and is 0 for shadow. Control traces are the comparison for both.

State and delivery
------------------
A *group* (tenant, release, cohort, workflow scope) holds the control histograms and the open
buckets; each of its scorecards (one per arm) holds the grid log-likelihoods (``(7, 107)``
floats), sticky decisions, per-stage counts, display figures and evidence. A group and its
scorecards are one JSON value (written atomically, ~10-30 kB) in a
:class:`~streams.state.StateBackend` (a faust changelog table in the worker),
written by :meth:`CanaryMonitor.flush` after every batch to the tenant's partition, so a
restarted worker continues its scorecards; the group's last-applied source offset, stored in the
same value, makes a redelivered batch count once. Verdict ids are deterministic per scorecard, revisions count up,
and ``emitted_at`` is event time, so a batch redelivered after a crash reproduces its events.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from schemas.common import from_ms
from schemas.trace import ReleaseManifest
from schemas.verdict import (
    CandidateArm,
    MetricRole,
    MetricStatus,
    RiskClass,
    RolloutVerdict,
    ScorecardEntry,
    Verdict,
)
from streams.processors.columns import TraceColumns
from streams.state import StateBackend

# ====================================================================== the sequential test

#: grid of log rate ratios: step 0.04 (4 % resolution), rho in [exp(-2.12), exp(2.12)] ~ [0.12, 8.3]
STEP = 0.04
HALF = 53
LOG_RHO = np.arange(-HALF, HALF + 1) * STEP
RHO = np.exp(LOG_RHO)
GRID = LOG_RHO.size
#: index of rho = 1 on the grid
NULL = HALF


def stratum_loglik(e_ctrl: Any, e_cand: Any, k_ctrl: Any, k_cand: Any) -> np.ndarray:
    """Summed conditional log-likelihood of the rate ratio over strata, on the grid.

    For each stratum, ``k_cand | K ~ Binomial(K, rho e_cand / (e_ctrl + rho e_cand))`` with
    ``K = k_ctrl + k_cand``; its log-likelihood in ``rho`` is ``k_cand log rho - K log(e_ctrl +
    rho e_cand)`` up to a constant. Strata without control, candidate or events carry no
    information and add 0.

    Args:
        e_ctrl, e_cand: exposures (traces) of the control and the candidate, shape ``(..., s)``.
        k_ctrl, k_cand: harmful events (counts), shape ``(..., s)``.

    Returns:
        Shape ``(..., GRID)``: the log-likelihood ratio of every grid ``rho`` against ``rho = 1``
        (so the entry at ``NULL`` is 0).

    Raises:
        ValueError: a negative exposure or count.
    """
    e_c, e_t, k_c, k_t = (np.asarray(x, dtype=np.float64) for x in (e_ctrl, e_cand, k_ctrl, k_cand))
    if (e_c < 0).any() or (e_t < 0).any() or (k_c < 0).any() or (k_t < 0).any():
        raise ValueError(f"exposures and counts must be >= 0, got e_ctrl={e_c}, e_cand={e_t}, "
                         f"k_ctrl={k_c}, k_cand={k_t}")
    total = k_c + k_t
    use = (e_c > 0) & (e_t > 0) & (total > 0)
    e_c = np.where(use, e_c, 1.0)
    e_t = np.where(use, e_t, 1.0)
    ll = k_t[..., None] * LOG_RHO - total[..., None] * np.log(e_c[..., None] + RHO * e_t[..., None])
    ll = np.where(use[..., None], ll, 0.0).sum(axis=-2)
    return ll - ll[..., NULL, None]


def logsumexp(x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """``log(sum(exp(x)))`` along ``axis``, stable, ``-inf`` where every term is ``-inf``
    (scipy's version costs ~0.2 ms of overhead per call, this one ~10 us on a row)."""
    m = np.max(x, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m_safe), axis=axis, keepdims=True)) + m_safe
    return out if keepdims else np.squeeze(out, axis=axis)


def _normalised(logw: np.ndarray) -> np.ndarray:
    """Rows of log-weights normalised to sum 1 (rows that are all ``-inf`` stay so)."""
    norm = logsumexp(logw, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        out = logw - np.where(np.isfinite(norm), norm, 0.0)
    return np.where(np.isfinite(logw), out, -np.inf)


class MixtureTest:
    """Mixture SPRTs and confidence sequences for a rate ratio on the ``LOG_RHO`` grid.

    The mixing distribution for a null ``rho0`` is a normal of sd ``scale`` on
    ``log rho - log rho0``, discretised on the grid and restricted to the alternative
    (Johari et al. 2022, mSPRT; Howard et al. 2021, method of mixtures). Inputs ``ll`` are
    grid log-likelihoods from :func:`stratum_loglik` (summed over time), shape ``(..., GRID)``.

    Args:
        scale: sd of the mixing distribution, in log rate ratio (0.5: tuned to effects of
            1.3x-3x; the power is not sensitive to it within a factor of two).

    Raises:
        ValueError: ``scale`` not positive.
    """

    def __init__(self, scale: float = 0.5) -> None:
        if not scale > 0:
            raise ValueError(f"mixture scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        d = LOG_RHO[None, :] - LOG_RHO[:, None]  # [null j, alternative i] = log rho_i - log rho_j
        logw = -0.5 * (d / scale) ** 2
        self._two = _normalised(np.where(d != 0, logw, -np.inf))
        self._below = _normalised(np.where(d < 0, logw, -np.inf))
        self._above = _normalised(np.where(d > 0, logw, -np.inf))

    def log_harm(self, ll: np.ndarray) -> np.ndarray:
        """log mixture likelihood ratio of ``rho > 1`` against ``H0: rho <= 1``, shape ``(...)``."""
        return logsumexp(ll + self._above[NULL], axis=-1) - ll[..., NULL]

    def log_noninferior(self, ll: np.ndarray, j: int) -> np.ndarray:
        """log mixture likelihood ratio of ``rho < RHO[j]`` against ``H0: rho >= RHO[j]``."""
        return logsumexp(ll + self._below[j], axis=-1) - ll[..., j]

    def log_two_sided(self, ll: np.ndarray) -> np.ndarray:
        """log mixture likelihood ratio against every grid null ``rho0``, shape ``(..., GRID)``."""
        return logsumexp(ll[..., None, :] + self._two, axis=-1) - ll

    def interval(self, ll: np.ndarray, level: float) -> tuple[float, float]:
        """Always-valid confidence interval of ``rho`` at ``1 - level`` for one 1-D ``ll``:
        the grid points not rejected by the two-sided mixture test (ends of that set).

        Raises:
            ValueError: ``level`` outside (0, 1) or ``ll`` not of shape ``(GRID,)``.
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        ll = np.asarray(ll, dtype=np.float64)
        if ll.shape != (GRID,):
            raise ValueError(f"ll must have shape ({GRID},), got {ll.shape}")
        keep = np.flatnonzero(self.log_two_sided(ll) < math.log(1.0 / level))
        if keep.size == 0:  # every point rejected (possible only at the grid's edge): the estimate
            rho = self.estimate(ll)
            return rho, rho
        return float(RHO[keep[0]]), float(RHO[keep[-1]])

    @staticmethod
    def estimate(ll: np.ndarray) -> float:
        """Maximum-likelihood ``rho`` on the grid; 1.0 when ``ll`` is flat (no information)."""
        ll = np.asarray(ll, dtype=np.float64)
        if float(ll.max() - ll.min()) < 1e-12:
            return 1.0
        return float(RHO[int(np.argmax(ll))])

    @staticmethod
    def margin_index(margin: float) -> int:
        """Grid index of the largest ``rho <= margin`` (non-inferiority null, conservative).

        Raises:
            ValueError: ``margin`` not in (1, max grid rho].
        """
        if not 1.0 < margin <= RHO[-1]:
            raise ValueError(f"margin must be in (1, {RHO[-1]:.3g}], got {margin!r}")
        return int(np.searchsorted(RHO, margin * (1 + 1e-12), side="right") - 1)


# ====================================================================== metrics and config


@dataclass(frozen=True, slots=True)
class CanaryMetric:
    """One scorecard metric.

    Attributes:
        name: metric name in verdicts.
        role: ``guardrail`` (can only block) or ``success`` (promotes when non-inferior).
        unit: unit of the displayed control/candidate values (``rate``: share of traces, ``ms``, ``USD``).
        delayed: counted from feedback (matured buckets) instead of the trace itself.
        group: incident metric group a rollback of this metric belongs to.
        event: the harmful event whose per-trace rate is tested.
    """

    name: str
    role: MetricRole
    unit: str
    delayed: bool
    group: str
    event: str


METRICS: tuple[CanaryMetric, ...] = (
    CanaryMetric("correction_rate", MetricRole.success, "rate", True, "quality", "at least one correction"),
    CanaryMetric("task_success", MetricRole.success, "rate", False, "quality", "an outcome other than success"),
    CanaryMetric("escalation_rate", MetricRole.success, "rate", False, "quality", "an escalation"),
    CanaryMetric("latency_p95", MetricRole.success, "ms", False, "latency",
                 "latency in or above the control's p95 bin"),
    CanaryMetric("cost", MetricRole.success, "USD", False, "output", "cost in or above the control's p90 bin"),
    CanaryMetric("policy_block_rate", MetricRole.guardrail, "rate", False, "safety", "a policy block"),
    CanaryMetric("safety_feedback_rate", MetricRole.guardrail, "rate", True, "safety",
                 "unsafe-recommendation or medication-error feedback"),
)
NM = len(METRICS)
M_CORR, M_TASK, M_ESC, M_LAT, M_COST, M_POLICY, M_SAFETY = range(NM)
METRIC_INDEX = {m.name: i for i, m in enumerate(METRICS)}
SUCCESS = tuple(i for i, m in enumerate(METRICS) if m.role == MetricRole.success)
GUARDRAILS = tuple(i for i, m in enumerate(METRICS) if m.role == MetricRole.guardrail)
#: metrics counted from the trace itself, and their slot in a stratum's count vector
IMMEDIATE = (M_TASK, M_ESC, M_LAT, M_COST, M_POLICY)
#: stratum count vector: [n, non-success, escalated, slow, costly, policy-blocked, n_feedback, corrections, safety]
V_N, V_TASK, V_ESC, V_LAT, V_COST, V_POLICY, V_NFB, V_CORR, V_SAFETY = range(9)
NV = 9
IMM_SLOT = {M_TASK: V_TASK, M_ESC: V_ESC, M_LAT: V_LAT, M_COST: V_COST, M_POLICY: V_POLICY}

ARM_NAMES = {1: CandidateArm.canary, 2: CandidateArm.shadow}
ARM_CODE = {"canary": 1, "shadow": 2}

# log-spaced histograms for the control's latency (ms) and cost (USD) thresholds
N_BINS = 160
LAT_LO, LAT_HI = 1.0, 3_600_000.0
COST_LO, COST_HI = 1e-6, 1_000.0


def hist_bins(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Bin index in ``[0, N_BINS)`` of each value on a log scale from ``lo`` to ``hi`` (clipped)."""
    x = np.log(np.clip(np.asarray(values, dtype=np.float64), lo, hi))
    idx = np.floor((x - math.log(lo)) / (math.log(hi) - math.log(lo)) * N_BINS).astype(np.int64)
    return np.clip(idx, 0, N_BINS - 1)


def hist_quantile(counts: np.ndarray, q: float, lo: float, hi: float) -> float:
    """Quantile ``q`` of a histogram from :func:`hist_bins` (log-linear inside the bin); 0.0 when empty."""
    n = float(counts.sum())
    if n <= 0:
        return 0.0
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, q * n))
    before = float(cum[b - 1]) if b > 0 else 0.0
    frac = (q * n - before) / max(float(counts[b]), 1.0)
    step = (math.log(hi) - math.log(lo)) / N_BINS
    return float(math.exp(math.log(lo) + (b + min(max(frac, 0.0), 1.0)) * step))


def threshold_bin(counts: np.ndarray, q: float, min_samples: int) -> int:
    """Bin holding the ``q`` quantile of a histogram, or -1 with fewer than ``min_samples``."""
    n = float(counts.sum())
    if n < min_samples:
        return -1
    return int(np.searchsorted(np.cumsum(counts), q * n))


@dataclass(slots=True)
class CanaryConfig:
    """Scorecard settings (see ``Settings.canary_*`` for meaning and defaults).

    Attributes:
        alpha: false rollback rate bound per scorecard; level of promotions.
        high_risk_alpha: level of promotions in high-risk workflows.
        high_risk_workflows: glob patterns of high-risk workflows.
        min_samples, high_risk_min_samples: candidate samples per metric and stage before a promotion.
        margin: non-inferiority margin on the harmful-event rate ratio.
        mixture_scale: sd of the mixing distribution (log rate ratio).
        verdict_interval_ms: event time between events of an unchanged scorecard, ms.
        maturity_ms: feedback maturity, ms (``Settings.feedback_maturity_s``).
        bucket_ms: width of an event-time bucket (the strata's time axis), ms
            (``Settings.canary_bucket_s``). Independent of the maturity: a stratum needs traces of
            both arms to carry information, so its width is set by traffic, not by label delay.
        lateness_ms: trace lateness allowed before a bucket's trace metrics are folded, ms
            (default one bucket).
        min_control: control traces of a workflow before its latency/cost thresholds exist.
        evidence: evidence trace ids per verdict.
    """

    alpha: float = 0.05
    high_risk_alpha: float = 0.01
    high_risk_workflows: tuple[str, ...] = ("*medication*", "*triage*", "patient_*")
    min_samples: int = 500
    high_risk_min_samples: int = 2000
    margin: float = 1.5
    mixture_scale: float = 0.5
    verdict_interval_ms: int = 600_000
    maturity_ms: int = 300_000
    bucket_ms: int = 75_000
    lateness_ms: int = -1
    min_control: int = 100
    evidence: int = 20
    _risk_cache: dict[str, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or not 0 < self.high_risk_alpha < 1:
            raise ValueError(f"alpha and high_risk_alpha must be in (0, 1), got {self.alpha}, {self.high_risk_alpha}")
        if self.min_samples < 1 or self.high_risk_min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}, {self.high_risk_min_samples}")
        MixtureTest.margin_index(self.margin)  # raises on a margin outside the grid
        if self.bucket_ms <= 0 or self.maturity_ms <= 0:
            raise ValueError(f"bucket_ms and maturity_ms must be > 0, got {self.bucket_ms}, {self.maturity_ms}")
        if self.lateness_ms < 0:
            self.lateness_ms = self.bucket_ms

    def is_high_risk(self, workflow: str) -> bool:
        """Whether ``workflow`` matches one of ``high_risk_workflows`` (cached)."""
        hit = self._risk_cache.get(workflow)
        if hit is None:
            hit = any(fnmatch.fnmatchcase(workflow, p) for p in self.high_risk_workflows)
            self._risk_cache[workflow] = hit
        return hit


# ====================================================================== state


def _enc(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"d": a.dtype.str, "s": list(a.shape), "b": base64.b64encode(a.tobytes()).decode()}


def _dec(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b"]), dtype=np.dtype(d["d"])).reshape(d["s"]).copy()


def _sparse(hist: np.ndarray) -> list[list[int]]:
    """Histogram as ``[[bin, count], ...]`` of its non-empty bins (a few dozen of 160)."""
    idx = np.flatnonzero(hist)
    return [[int(i), int(hist[i])] for i in idx]


def _dense(pairs: list[list[int]]) -> np.ndarray:
    h = np.zeros(N_BINS, dtype=np.int64)
    for i, c in pairs:
        h[i] = c
    return h


@dataclass
class Scorecard:
    """State of one scorecard (one compared arm of a group, across stages); see the module docstring."""

    sid: str  # the arm: "canary" or "shadow"
    arm: int  # 1 canary, 2 shadow
    stage: float  # current stage: of the latest candidate trace, percent
    first_seen_ms: int
    stage_since_ms: int = 0  # event time of the current stage's first candidate trace
    #: per metric: candidate samples compared in the current stage (minimum samples per stage)
    stage_counts: np.ndarray = field(default_factory=lambda: np.zeros(NM))
    promoted_stage: float = -1.0  # the stage a promotion was reached in (sticky within it)
    ll: np.ndarray = field(default_factory=lambda: np.zeros((NM, GRID)))
    max_log_harm: np.ndarray = field(default_factory=lambda: np.full(NM, -np.inf))
    noninferior: np.ndarray = field(default_factory=lambda: np.zeros(NM, dtype=bool))
    #: per metric: [control samples, control events, candidate samples, candidate events] compared
    counts: np.ndarray = field(default_factory=lambda: np.zeros((NM, 4)))
    seen: int = 0  # candidate traces seen (exposure for canary)
    lat: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS, dtype=np.int64))
    cost_sum: float = 0.0
    revision: int = -1
    verdict: str | None = None
    last_emit_ms: int = 0
    evidence: list[list[str]] = field(default_factory=lambda: [[] for _ in range(NM)])
    recent: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (arrays base64)."""
        return {"sid": self.sid, "arm": self.arm, "stage": self.stage, "first_seen_ms": self.first_seen_ms,
                "stage_since_ms": self.stage_since_ms, "stage_counts": _enc(self.stage_counts),
                "promoted_stage": self.promoted_stage, "ll": _enc(self.ll),
                "max_log_harm": _enc(self.max_log_harm), "noninferior": _enc(self.noninferior),
                "counts": _enc(self.counts), "seen": self.seen, "lat": _sparse(self.lat), "cost_sum": self.cost_sum,
                "revision": self.revision, "verdict": self.verdict, "last_emit_ms": self.last_emit_ms,
                "evidence": self.evidence, "recent": self.recent}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Scorecard:
        """Inverse of :meth:`to_json`."""
        arrays = {k: _dec(d[k]) for k in ("ll", "max_log_harm", "noninferior", "counts", "stage_counts")}
        arrays["lat"] = _dense(d["lat"])
        rest = {k: v for k, v in d.items() if k not in arrays}
        return cls(**rest, **arrays)


@dataclass
class Group:
    """State shared by a rollout group's scorecards: tenant x candidate release x cohort x
    workflow scope (``*`` = the cohort's standard-risk workflows, else one high-risk workflow)."""

    key: str
    tenant: str
    release: str
    cohort: str
    scope: str
    partition: int
    last_offset: int = -1
    last_event_ms: int = 0
    imm_upto: int = -1  # highest bucket whose trace metrics were folded
    mat_upto: int = -1  # highest bucket whose feedback metrics were folded (and that was dropped)
    #: control per workflow: {"n": traces, "lat": hist, "cost": hist, "cost_sum": USD}
    ctrl: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: open buckets: bucket id -> workflow -> {"thr": [lat bin, cost bin], "c": vector, <arm>: vector,
    #: "ids": {trace id: 1 corrected | 2 safety feedback}} (a trace counts once per metric)
    buckets: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    scorecards: dict[str, Scorecard] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form, scorecards included (one value: a group is written atomically)."""
        return {
            "key": self.key, "tenant": self.tenant, "release": self.release, "cohort": self.cohort,
            "scope": self.scope, "partition": self.partition, "last_offset": self.last_offset,
            "last_event_ms": self.last_event_ms, "imm_upto": self.imm_upto, "mat_upto": self.mat_upto,
            "ctrl": {w: {"n": c["n"], "lat": _sparse(c["lat"]), "cost": _sparse(c["cost"]), "cost_sum": c["cost_sum"]}
                     for w, c in self.ctrl.items()},
            "buckets": {str(b): {w: {k: (v if k in ("thr", "ids") else v.tolist()) for k, v in e.items()}
                                 for w, e in wfs.items()} for b, wfs in self.buckets.items()},
            "manifest": self.manifest, "scorecards": {k: v.to_json() for k, v in sorted(self.scorecards.items())},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Group:
        """Inverse of :meth:`to_json`."""
        g = cls(**{k: d[k] for k in ("key", "tenant", "release", "cohort", "scope", "partition", "last_offset",
                                      "last_event_ms", "imm_upto", "mat_upto", "manifest")})
        g.ctrl = {w: {"n": c["n"], "lat": _dense(c["lat"]), "cost": _dense(c["cost"]), "cost_sum": c["cost_sum"]}
                  for w, c in d["ctrl"].items()}
        g.buckets = {int(b): {w: {k: (v if k in ("thr", "ids") else np.asarray(v, dtype=np.float64))
                                  for k, v in e.items()} for w, e in wfs.items()} for b, wfs in d["buckets"].items()}
        g.scorecards = {k: Scorecard.from_json(v) for k, v in d["scorecards"].items()}
        return g


def _pack(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _unpack(data: bytes) -> dict[str, Any]:
    return json.loads(data)


@dataclass(slots=True)
class Emitted:
    """A verdict to publish and the source partition of its tenant (for incident state)."""

    verdict: RolloutVerdict
    partition: int


# ====================================================================== the monitor


class CanaryMonitor:
    """Keeps the scorecards of every rollout seen and emits verdicts (see module docstring).

    Args:
        cfg: settings.
        backend: persistence (key ``cg|<group>``: the group with its scorecards, one JSON value
            written atomically to the tenant's partition; ``wm|<partition>``: watermarks).

    Usage per batch: :meth:`on_traces` (trace batches) or :meth:`on_feedback` (new corrections
    of a feedback batch), then :meth:`flush` once the batch's output is written.
    """

    def __init__(self, cfg: CanaryConfig, backend: StateBackend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.test = MixtureTest(cfg.mixture_scale)
        self.j_margin = MixtureTest.margin_index(cfg.margin)
        self.groups: dict[str, Group] = {}
        self.trace_wm: dict[int, int] = {}
        self.feedback_wm: dict[int, int] = {}
        self._wm_loaded: set[int] = set()
        self._dirty_wm: set[int] = set()
        self._dirty_groups: set[str] = set()
        self._folded: set[tuple[str, str]] = set()
        self.stats = {"rollout_traces": 0, "replayed_traces": 0, "late_traces": 0, "late_feedback": 0,
                      "verdicts": 0}

    # ------------------------------------------------------------------ state
    def _load(self, key: str) -> Group | None:
        raw = self.backend.get(f"cg|{key}")
        return Group.from_json(_unpack(raw)) if raw else None

    def _group(self, key: str, tenant: str, release: str, cohort: str, scope: str, partition: int,
               create: bool = True) -> Group | None:
        g = self.groups.get(key)
        if g is None:
            g = self._load(key)
            if g is None:
                if not create:
                    return None
                g = Group(key=key, tenant=tenant, release=release, cohort=cohort, scope=scope, partition=partition)
                self._dirty_groups.add(key)
            self.groups[key] = g
        return g

    def _load_wm(self, p: int) -> None:
        """Restore partition ``p``'s watermarks (persisted with the scorecards, so a restarted
        worker folds buckets exactly when the previous one would have)."""
        if p in self._wm_loaded:
            return
        self._wm_loaded.add(p)
        raw = self.backend.get(f"wm|{p}")
        if raw:
            t, f = json.loads(raw)
            self.trace_wm[p] = max(self.trace_wm.get(p, -1), int(t))
            self.feedback_wm[p] = max(self.feedback_wm.get(p, -1), int(f))

    def flush(self) -> int:
        """Write changed groups, scorecards and watermarks to the backend; returns values written."""
        n = 0
        with_groups = {g.partition for g in self.groups.values()}
        for p in self._dirty_wm & with_groups:  # partitions without rollouts need no watermark
            self.backend.put(f"wm|{p}", json.dumps([self.trace_wm.get(p, -1), self.feedback_wm.get(p, -1)]).encode(), p)
            n += 1
        self._dirty_wm = set()
        for key in self._dirty_groups:
            g = self.groups.get(key)
            if g is not None:
                self.backend.put(f"cg|{key}", _pack(g.to_json()), g.partition)
                n += 1
        self._dirty_groups = set()
        return n

    def on_assigned(self, partitions: set[int]) -> None:
        """Forget in-memory groups of partitions no longer owned (call :meth:`flush` first); the
        groups of owned partitions are loaded lazily from the backend."""
        self.groups = {k: g for k, g in self.groups.items() if g.partition in partitions}
        self._wm_loaded &= partitions
        for p in [p for p in self.trace_wm if p not in partitions]:
            self.trace_wm.pop(p, None)
            self.feedback_wm.pop(p, None)

    def group_key(self, tenant: str, release: str, cohort: str, workflow: str) -> tuple[str, str]:
        """``(group key, workflow scope)`` of a rollout trace."""
        scope = workflow if self.cfg.is_high_risk(workflow) else "*"
        return f"{tenant}|{release}|{cohort}|{scope}", scope

    # ------------------------------------------------------------------ input
    def on_traces(self, cols: TraceColumns) -> list[Emitted]:
        """Count a batch of (deduplicated) traces into its rollout groups, fold the buckets the
        trace watermark has passed, and return the verdicts due.

        Traces without ``rollout`` only advance the partition's trace watermark.
        """
        if cols.n == 0:
            return []
        for p in np.unique(cols.partition).tolist():
            self._load_wm(p)
            t = int(cols.event_time_ms[cols.partition == p].max())
            if t > self.trace_wm.get(p, -1):
                self.trace_wm[p] = t
                self._dirty_wm.add(p)
        rows = np.flatnonzero(cols.rollout_arm >= 0)
        if rows.size:
            by_group: dict[str, list[int]] = {}
            scopes: dict[str, str] = {}
            for i in rows.tolist():
                key, scope = self.group_key(cols.tenant_id[i], cols.candidate_release_id[i] or "", cols.cohort[i],
                                            cols.workflow[i])
                by_group.setdefault(key, []).append(i)
                scopes[key] = scope
            for key, idx in by_group.items():
                i0 = idx[0]
                g = self._group(key, cols.tenant_id[i0], cols.candidate_release_id[i0] or "", cols.cohort[i0],
                                scopes[key], int(cols.partition[i0]))
                assert g is not None
                pos = np.asarray(idx, dtype=np.int64)
                fresh = cols.offset[pos] > g.last_offset  # replay guard: redelivered messages count once
                if not fresh.all():
                    self.stats["replayed_traces"] += int((~fresh).sum())
                    pos = pos[fresh]
                if pos.size:
                    self._add_traces(g, cols, pos)
        return self._fold()

    def on_feedback(self, events: Iterable[tuple[str, Any, bool]], feedback_wm: dict[int, int]) -> list[Emitted]:
        """Count new corrections of a feedback batch on their traces' buckets, advance the
        feedback watermarks, fold matured buckets and return the verdicts due.

        Args:
            events: ``(trace_id, ref, safety)`` per new correction; ``ref`` is the trace's
                :class:`~streams.processors.feedback.TraceRef` (its ``rollout_arm``,
                ``candidate_release_id``, ``stage_pct``); ``safety`` marks safety feedback.
            feedback_wm: per partition, the latest feedback event time of the batch, ms.
        """
        for tid, ref, safety in events:
            if getattr(ref, "rollout_arm", -1) < 0 or not ref.candidate_release_id:
                continue
            key, scope = self.group_key(ref.tenant_id, ref.candidate_release_id, ref.cohort, ref.workflow)
            g = self._group(key, ref.tenant_id, ref.candidate_release_id, ref.cohort, scope, ref.partition,
                            create=False)
            b = int(ref.event_time_ms) // self.cfg.bucket_ms
            entry = g.buckets.get(b, {}).get(ref.workflow) if g is not None else None
            side = "c" if ref.rollout_arm == 0 else ARM_NAMES[ref.rollout_arm].value
            vec = entry.get(side) if entry is not None else None
            if g is None or vec is None or b <= g.mat_upto:
                self.stats["late_feedback"] += 1  # its bucket matured (or the trace was late): not counted
                continue
            # a trace counts once per metric (0/1 outcome), however many corrections it gets
            marks = entry.setdefault("ids", {})
            seen = marks.get(tid, 0)
            new_corr, new_safety = not seen & 1, safety and not seen & 2
            marks[tid] = seen | 1 | (2 if safety else 0)
            vec[V_CORR] += new_corr
            vec[V_SAFETY] += new_safety
            if side != "c":
                sc = g.scorecards[side]
                if new_corr:
                    _push(sc.evidence[M_CORR], tid, self.cfg.evidence)
                if new_safety:
                    _push(sc.evidence[M_SAFETY], tid, self.cfg.evidence)
            self._dirty_groups.add(key)
        for p, t in feedback_wm.items():
            self._load_wm(p)
            if t > self.feedback_wm.get(p, -1):
                self.feedback_wm[p] = int(t)
                self._dirty_wm.add(p)
        return self._fold()

    def _add_traces(self, g: Group, cols: TraceColumns, pos: np.ndarray) -> None:
        cfg = self.cfg
        g.last_offset = max(g.last_offset, int(cols.offset[pos].max()))
        g.last_event_ms = max(g.last_event_ms, int(cols.event_time_ms[pos].max()))
        self.stats["rollout_traces"] += int(pos.size)
        lat_bins = hist_bins(cols.latency_ms[pos], LAT_LO, LAT_HI).tolist()
        cost_bins = hist_bins(cols.cost_usd[pos], COST_LO, COST_HI).tolist()
        buckets = (cols.event_time_ms[pos] // cfg.bucket_ms).tolist()
        arms = cols.rollout_arm[pos].tolist()
        outcome = cols.outcome[pos].tolist()
        blocked = cols.policy_blocked[pos].tolist()
        cost = cols.cost_usd[pos].tolist()
        times = cols.event_time_ms[pos].tolist()
        for j, i in enumerate(pos.tolist()):
            wf = cols.workflow[i]
            arm = arms[j]
            sc = None
            if arm == 0:
                side = "c"
            else:
                side = ARM_NAMES[arm].value
                stage = float(cols.stage_pct[i])
                sc = g.scorecards.get(side)
                if sc is None:
                    sc = g.scorecards[side] = Scorecard(sid=side, arm=arm, stage=stage, first_seen_ms=times[j],
                                                        stage_since_ms=times[j])
                elif stage != sc.stage and times[j] >= sc.stage_since_ms:
                    # a new exposure stage: evidence carries over, the per-stage sample count restarts
                    sc.stage, sc.stage_since_ms = stage, times[j]
                    sc.stage_counts[:] = 0.0
                sc.seen += 1
                sc.lat[lat_bins[j]] += 1
                sc.cost_sum += cost[j]
                _push(sc.recent, cols.trace_id[i], cfg.evidence)
                if g.manifest is None and cols.records:
                    g.manifest = dict(cols.records[i]["release"])
                self._dirty_groups.add(g.key)
            ctrl = g.ctrl.get(wf)
            if ctrl is None:
                ctrl = g.ctrl[wf] = {"n": 0, "lat": np.zeros(N_BINS, dtype=np.int64),
                                     "cost": np.zeros(N_BINS, dtype=np.int64), "cost_sum": 0.0}
            b = buckets[j]
            if b <= g.mat_upto:
                self.stats["late_traces"] += 1  # its bucket is closed: not compared
            else:
                entry = g.buckets.setdefault(b, {}).get(wf)
                if entry is None:
                    # thresholds from control data seen before this stratum opened (predictable)
                    entry = g.buckets[b][wf] = {
                        "thr": [threshold_bin(ctrl["lat"], 0.95, cfg.min_control),
                                threshold_bin(ctrl["cost"], 0.90, cfg.min_control)],
                        "c": np.zeros(NV)}
                vec = entry.get(side)
                if vec is None:
                    vec = entry[side] = np.zeros(NV)
                vec[V_NFB] += 1
                if b > g.imm_upto:
                    lat_thr, cost_thr = entry["thr"]
                    events = (outcome[j] != 0, outcome[j] == 2, lat_thr >= 0 and lat_bins[j] >= lat_thr,
                              cost_thr >= 0 and cost_bins[j] >= cost_thr, blocked[j])
                    vec[V_N] += 1
                    for slot, hit, m in zip((V_TASK, V_ESC, V_LAT, V_COST, V_POLICY), events,
                                            (M_TASK, M_ESC, M_LAT, M_COST, M_POLICY), strict=True):
                        if hit:
                            vec[slot] += 1
                            if sc is not None:
                                _push(sc.evidence[m], cols.trace_id[i], cfg.evidence)
                else:
                    self.stats["late_traces"] += 1
            if arm == 0:
                ctrl["n"] += 1
                ctrl["lat"][lat_bins[j]] += 1
                ctrl["cost"][cost_bins[j]] += 1
                ctrl["cost_sum"] += cost[j]
        self._dirty_groups.add(g.key)

    # ------------------------------------------------------------------ folding
    def _fold(self) -> list[Emitted]:
        """Fold every bucket the watermarks have passed into its scorecards, then decide."""
        cfg = self.cfg
        for g in self.groups.values():
            if not g.buckets:
                continue
            self._load_wm(g.partition)
            twm = self.trace_wm.get(g.partition, -1)
            label_clock = min(twm, self.feedback_wm.get(g.partition, -1))
            for b in sorted(g.buckets):
                end = (b + 1) * cfg.bucket_ms
                if b > g.imm_upto and end + cfg.lateness_ms <= twm:
                    self._fold_strata(g, b, delayed=False)
                    g.imm_upto = b
                if b <= g.imm_upto and end + cfg.maturity_ms <= label_clock:
                    self._fold_strata(g, b, delayed=True)
                    g.mat_upto = b
                    del g.buckets[b]
                if b > g.imm_upto:
                    break
                self._dirty_groups.add(g.key)
        out: list[Emitted] = []
        for key, sid in sorted(self._folded):
            g = self.groups[key]
            ev = self._decide(g, g.scorecards[sid])
            if ev is not None:
                out.append(ev)
        self._folded = set()
        return out

    def _fold_strata(self, g: Group, b: int, delayed: bool) -> None:
        wfs = g.buckets[b]
        sids = {k for e in wfs.values() for k in e if k not in ("thr", "c", "ids")}
        for sid in sids:
            strata = [(e["c"], e[sid], e["thr"]) for e in wfs.values() if sid in e]
            ctrl = np.array([s[0] for s in strata])  # (s, NV)
            cand = np.array([s[1] for s in strata])
            sc = g.scorecards[sid]
            if delayed:
                metrics, slots = (M_CORR, M_SAFETY), (V_CORR, V_SAFETY)
                e_c = np.broadcast_to(ctrl[:, V_NFB], (2, len(strata)))
                e_t = np.broadcast_to(cand[:, V_NFB], (2, len(strata)))
            else:
                metrics = IMMEDIATE
                slots = tuple(IMM_SLOT[m] for m in metrics)
                ready = np.array([[s[2][0] >= 0 if m == M_LAT else s[2][1] >= 0 if m == M_COST else True
                                   for s in strata] for m in metrics])
                e_c = np.where(ready, ctrl[:, V_N][None, :], 0.0)
                e_t = np.where(ready, cand[:, V_N][None, :], 0.0)
            k_c = ctrl[:, list(slots)].T
            k_t = cand[:, list(slots)].T
            k_c = np.where(e_c > 0, k_c, 0.0)
            k_t = np.where(e_t > 0, k_t, 0.0)
            idx = list(metrics)
            sc.ll[idx] += stratum_loglik(e_c, e_t, k_c, k_t)
            both = (e_c > 0) & (e_t > 0)
            sc.counts[idx] += np.stack([np.where(both, e_c, 0).sum(1), np.where(both, k_c, 0).sum(1),
                                        np.where(both, e_t, 0).sum(1), np.where(both, k_t, 0).sum(1)], axis=1)
            sc.stage_counts[idx] += np.where(both, e_t, 0).sum(1)
            self._folded.add((g.key, sid))
            self._dirty_groups.add(g.key)

    # ------------------------------------------------------------------ decisions
    def levels(self, g: Group) -> tuple[float, float, int, RiskClass]:
        """``(alpha_promote, alpha_rollback per metric, min_samples, risk class)`` of a group."""
        cfg = self.cfg
        high = g.scope != "*"
        return ((cfg.high_risk_alpha if high else cfg.alpha), cfg.alpha / NM,
                (cfg.high_risk_min_samples if high else cfg.min_samples),
                RiskClass.high if high else RiskClass.standard)

    def decide(self, g: Group, sc: Scorecard) -> tuple[Verdict, np.ndarray, np.ndarray, list[int]]:
        """Update the sticky tests of ``sc`` and return ``(verdict, harm, enough, blocking)``:
        per-metric booleans ``harm`` (harm test rejected at some look) and ``enough`` (>= min
        samples in the current stage), and the guardrails blocking a promotion (estimated harm
        ratio above the margin)."""
        a_prom, a_roll, min_n, _ = self.levels(g)
        np.maximum(sc.max_log_harm, self.test.log_harm(sc.ll), out=sc.max_log_harm)
        harm = sc.max_log_harm >= math.log(1.0 / a_roll)
        if not sc.noninferior.all():
            sc.noninferior |= self.test.log_noninferior(sc.ll, self.j_margin) >= math.log(1.0 / a_prom)
        enough = sc.stage_counts >= min_n
        blocking = [m for m in GUARDRAILS if self.test.estimate(sc.ll[m]) > RHO[self.j_margin]]
        if harm.any():
            return Verdict.rollback, harm, enough, blocking
        if sc.promoted_stage == sc.stage:  # a promotion stands for its stage; only harm revokes it
            return Verdict.promote, harm, enough, blocking
        if all(sc.noninferior[m] for m in SUCCESS) and enough.all() and not blocking:
            sc.promoted_stage = sc.stage
            return Verdict.promote, harm, enough, blocking
        return Verdict.hold, harm, enough, blocking

    def _decide(self, g: Group, sc: Scorecard) -> Emitted | None:
        verdict, harm, enough, blocking = self.decide(g, sc)
        changed = verdict.value != sc.verdict
        if not changed and g.last_event_ms - sc.last_emit_ms < self.cfg.verdict_interval_ms:
            return None
        sc.revision += 1
        sc.verdict = verdict.value
        sc.last_emit_ms = g.last_event_ms
        self._dirty_groups.add(g.key)
        self.stats["verdicts"] += 1
        return Emitted(self.build(g, sc, verdict, harm, enough, blocking, changed), g.partition)

    def build(self, g: Group, sc: Scorecard, verdict: Verdict, harm: np.ndarray, enough: np.ndarray,
              blocking: list[int], changed: bool) -> RolloutVerdict:
        """The verdict event of ``sc`` at its current revision (scorecard with intervals)."""
        a_prom, a_roll, min_n, risk = self.levels(g)
        ctrl_n = sum(c["n"] for c in g.ctrl.values())
        ctrl_lat = sum((c["lat"] for c in g.ctrl.values()), np.zeros(N_BINS, dtype=np.int64))
        ctrl_cost = sum(c["cost_sum"] for c in g.ctrl.values())
        entries = []
        for m, metric in enumerate(METRICS):
            n_c, k_c, n_t, k_t = (float(x) for x in sc.counts[m])
            if m == M_LAT:
                control = hist_quantile(ctrl_lat, 0.95, LAT_LO, LAT_HI)
                candidate = hist_quantile(sc.lat, 0.95, LAT_LO, LAT_HI)
            elif m == M_COST:
                control = ctrl_cost / ctrl_n if ctrl_n else 0.0
                candidate = sc.cost_sum / sc.seen if sc.seen else 0.0
            else:
                control = k_c / n_c if n_c else 0.0
                candidate = k_t / n_t if n_t else 0.0
                if m == M_TASK:
                    control, candidate = (1.0 - control if n_c else 0.0), (1.0 - candidate if n_t else 0.0)
            lo, hi = self.test.interval(sc.ll[m], a_roll)
            status = (MetricStatus.harm if harm[m] else MetricStatus.non_inferior if sc.noninferior[m]
                      else MetricStatus.pending if n_t == 0 else MetricStatus.inconclusive)
            entries.append(ScorecardEntry(
                metric=metric.name, role=metric.role, status=status, unit=metric.unit, control=control,
                candidate=candidate, delta=self.test.estimate(sc.ll[m]) - 1.0, ci_low=lo - 1.0, ci_high=hi - 1.0,
                p_value=float(min(1.0, math.exp(-sc.max_log_harm[m]))) if np.isfinite(sc.max_log_harm[m]) else 1.0,
                samples_control=int(n_c), samples_candidate=int(n_t), events_control=int(k_c),
                events_candidate=int(k_t)))
        regressed = [METRICS[m].name for m in range(NM) if harm[m]]
        fired = next((METRICS[m].name for m in GUARDRAILS if harm[m]), None)
        if verdict == Verdict.rollback:
            order = [m for m in GUARDRAILS + SUCCESS if harm[m]]
            evidence: list[str] = []
            for m in order:  # most recent first, fired guardrails before success metrics
                evidence += [t for t in reversed(sc.evidence[m]) if t not in evidence]
            evidence = evidence[: self.cfg.evidence] or sc.recent[-self.cfg.evidence:]
        else:
            evidence = sc.recent[-self.cfg.evidence:]
        reason = self._reason(verdict, entries, sc, harm, enough, blocking, fired, a_prom, a_roll, min_n)
        manifest = None
        if g.manifest:
            try:
                manifest = ReleaseManifest.model_validate(g.manifest)
            except ValidationError:
                manifest = None
        arm = ARM_NAMES[sc.arm]
        return RolloutVerdict(
            verdict_id=verdict_id(g.key, sc.sid), revision=sc.revision, release_id=g.release, tenant_id=g.tenant,
            cohort=g.cohort, workflow=None if g.scope == "*" else g.scope, arm=arm, stage_pct=sc.stage,
            verdict=verdict, changed=changed, risk_class=risk, alpha_promote=a_prom, alpha_rollback=a_roll,
            margin=float(RHO[self.j_margin]), min_samples=min_n, guardrail_fired=fired, regressed_metrics=regressed,
            reason=reason, scorecard=entries, samples_control=int(sc.counts[M_TASK, 0]),
            samples_candidate=int(sc.counts[M_TASK, 2]), exposure=sc.seen if arm == CandidateArm.canary else 0,
            evidence_trace_ids=evidence, release=manifest, first_seen=from_ms(sc.first_seen_ms),
            emitted_at=from_ms(max(g.last_event_ms, sc.first_seen_ms)))

    @staticmethod
    def _reason(verdict: Verdict, entries: Sequence[ScorecardEntry], sc: Scorecard, harm: np.ndarray,
                enough: np.ndarray, blocking: list[int], fired: str | None, a_prom: float, a_roll: float,
                min_n: int) -> str:
        if verdict == Verdict.rollback:
            worst = [entries[m] for m in (*GUARDRAILS, *SUCCESS) if harm[m]]
            parts = [f"{e.metric} {'+' if e.delta >= 0 else ''}{e.delta:.0%} (CI {e.ci_low:+.0%}..{e.ci_high:+.0%}, "
                     f"p={e.p_value:.2g} <= {a_roll:.2g})" for e in worst]
            head = f"rollback: guardrail {fired} fired; " if fired else "rollback: "
            return head + "; ".join(parts)
        if verdict == Verdict.promote:
            return (f"promote: all {len(SUCCESS)} success metrics within the margin (alpha {a_prom:g}), "
                    f"no harm on any metric, >= {min_n} samples each at stage {sc.stage:g}%")
        missing = [entries[m].metric for m in SUCCESS if entries[m].status != MetricStatus.non_inferior]
        short = [f"{entries[m].metric} {int(sc.stage_counts[m])}/{min_n}" for m in range(NM) if not enough[m]]
        text = "hold: no harm shown"
        if blocking:
            text += "; guardrail estimate above the margin: " + ", ".join(
                f"{entries[m].metric} {entries[m].delta:+.0%}" for m in blocking)
        if missing:
            text += f"; not yet shown within the margin: {', '.join(missing)}"
        if short:
            text += f"; samples at stage {sc.stage:g}%: {', '.join(short)}"
        return text


def verdict_id(group_key: str, sid: str) -> str:
    """Deterministic id of a scorecard: SHA-1 of group key and arm (hex, 20)."""
    return hashlib.sha1(f"{group_key}|{sid}".encode()).hexdigest()[:20]


def _push(ring: list[str], item: str, limit: int) -> None:
    ring.append(item)
    if len(ring) > 2 * limit:
        del ring[: len(ring) - limit]
