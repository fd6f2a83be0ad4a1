"""The drift engine: every detector of every slice layer, run per batch at per-trace resolution.

:class:`DriftEngine` keeps the slice store (:mod:`streams.processors.baselines`) and, for a batch
of traces (:meth:`DriftEngine.process_traces`):

1. splits the batch where a new release appears after its parent slice warmed up
   (:meth:`DriftEngine._release_cut`), so a release is seeded from a warm parent whatever the
   batch sizes;
2. finds each trace's slice row in every layer, creating (and resuming) slices on first sight;
3. reads the per-trace inputs once for all layers (:meth:`DriftEngine._batch_inputs`): every
   metric's event or value from the catalogue (:mod:`streams.processors.metrics`), the latency
   tail events against the trace's own tenant x cohort x workflow edges, the input-mix bucket;
4. per layer (:meth:`DriftEngine._process_layer`): sorts the fresh traces by slice, computes the
   likelihood-ratio increments of every detector column against the baselines at batch start,
   runs the CUSUMs (:func:`~streams.processors.drift.cusum.segmented_cusum`), reports the first
   crossing per slice and column as an :class:`Alarm`, carries detector state, tests full
   input-mix windows, and merges the batch into the baselines;
5. hands the batch to the label-delayed detectors
   (:class:`~streams.processors.drift.delayed.DelayedMetrics`): count the batch's traces in their
   event-time buckets (the Poisson CUSUMs are evaluated as feedback arrives).

Feedback events enter through :meth:`DriftEngine.process_feedback`. The engine never emits
incidents; it returns :class:`Alarm` objects for
:class:`streams.processors.incidents.IncidentManager`, and it freezes the baselines of groups
whose ``i_open`` flag the manager sets.

Detector columns of one layer (the per-layer CUSUM matrix, ``N_DETECTOR_COLS`` wide):
``[Bernoulli tuned for rate_shift | Bernoulli tuned for rate_shift_large | Gaussian up |
Gaussian down]``; Poisson detectors run on feedback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from streams.processors.baselines import (
    HIST_EDGES_MS,
    LAYER_PARENT,
    LAYER_PARTS,
    N_CAT,
    N_HIST,
    SliceInfo,
    SliceStore,
    hist_bins,
    slice_key,
)
from streams.processors.columns import TraceColumns
from streams.processors.drift.base import HOLD_AT, HOLD_MIN_EVENTS, HOLD_WEIGHT, Alarm, DriftConfig
from streams.processors.drift.cusum import ChangePoints, segmented_cusum
from streams.processors.drift.delayed import DelayedMetrics
from streams.processors.drift.families import (
    MIN_TAIL_WEIGHT,
    bernoulli_llr,
    ew_rate_update,
    gaussian_update,
    guarded_rate,
    quantile_interval,
    standardise,
    tail_edges,
    tail_mass,
    tilted_increment,
    wilson,
)
from streams.processors.drift.mix import chi2_threshold, input_mix_code, mix_test
from streams.processors.metrics import (
    BERNOULLI,
    BERNOULLI_DIRECTION,
    BERNOULLI_EVENT_COLUMNS,
    BERNOULLI_GROUP,
    CATEGORICAL,
    GAUSSIAN,
    GAUSSIAN_DIRECTION,
    GAUSSIAN_GROUP,
    INPUT_MIX_GROUP,
    N_BERNOULLI,
    N_GAUSSIAN,
    TAIL_COLUMNS,
    TAIL_P95,
    TAIL_P99,
)

# ---------------------------------------------------------------------- the per-layer CUSUM matrix
#: Bernoulli detector columns: every Bernoulli metric tuned for rate_shift, then for rate_shift_large
N_BERNOULLI_COLS = 2 * N_BERNOULLI
#: all detector columns of a layer: [Bernoulli x2 tunings | Gaussian up | Gaussian down]
N_DETECTOR_COLS = N_BERNOULLI_COLS + 2 * N_GAUSSIAN
BERNOULLI_COLS = slice(0, N_BERNOULLI_COLS)
GAUSSIAN_UP_COLS = slice(N_BERNOULLI_COLS, N_BERNOULLI_COLS + N_GAUSSIAN)
GAUSSIAN_DOWN_COLS = slice(N_BERNOULLI_COLS + N_GAUSSIAN, N_DETECTOR_COLS)
#: which columns may alarm (Gaussian sides by the metric's direction)
ALARM_COLS = np.concatenate([np.ones(N_BERNOULLI_COLS), GAUSSIAN_DIRECTION >= 0,
                             GAUSSIAN_DIRECTION <= 0]).astype(bool)
#: per family of columns: the state fields (statistic, samples since the change point, raw sum
#: since it) and the columns they hold
STATE_COLS = (
    (("b_s", "b_n", "b_k"), BERNOULLI_COLS),
    (("g_su", "g_nu", "g_xu"), GAUSSIAN_UP_COLS),
    (("g_sd", "g_nd", "g_xd"), GAUSSIAN_DOWN_COLS),
)
#: Bernoulli metrics monitored downward (success rate): their detectors see the complement
DOWN = BERNOULLI_DIRECTION < 0
#: the latency tail metrics among the Bernoulli ones
TAIL_MASK = np.isin(np.arange(N_BERNOULLI), [TAIL_P95, TAIL_P99])
#: the four tail detector columns (p95, p99 in both tunings): a coarse slice holding tail evidence
TAIL_DETECTOR_COLS = [TAIL_P95, TAIL_P99, N_BERNOULLI + TAIL_P95, N_BERNOULLI + TAIL_P99]

#: the layer whose p95/p99 edges define every trace's latency tail events (see _batch_inputs)
STRATA = "tenant_cohort_workflow"


@dataclass(slots=True)
class _BatchInputs:
    """Per-trace inputs of a batch shared by every layer, in batch order.

    Attributes:
        events: Bernoulli events (0/1, the monitored orientation), ``(n, N_BERNOULLI)``.
        events_valid: where an event exists (a tail event needs a warm stratum), same shape.
        values: Gaussian values on their detector scale (NaN: missing), ``(n, N_GAUSSIAN)``.
        latency_bins: latency histogram bin of each trace, ``(n,)``.
        mix_codes: input-mix bucket of each trace, ``(n,)``.
        tail_p0: per-trace null rate of the p95/p99 tail events (the trace's stratum, guarded),
            ``(n, 2)``, or ``None`` when tails are measured against each slice's own edges.
    """

    events: np.ndarray
    events_valid: np.ndarray
    values: np.ndarray
    latency_bins: np.ndarray
    mix_codes: np.ndarray
    tail_p0: np.ndarray | None


@dataclass(slots=True)
class _Segments:
    """One layer's fresh traces of a batch sorted by slice row (a *segment* per slice).

    Attributes:
        order: batch positions in sorted order, ``(n,)``.
        starts, ends: first and last sorted row of each segment, ``(u,)``.
        seg: segment of each sorted row, ``(n,)``.
        srow: slice row of each segment, ``(u,)``.
        size: traces per segment (float), ``(u,)``.
        armed: the slice has ``warmup_traces`` (its detectors may alarm), ``(u,)``.
        open_groups: incident groups open on the slice, ``(u, len(GROUPS))``.
    """

    order: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    seg: np.ndarray
    srow: np.ndarray
    size: np.ndarray
    armed: np.ndarray
    open_groups: np.ndarray

    @property
    def u(self) -> int:
        """Number of segments (slices)."""
        return len(self.starts)


@dataclass(slots=True)
class _LayerBaseline:
    """Baseline parameters of one layer's segments at batch start (every array ``(u, ...)``).

    Attributes:
        hist: latency histograms; k95, k99: their p95/p99 bin edges (reported in incidents).
        p0: Bernoulli null rates in the monitored orientation (complement for "down" metrics).
        p0_guarded: the same guarded by ``guard_z`` standard errors (the CUSUMs' null).
        mu, sd: Gaussian means and standard deviations on the detector scale.
    """

    hist: np.ndarray
    k95: np.ndarray
    k99: np.ndarray
    p0: np.ndarray
    p0_guarded: np.ndarray
    mu: np.ndarray
    sd: np.ndarray


@dataclass(slots=True)
class _LayerEvents:
    """One layer's per-trace inputs in sorted order (every array ``(n, ...)``).

    Attributes:
        events: Bernoulli events, 0 where missing; valid: where they exist.
        latency_bins: latency bins.
        values: Gaussian values (NaN: missing); values_valid: ``~isnan(values)``; raw: values
            with missing ones set to 0.
    """

    events: np.ndarray
    valid: np.ndarray
    latency_bins: np.ndarray
    values: np.ndarray
    values_valid: np.ndarray
    raw: np.ndarray


class DriftEngine:
    """Maintains the slice store and runs every detector on each batch (see the module docstring).

    Args:
        config: detector settings.
        store: the slice state (a fresh one by default).
        loader: ``key -> bytes | None``; called when a slice is first seen in this process, to
            resume its state from the changelog table (``None`` = new slice); also when a
            tenant's delay distributions are first needed (:class:`DelayModel
            <streams.processors.drift.delayed.DelayModel>`, key ``delay|<tenant>``).
    """

    def __init__(self, config: DriftConfig | None = None, store: SliceStore | None = None,
                 loader: Callable[[str], bytes | None] | None = None) -> None:
        self.cfg = config or DriftConfig()
        self.store = store or SliceStore()
        self.loader = loader
        self._mix_code_cache: dict[tuple[str, str | None], int] = {}
        #: the label-delayed (Poisson) detectors of the same slices
        self.delayed = DelayedMetrics(self.cfg, self.store)
        # the delay distributions persist beside the slice rows (DelayModel: ``delay|<tenant>``)
        self.delayed.delays.loader = loader
        #: replay-guard floor while a trace batch runs: last offset applied by each row that existed
        #: at batch start, and (``_added_floor``) by each row added since, as loaded or created
        self._batch_floor: np.ndarray | None = None
        self._added_floor: dict[int, float] = {}

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
        if self._batch_floor is not None:  # added during a batch: its guard is what it had applied when added
            self._added_floor[row] = float(self.store.f["last_offset"][row, 0])
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
        """Slice row of every trace in every layer, ``{layer: (n,)}``, and each trace's code of
        distinct (tenant, cohort, workflow, release, partition): rows are looked up once per code."""
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

        Replayed messages (offset <= the slice's last applied offset *before this batch*) are
        skipped per slice, so an at-least-once redelivery after a crash does not count twice in
        baselines or detectors. A batch in which a new release appears after its parent slice
        warms up is processed in two parts (:meth:`_release_cut`); alarm positions still index
        ``cols``. Both parts are guarded against the offsets applied before the batch: a cut can
        fall inside one Kafka message, whose traces share its offset, and guarding the second
        part against the first would drop it as a replay (measured: 89 of 6,438 traces of one
        tenant missing from its baselines in the chaos run).
        """
        if cols.n == 0:
            return []
        if self._batch_floor is not None:
            return self._process_part(cols)
        self._batch_floor = self.store.f["last_offset"][: self.store.n, 0].copy()
        self._added_floor = {}
        try:
            return self._process_part(cols)
        finally:
            self._batch_floor, self._added_floor = None, {}

    def _floor(self) -> np.ndarray:
        """Replay-guard floor per row, shape ``(store.n,)``: the last source offset each row had
        applied before the batch; a row added during the batch keeps the value it was loaded with
        from the changelog (-1 when new). Built once per batch part, indexed per layer."""
        floor = self._batch_floor
        if floor is None:
            raise RuntimeError("replay-guard floor read outside process_traces")
        if not self._added_floor:
            return floor
        extra = np.full(self.store.n - floor.shape[0], -1.0)
        for r, v in self._added_floor.items():
            extra[r - floor.shape[0]] = v
        return np.concatenate([floor, extra])

    def _process_part(self, cols: TraceColumns) -> list[Alarm]:
        """:meth:`process_traces` on ``cols`` (the whole batch, or one side of a release cut)."""
        cut = self._release_cut(cols)
        if cut:
            # a new release whose parent slice warms up earlier in this batch: apply the traces
            # before it first, so the release slice is seeded from a warm parent (see _release_cut)
            head = self._process_part(cols.slice(0, cut))
            tail = self._process_part(cols.slice(cut, cols.n))
            for a in tail:
                if a.pos >= 0:
                    a.pos += cut
                    a.evidence = [e + cut for e in a.evidence]
                    a.cp_pos = None if a.cp_pos is None else a.cp_pos + cut
            return head + tail
        cfg, f = self.cfg, self.store.f
        rows_by_layer, _ = self._rows_per_layer(cols)
        inputs = self._batch_inputs(cols, rows_by_layer)
        # replay guard, per layer: a trace counts if its message offset is past what the slice had
        # applied before the batch (or, for a slice added during it, when it was loaded)
        floor = self._floor()
        fresh = {layer: cols.offset > floor[rows_by_layer[layer]] for layer in cfg.layers}
        alarms: list[Alarm] = []
        stratified = inputs.tail_p0 is not None
        tail_hold = np.zeros(cols.n, dtype=bool)  # a coarser slice of the trace holds tail evidence
        hold_at = cfg.threshold * HOLD_AT
        for layer in cfg.layers:
            hold = tail_hold if (stratified and layer == STRATA) else None
            alarms.extend(self._process_layer(rows_by_layer[layer], fresh[layer], cols, inputs, hold))
            if stratified and layer not in (STRATA, "release"):
                tail_hold |= (f["b_s"][rows_by_layer[layer]][:, TAIL_DETECTOR_COLS] > hold_at).any(axis=1)
        # label-delayed metrics: the batch's traces are exposure as their feedback becomes due
        alarms.extend(self.delayed.add_traces(cols, rows_by_layer, fresh))
        return alarms

    def process_feedback(self, rows: np.ndarray, metric_idx: np.ndarray, trace_event_ms: np.ndarray,
                         trace_ids: Sequence[str], feedback_event_ms: dict[int, int],
                         lag_samples: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                         feedback_ms: np.ndarray | None = None,
                         lag_keys: Sequence[tuple[str, str]] | None = None) -> list[Alarm]:
        """Count feedback events in their traces' buckets and evaluate the Poisson detectors
        (:meth:`DelayedMetrics.add_feedback <streams.processors.drift.delayed.DelayedMetrics.add_feedback>`,
        same arguments); ``rows`` come from :meth:`row_for`."""
        return self.delayed.add_feedback(rows, metric_idx, trace_event_ms, trace_ids, feedback_event_ms, lag_samples,
                                         feedback_ms, lag_keys)

    def _batch_inputs(self, cols: TraceColumns, rows_by_layer: dict[str, np.ndarray]) -> _BatchInputs:
        """Per-trace inputs shared by all layers: every metric read once from the catalogue.

        Latency tails are stratified when the ``tenant_cohort_workflow`` layer runs: each trace
        is compared with the p95/p99 bin edge of its own tenant x cohort x workflow baseline, and
        that event is what every layer monitors, so coarse slices that mix workflows of different
        speed keep the full tail signal. A cold stratum (histogram weight below
        ``MIN_TAIL_WEIGHT``) has no edge yet: its traces' tail events are missing, not 0 or 1.
        """
        cfg, n = self.cfg, cols.n
        events = np.empty((n, N_BERNOULLI))
        for i in BERNOULLI_EVENT_COLUMNS:
            events[:, i] = BERNOULLI[i].event(cols)  # the monitored orientation (non-success for success_rate)
        values = np.empty((n, N_GAUSSIAN))
        for i, metric in enumerate(GAUSSIAN):
            values[:, i] = metric.scale.to_scale(metric.value(cols))
        bins = hist_bins(cols.latency_ms)
        valid = np.ones((n, N_BERNOULLI), dtype=bool)
        tail_p0 = None
        if STRATA in cfg.layers:
            uniq, inv = np.unique(rows_by_layer[STRATA], return_inverse=True)
            strata_hist = self.store.f["hist"][uniq]
            edges = tail_edges(strata_hist)
            for col, k in zip(TAIL_COLUMNS, edges, strict=True):
                events[:, col] = bins >= k[inv]
            hw = strata_hist.sum(axis=1)
            warm = (hw >= MIN_TAIL_WEIGHT)[inv]
            for col in TAIL_COLUMNS:
                valid[:, col] = warm
            # each trace's null rate: the tail mass of its stratum above the edge used (guarded by
            # one standard error), so the increments stay likelihood ratios when an edge moves
            tail = tail_mass(strata_hist)
            ix = np.arange(len(uniq))
            tail_p0 = np.empty((n, 2))
            for c, k in enumerate(edges):
                p = tail[ix, k]
                tail_p0[:, c] = guarded_rate(p, np.maximum(hw, 1.0), cfg.guard_z, hw)[inv]
        cache = self._mix_code_cache
        mix = np.fromiter((cache[k] if k in cache else cache.setdefault(k, input_mix_code(*k))
                           for k in zip(cols.workflow, cols.intent, strict=True)), dtype=np.intp, count=n)
        return _BatchInputs(events, valid, values, bins, mix, tail_p0)

    def _process_layer(self, rows: np.ndarray, fresh: np.ndarray, cols: TraceColumns, inputs: _BatchInputs,
                       tail_hold: np.ndarray | None = None) -> list[Alarm]:
        """Run one layer's detectors on a batch and merge the batch into its slices' baselines.

        Args:
            rows: slice row of each trace in this layer, ``(n,)``.
            fresh: the trace's offset is new to its slice (replays are skipped), ``(n,)``.
            cols: the batch (alarm evidence reads latencies from it).
            inputs: the per-trace inputs of :meth:`_batch_inputs`.
            tail_hold: for the strata layer, traces whose coarser slices hold tail evidence (their
                stratum's latency histogram learns slowly, so the edges they watch stay put).

        Steps: sort by slice (:meth:`_segments`); baselines at batch start
        (:meth:`_baseline_at_start`); sorted per-trace events (:meth:`_layer_events`); increments
        of every detector column (:meth:`_increments`) and their CUSUMs; first crossings
        (:meth:`_first_crossings`); detector state carried to the next batch
        (:meth:`_carry_detector_state`); input-mix windows (:meth:`_input_mix_windows`); the baselines
        learn the batch (:meth:`_learn_baselines`).
        Returns the alarms, positions indexing ``cols``.
        """
        sg = self._segments(rows, fresh)
        if sg is None:
            return []
        stratified = inputs.tail_p0 is not None
        base = self._baseline_at_start(sg, stratified)
        ev = self._layer_events(sg, inputs, base, stratified)
        f = self.store.f
        s0 = np.concatenate([f["b_s"][sg.srow], f["g_su"][sg.srow], f["g_sd"][sg.srow]], axis=1)
        s = segmented_cusum(self._increments(sg, base, ev, inputs.tail_p0), sg.seg, sg.starts, s0)
        cp = ChangePoints(
            s,
            raw=np.concatenate([ev.events, ev.events, ev.raw, ev.raw], axis=1),
            cnt=np.concatenate([ev.valid, ev.valid, ev.values_valid, ev.values_valid], axis=1),
            seg=sg.seg, starts=sg.starts,
            carry_n=np.concatenate([f["b_n"][sg.srow], f["g_nu"][sg.srow], f["g_nd"][sg.srow]], axis=1),
            carry_k=np.concatenate([f["b_k"][sg.srow], f["g_xu"][sg.srow], f["g_xd"][sg.srow]], axis=1),
        )
        alarms, fired = self._first_crossings(cols, sg, base, s, cp)
        s_end = self._carry_detector_state(cols, sg, s, cp, fired)
        mix_counts, mix_alarms = self._input_mix_windows(sg, inputs.mix_codes, cols)
        alarms.extend(mix_alarms)
        self._learn_baselines(sg, base, ev, s_end, mix_counts, cols, tail_hold)
        return alarms

    def _segments(self, rows: np.ndarray, fresh: np.ndarray) -> _Segments | None:
        """Sort the layer's fresh traces by slice row (stable: batch order within a slice);
        ``None`` when every trace is a replay."""
        f = self.store.f
        if not fresh.all():
            idx = np.flatnonzero(fresh)
            if idx.size == 0:
                return None
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
        size = (ends - starts + 1).astype(np.float64)
        armed = f["count"][srow, 0] >= self.cfg.warmup_traces
        return _Segments(order, starts, ends, seg, srow, size, armed, f["i_open"][srow] > 0)

    def _baseline_at_start(self, sg: _Segments, stratified: bool) -> _LayerBaseline:
        """The segments' baselines at batch start: Bernoulli null rates (monitored orientation,
        guarded), the tail edges, Gaussian means and sds.

        Without stratified tails, a slice's tail events are measured against its own p95/p99
        edges, whose null rate is the histogram's tail mass above them.
        """
        cfg, f, srow, u = self.cfg, self.store.f, sg.srow, sg.u
        hist = f["hist"][srow]
        k95, k99 = tail_edges(hist)  # this slice's own p95/p99 bin edges (reported in incidents)
        p0 = f["b_rate"][srow].copy()
        if not stratified:  # tails against this slice's own edges: p0 is the tail mass above them
            tail = tail_mass(hist)
            p0[:, TAIL_P95] = tail[np.arange(u), k95]
            p0[:, TAIL_P99] = tail[np.arange(u), k99]
        # monitored direction: complement for "down" metrics
        p0[:, DOWN] = 1.0 - p0[:, DOWN]
        bw = np.maximum(f["b_w"][srow], 1.0)
        if not stratified:
            bw[:, [TAIL_P95, TAIL_P99]] = np.maximum(hist.sum(axis=1), 1.0)[:, None]
        p0g = guarded_rate(p0, bw, cfg.guard_z, bw)
        mu = f["g_mean"][srow]
        sd = np.sqrt(np.maximum(f["g_var"][srow], 1e-4))
        return _LayerBaseline(hist, k95, k99, p0, p0g, mu, sd)

    def _layer_events(self, sg: _Segments, inputs: _BatchInputs, base: _LayerBaseline,
                      stratified: bool) -> _LayerEvents:
        """The per-trace inputs in sorted order; without stratified tails, the tail events
        against each slice's own edges (missing while its histogram is cold)."""
        order, seg = sg.order, sg.seg
        xs = inputs.events[order]
        vb = inputs.events_valid[order]
        bs = inputs.latency_bins[order]
        if not stratified:
            xs[:, TAIL_P95] = bs >= base.k95[seg]
            xs[:, TAIL_P99] = bs >= base.k99[seg]
            warm = (base.hist.sum(axis=1) >= MIN_TAIL_WEIGHT)[seg]
            vb[:, TAIL_P95] = warm
            vb[:, TAIL_P99] = warm
        xs = np.where(vb, xs, 0.0)
        gs = inputs.values[order]
        valid = ~np.isnan(gs)
        return _LayerEvents(xs, vb, bs, gs, valid, np.where(valid, gs, 0.0))

    def _increments(self, sg: _Segments, base: _LayerBaseline, ev: _LayerEvents,
                    tail_p0: np.ndarray | None) -> np.ndarray:
        """Log-likelihood ratio increment of every detector column for every sorted trace,
        ``(n, N_DETECTOR_COLS)``; a missing event or value adds 0.

        Bernoulli: the event's LLR of ``rho * p0`` against the guarded ``p0`` for both tunings
        (stratified tails: against the trace's own stratum's null rate). Gaussian: the
        exponentially tilted increments, up and down, charged with the baseline mean's
        uncertainty (``guard_z / sqrt(weight)`` sd).
        """
        cfg, f, seg, srow = self.cfg, self.store.f, sg.seg, sg.srow
        vb = ev.valid
        hit = ev.events > 0
        incs = [bernoulli_llr(base.p0_guarded, rho) for rho in (cfg.rate_shift, cfg.rate_shift_large)]
        incb = np.concatenate([np.where(vb, np.where(hit, i1[seg], i0[seg]), 0.0) for i1, i0 in incs], axis=1)
        if tail_p0 is not None:  # tails: per-trace null rates of the trace's stratum
            for c, col in enumerate(TAIL_COLUMNS):
                p0t = tail_p0[sg.order, c]
                for b, rho in enumerate((cfg.rate_shift, cfg.rate_shift_large)):
                    on, off = bernoulli_llr(p0t, rho)
                    incb[:, b * N_BERNOULLI + col] = np.where(vb[:, col], np.where(hit[:, col], on, off), 0.0)
        d = cfg.mean_shift_sigma
        z = standardise(ev.values, ev.values_valid, base.mu[seg], base.sd[seg])
        # guard: the baseline mean is uncertain by ~1/sqrt(weight) sigma; charge it to the increment
        guard = (d * cfg.guard_z / np.sqrt(np.maximum(f["g_w"][srow], 1.0)))[seg]
        inc_up = tilted_increment(z, ev.values_valid, d, np.log(f["g_mgf_u"][srow])[seg], guard)
        inc_dn = tilted_increment(z, ev.values_valid, -d, np.log(f["g_mgf_d"][srow])[seg], guard)
        return np.concatenate([incb, inc_up, inc_dn], axis=1)

    def _first_crossings(self, cols: TraceColumns, sg: _Segments, base: _LayerBaseline, s: np.ndarray,
                         cp: ChangePoints) -> tuple[list[Alarm], np.ndarray]:
        """An :class:`Alarm` at the first trace where each armed slice's alarming column crosses
        the threshold; returns the alarms and which (segment, column) fired, ``(u, N_DETECTOR_COLS)``."""
        cfg, seg = self.cfg, sg.seg
        hits = (s > cfg.threshold) & sg.armed[seg][:, None] & ALARM_COLS[None, :]
        alarms: list[Alarm] = []
        fired = np.zeros((sg.u, N_DETECTOR_COLS), dtype=bool)
        if hits.any():
            hr, hc = np.nonzero(hits)
            # first hit per (segment, column): hr is sorted, so the first occurrence of each key
            keys = seg[hr] * N_DETECTOR_COLS + hc
            _, first = np.unique(keys, return_index=True)
            at, colx = hr[first], hc[first]
            n_since, k_since, cpos = cp.at(at, colx)
            cp_ms = self._cp_times(cols, sg, cpos, seg[at], colx)
            for j in range(len(at)):
                alarm = self._make_alarm(cols, int(at[j]), int(colx[j]), sg, base, float(s[at[j], colx[j]]),
                                         float(n_since[j]), float(k_since[j]), int(cpos[j]))
                alarm.cp_event_time_ms = int(cp_ms[j])
                alarms.append(alarm)
            fired[seg[at], colx] = True
        return alarms, fired

    def _cp_times(self, cols: TraceColumns, sg: _Segments, cpos: np.ndarray, segs: np.ndarray,
                  colx: np.ndarray) -> np.ndarray:
        """Trace event time (ms) of the change point of detector columns ``colx`` in segments
        ``segs`` (arrays of one shape), given ``cpos`` from :meth:`ChangePoints.at` (sorted row of
        the change point, -1 when it lies before the batch): the change point's own trace when it
        is in this batch, else the time carried in ``cp_ms`` from the batch that held it, else (the
        statistic left zero at the batch's first trace) the segment's first trace. Depends on the
        data only, not on where batches end (before, a change point in an earlier batch was
        reported at the batch's first trace: an incident's ``first_seen`` moved by seconds between
        two runs of one input through the worker)."""
        f, srow = self.store.f, sg.srow[segs]
        t_sorted = cols.event_time_ms[sg.order]
        carried = f["cp_ms"][srow, colx]
        carry_n = self._carried_n(srow, colx)
        first = t_sorted[sg.starts[segs]]
        at_cp = t_sorted[np.maximum(cpos, 0)]
        return np.where(cpos >= 0, at_cp, np.where((carry_n > 0) & (carried >= 0), carried, first))

    def _carried_n(self, srow: np.ndarray, colx: np.ndarray) -> np.ndarray:
        """Samples since the change point carried into this batch for (row, detector column) pairs."""
        f = self.store.f
        out = np.empty(len(srow))
        for (_, since_n, _), cols in STATE_COLS:
            lo, hi = cols.start, cols.stop
            m = (colx >= lo) & (colx < hi)
            out[m] = f[since_n][srow[m], colx[m] - lo]
        return out

    def _carry_detector_state(self, cols: TraceColumns, sg: _Segments, s: np.ndarray, cp: ChangePoints,
                              fired: np.ndarray) -> np.ndarray:
        """Store each slice's statistic, change-point counts and change-point time (``cp_ms``, see
        :meth:`_cp_times`) at its last trace; detectors that
        fired restart (the incident tracks the episode), unarmed ones stay at zero. Returns the
        statistics stored, ``(u, N_DETECTOR_COLS)``."""
        f, u = self.store.f, sg.u
        all_cols = np.tile(np.arange(N_DETECTOR_COLS), u)
        n_end, k_end, cp_end = cp.at(np.repeat(sg.ends, N_DETECTOR_COLS), all_cols)
        # the change points' trace times (before the carried counts are overwritten below)
        cp_ms = self._cp_times(cols, sg, cp_end, np.repeat(np.arange(u), N_DETECTOR_COLS), all_cols)
        n_end, k_end = n_end.reshape(u, N_DETECTOR_COLS), k_end.reshape(u, N_DETECTOR_COLS)
        s_end = s[sg.ends]
        reset = fired | ~sg.armed[:, None]
        s_end[reset] = 0.0
        n_end[reset] = 0.0
        k_end[reset] = 0.0
        f["cp_ms"][sg.srow] = np.where(reset | (s_end <= 0.0), -1.0, cp_ms.reshape(u, N_DETECTOR_COLS))
        for (stat, since_n, since_k), cols in STATE_COLS:
            f[stat][sg.srow] = s_end[:, cols]
            f[since_n][sg.srow] = n_end[:, cols]
            f[since_k][sg.srow] = k_end[:, cols]
        return s_end

    def _learn_baselines(self, sg: _Segments, base: _LayerBaseline, ev: _LayerEvents, s_end: np.ndarray,
                         mix_counts: np.ndarray, cols: TraceColumns, tail_hold: np.ndarray | None) -> None:
        """Merge the batch into the slices' EW baselines and advance their counters.

        Frozen per open incident group; learning slowed to ``HOLD_WEIGHT`` for a metric whose
        CUSUM holds evidence of a change (S > h/4), so a young slice does not absorb a regression
        before it is detected. Under the null P(S > h/4) ~ exp(-4.5). A Bernoulli rate is held only
        once its baseline rests on ``HOLD_MIN_EVENTS`` events or is a release's inherited prior: a
        rare rate estimated low from a few events converges instead.

        Other than a release's prior, once the samples since the CUSUM's change point ``n`` reach
        the baseline's EW weight ``w0``, a rate is held only while ``S * w0 / (w0 + n) > h/4``: the
        evidence discounted by the variance ratio of a rate tested against a known one and a
        difference of two estimated rates (the same W/(W+n) scaling as the two-sample input-mix test,
        :func:`~streams.processors.drift.mix.mix_test`; Agresti, *Categorical Data Analysis*, 3rd
        ed., 2013, sec. 3.1 on the variance of a difference of proportions). A one-sample CUSUM takes
        the baseline as exact; once the traffic since the change point outweighs the baseline, the
        baseline's own sampling error is the likelier cause of the evidence, and the hold ends. A
        slice whose baseline outweighs the traffic since the change point is held as before (a
        discount applied there too missed 1 of 5 ``release_policy_blocks_x4`` runs of bench-drift).
        Before, a young common rate estimated 25 % low after ~1,000 traces was held at its estimate
        while the slice's own traffic contradicted it (``retrieval_miss_rate rose from 0.07527 to
        0.1191 (2208 traces)``, synthetic truth 0.10, through the worker; BENCHMARKS.md). The hold
        is decided at batch ends (the statistic and counts at the batch's last trace of the slice).
        """
        cfg, st = self.cfg, self.store
        f, srow, starts, m, open_g = st.f, sg.srow, sg.starts, sg.size, sg.open_groups
        hold_at = cfg.threshold * HOLD_AT
        # a rate is held only once its baseline rests on HOLD_MIN_EVENTS events, or is a release's
        # inherited prior: a young slice's rate estimated low from a few events must converge, not
        # be locked in by the evidence its own error builds up (measured: fallback 0.0019 from 1
        # event in 537 traces, true 0.01, held from trace 1,100, alarm at 3,600)
        # (the latency tails are 5 % / 1 % by construction of their edges: always held, as before)
        prior = (f["born"][srow] >= cfg.warmup_traces) | TAIL_MASK
        enough = f["b_rate"][srow] * f["b_w"][srow] >= HOLD_MIN_EVENTS
        # ... and, once the traffic since the change point outweighs the baseline (n >= w0, w0 the
        # baseline's EW weight, n the samples since the change point), only while the evidence
        # discounted by the variance ratio w0 / (w0 + n) of a rate against a known one and a
        # difference of two estimated rates holds: the baseline's own error is then the likelier
        # cause, and it learns
        w0 = np.tile(f["b_w"][srow], 2)
        n_cp = f["b_n"][srow]
        evidence = s_end[:, BERNOULLI_COLS] > hold_at
        tested = evidence & ((n_cp < w0) | (s_end[:, BERNOULLI_COLS] * w0 / np.maximum(w0 + n_cp, 1e-12) > hold_at))
        held_b = ((evidence[:, :N_BERNOULLI] | evidence[:, N_BERNOULLI:]) & prior) \
            | ((tested[:, :N_BERNOULLI] | tested[:, N_BERNOULLI:]) & enough & ~prior)
        held_g = (s_end[:, GAUSSIAN_UP_COLS] > hold_at) | (s_end[:, GAUSSIAN_DOWN_COLS] > hold_at)
        scale_b = np.where(held_b, HOLD_WEIGHT, 1.0)
        scale_g = np.where(held_g, HOLD_WEIGHT, 1.0)
        lam_m = cfg.lam ** m  # (u,)
        wb = (1.0 - lam_m) / (1.0 - cfg.lam)  # EW weight of the batch's samples
        per = (wb / m)[:, None]
        # Bernoulli rates, learnt in the metric's own orientation
        vb, xs = ev.valid, ev.events
        sums_b = np.add.reduceat(np.where(vb, np.where(DOWN[None, :], 1.0 - xs, xs), 0.0), starts, axis=0)
        cnt_b = np.add.reduceat(vb.astype(np.float64), starts, axis=0)
        keep_b = open_g[:, BERNOULLI_GROUP] | (cnt_b == 0)
        new_b, bw_new = ew_rate_update(f["b_rate"][srow], f["b_w"][srow] * lam_m[:, None], sums_b, cnt_b, per, scale_b)
        f["b_rate"][srow] = np.where(keep_b, f["b_rate"][srow], new_b)
        f["b_w"][srow] = np.where(keep_b, f["b_w"][srow], bw_new)
        old_w = f["weight"][srow, 0]
        # Gaussian: weighted merge of EW (mean, var, log-MGF) with the batch's
        mean_old, var_old = f["g_mean"][srow], f["g_var"][srow]
        g = gaussian_update(ev.values, ev.values_valid, ev.raw, sg.seg, starts, mean_old, var_old,
                            f["g_w"][srow] * lam_m[:, None], f["g_mgf_u"][srow], f["g_mgf_d"][srow], per, scale_g,
                            cfg.mean_shift_sigma)
        keep_g = open_g[:, GAUSSIAN_GROUP] | (g.count == 0)
        f["g_mgf_u"][srow] = np.where(keep_g, f["g_mgf_u"][srow], g.mgf_up)
        f["g_mgf_d"][srow] = np.where(keep_g, f["g_mgf_d"][srow], g.mgf_down)
        f["g_mean"][srow] = np.where(keep_g, mean_old, g.mean)
        f["g_var"][srow] = np.where(keep_g, var_old, g.var)
        f["g_w"][srow] = np.where(keep_g, f["g_w"][srow], g.weight)
        # latency histogram and input mix
        hist = base.hist
        hb = np.zeros((sg.u, N_HIST))
        np.add.at(hb, (sg.seg, ev.latency_bins), 1.0)
        lat_frozen = open_g[:, BERNOULLI_GROUP[TAIL_P95]][:, None]
        lat_scale = np.minimum(scale_b[:, TAIL_P95], scale_b[:, TAIL_P99])
        if tail_hold is not None:  # strata whose tail edges coarser slices are watching
            lat_scale = np.where(np.maximum.reduceat(tail_hold[sg.order].astype(np.int8), starts) > 0, HOLD_WEIGHT,
                                 lat_scale)
        lat_scale = lat_scale[:, None]
        f["hist"][srow] = np.where(lat_frozen, hist, hist * lam_m[:, None] + hb * per * lat_scale)
        mix_frozen = open_g[:, INPUT_MIX_GROUP][:, None]
        f["c_base"][srow] = np.where(mix_frozen, f["c_base"][srow],
                                     f["c_base"][srow] * lam_m[:, None] + mix_counts * per)
        f["weight"][srow, 0] = old_w * lam_m + wb
        f["count"][srow, 0] += m
        f["own"][srow, 0] += m
        last_off = np.maximum.reduceat(cols.offset[sg.order], starts)
        f["last_offset"][srow, 0] = np.maximum(f["last_offset"][srow, 0], last_off)
        st.dirty.update(srow.tolist())

    def _make_alarm(self, cols: TraceColumns, at: int, col: int, sg: _Segments, base: _LayerBaseline, stat: float,
                    n_since: float, k_since: float, cp: int) -> Alarm:
        """The alarm of detector column ``col`` at sorted row ``at``: baseline and observed value
        since the change point in the metric's unit, with a 95% interval and the effect size."""
        cfg = self.cfg
        seg_i = int(sg.seg[at])
        row = int(sg.srow[seg_i])
        first = max(cp, int(sg.starts[seg_i]))  # first sorted row of this batch after the change point
        window = sg.order[first : at + 1]
        evidence = window[-cfg.evidence :].tolist()
        cp_pos = None if cp < 0 else int(sg.order[cp])
        n_s = max(n_since, 1.0)
        own_before = int(self.store.f["own"][row, 0])  # updated after the batch's alarms
        common = dict(row=row, pos=int(sg.order[at]), statistic=stat, threshold=cfg.threshold,
                      samples=int(n_since), evidence=evidence, cp_pos=cp_pos,
                      slice_index=own_before + at - int(sg.starts[seg_i]) + 1)
        bcol = col % N_BERNOULLI if col < N_BERNOULLI_COLS else -1
        if bcol in (TAIL_P95, TAIL_P99):
            # baseline quantile (bin edge, ms) vs the quantile observed since the change point, with
            # a distribution-free order-statistic CI (binomial ranks)
            metric = BERNOULLI[bcol]
            edge = float(HIST_EDGES_MS[int((base.k95 if bcol == TAIL_P95 else base.k99)[seg_i])])
            obs, lo, hi = quantile_interval(cols.latency_ms[window], metric.tail_quantile)
            return Alarm(metric=metric, baseline=edge, observed=obs, ci_low=lo, ci_high=hi,
                         effect=obs / max(edge, 1e-9), direction=+1, **common)
        if bcol >= 0:
            metric = BERNOULLI[bcol]
            rate = k_since / n_s
            lo, hi = wilson(k_since, n_s)
            b0 = float(base.p0[seg_i, bcol])
            if metric.direction < 0:  # back to the metric's own orientation (e.g. success rate)
                rate, lo, hi, b0 = 1 - rate, 1 - hi, 1 - lo, 1 - b0
            return Alarm(metric=metric, baseline=b0, observed=rate, ci_low=lo, ci_high=hi,
                         effect=rate / max(b0, 1e-9), direction=metric.direction, **common)
        gcol = (col - N_BERNOULLI_COLS) % N_GAUSSIAN
        metric = GAUSSIAN[gcol]
        mean_t = k_since / n_s
        sdv = float(base.sd[seg_i, gcol])
        se = sdv / math.sqrt(n_s)
        base_t = float(base.mu[seg_i, gcol])
        inv = metric.scale.from_scale
        return Alarm(metric=metric, baseline=inv(base_t), observed=inv(mean_t),
                     ci_low=inv(mean_t - 1.96 * se), ci_high=inv(mean_t + 1.96 * se),
                     effect=(mean_t - base_t) / max(sdv, 1e-9),
                     direction=+1 if col < N_BERNOULLI_COLS + N_GAUSSIAN else -1, **common)

    def _mix_category(self, bucket: int, cols: TraceColumns, rows: np.ndarray) -> str:
        """The input-mix category of ``bucket`` for an incident: the ``workflow/intent`` pairs of the
        slice's traces ``rows`` (batch positions) that hash to it
        (:func:`~streams.processors.drift.mix.input_mix_code`), else of any trace this engine has
        seen, e.g. ``"workflow/intent 'soap_note/inpatient'"``; several pairs sharing the bucket
        are joined with ``or``; ``"input-mix bucket 5"`` when none was seen since start-up."""
        cache = self._mix_code_cache
        pairs = {(cols.workflow[p], cols.intent[p]) for p in rows.tolist()}
        names = sorted(f"{w}/{i}" if i else w for w, i in pairs if cache[(w, i)] == bucket) or \
            sorted(f"{w}/{i}" if i else w for (w, i), code in cache.items() if code == bucket)
        if not names:
            return f"input-mix bucket {bucket}"
        return "workflow/intent " + " or ".join(f"'{n}'" for n in names)

    def _input_mix_windows(self, sg: _Segments, mix_codes: np.ndarray,
                           cols: TraceColumns) -> tuple[np.ndarray, list[Alarm]]:
        """Add the batch's input-mix buckets to the slices' tumbling windows; every window that
        reaches exactly ``cat_window`` traces of its slice is tested
        (:func:`~streams.processors.drift.mix.mix_test`, two-sample) against the traffic before
        it: the baseline mix at batch start less the window's own traces of earlier batches, plus
        the batch's windows closed before it (weight ~1 per trace, as the EW baseline learns them).
        The next window starts with the following trace.

        Window boundaries are counted in the slice's traces, so they do not depend on where
        batches end. A worker's batches depend on timing: before, a window was tested at the end
        of the batch that filled it (300-680 traces measured through the worker), and one
        tenant's input-mix incident was detected at trace w1-16201 in one run and w1-19986 in
        the next on the same input. A window is tested when its slice had ``warmup_traces``
        before the window's first trace (and a baseline mix). An alarm's figures are the shares
        of the category that moved most (:meth:`_mix_category`, named from ``cols``). An alarm's
        change point (``cp_event_time_ms``) is the event time of the first of the window's last
        ``evidence`` traces (its evidence), kept in ``c_win_ms`` once reached while the window spans batches
        (before, the first of those within the batch that closed the window: an incident's
        ``first_seen`` moved by 4.5 s between two runs of one input through the worker; the
        window's first trace instead lies up to 40 min before the change in a slice of 1/160 of the
        traffic). Returns the batch's counts per slice ``(u, N_CAT)`` and the alarms.
        """
        cfg, f = self.cfg, self.store.f
        codes = mix_codes[sg.order]
        t_sorted = cols.event_time_ms[sg.order]
        counts = np.zeros((sg.u, N_CAT))
        np.add.at(counts, (sg.seg, codes), 1.0)
        fill = f["c_win"][sg.srow].sum(axis=1)
        # the window's evidence starts at its trace number k0 (1-based): its time once reached
        k0 = max(cfg.cat_window - cfg.evidence + 1, 1)
        reach = (fill < k0) & (fill + sg.size >= k0)
        at_k0 = sg.starts + np.maximum(k0 - fill - 1, 0).astype(np.intp)
        f["c_win_ms"][sg.srow[reach], 0] = t_sorted[np.minimum(at_k0, sg.ends)[reach]]
        f["c_win_ms"][sg.srow[(fill < k0) & ~reach], 0] = -1.0  # not reached yet: none
        # traces of the batch that complete each open window (at least one: an older state may hold more)
        need = np.maximum(cfg.cat_window - fill, 1.0)
        closing = need <= sg.size
        f["c_win"][sg.srow[~closing]] += counts[~closing]
        alarms: list[Alarm] = []
        for j in np.flatnonzero(closing).tolist():
            row, a, e = int(sg.srow[j]), int(sg.starts[j]), int(sg.ends[j])
            win = f["c_win"][row].copy()
            win_ms = int(f["c_win_ms"][row, 0])
            # the baseline without the window's traces of earlier batches (learnt with EW weight ~1
            # each): the window is compared with the traffic before it, whatever the batches were
            frozen = sg.open_groups[j, INPUT_MIX_GROUP]
            base = f["c_base"][row] if frozen else np.maximum(f["c_base"][row] - win, 0.0)
            count0, own0 = float(f["count"][row, 0]), float(f["own"][row, 0])
            pos, close = a, a + int(need[j]) - 1
            while close <= e:
                win += np.bincount(codes[pos:close + 1], minlength=N_CAT)
                tot = float(win.sum())
                if count0 + (close - a + 1) - cfg.cat_window >= cfg.warmup_traces and base.sum() > 0:
                    t = mix_test(win, tot, base, two_sample=True)
                    if t.rejects(cfg.cat_alpha, cfg.cat_min_js):
                        # the figures say what moved: the category's share of the baseline and of
                        # the window (Wald 95 % interval of the window's share), the JS divergence as effect
                        half = 1.96 * math.sqrt(t.share_window * (1.0 - t.share_window) / tot)
                        alarms.append(Alarm(row=row, metric=CATEGORICAL[0], pos=int(sg.order[close]), statistic=t.x2,
                                            slice_index=int(own0 + close - a + 1),
                                            threshold=chi2_threshold(cfg.cat_alpha),
                                            baseline=t.share_baseline, observed=t.share_window,
                                            ci_low=max(t.share_window - half, 0.0),
                                            ci_high=min(t.share_window + half, 1.0), effect=t.js,
                                            samples=int(tot), direction=0,
                                            evidence=sg.order[max(a, close - cfg.evidence + 1): close + 1].tolist(),
                                            category=self._mix_category(t.bucket, cols, sg.order[a:e + 1]),
                                            cp_event_time_ms=win_ms))
                if not frozen:  # the next window of this batch is compared with this one too
                    base = base + win
                win = np.zeros(N_CAT)
                pos, close = close + 1, close + cfg.cat_window
                win_ms = int(t_sorted[pos + k0 - 1]) if pos + k0 - 1 <= e else -1
            f["c_win"][row] = win + np.bincount(codes[pos:e + 1], minlength=N_CAT)
            f["c_win_ms"][row, 0] = win_ms
        return counts, alarms
