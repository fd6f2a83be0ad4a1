"""Online drift detection over the layered baselines, vectorised per batch at per-trace resolution.

Detectors, by metric family (see :mod:`streams.processors.baselines`):

- **Bernoulli CUSUM** for rates (failure, escalation, success, policy block, tool failure,
  retrieval miss, fallback) and for latency tails (exceedance of the baseline's p95/p99 bin edge):
  Page's CUSUM of the log-likelihood ratio of ``p1 = rate_shift * p0`` against ``p0``, twice per
  metric: tuned for ``rate_shift`` (1.5x, small effects) and ``rate_shift_large`` (3x: a CUSUM
  tuned for a small shift is slow on a large one, especially for rare events)
  (E. S. Page, "Continuous inspection schemes", Biometrika 41, 1954; for proportions inspected
  one item at a time: M. R. Reynolds & Z. G. Stoumbos, "A CUSUM chart for monitoring a
  proportion when inspecting continuously", J. Quality Technology 31(1), 1999). ``p0`` is the
  slice's baseline guarded by one standard error, so a young baseline does not raise alarms.
- **Exponentially tilted CUSUM** for continuous metrics (log latency, log1p tokens, log cost,
  logit confidence): standardised, winsorised values ``z`` with increment
  ``delta * z - log E0[exp(delta * z)]``, the log-likelihood ratio of the baseline tilted by
  ``delta = mean_shift_sigma`` against the baseline itself. For normal data this is Page's
  Gaussian CUSUM (``delta * z - delta**2 / 2``); for skewed or multi-modal data (confidence,
  tenant-level mixtures of workflows) the estimated log-MGF keeps it calibrated.
- **Poisson CUSUM** for counts arriving on the feedback stream against trace exposure
  (corrections, unsafe-recommendation feedback): J. M. Lucas, "Counted data CUSUM's",
  Technometrics 27(2), 1985, one step per slice and feedback batch with that batch's exact
  log-likelihood ratio ``k * ln(rho) - exposure * r0 * (rho - 1)``.
- **Chi-square test on tumbling windows** for the categorical input mix (Pearson's X² of the
  window's counts against the baseline distribution), with a Jensen-Shannon effect-size floor.
  Never a per-event KS test.

All CUSUMs run on the whole batch at once: events are sorted by slice, and the Lindley recursion
``S_t = max(0, S_{t-1} + x_t)`` is solved per segment as ``S_t = D_t - min(0, min_{k<=t} D_k)``
with ``D`` the running sum started at the carried state (:func:`segmented_cusum`). The first
index over the threshold is the exact trace that tipped the detector, so delays are counted in
traces, not batches.

Calibration: every increment is a log-likelihood ratio whose expectation of ``exp`` under the
baseline is at most 1 (Bernoulli and Poisson baselines are guarded by one standard error, the
tilted CUSUM uses the baseline's own log-MGF). By Lorden's bound (G. Lorden, "Procedures for
reacting to a change in distribution", Ann. Math. Statist. 42(6), 1971) each detector then has
an average run length to false alarm of at least ``exp(h)`` samples, whatever the slice's
traffic or the metric's distribution; ``h = cusum_threshold`` nats is one number for all of them.
The measured false-incident rate is in BENCHMARKS.md (``selfheal bench-drift``).
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from streams.processors.baselines import (
    B_GROUP,
    BERNOULLI,
    CAT_GROUP,
    CATEGORICAL,
    G_GROUP,
    GAUSSIAN,
    HIST_EDGES_MS,
    LAYER_PARENT,
    LAYER_PARTS,
    N_BUCKETS,
    N_CAT,
    N_HIST,
    NB,
    NG,
    NP,
    P_GROUP,
    POISSON,
    TAIL_P95,
    TAIL_P99,
    Metric,
    SliceInfo,
    SliceStore,
    hist_bins,
    slice_key,
)
from streams.processors.columns import TraceColumns

B_DIR = np.array([m.direction for m in BERNOULLI])
G_DIR = np.array([m.direction for m in GAUSSIAN])
#: columns of the per-layer CUSUM matrix: [Bernoulli tuned for rate_shift | Bernoulli tuned for
#: rate_shift_large | Gaussian up | Gaussian down]. Poisson detectors run on feedback
#: (:meth:`DriftEngine.process_feedback`).
NB2 = 2 * NB
NCOL = NB2 + 2 * NG
#: which columns may alarm (Gaussian sides by the metric's direction)
ALARM_COLS = np.concatenate([np.ones(NB2), G_DIR >= 0, G_DIR <= 0]).astype(bool)
#: (state fields for statistic, samples, sum) and the column range of each family
STATE_COLS = (
    (("b_s", "b_n", "b_k"), 0, NB2),
    (("g_su", "g_nu", "g_xu"), NB2, NB2 + NG),
    (("g_sd", "g_nd", "g_xd"), NB2 + NG, NCOL),
)
#: Gaussian transforms: latency (log ms), tokens (log1p), cost (log of USD + 1e-5), confidence (raw)
Z_CLIP = 4.0
#: minimum feedback events in a slice's baseline before its Poisson detectors arm
MIN_POISSON_EVENTS = 30.0


@dataclass(slots=True)
class DriftConfig:
    """Detector settings (see ``Settings`` for units and defaults)."""

    layers: tuple[str, ...] = tuple(LAYER_PARTS)
    warmup_traces: int = 300
    half_life_traces: float = 20_000.0
    threshold: float = 18.0
    rate_shift: float = 1.5
    rate_shift_large: float = 3.0
    mean_shift_sigma: float = 1.0
    guard_z: float = 1.0
    cat_window: int = 300
    cat_alpha: float = 1e-7
    cat_min_js: float = 0.01
    evidence: int = 20
    release_prior_traces: float = 2000.0
    feedback_maturity_ms: int = 300_000

    @property
    def bucket_ms(self) -> int:
        """Width of a label-delay bucket: maturity / 8, so the ring of 32 holds 4 x maturity
        (maturity + a batch's span + the lag between the two topics)."""
        return max(self.feedback_maturity_ms // 8, 1)

    @property
    def lam(self) -> float:
        """Per-trace decay factor of the EW baselines: ``0.5 ** (1 / half_life)``."""
        return 0.5 ** (1.0 / self.half_life_traces)


@dataclass(slots=True)
class Alarm:
    """A detector crossed its threshold at one trace.

    ``pos`` indexes the batch (``TraceColumns`` order, or feedback order for Poisson metrics);
    ``baseline``/``observed`` are in the metric's unit; ``samples`` counts slice traces since the
    estimated change point (last time the CUSUM was at zero).
    """

    row: int
    metric: Metric
    pos: int
    statistic: float
    threshold: float
    baseline: float
    observed: float
    ci_low: float
    ci_high: float
    effect: float
    samples: int
    direction: int
    evidence: list[int] = field(default_factory=list)
    cp_pos: int | None = None
    #: 1-based index of the alarming trace in the slice's own traffic (traces before the change
    #: point = slice_index - samples)
    slice_index: int = 0
    #: set instead of positions when the alarm comes from matured feedback buckets
    trace_id: str | None = None
    event_time_ms: int | None = None
    evidence_ids: list[str] = field(default_factory=list)


def segmented_cusum(x: np.ndarray, seg: np.ndarray, starts: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """Page's CUSUM ``S_t = max(0, S_{t-1} + x_t)`` for many independent segments at once.

    Args:
        x: increments, shape ``(n, m)``, rows grouped by segment (segment ids non-decreasing).
        seg: segment id of each row, shape ``(n,)``, values ``0..u-1``.
        starts: first row of each segment, shape ``(u,)``.
        s0: statistic carried into each segment, shape ``(u, m)``, ``>= 0``.

    Returns:
        ``S`` of shape ``(n, m)``.

    Method: Lindley's recursion has the closed form ``S_t = D_t - min(0, min_{k<=t} D_k)`` with
    ``D_t = s0 + sum_{k<=t} x_k``. Segments are made independent in one
    ``np.minimum.accumulate`` by shifting segment ``j`` down by ``j * 2 * span`` (``span`` bounds
    ``|D|``), so no earlier segment's minimum can reach below a later segment's values.
    """
    if x.shape[0] == 0:
        return x.copy()
    c = np.cumsum(x, axis=0)
    base = c[starts] - x[starts]
    d = s0[seg] + c - base[seg]
    span = float(np.abs(d).max()) + 1.0
    off = (seg.astype(np.float64) * (2.0 * span))[:, None]
    dz = d - off
    m = np.minimum.accumulate(dz, axis=0)
    np.minimum(m, -off, out=m)
    s = dz - m
    np.maximum(s, 0.0, out=s)
    return s


class _ChangePoints:
    """Change-point bookkeeping for one layer's CUSUM matrix.

    For each (row, column) it answers: how many samples and how much raw signal since the
    statistic was last at zero (the CUSUM change-point estimate, Page 1954), carrying the counts
    of earlier batches for segments that have not touched zero in this one.
    """

    def __init__(self, s: np.ndarray, raw: np.ndarray, cnt: np.ndarray, seg: np.ndarray,
                 starts: np.ndarray, carry_n: np.ndarray, carry_k: np.ndarray) -> None:
        n, m = s.shape
        pos = np.broadcast_to(np.arange(n)[:, None], (n, m))
        self.lz = np.maximum.accumulate(np.where(s <= 0.0, pos, -1), axis=0)
        self.r = np.cumsum(raw, axis=0)
        self.q = np.cumsum(cnt, axis=0)
        self.seg, self.starts = seg, starts
        self.carry_n, self.carry_k = carry_n, carry_k

    def at(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(n_since, k_since, cp_row)`` at sorted rows ``rows`` of columns ``cols``.

        ``cp_row`` is the first sorted row after the last zero, or ``-1`` if that lies in an
        earlier batch.
        """
        sg = self.seg[rows]
        st = self.starts[sg]
        lz = self.lz[rows, cols]
        in_seg = lz >= st
        ref = np.where(in_seg, lz, st - 1)
        has_ref = ref >= 0
        ref_safe = np.maximum(ref, 0)
        r0 = np.where(has_ref, self.r[ref_safe, cols], 0.0)
        q0 = np.where(has_ref, self.q[ref_safe, cols], 0.0)
        n_since = self.q[rows, cols] - q0 + np.where(in_seg, 0.0, self.carry_n[sg, cols])
        k_since = self.r[rows, cols] - r0 + np.where(in_seg, 0.0, self.carry_k[sg, cols])
        cp = np.where(in_seg, np.minimum(lz + 1, rows), -1)
        return n_since, k_since, cp


STRATA = "tenant_cohort_workflow"
#: learning weight of a baseline while its metric's CUSUM holds evidence of a change (S > HOLD_AT * h)
HOLD_WEIGHT = 0.1
HOLD_AT = 0.25
#: histogram weight (traces) before a slice's p95/p99 edges are used for tail indicators
MIN_TAIL_WEIGHT = 200.0


def _tail_mass(hist: np.ndarray) -> np.ndarray:
    """``tail[i, k] = P(bin >= k)`` for each histogram row, shape like ``hist``."""
    tot = hist.sum(axis=1, keepdims=True)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1] / np.maximum(tot, 1e-12)


def _tail_edges(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges whose tail mass is closest to 5% and 1%: the baseline p95/p99 (as bin indexes)."""
    tail = _tail_mass(hist)
    return np.argmin(np.abs(tail - 0.05), axis=1), np.argmin(np.abs(tail - 0.01), axis=1)


def _wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (E. B. Wilson, JASA 22, 1927)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def _cat_code(workflow: str, intent: str | None) -> int:
    return zlib.crc32(f"{workflow}/{intent or ''}".encode()) % N_CAT


class DriftEngine:
    """Maintains the slice store and runs every detector on each batch.

    Args:
        config: detector settings.
        store: the slice state (a fresh one by default).
        loader: ``key -> bytes | None``; called when a slice is first seen in this process, to
            resume its state from the changelog table (``None`` = new slice).

    The engine never emits incidents itself; it returns :class:`Alarm` objects for
    :class:`streams.processors.incidents.IncidentManager`, and it freezes baselines of groups whose
    ``i_open`` flag the manager sets.
    """

    def __init__(self, config: DriftConfig | None = None, store: SliceStore | None = None,
                 loader=None) -> None:
        self.cfg = config or DriftConfig()
        self.store = store or SliceStore()
        self.loader = loader
        self._cat_cache: dict[tuple[str, str | None], int] = {}
        #: per partition: latest trace / feedback event time seen (ms), the label-maturity clock
        self.trace_wm: dict[int, int] = {}
        self.feedback_wm: dict[int, int] = {}
        #: recent corrected traces per slice key (evidence for correction incidents)
        self._fb_evidence: dict[str, list[tuple[str, int]]] = {}
        self.late_feedback = 0
        self.discarded_buckets = 0
        self.lag = LagDistribution()
        lr = math.log(self.cfg.rate_shift)
        self._ln_rho = lr

    # ------------------------------------------------------------------ slices
    def row_for(self, layer: str, tenant: str, cohort: str | None, workflow: str | None,
                release: str | None, partition: int) -> int:
        """Row of a slice, creating it (and resuming from the changelog) on first sight."""
        key = slice_key(layer, tenant, cohort, workflow, release)
        row = self.store.index.get(key)
        if row is not None:
            return row
        row = self.store.add(SliceInfo(key, layer, tenant, cohort, workflow, release, partition))
        data = self.loader(key) if self.loader else None
        if data is not None:
            self.store.load_row(row, data)
            self.store.f["partition"][row, 0] = partition
        elif layer in LAYER_PARENT:
            parent = LAYER_PARENT[layer]
            if parent in self.cfg.layers:
                p = self.row_for(parent, tenant, cohort, workflow, None, partition)
                # a release that appears in an established slice is new (it can be blamed for a change)
                self.store.f["born"][row, 0] = self.store.f["own"][p, 0]
                if self.store.f["count"][p, 0] >= self.cfg.warmup_traces:
                    self.store.copy_baseline(p, row, self.cfg.release_prior_traces)
        return row

    def _release_cut(self, cols: TraceColumns) -> int:
        """Where to split a batch so no release slice is created from a cold parent that this
        batch warms up: the first position of such a release's traces, or 0 (no split).

        A release slice is seeded from its tenant x cohort x workflow parent when it first appears,
        if the parent has ``warmup_traces`` (the new release is then measured against the slice's
        history, and can be blamed). Decided at batch start, a worker lagging behind (large
        batches after a start or restart) saw the parent's history and the new release in one
        batch, left the release unseeded, and its own regressed traffic became its baseline: the
        demo's injected regression was then an ``output_drift`` with no release named (3 runs of
        17). Splitting there makes the outcome independent of batch sizes.
        """
        if "release" not in self.cfg.layers:
            return 0
        index, loader, store, warmup = self.store.index, self.loader, self.store, self.cfg.warmup_traces
        keys = list(zip(cols.tenant_id, cols.cohort, cols.workflow, cols.release_id, strict=True))
        new = [c for c in set(keys) if slice_key("release", *c) not in index
               and (loader is None or loader(slice_key("release", *c)) is None)]
        if not new:
            return 0  # the usual batch: one set over its traces, no per-trace loop
        # parent rows (created or resumed now; this batch would create them anyway) and their counts
        part = dict(zip(keys, cols.partition.tolist(), strict=True))
        cold: dict[tuple[str, str, str], float] = {}
        for t, c, w, r in new:
            prow = self.row_for(LAYER_PARENT["release"], t, c, w, None, part[(t, c, w, r)])
            if store.f["count"][prow, 0] < warmup:
                cold[(t, c, w)] = float(store.f["count"][prow, 0])
        if not cold:
            return 0  # a new release in a warm slice: seeded whatever the batch
        # one pass: the first new cold-parent release whose parent is warm by then
        todo = {c for c in new if c[:3] in cold}
        seen: dict[tuple[str, str, str], int] = {}
        for i, key in enumerate(keys):
            par = key[:3]
            if key in todo:
                if i > 0 and cold[par] + seen.get(par, 0) >= warmup:
                    return i
                todo.discard(key)
                if not todo:
                    break
            if par in cold:
                seen[par] = seen.get(par, 0) + 1
        return 0

    def _rows_per_layer(self, cols: TraceColumns) -> tuple[dict[str, np.ndarray], np.ndarray]:
        combos: dict[tuple[str, str, str, str, int], int] = {}
        setdefault = combos.setdefault
        codes = np.fromiter(
            (setdefault(k, len(combos)) for k in zip(cols.tenant_id, cols.cohort, cols.workflow,
                                                      cols.release_id, cols.partition.tolist(), strict=True)),
            dtype=np.intp, count=cols.n)
        rows: dict[str, np.ndarray] = {}
        for layer in self.cfg.layers:
            use_c, use_w, use_r = LAYER_PARTS[layer][1:]
            combo_rows = np.empty(len(combos), dtype=np.intp)
            for (t, c, w, r, p), ci in combos.items():
                combo_rows[ci] = self.row_for(layer, t, c if use_c else None, w if use_w else None,
                                              r if use_r else None, p)
            rows[layer] = combo_rows[codes]
        return rows, codes

    # ------------------------------------------------------------------ traces
    def process_traces(self, cols: TraceColumns) -> list[Alarm]:
        """Run all detectors on a batch of traces and update baselines. Returns the alarms.

        Replayed messages (offset <= the slice's last applied offset) are skipped per slice, so an
        at-least-once redelivery after a crash does not count twice in baselines or detectors.
        A batch in which a new release appears after its parent slice warms up is processed in
        two parts (:meth:`_release_cut`); alarm positions still index ``cols``.
        """
        if cols.n == 0:
            return []
        cut = self._release_cut(cols)
        if cut:
            # a new release whose parent slice warms up earlier in this batch: apply the traces
            # before it first, so the release slice is seeded from a warm parent (see _release_cut)
            head = self.process_traces(cols.slice(0, cut))
            tail = self.process_traces(cols.slice(cut, cols.n))
            for a in tail:
                if a.pos >= 0:
                    a.pos += cut
                    a.evidence = [e + cut for e in a.evidence]
                    a.cp_pos = None if a.cp_pos is None else a.cp_pos + cut
            return head + tail
        cfg = self.cfg
        rows_by_layer, _ = self._rows_per_layer(cols)
        # per-trace inputs shared by all layers
        xb = np.empty((cols.n, NB))
        xb[:, 0] = cols.outcome == 1
        xb[:, 1] = cols.outcome == 2
        xb[:, 2] = cols.outcome != 0  # success_rate monitored downward: complement = non-success
        xb[:, 3] = cols.policy_blocked
        xb[:, 4] = cols.tool_failure
        xb[:, 5] = cols.retrieval_miss
        xb[:, 6] = cols.fallback_used
        xg = np.empty((cols.n, NG))
        xg[:, 0] = np.log(np.maximum(cols.latency_ms, 1e-3))
        xg[:, 1] = np.log1p(cols.output_tokens)
        xg[:, 2] = np.log1p(cols.input_tokens)
        xg[:, 3] = np.log(cols.cost_usd + 1e-5)
        conf = np.clip(cols.confidence, 1e-4, 1 - 1e-4)
        xg[:, 4] = np.log(conf / (1 - conf))  # logit (NaN stays NaN)
        bins = hist_bins(cols.latency_ms)
        # latency tails, stratified: each trace is compared with the p95/p99 bin edge of its own
        # tenant x cohort x workflow baseline, and that indicator is what every layer monitors, so
        # coarse slices that mix workflows of different speed keep the full tail signal
        stratified = STRATA in cfg.layers
        bvalid = np.ones((cols.n, NB), dtype=bool)
        if stratified:
            uniq, inv = np.unique(rows_by_layer[STRATA], return_inverse=True)
            strata_hist = self.store.f["hist"][uniq]
            k95, k99 = _tail_edges(strata_hist)
            xb[:, TAIL_P95] = bins >= k95[inv]
            xb[:, TAIL_P99] = bins >= k99[inv]
            # a cold stratum has no p95 yet: its traces' tail indicators are missing, not 0 or 1
            hw = strata_hist.sum(axis=1)
            warm = (hw >= MIN_TAIL_WEIGHT)[inv]
            bvalid[:, TAIL_P95] = warm
            bvalid[:, TAIL_P99] = warm
            # each trace's null rate: the tail mass of its stratum above the edge used (guarded by
            # one standard error), so the increments stay likelihood ratios when an edge moves
            tail = _tail_mass(strata_hist)
            ix = np.arange(len(uniq))
            tail_p0 = np.empty((cols.n, 2))
            for c, k in enumerate((k95, k99)):
                p = tail[ix, k]
                pg = np.clip(p + cfg.guard_z * np.sqrt(np.maximum(p * (1 - p), 0.0) / np.maximum(hw, 1.0)),
                             1.0 / (hw + 2.0), 0.95)
                tail_p0[:, c] = pg[inv]
        else:
            tail_p0 = None
        cache = self._cat_cache
        cat = np.fromiter((cache[k] if k in cache else cache.setdefault(k, _cat_code(*k))
                           for k in zip(cols.workflow, cols.intent, strict=True)), dtype=np.intp, count=cols.n)
        # replay guard, per layer: traces whose message offset the slice has already applied
        last = self.store.f["last_offset"]
        fresh = {layer: cols.offset > last[rows_by_layer[layer], 0] for layer in cfg.layers}
        alarms: list[Alarm] = []
        tail_hold = np.zeros(cols.n, dtype=bool)  # a coarser slice of the trace holds tail evidence
        f = self.store.f
        hold_at = cfg.threshold * HOLD_AT
        tails = [TAIL_P95, TAIL_P99, NB + TAIL_P95, NB + TAIL_P99]
        for layer in cfg.layers:
            hold = tail_hold if (stratified and layer == STRATA) else None
            alarms.extend(self._process_layer(rows_by_layer[layer], fresh[layer], cols, xb, bvalid, xg, bins, cat,
                                              tail_p0, hold))
            if stratified and layer not in (STRATA, "release"):
                tail_hold |= (f["b_s"][rows_by_layer[layer]][:, tails] > hold_at).any(axis=1)
        # label-delayed metrics: advance the trace watermark, mature due buckets (freeing their
        # ring slots), then count this batch's traces in their event-time buckets
        for p in np.unique(cols.partition).tolist():
            t = int(cols.event_time_ms[cols.partition == p].max())
            self.trace_wm[p] = max(self.trace_wm.get(p, -1), t)
        alarms.extend(self.mature())
        bucket = cols.event_time_ms // cfg.bucket_ms
        for layer in cfg.layers:
            ok = fresh[layer]
            self._bucket_add(rows_by_layer[layer][ok], bucket[ok], None)
        return alarms

    def _process_layer(self, rows: np.ndarray, fresh: np.ndarray, cols: TraceColumns, xb: np.ndarray,
                       bvalid: np.ndarray, xg: np.ndarray, bins: np.ndarray, cat: np.ndarray,
                       tail_p0: np.ndarray | None, tail_hold: np.ndarray | None = None) -> list[Alarm]:
        cfg, st = self.cfg, self.store
        stratified = tail_p0 is not None
        f = st.f
        if not fresh.all():
            idx = np.flatnonzero(fresh)
            if idx.size == 0:
                return []
        else:
            idx = None
        order = np.argsort(rows if idx is None else rows[idx], kind="stable")
        if idx is not None:
            order = idx[order]
        r_sorted = rows[order]
        n = len(order)
        brk = np.flatnonzero(r_sorted[1:] != r_sorted[:-1]) + 1
        starts = np.concatenate(([0], brk))
        ends = np.concatenate((brk - 1, [n - 1]))
        seg = np.repeat(np.arange(len(starts)), ends - starts + 1)
        srow = r_sorted[starts]
        m = (ends - starts + 1).astype(np.float64)
        u = len(starts)
        armed = f["count"][srow, 0] >= cfg.warmup_traces
        open_g = f["i_open"][srow] > 0  # (u, groups)

        # ---- baseline parameters at batch start -----------------------------------------
        hist = f["hist"][srow]
        k95, k99 = _tail_edges(hist)  # this slice's own p95/p99 bin edges (reported in incidents)
        p0 = f["b_rate"][srow].copy()
        if not stratified:  # tails against this slice's own edges: p0 is the tail mass above them
            tail = _tail_mass(hist)
            p0[:, TAIL_P95] = tail[np.arange(u), k95]
            p0[:, TAIL_P99] = tail[np.arange(u), k99]
        # monitored direction: complement for "down" metrics
        down = B_DIR < 0
        p0[:, down] = 1.0 - p0[:, down]
        bw = np.maximum(f["b_w"][srow], 1.0)
        if not stratified:
            bw[:, [TAIL_P95, TAIL_P99]] = np.maximum(hist.sum(axis=1), 1.0)[:, None]
        p0g = p0 + cfg.guard_z * np.sqrt(np.maximum(p0 * (1 - p0), 0.0) / bw)
        p0g = np.clip(p0g, 1.0 / (bw + 2.0), 0.95)
        incs = []
        for rho in (cfg.rate_shift, cfg.rate_shift_large):
            p1 = np.minimum(p0g * rho, 0.99)
            incs.append((np.log(p1 / p0g), np.log((1 - p1) / (1 - p0g))))

        # ---- Bernoulli events (sorted); "down" metrics are monitored as their complement ------
        xs = xb[order]
        vb = bvalid[order]
        bs = bins[order]
        if not stratified:
            xs[:, TAIL_P95] = bs >= k95[seg]
            xs[:, TAIL_P99] = bs >= k99[seg]
            warm = (hist.sum(axis=1) >= MIN_TAIL_WEIGHT)[seg]
            vb[:, TAIL_P95] = warm
            vb[:, TAIL_P99] = warm
        xs = np.where(vb, xs, 0.0)
        hit = xs > 0
        incb = np.concatenate([np.where(vb, np.where(hit, i1[seg], i0[seg]), 0.0) for i1, i0 in incs], axis=1)
        if stratified:  # tails: per-trace null rates of the trace's stratum
            for c, col in enumerate((TAIL_P95, TAIL_P99)):
                p0t = tail_p0[order, c]
                for b, rho in enumerate((cfg.rate_shift, cfg.rate_shift_large)):
                    p1t = np.minimum(p0t * rho, 0.99)
                    incb[:, b * NB + col] = np.where(vb[:, col], np.where(
                        hit[:, col], np.log(p1t / p0t), np.log((1 - p1t) / (1 - p0t))), 0.0)
        # ---- Gaussian events: standardised with the baseline, clipped, missing = no evidence ----
        mu = f["g_mean"][srow]
        sd = np.sqrt(np.maximum(f["g_var"][srow], 1e-4))
        gs = xg[order]
        valid = ~np.isnan(gs)
        raw_g = np.where(valid, gs, 0.0)
        z = np.clip((np.where(valid, gs, mu[seg]) - mu[seg]) / sd[seg], -Z_CLIP, Z_CLIP)
        d = cfg.mean_shift_sigma
        # guard: the baseline mean is uncertain by ~1/sqrt(weight) sigma; charge it to the increment
        guard = (d * cfg.guard_z / np.sqrt(np.maximum(f["g_w"][srow], 1.0)))[seg]
        inc_up = np.where(valid, d * z - np.log(f["g_mgf_u"][srow])[seg] - guard, 0.0)
        inc_dn = np.where(valid, -d * z - np.log(f["g_mgf_d"][srow])[seg] - guard, 0.0)
        # one matrix: [Bernoulli | Gaussian up | Gaussian down], shape (n, NCOL)
        x_all = np.concatenate([incb, inc_up, inc_dn], axis=1)
        s0 = np.concatenate([f["b_s"][srow], f["g_su"][srow], f["g_sd"][srow]], axis=1)
        s = segmented_cusum(x_all, seg, starts, s0)
        cp = _ChangePoints(
            s,
            raw=np.concatenate([xs, xs, raw_g, raw_g], axis=1),
            cnt=np.concatenate([vb, vb, valid, valid], axis=1),
            seg=seg, starts=starts,
            carry_n=np.concatenate([f["b_n"][srow], f["g_nu"][srow], f["g_nd"][srow]], axis=1),
            carry_k=np.concatenate([f["b_k"][srow], f["g_xu"][srow], f["g_xd"][srow]], axis=1),
        )
        hits = (s > cfg.threshold) & armed[seg][:, None] & ALARM_COLS[None, :]
        alarms: list[Alarm] = []
        fired = np.zeros((u, NCOL), dtype=bool)
        if hits.any():
            hr, hc = np.nonzero(hits)
            # first hit per (segment, column): hr is sorted, so the first occurrence of each key
            keys = seg[hr] * NCOL + hc
            _, first = np.unique(keys, return_index=True)
            at, colx = hr[first], hc[first]
            n_since, k_since, cpos = cp.at(at, colx)
            for j in range(len(at)):
                alarms.append(self._make_alarm(cols, int(at[j]), int(colx[j]), seg, srow, order, starts,
                                               float(s[at[j], colx[j]]), float(n_since[j]), float(k_since[j]),
                                               int(cpos[j]), p0, mu, sd, k95, k99))
            fired[seg[at], colx] = True

        # ---- carry detector state to the next batch ------------------------------------------
        n_end, k_end, _ = cp.at(np.repeat(ends, NCOL), np.tile(np.arange(NCOL), u))
        n_end, k_end = n_end.reshape(u, NCOL), k_end.reshape(u, NCOL)
        s_end = s[ends]
        # detectors that fired restart (the incident tracks the episode); unarmed ones stay at zero
        reset = fired | ~armed[:, None]
        s_end[reset] = 0.0
        n_end[reset] = 0.0
        k_end[reset] = 0.0
        for name, lo, hi in STATE_COLS:
            f[name[0]][srow] = s_end[:, lo:hi]
            f[name[1]][srow] = n_end[:, lo:hi]
            f[name[2]][srow] = k_end[:, lo:hi]

        # ---- categorical windows ----------------------------------------------------------
        cs = cat[order]
        cat_counts = np.zeros((u, N_CAT))
        np.add.at(cat_counts, (seg, cs), 1.0)
        f["c_win"][srow] += cat_counts
        alarms.extend(self._check_mix(srow, armed, ends, order))

        # ---- baselines (EW): frozen per open incident group; learning slowed to HOLD_WEIGHT for a
        # metric whose CUSUM holds evidence of a change (S > h/4), so a young slice does not absorb a
        # regression before it is detected, while a baseline that started off low still converges
        # (a full freeze would lock such an estimate in). Under the null P(S > h/4) ~ exp(-4.5).
        hold_at = cfg.threshold * HOLD_AT
        held_b = (s_end[:, :NB] > hold_at) | (s_end[:, NB:NB2] > hold_at)
        held_g = (s_end[:, NB2:NB2 + NG] > hold_at) | (s_end[:, NB2 + NG:] > hold_at)
        scale_b = np.where(held_b, HOLD_WEIGHT, 1.0)
        scale_g = np.where(held_g, HOLD_WEIGHT, 1.0)
        lam_m = cfg.lam ** m  # (u,)
        wb = (1.0 - lam_m) / (1.0 - cfg.lam)  # EW weight of the batch's samples
        per = (wb / m)[:, None]
        sums_b = np.add.reduceat(np.where(vb, np.where(down[None, :], 1.0 - xs, xs), 0.0), starts, axis=0)
        cnt_b = np.add.reduceat(vb.astype(np.float64), starts, axis=0)
        keep_b = open_g[:, B_GROUP] | (cnt_b == 0)
        bw_old = f["b_w"][srow] * lam_m[:, None]
        bw_new = bw_old + cnt_b * per * scale_b
        new_b = (f["b_rate"][srow] * bw_old + sums_b * per * scale_b) / np.maximum(bw_new, 1e-12)
        f["b_rate"][srow] = np.where(keep_b, f["b_rate"][srow], new_b)
        f["b_w"][srow] = np.where(keep_b, f["b_w"][srow], bw_new)
        old_w = f["weight"][srow, 0]
        # Gaussian: weighted merge of EW (mean, var) with the batch's (mean, var)
        cnt = np.add.reduceat(valid.astype(np.float64), starts, axis=0)
        sx = np.add.reduceat(raw_g, starts, axis=0)
        sxx = np.add.reduceat(raw_g * raw_g, starts, axis=0)
        bmean = sx / np.maximum(cnt, 1.0)
        bvar = np.maximum(sxx / np.maximum(cnt, 1.0) - bmean * bmean, 0.0)
        gw_old = f["g_w"][srow] * lam_m[:, None]
        gw_b = cnt * per * scale_g
        gw_new = gw_old + gw_b
        frac = np.where(gw_new > 0, gw_b / np.maximum(gw_new, 1e-12), 0.0)
        mean_old = f["g_mean"][srow]
        var_old = f["g_var"][srow]
        delta = bmean - mean_old
        first_time = gw_old <= 1e-12
        mean_new = np.where(first_time, bmean, mean_old + frac * delta)
        var_new = np.where(first_time, bvar, (1 - frac) * var_old + frac * bvar + frac * (1 - frac) * delta * delta)
        keep_g = open_g[:, G_GROUP] | (cnt == 0)
        # log-MGF of the values standardised with the *updated* baseline (the one the next batch's
        # increments use), not the batch-start one: a large batch on a young slice standardised
        # with a few traces' mean and variance gave a biased MGF (0.36 instead of 0.49 nats
        # measured) that then drifted every CUSUM by the difference per trace until it fired on
        # stationary data; which batch sizes a worker sees depends on lag, so the estimate must
        # not. The history is re-centred on the new mean (exact for a shift, up to the clip).
        sd_new = np.sqrt(np.maximum(var_new, 1e-4))
        z_mgf = np.clip((np.where(valid, gs, 0.0) - mean_new[seg]) / sd_new[seg], -Z_CLIP, Z_CLIP)
        shift = np.where(first_time, 0.0, (mean_new - mean_old) / sd_new)
        for name, sign in (("g_mgf_u", 1.0), ("g_mgf_d", -1.0)):
            bm = np.add.reduceat(np.where(valid, np.exp(sign * d * z_mgf), 0.0), starts, axis=0) / np.maximum(cnt, 1.0)
            old = f[name][srow]
            recentred = old * np.exp(-sign * d * shift)
            f[name][srow] = np.where(keep_g, old, np.where(first_time, bm, recentred + frac * (bm - recentred)))
        f["g_mean"][srow] = np.where(keep_g, mean_old, mean_new)
        f["g_var"][srow] = np.where(keep_g, var_old, var_new)
        f["g_w"][srow] = np.where(keep_g, f["g_w"][srow], gw_new)
        # latency histogram and input mix
        hb = np.zeros((u, N_HIST))
        np.add.at(hb, (seg, bs), 1.0)
        lat_frozen = open_g[:, B_GROUP[TAIL_P95]][:, None]
        lat_scale = np.minimum(scale_b[:, TAIL_P95], scale_b[:, TAIL_P99])
        if tail_hold is not None:  # strata whose tail edges coarser slices are watching
            lat_scale = np.where(np.maximum.reduceat(tail_hold[order].astype(np.int8), starts) > 0, HOLD_WEIGHT,
                                 lat_scale)
        lat_scale = lat_scale[:, None]
        f["hist"][srow] = np.where(lat_frozen, hist, hist * lam_m[:, None] + hb * per * lat_scale)
        mix_frozen = open_g[:, CAT_GROUP][:, None]
        f["c_base"][srow] = np.where(mix_frozen, f["c_base"][srow],
                                     f["c_base"][srow] * lam_m[:, None] + cat_counts * per)
        f["weight"][srow, 0] = old_w * lam_m + wb
        f["count"][srow, 0] += m
        f["own"][srow, 0] += m
        last_off = np.maximum.reduceat(cols.offset[order], starts)
        f["last_offset"][srow, 0] = np.maximum(f["last_offset"][srow, 0], last_off)
        st.dirty.update(srow.tolist())
        return alarms

    def _make_alarm(self, cols: TraceColumns, at: int, col: int, seg: np.ndarray, srow: np.ndarray,
                    order: np.ndarray, starts: np.ndarray, stat: float, n_since: float, k_since: float,
                    cp: int, p0: np.ndarray, mu: np.ndarray, sd: np.ndarray, k95: np.ndarray,
                    k99: np.ndarray) -> Alarm:
        cfg = self.cfg
        sg = int(seg[at])
        row = int(srow[sg])
        first = max(cp, int(starts[sg]))  # first sorted row of this batch after the change point
        window = order[first : at + 1]
        evidence = window[-cfg.evidence :].tolist()
        cp_pos = None if cp < 0 else int(order[cp])
        n_s = max(n_since, 1.0)
        own_before = int(self.store.f["own"][row, 0])  # updated after the batch's alarms
        common = dict(row=row, pos=int(order[at]), statistic=stat, threshold=cfg.threshold,
                      samples=int(n_since), evidence=evidence, cp_pos=cp_pos,
                      slice_index=own_before + at - int(starts[sg]) + 1)
        bcol = col % NB if col < NB2 else -1
        if bcol in (TAIL_P95, TAIL_P99):
            # baseline quantile (bin edge, ms) vs the quantile observed since the change point, with
            # a distribution-free order-statistic CI (binomial ranks)
            q = 0.95 if bcol == TAIL_P95 else 0.99
            edge = float(HIST_EDGES_MS[int((k95 if bcol == TAIL_P95 else k99)[sg])])
            lat = np.sort(cols.latency_ms[window])
            k = len(lat)
            obs = float(np.quantile(lat, q))
            half = 1.96 * math.sqrt(k * q * (1 - q))
            lo = float(lat[max(math.floor(k * q - half), 0)])
            hi = float(lat[min(math.ceil(k * q + half), k - 1)])
            return Alarm(metric=BERNOULLI[bcol], baseline=edge, observed=obs, ci_low=lo, ci_high=hi,
                         effect=obs / max(edge, 1e-9), direction=+1, **common)
        if bcol >= 0:
            metric = BERNOULLI[bcol]
            rate = k_since / n_s
            lo, hi = _wilson(k_since, n_s)
            base = float(p0[sg, bcol])
            if metric.direction < 0:  # back to the metric's own orientation (e.g. success rate)
                rate, lo, hi, base = 1 - rate, 1 - hi, 1 - lo, 1 - base
            return Alarm(metric=metric, baseline=base, observed=rate, ci_low=lo, ci_high=hi,
                         effect=rate / max(base, 1e-9), direction=metric.direction, **common)
        gcol = (col - NB2) % NG
        metric = GAUSSIAN[gcol]
        mean_t = k_since / n_s
        sdv = float(sd[sg, gcol])
        se = sdv / math.sqrt(n_s)
        base_t = float(mu[sg, gcol])
        inv = _inverse_transform(gcol)
        return Alarm(metric=metric, baseline=inv(base_t), observed=inv(mean_t),
                     ci_low=inv(mean_t - 1.96 * se), ci_high=inv(mean_t + 1.96 * se),
                     effect=(mean_t - base_t) / max(sdv, 1e-9),
                     direction=+1 if col < NB2 + NG else -1, **common)

    def _check_mix(self, srow: np.ndarray, armed: np.ndarray, ends: np.ndarray, order: np.ndarray) -> list[Alarm]:
        cfg, f = self.cfg, self.store.f
        win = f["c_win"][srow]
        tot = win.sum(axis=1)
        ready = np.flatnonzero(tot >= cfg.cat_window)
        alarms: list[Alarm] = []
        for j in ready:
            row = int(srow[j])
            obs = win[j]
            base = f["c_base"][row]
            if armed[j] and base.sum() > 0:
                p = (base + 0.5) / (base.sum() + 0.5 * N_CAT)
                exp = p * tot[j]
                x2 = float(((obs - exp) ** 2 / exp).sum())
                pval = float(stats.chi2.sf(x2, N_CAT - 1))
                q = obs / tot[j]
                mid = 0.5 * (p + q)
                js = float(0.5 * np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / mid), 0))
                           + 0.5 * np.sum(p * np.log(p / mid)))
                if pval < cfg.cat_alpha and js >= cfg.cat_min_js:
                    metric = CATEGORICAL[0]
                    at = int(order[ends[j]])
                    alarms.append(Alarm(row=row, metric=metric, pos=at, statistic=x2,
                                        slice_index=int(f["own"][row, 0] + tot[j]),
                                        threshold=float(stats.chi2.isf(cfg.cat_alpha, N_CAT - 1)),
                                        baseline=0.0, observed=js, ci_low=js, ci_high=js, effect=js,
                                        samples=int(tot[j]), direction=0,
                                        evidence=order[max(0, ends[j] - cfg.evidence + 1): ends[j] + 1].tolist()))
            f["c_win"][row] = 0.0
        return alarms

    # ------------------------------------------------------------------ label-delayed metrics
    def _bucket_add(self, rows: np.ndarray, bucket: np.ndarray, metric_idx: np.ndarray | None) -> int:
        """Add traces (``metric_idx is None``) or feedback events to the slices' bucket rings.

        Returns the number of feedback events that arrived after their bucket matured (late).
        """
        f = self.store.f
        key = rows.astype(np.int64) * (1 << 40) + bucket.astype(np.int64)
        uniq, counts = np.unique(key, return_counts=True) if metric_idx is None else (None, None)
        late = 0
        if metric_idx is None:
            for kv, c in zip(uniq.tolist(), counts.tolist(), strict=True):
                row, b = kv >> 40, kv & ((1 << 40) - 1)
                slot = b % N_BUCKETS
                held = f["pb_id"][row, slot]
                if held != b:
                    if held >= 0:
                        # the ring wrapped before the old bucket matured (one topic far ahead of the
                        # other): discard it whole, exposure and events, so the rate stays unbiased
                        self.discarded_buckets += 1
                    f["pb_id"][row, slot] = b
                    f["pb_n"][row, slot] = 0.0
                    f["pb_f"][row, slot] = 0.0
                    f["pb_k"][row, slot * NP : (slot + 1) * NP] = 0.0
                    f["pb_kc"][row, slot * NP : (slot + 1) * NP] = 0.0
                f["pb_n"][row, slot] += c
            return 0
        for row, b, j in zip(rows.tolist(), bucket.tolist(), metric_idx.tolist(), strict=True):
            slot = b % N_BUCKETS
            if f["pb_id"][row, slot] != b:
                late += 1  # its bucket retired (or was never seen): not counted, a safe undercount
                continue
            f["pb_k"][row, slot * NP + j] += 1.0
        return late

    def process_feedback(self, rows: np.ndarray, metric_idx: np.ndarray, trace_event_ms: np.ndarray,
                         trace_ids: Sequence[str], feedback_event_ms: dict[int, int],
                         lag_samples: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[Alarm]:
        """Count feedback events (corrections) in their traces' buckets, then credit exposure.

        Args:
            rows: slice row of each event, shape ``(k,)`` (one event per slice layer it counts in).
            metric_idx: Poisson metric index of each event (``P_INDEX``).
            trace_event_ms: event time of the trace each event refers to, ms.
            trace_ids: the trace id of each event (evidence).
            feedback_event_ms: per partition, the latest feedback event time in the batch, ms
                (advances the feedback watermark).
            lag_samples: ``(trace event ms, partition, delay ms)`` arrays, one entry per distinct
                feedback: the label-delay distribution learns from them.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if lag_samples is not None and len(lag_samples[0]):
            self.lag.observe(*lag_samples)
        if len(rows):
            bucket = np.asarray(trace_event_ms, dtype=np.int64) // self.cfg.bucket_ms
            self.late_feedback += self._bucket_add(rows, bucket, np.asarray(metric_idx, dtype=np.int64))
            for row, tid, t in zip(rows.tolist(), trace_ids, np.asarray(trace_event_ms).tolist(), strict=True):
                ev = self._fb_evidence.setdefault(self.store.info[row].key, [])
                ev.append((tid, int(t)))
                if len(ev) > 2 * self.cfg.evidence:
                    del ev[: len(ev) - self.cfg.evidence]
        for p, t in feedback_event_ms.items():
            self.feedback_wm[p] = max(self.feedback_wm.get(p, -1), int(t))
        return self.mature()

    def mature(self) -> list[Alarm]:
        """Credit label-delayed exposure and step the Poisson CUSUMs (Lucas 1985), one step per
        slice per call, vectorised over slices.

        A bucket of ``n`` traces whose age (clock minus the bucket's middle) grew from ``a1`` to ``a2``
        contributes exposure ``n * (F(a2) - F(a1))``, where ``F`` is the learned feedback-delay CDF;
        the events it received meanwhile are the counts. The step's log-likelihood ratio is
        ``k * ln(rho) - exposure * r0 * (rho - 1)`` (Poisson, rate ``rho * r0`` vs ``r0``), exact
        for events arriving as a Poisson process with intensity ``n * r * F'(age)``. The clock is the
        lower of the partition's trace and feedback watermarks, so neither topic running ahead of
        the other fakes a change. Until ``F`` has enough samples it is a step at
        ``feedback_maturity`` (a bucket counts once matured). Buckets retire when ``F >= 0.999``.
        """
        st, cfg = self.store, self.cfg
        if st.n == 0:
            return []
        f = st.f
        n_rows = st.n
        parts = f["partition"][:n_rows, 0].astype(np.int64)
        clock = np.array([min(self.trace_wm.get(p, -1), self.feedback_wm.get(p, -1))
                          for p in range(int(parts.max()) + 1)], dtype=np.float64)
        self.lag.release({p: float(c) for p, c in enumerate(clock)}, cfg.feedback_maturity_ms)
        ids = f["pb_id"][:n_rows]
        active_rows = np.flatnonzero((ids >= 0).any(axis=1) & (clock[parts] >= 0))
        if active_rows.size == 0:
            return []
        ids = ids[active_rows]
        age = clock[parts[active_rows]][:, None] - (ids + 0.5) * cfg.bucket_ms
        cdf = np.where(ids >= 0, self.lag.cdf(age, cfg.feedback_maturity_ms), 0.0)
        credited = f["pb_f"][active_rows]
        cdf = np.maximum(cdf, credited)
        expo = (f["pb_n"][active_rows] * (cdf - credited)).sum(axis=1)  # (R,)
        k_all = f["pb_k"][active_rows].reshape(len(active_rows), N_BUCKETS, NP)
        kc_all = f["pb_kc"][active_rows].reshape(len(active_rows), N_BUCKETS, NP)
        # events are credited together with their exposure: as they arrive once F is learned
        # (F credits the expected share), but only at maturity while F is still the fallback step
        credit = np.ones_like(cdf, dtype=bool) if self.lag.learned else cdf >= 1.0
        new_k = np.where(credit[:, :, None], k_all, kc_all)
        events = (new_k - kc_all).sum(axis=1)  # (R, NP)
        f["pb_f"][active_rows] = cdf
        f["pb_kc"][active_rows] = new_k.reshape(len(active_rows), N_BUCKETS * NP)
        retire = (cdf >= 0.999) & (ids >= 0)
        if retire.any():
            rr, ss = np.nonzero(retire)
            f["pb_id"][active_rows[rr], ss] = -1.0
        stepped = np.flatnonzero((expo > 0) | (events.sum(axis=1) > 0))
        if stepped.size == 0:
            return []
        rows = active_rows[stepped]
        st.dirty.update(rows.tolist())
        return self._poisson_steps(rows, expo[stepped], events[stepped])

    def _poisson_steps(self, rows: np.ndarray, expo: np.ndarray, events: np.ndarray) -> list[Alarm]:
        """One Poisson CUSUM step per row and metric with exposure ``expo`` (R,) and counts
        ``events`` (R, NP); baselines learn from the same credited exposure and counts."""
        cfg, f = self.cfg, self.store.f
        rho, lnr = cfg.rate_shift, self._ln_rho
        lam_n = cfg.lam ** expo
        armed_slice = f["count"][rows, 0] >= cfg.warmup_traces
        out: list[Alarm] = []
        for j in range(NP):
            k = events[:, j]
            den = np.maximum(f["p_den"][rows, j], 1.0)
            r0 = f["p_num"][rows, j] / den
            r0g = np.maximum(r0 + cfg.guard_z * np.sqrt(r0 / den), 1.0 / den)
            armed = armed_slice & (f["p_num"][rows, j] >= MIN_POISSON_EVENTS)
            s_new = f["p_s"][rows, j] + k * lnr - expo * r0g * (rho - 1.0)
            frozen = f["i_open"][rows, P_GROUP[j]] > 0
            scale = np.where(s_new > cfg.threshold * HOLD_AT, HOLD_WEIGHT, 1.0)
            f["p_den"][rows, j] = np.where(frozen, f["p_den"][rows, j], f["p_den"][rows, j] * lam_n + expo * scale)
            f["p_num"][rows, j] = np.where(frozen, f["p_num"][rows, j], f["p_num"][rows, j] * lam_n + k * scale)
            reset = ~armed | (s_new <= 0.0)
            f["p_s"][rows, j] = np.where(reset, 0.0, s_new)
            f["p_n"][rows, j] = np.where(reset, 0.0, f["p_n"][rows, j] + expo)
            f["p_k"][rows, j] = np.where(reset, 0.0, f["p_k"][rows, j] + k)
            for i in np.flatnonzero(~reset & (s_new > cfg.threshold) & (k > 0)).tolist():
                row = int(rows[i])
                n_exp = max(float(f["p_n"][row, j]), 1.0)
                kk = float(f["p_k"][row, j])
                obs = kk / n_exp
                lo = float(stats.chi2.ppf(0.025, 2 * kk) / 2 / n_exp) if kk > 0 else 0.0
                hi = float(stats.chi2.ppf(0.975, 2 * (kk + 1)) / 2 / n_exp)
                ev = self._fb_evidence.get(self.store.info[row].key, [])
                ids_ = [tid for tid, _ in ev]
                out.append(Alarm(row=row, metric=POISSON[j], pos=-1, statistic=float(s_new[i]),
                                 threshold=cfg.threshold, baseline=float(r0[i]), observed=obs, ci_low=lo, ci_high=hi,
                                 effect=obs / max(float(r0[i]), 1e-9), samples=int(n_exp), direction=+1,
                                 slice_index=int(f["own"][row, 0]), trace_id=ids_[-1] if ids_ else "",
                                 event_time_ms=max((t for _, t in ev), default=0),
                                 evidence_ids=ids_[-cfg.evidence:]))
                f["p_s"][row, j] = f["p_n"][row, j] = f["p_k"][row, j] = 0.0
        return out


class LagDistribution:
    """Empirical CDF of feedback delay (feedback event time minus trace event time), log-binned
    from 1 s to 7 days, exponentially weighted (half-life ``half_life`` samples).

    Delays are right-censored while their traces are young (a long delay has not happened yet),
    so a delay is learned only once its trace is ``maturity`` older than its partition's clock:
    by then every delay up to the maturity horizon has been observed for it, and the estimate is
    unbiased for delays up to the horizon (later feedback is not counted by detectors anyway).
    Used to credit label-delayed exposure (:meth:`DriftEngine.mature`). With fewer than
    ``min_samples`` learned delays the CDF is a step at the maturity.
    """

    EDGES_MS = np.concatenate(([0.0], np.exp(np.linspace(np.log(1_000.0), np.log(7 * 86_400_000.0), 64))))

    def __init__(self, half_life: float = 20_000.0, min_samples: float = 200.0) -> None:
        self.w = np.zeros(len(self.EDGES_MS))  # mass per bin [edge_i, edge_i+1), last = beyond
        self.lam = 0.5 ** (1.0 / half_life)
        self.min_samples = min_samples
        self.total = 0.0
        self.pending: list[tuple[int, int, float]] = []  # heap of (trace ms, partition, delay ms)

    def observe(self, trace_ms: np.ndarray, partitions: np.ndarray, lags_ms: np.ndarray) -> None:
        """Queue observed delays; they are learned by :meth:`release` once their traces are old."""
        for t, p, lag in zip(trace_ms.tolist(), partitions.tolist(), lags_ms.tolist(), strict=True):
            heapq.heappush(self.pending, (int(t), int(p), float(lag)))

    def release(self, clock_ms: dict[int, float], maturity_ms: float) -> None:
        """Learn the queued delays whose trace is at least ``maturity_ms`` behind its partition's clock."""
        ready = []
        keep = []
        while self.pending and self.pending[0][0] <= max(clock_ms.values(), default=-1) - maturity_ms:
            t, p, lag = heapq.heappop(self.pending)
            (ready if t <= clock_ms.get(p, -1) - maturity_ms else keep).append((t, p, lag))
        for item in keep:
            heapq.heappush(self.pending, item)
        if ready:
            self.add(np.array([min(lag, maturity_ms) for _, _, lag in ready]))

    def add(self, lags_ms: np.ndarray) -> None:
        """Learn from observed delays (ms); negative delays count as 0."""
        idx = np.searchsorted(self.EDGES_MS, np.maximum(lags_ms, 0.0), side="right") - 1
        decay = self.lam ** len(lags_ms)
        self.w *= decay
        np.add.at(self.w, np.clip(idx, 0, len(self.w) - 1), 1.0)
        self.total = self.total * decay + len(lags_ms)

    @property
    def learned(self) -> bool:
        """Enough delays seen to use the empirical CDF (else the step at maturity)."""
        return self.total >= self.min_samples

    def cdf(self, age_ms: np.ndarray, maturity_ms: float) -> np.ndarray:
        """P(delay <= age) for each age (ms), linearly interpolated inside bins; 1 from the maturity on."""
        if not self.learned:
            return (age_ms >= maturity_ms).astype(np.float64)
        c = np.concatenate(([0.0], np.cumsum(self.w) / max(self.w.sum(), 1e-12)))
        edges = np.concatenate((self.EDGES_MS, [self.EDGES_MS[-1] * 2]))
        return np.where(age_ms >= maturity_ms, 1.0, np.interp(age_ms, edges, c, left=0.0, right=1.0))


def _inverse_transform(gcol: int):
    """Map a Gaussian metric's transformed value back to its unit (ms, tokens, USD, score)."""
    if gcol == 0:
        return lambda v: float(math.exp(min(v, 50.0)))
    if gcol in (1, 2):
        return lambda v: float(math.expm1(min(v, 50.0)))
    if gcol == 3:
        return lambda v: float(math.exp(min(v, 50.0)) - 1e-5)
    return lambda v: float(1.0 / (1.0 + math.exp(-max(min(v, 50.0), -50.0))))
