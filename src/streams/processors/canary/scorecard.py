"""One canary scorecard: its metrics, its state, the decision rules and the verdict event.

Metrics
-------
The scorecard metrics and their roles are the catalogue entries with a ``canary`` use
(:data:`streams.processors.metrics.CANARY_METRICS`, ordered by ``CanaryUse.slot``); every
table here is derived from it: the success metrics and guardrails, the metrics counted from the
trace itself (``IMMEDIATE``) or from matured feedback (``DELAYED``), and the layout of a
stratum's count vector (:data:`EVENT_SLOT`). Latency and cost are "value in or above the
control's quantile bin" (``CanaryUse.control_quantile``) on log-spaced control histograms
(:data:`CONTROL_HISTOGRAMS`, fixed for a stratum when it opens).

Decisions
---------
The tests are those of :mod:`streams.processors.canary.sequential`: a harm test per metric at
``alpha / N_CANARY_METRICS`` (rollback), a non-inferiority test of the success metrics at
``alpha_promote`` (promotion), and the confidence sequence reported per metric.
A rejection at any look stands (that is what an always-valid test licenses), so decisions are
sticky: ``rollback`` if any harm test has rejected (``guardrail_fired`` names the guardrail),
else ``promote`` if the promotion rule holds or held earlier in the same stage, else ``hold``.

State
-----
A *group* (tenant, release, cohort, workflow scope) holds the control histograms and the open
buckets; each of its scorecards (one per arm) holds the grid log-likelihoods (``(7, 107)``
floats), sticky decisions, per-stage counts, display figures and evidence. A group and its
scorecards are one JSON value (written atomically, ~10-30 kB) in a
:class:`~streams.state.StateBackend` (a faust changelog table in the worker), written by
:meth:`~streams.processors.canary.monitor.CanaryMonitor.flush` after every batch to the tenant's
partition, so a restarted worker continues its scorecards; the group's last-applied source
offset, stored in the same value, makes a redelivered batch count once. Verdict ids are
deterministic per scorecard, revisions count up, and ``emitted_at`` is event time, so a batch
redelivered after a crash reproduces its events.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import math
from collections.abc import Sequence
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
from streams.processors.canary.sequential import GRID, RHO, MixtureTest
from streams.processors.columns import ARM_CODES
from streams.processors.matrix import changed_components, matrix_row
from streams.processors.metrics import CANARY_INDEX, CANARY_METRICS, CANARY_USES, N_CANARY_METRICS

# ---------------------------------------------------------------------- metrics (derived)
#: scorecard rows of the metrics the code treats specially (display, feedback counting)
M_CORR, M_TASK, M_LAT, M_COST, M_SAFETY = (CANARY_INDEX[n] for n in (
    "correction_rate", "task_success", "latency_p95", "cost", "safety_feedback_rate"))
SUCCESS = tuple(i for i, use in enumerate(CANARY_USES) if use.role == MetricRole.success)
GUARDRAILS = tuple(i for i, use in enumerate(CANARY_USES) if use.role == MetricRole.guardrail)
#: metrics counted from the trace itself, and from feedback once its bucket matured
IMMEDIATE = tuple(i for i, use in enumerate(CANARY_USES) if not use.delayed)
DELAYED = tuple(i for i, use in enumerate(CANARY_USES) if use.delayed)
#: a stratum's count vector (persisted): [traces, an event count per IMMEDIATE metric,
#: traces that count for feedback, an event count per DELAYED metric]
SLOT_TRACES = 0
SLOT_FEEDBACK_TRACES = 1 + len(IMMEDIATE)
STRATUM_LEN = SLOT_FEEDBACK_TRACES + 1 + len(DELAYED)
#: scorecard metric -> its event count's slot in the stratum vector
EVENT_SLOT = {m: 1 + i for i, m in enumerate(IMMEDIATE)} | {m: SLOT_FEEDBACK_TRACES + 1 + i
                                                              for i, m in enumerate(DELAYED)}
#: metrics whose harmful event is "in or above the control's quantile bin": metric -> index of its
#: threshold in a stratum's ``thr`` list (persisted)
THRESHOLD_INDEX = {m: i for i, m in enumerate(m for m in IMMEDIATE if CANARY_USES[m].control_quantile is not None)}

ARM_NAMES = {ARM_CODES[arm.value]: arm for arm in (CandidateArm.canary, CandidateArm.shadow)}

# ---------------------------------------------------------------------- control histograms
#: log-spaced histograms for the control's latency (ms) and cost (USD) thresholds
N_BINS = 160
LAT_LO, LAT_HI = 1.0, 3_600_000.0
COST_LO, COST_HI = 1e-6, 1_000.0

#: per threshold metric: the key of its control histogram in the persisted group state and the
#: histogram's range (in the metric's unit)
CONTROL_HISTOGRAMS = {M_LAT: ("lat", LAT_LO, LAT_HI), M_COST: ("cost", COST_LO, COST_HI)}
if set(CONTROL_HISTOGRAMS) != set(THRESHOLD_INDEX):
    raise ValueError(f"control histograms {sorted(CONTROL_HISTOGRAMS)} must match the threshold metrics "
                     f"{sorted(THRESHOLD_INDEX)} of the catalogue")
_CONTROL_KEYS = tuple(key for key, _, _ in CONTROL_HISTOGRAMS.values())


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



# ---------------------------------------------------------------------- state


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
    stage_counts: np.ndarray = field(default_factory=lambda: np.zeros(N_CANARY_METRICS))
    promoted_stage: float = -1.0  # the stage a promotion was reached in (sticky within it)
    ll: np.ndarray = field(default_factory=lambda: np.zeros((N_CANARY_METRICS, GRID)))
    max_log_harm: np.ndarray = field(default_factory=lambda: np.full(N_CANARY_METRICS, -np.inf))
    noninferior: np.ndarray = field(default_factory=lambda: np.zeros(N_CANARY_METRICS, dtype=bool))
    #: per metric: [control samples, control events, candidate samples, candidate events] compared
    counts: np.ndarray = field(default_factory=lambda: np.zeros((N_CANARY_METRICS, 4)))
    seen: int = 0  # candidate traces seen (exposure for canary)
    lat: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS, dtype=np.int64))
    cost_sum: float = 0.0
    revision: int = -1
    verdict: str | None = None
    last_emit_ms: int = 0
    evidence: list[list[str]] = field(default_factory=lambda: [[] for _ in range(N_CANARY_METRICS)])
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
    #: the control arm's release manifest as seen on its traces (what a rollback restores)
    control_manifest: dict[str, Any] | None = None
    scorecards: dict[str, Scorecard] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form, scorecards included (one value: a group is written atomically)."""
        return {
            "key": self.key, "tenant": self.tenant, "release": self.release, "cohort": self.cohort,
            "scope": self.scope, "partition": self.partition, "last_offset": self.last_offset,
            "last_event_ms": self.last_event_ms, "imm_upto": self.imm_upto, "mat_upto": self.mat_upto,
            "ctrl": {w: {"n": c["n"], **{k: _sparse(c[k]) for k in _CONTROL_KEYS}, "cost_sum": c["cost_sum"]}
                     for w, c in self.ctrl.items()},
            "buckets": {str(b): {w: {k: (v if k in ("thr", "ids") else v.tolist()) for k, v in e.items()}
                                 for w, e in wfs.items()} for b, wfs in self.buckets.items()},
            "manifest": self.manifest, "control_manifest": self.control_manifest,
            "scorecards": {k: v.to_json() for k, v in sorted(self.scorecards.items())},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Group:
        """Inverse of :meth:`to_json`."""
        g = cls(**{k: d[k] for k in ("key", "tenant", "release", "cohort", "scope", "partition", "last_offset",
                                      "last_event_ms", "imm_upto", "mat_upto", "manifest")},
                control_manifest=d.get("control_manifest"))
        g.ctrl = {w: {"n": c["n"], **{k: _dense(c[k]) for k in _CONTROL_KEYS}, "cost_sum": c["cost_sum"]}
                  for w, c in d["ctrl"].items()}
        g.buckets = {int(b): {w: {k: (v if k in ("thr", "ids") else np.asarray(v, dtype=np.float64))
                                  for k, v in e.items()} for w, e in wfs.items()} for b, wfs in d["buckets"].items()}
        g.scorecards = {k: Scorecard.from_json(v) for k, v in d["scorecards"].items()}
        return g


def pack(obj: dict[str, Any]) -> bytes:
    """Compact JSON bytes of a state value (:meth:`Group.to_json`)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def unpack(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack`."""
    return json.loads(data)


class ScorecardRules:
    """The decision rules of the scorecards under one :class:`CanaryConfig` (module docstring).

    Args:
        cfg: settings (levels, margin, minimum samples, mixture scale).

    Raises:
        ValueError: the margin is outside the grid (:meth:`MixtureTest.margin_index`).
    """

    def __init__(self, cfg: CanaryConfig) -> None:
        self.cfg = cfg
        self.test = MixtureTest(cfg.mixture_scale)
        self.j_margin = MixtureTest.margin_index(cfg.margin)

    def levels(self, g: Group) -> tuple[float, float, int, RiskClass]:
        """``(alpha_promote, alpha_rollback per metric, min_samples, risk class)`` of a group."""
        cfg = self.cfg
        high = g.scope != "*"
        return ((cfg.high_risk_alpha if high else cfg.alpha), cfg.alpha / N_CANARY_METRICS,
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

    def build(self, g: Group, sc: Scorecard, verdict: Verdict, harm: np.ndarray, enough: np.ndarray,
              blocking: list[int], changed: bool) -> RolloutVerdict:
        """The verdict event of ``sc`` at its current revision (scorecard with intervals)."""
        a_prom, a_roll, min_n, risk = self.levels(g)
        ctrl_n = sum(c["n"] for c in g.ctrl.values())
        ctrl_lat = sum((c[CONTROL_HISTOGRAMS[M_LAT][0]] for c in g.ctrl.values()), np.zeros(N_BINS, dtype=np.int64))
        ctrl_cost = sum(c["cost_sum"] for c in g.ctrl.values())
        entries = []
        for m, metric in enumerate(CANARY_METRICS):
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
                metric=metric.name, role=CANARY_USES[m].role, status=status, unit=metric.canary_unit, control=control,
                candidate=candidate, delta=self.test.estimate(sc.ll[m]) - 1.0, ci_low=lo - 1.0, ci_high=hi - 1.0,
                p_value=float(min(1.0, math.exp(-sc.max_log_harm[m]))) if np.isfinite(sc.max_log_harm[m]) else 1.0,
                samples_control=int(n_c), samples_candidate=int(n_t), events_control=int(k_c),
                events_candidate=int(k_t)))
        regressed = [CANARY_METRICS[m].name for m in range(N_CANARY_METRICS) if harm[m]]
        fired = next((CANARY_METRICS[m].name for m in GUARDRAILS if harm[m]), None)
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
        restore = _manifest(g.control_manifest)
        components = changed_components(g.manifest, g.control_manifest)
        matrix = matrix_row("release_regression", g.release, components) if verdict == Verdict.rollback else None
        return RolloutVerdict(
            verdict_id=verdict_id(g.key, sc.sid), revision=sc.revision, release_id=g.release, tenant_id=g.tenant,
            cohort=g.cohort, workflow=None if g.scope == "*" else g.scope, arm=arm, stage_pct=sc.stage,
            verdict=verdict, changed=changed, risk_class=risk, alpha_promote=a_prom, alpha_rollback=a_roll,
            margin=float(RHO[self.j_margin]), min_samples=min_n, guardrail_fired=fired, regressed_metrics=regressed,
            reason=reason, scorecard=entries, samples_control=int(sc.counts[M_TASK, 0]),
            samples_candidate=int(sc.counts[M_TASK, 2]), exposure=sc.seen if arm == CandidateArm.canary else 0,
            evidence_trace_ids=evidence, release=manifest, first_seen=from_ms(sc.first_seen_ms),
            emitted_at=from_ms(max(g.last_event_ms, sc.first_seen_ms)),
            restore_release_id=restore.release_id if restore else None, restore_release=restore,
            changed_components=components, drift_matrix=matrix)

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
        short = [f"{entries[m].metric} {int(sc.stage_counts[m])}/{min_n}" for m in range(N_CANARY_METRICS)
                 if not enough[m]]
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


def push_bounded(ring: list[str], item: str, limit: int) -> None:
    """Append ``item`` to ``ring``, keeping the newest ``limit`` once it holds ``2 * limit``
    (amortised trimming: evidence rings are appended per trace)."""
    ring.append(item)
    if len(ring) > 2 * limit:
        del ring[: len(ring) - limit]


def _manifest(data: dict[str, Any] | None) -> ReleaseManifest | None:
    """A manifest dict as the contract model (``None`` when absent or invalid)."""
    if not data:
        return None
    try:
        return ReleaseManifest.model_validate(data)
    except ValidationError:
        return None
