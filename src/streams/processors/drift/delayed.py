"""The label-delayed metrics: feedback counts (corrections, unsafe feedback) against the trace
exposure that had time to receive them.

Feedback is a *delayed label*: traces and their feedback are counted in event-time buckets of
the trace (a ring of ``N_BUCKETS`` per slice, :data:`streams.processors.baselines.FIELDS`
``pb_*``); as a bucket ages, the share of its eventual feedback that should have arrived (the
learned feedback-delay CDF, :class:`LagDistribution`) is credited as exposure against the
feedback received meanwhile, and each slice's Poisson CUSUMs take one step per call with that
exposure and those counts (J. M. Lucas, "Counted data CUSUM's", Technometrics 27(2), 1985;
:func:`~streams.processors.drift.families.poisson_cusum_step`). The clock is the lower of the
partition's trace and feedback watermarks, so the rate is right whatever order or speed the two
topics are consumed in.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

from streams.processors.baselines import N_BUCKETS, SliceStore
from streams.processors.columns import TraceColumns
from streams.processors.drift.base import HOLD_AT, HOLD_WEIGHT, Alarm, DriftConfig
from streams.processors.drift.families import (
    MIN_POISSON_EVENTS,
    guarded_poisson_rate,
    poisson_cusum_step,
    poisson_rate_interval,
)
from streams.processors.metrics import N_POISSON, POISSON, POISSON_GROUP


class DelayedMetrics:
    """The Poisson detectors of every slice of a store, fed by trace batches and feedback batches.

    Args:
        cfg: detector settings (threshold, rate shift, feedback maturity, ...).
        store: the slice store (its ``pb_*`` bucket rings and ``p_*`` baselines and statistics).
    """

    def __init__(self, cfg: DriftConfig, store: SliceStore) -> None:
        self.cfg = cfg
        self.store = store
        #: per partition: latest trace / feedback event time seen (ms), the label-maturity clock
        self.trace_wm: dict[int, int] = {}
        self.feedback_wm: dict[int, int] = {}
        #: recent corrected traces per slice key (evidence for correction incidents)
        self.evidence: dict[str, list[tuple[str, int]]] = {}
        self.late_feedback = 0
        self.discarded_buckets = 0
        self.lag = LagDistribution()
        self._ln_rho = math.log(cfg.rate_shift)

    def add_traces(self, cols: TraceColumns, rows_by_layer: dict[str, np.ndarray],
                   fresh: dict[str, np.ndarray]) -> list[Alarm]:
        """Advance the trace watermarks, mature due buckets (freeing their ring slots), then count
        the batch's fresh traces in their event-time buckets of every layer's slice. Returns the
        Poisson alarms of the matured buckets."""
        for p in np.unique(cols.partition).tolist():
            t = int(cols.event_time_ms[cols.partition == p].max())
            self.trace_wm[p] = max(self.trace_wm.get(p, -1), t)
        alarms = self.mature()
        bucket = cols.event_time_ms // self.cfg.bucket_ms
        for layer in self.cfg.layers:
            ok = fresh[layer]
            self._bucket_add(rows_by_layer[layer][ok], bucket[ok], None)
        return alarms

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
                    f["pb_k"][row, slot * N_POISSON : (slot + 1) * N_POISSON] = 0.0
                    f["pb_kc"][row, slot * N_POISSON : (slot + 1) * N_POISSON] = 0.0
                f["pb_n"][row, slot] += c
            return 0
        for row, b, j in zip(rows.tolist(), bucket.tolist(), metric_idx.tolist(), strict=True):
            slot = b % N_BUCKETS
            if f["pb_id"][row, slot] != b:
                late += 1  # its bucket retired (or was never seen): not counted, a safe undercount
                continue
            f["pb_k"][row, slot * N_POISSON + j] += 1.0
        return late

    def add_feedback(self, rows: np.ndarray, metric_idx: np.ndarray, trace_event_ms: np.ndarray,
                         trace_ids: Sequence[str], feedback_event_ms: dict[int, int],
                         lag_samples: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[Alarm]:
        """Count feedback events (corrections) in their traces' buckets, then credit exposure.

        Args:
            rows: slice row of each event, shape ``(k,)`` (one event per slice layer it counts in).
            metric_idx: Poisson metric index of each event (``metrics.POISSON_INDEX``).
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
                ev = self.evidence.setdefault(self.store.info[row].key, [])
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
        k_all = f["pb_k"][active_rows].reshape(len(active_rows), N_BUCKETS, N_POISSON)
        kc_all = f["pb_kc"][active_rows].reshape(len(active_rows), N_BUCKETS, N_POISSON)
        # events are credited together with their exposure: as they arrive once F is learned
        # (F credits the expected share), but only at maturity while F is still the fallback step
        credit = np.ones_like(cdf, dtype=bool) if self.lag.learned else cdf >= 1.0
        new_k = np.where(credit[:, :, None], k_all, kc_all)
        events = (new_k - kc_all).sum(axis=1)  # (R, N_POISSON)
        f["pb_f"][active_rows] = cdf
        f["pb_kc"][active_rows] = new_k.reshape(len(active_rows), N_BUCKETS * N_POISSON)
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
        ``events`` (R, N_POISSON); baselines learn from the same credited exposure and counts."""
        cfg, f = self.cfg, self.store.f
        rho, lnr = cfg.rate_shift, self._ln_rho
        lam_n = cfg.lam ** expo
        armed_slice = f["count"][rows, 0] >= cfg.warmup_traces
        out: list[Alarm] = []
        for j in range(N_POISSON):
            k = events[:, j]
            r0, r0g = guarded_poisson_rate(f["p_num"][rows, j], f["p_den"][rows, j], cfg.guard_z)
            armed = armed_slice & (f["p_num"][rows, j] >= MIN_POISSON_EVENTS)
            s_new = poisson_cusum_step(f["p_s"][rows, j], k, expo, r0g, rho, lnr)
            frozen = f["i_open"][rows, POISSON_GROUP[j]] > 0
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
                lo, hi = poisson_rate_interval(kk, n_exp)
                ev = self.evidence.get(self.store.info[row].key, [])
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
    Used to credit label-delayed exposure (:meth:`DelayedMetrics.mature`). With fewer than ``min_samples``
    learned delays the CDF is a step at the maturity.
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
