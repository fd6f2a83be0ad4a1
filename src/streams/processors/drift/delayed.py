"""The label-delayed metrics: feedback counts (corrections, unsafe feedback) against the trace
exposure that had time to receive them, for feedback delays from seconds to days.

**Method.** Feedback is a *delayed label*. The traces of each slice are counted in event-time
buckets of the *trace* (a ring of ``N_BUCKETS`` per slice, :data:`streams.processors.baselines.FIELDS`
``pb_*``); every feedback event is counted once, in its trace's bucket, whenever it arrives. At
feedback event time ``T`` a bucket of ``n`` traces spread over ``[lo, hi]`` has received, under
the baseline rate ``r0``, ``r0 * n * G(T)`` events in expectation, where
``G(T) = mean over its traces of F(T - t)`` and ``F`` is the feedback-delay CDF learned per tenant x
workflow (:class:`DelayModel`): the delayed-feedback model of O. Chapelle, "Modeling delayed
feedback in display advertising", KDD 2014, where a conversion seen so far is compared with
the rate times the probability that it has had time to arrive. Each bucket's log-likelihood ratio
of "rate ``rho * r0``" against ``r0`` given what it received so far is the Poisson one,
``L_b = k_b ln(rho) - (rho - 1) r0 n_b G_b(T)`` (J. M. Lucas, "Counted data CUSUM's",
Technometrics 27(2), 1985), and the detector is Page's CUSUM over the buckets *in trace-time
order* evaluated at ``T``: ``S = max over tau <= j of sum_{tau..j} L_b``. For a fixed ``tau`` the
sum is the log of a likelihood-ratio martingale in ``T`` (events arrive as a Poisson process of
intensity ``r0 n F'``), so each of the tests it runs stays under Ville's inequality and the CUSUM
keeps Lorden's bound on its false-alarm rate (G. Lorden, Ann. Math. Statist. 42(6), 1971) as the
trace-driven CUSUMs do. The change point ``tau`` is a bucket of *trace* time, so the alarm reports
when the corrected traces ran and which release served them.

**Why it is a state function.** The statistic is recomputed from the buckets' counts at ``T``,
never accumulated per call, so it does not depend on how feedback batches interleave with trace
batches. It is evaluated once per *tick* (``DriftConfig.bucket_ms`` of feedback event time) in
which feedback arrived, after every event of the tick and before any later one: a batch is split
at tick boundaries, the events of the last tick wait for the next batch that passes it. Between
ticks without feedback every ``L_b`` only falls, so no alarm is missed. The feedback of one tick
is complete when a later one arrives (feedback is consumed in event-time order per partition) and
the worker's join lets feedback through only after the traces up to its event time
(:mod:`streams.worker.join_wait`), so the input of every evaluation is fixed by the data. The
delay CDF learns on a grid (``LEARN_EVERY_MS``) of the same clock, for the same reason; it
learns every delay below 7 days from a bounded aggregate (:class:`DelayCDF`) and is persisted per
tenant with the slice rows (:class:`DelayModel`), so a restart does not relearn it. A ring
holds a slice's traces only up to its partition's evaluated clock: traces of later ticks are
*held* in the row's ``pa_n`` counts (``baselines.N_AHEAD`` ticks) and admitted in tick order when
the clock reaches them (:meth:`DelayedMetrics._admit`), so which buckets merge when the ring is
full depends on the data up to the clock, not on how far the trace consumer ran ahead of the
feedback (it did before: 2-3 of 6 timed runs gave a different list of incidents on a second
schedule; BENCHMARKS.md). What is left to chance: a trace more than ``N_AHEAD`` ticks ahead of
its slice's admitted tick admits the oldest held ticks early (counted ``admitted_ahead``), and
traces that arrive after their tick was admitted (out of event-time order) go into the ring when
they come.

**Bounded memory, nothing dropped.** A bucket whose traces are all past the delay distribution
(``G >= FOLD_AT``) is *folded*: its ``L_b`` goes into the folded CUSUM ``p_s`` (Page's recursion)
and its counts into the EW baseline ``p_num / p_den``. A fold is final, so it needs a delay
distribution the data supports at the bucket's age: the learned ``F`` is estimated from
right-truncated delays, conditional on the delay being below the oldest trace age it has
watched (:meth:`DelayCDF.support_ms`; beyond it nothing is identifiable), so a bucket folds only
once that age is ``SUPPORT_FACTOR`` x its youngest trace's age. Before a tenant's ``F`` is learned
the maturity step folds under the same condition, and only while no learned delay exceeds the
maturity; once one does (the step is refuted) the buckets wait, unused and unfolded, for ``F``.
Measured (``test_feedback_slower_than_the_maturity_is_not_folded_away``, the demo's clinicians:
log-normal, median 20 min, p99 3 h, over 6 h): 47 % of the feedback came after its bucket had
folded when the step folded every bucket 5 minutes after its traces and the early ``F``
(truncated at the run's age) folded the rest too soon; now 0. A ring that is full *coarsens*: the two
adjacent buckets whose merged width is smallest relative to their age merge, so resolution is
relative to age as in an exponential histogram (M. Datar et al., "Maintaining stream statistics
over sliding windows", SIAM J. Comput. 31(6), 2002): days of delay fit in 32 slots. An event for a folded
bucket is *late*: counted in the baseline (its exposure was credited in full at the fold), not in
the CUSUM (that would count its share twice). An event whose trace has no bucket in the slice
(traces from before a restart whose ring was not persisted, say) is *unmatched*, counted the
same way. :attr:`DelayedMetrics.counters` holds every count; the identity
``events = live + folded + late + unmatched`` is checked by tests.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streams.processors.baselines import N_AHEAD, N_BUCKETS, SliceStore
from streams.processors.columns import TraceColumns
from streams.processors.drift.base import HOLD_AT, HOLD_WEIGHT, Alarm, DriftConfig
from streams.processors.drift.families import MIN_POISSON_EVENTS, guarded_poisson_rate, poisson_rate_interval
from streams.processors.metrics import N_POISSON, POISSON, POISSON_GROUP

#: a bucket folds once this share of its traces' feedback is due (``G >= FOLD_AT``)
FOLD_AT = 0.999
#: the delay CDF learns on a grid of feedback event time (ms): each scan of its queue is O(queue)
LEARN_EVERY_MS = 300_000
#: a bucket folds only when the learned delay distribution has watched traces this many times
#: older than the bucket's youngest trace (its estimate is conditional on the delays it could see)
SUPPORT_FACTOR = 2.0


@dataclass(slots=True)
class _Ring:
    """The live buckets of some rows at clock ``T``, slots sorted by trace time (empty last).

    Every array is ``(R, N_BUCKETS)`` (``k``: ``(R, N_BUCKETS, N_POISSON)``); ``slot`` maps a
    sorted position back to the ring slot.
    """

    slot: np.ndarray
    live: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray
    k: np.ndarray
    g: np.ndarray
    usable: np.ndarray
    foldable: np.ndarray


class DelayedMetrics:
    """The Poisson detectors of every slice of a store, fed by trace batches and feedback batches.

    Args:
        cfg: detector settings (threshold, rate shift, feedback maturity = the delay assumed
            until a tenant's delay distribution is learned, tick ``bucket_ms``).
        store: the slice store (its ``pb_*`` bucket rings and ``p_*`` baselines and statistics).
    """

    def __init__(self, cfg: DriftConfig, store: SliceStore) -> None:
        self.cfg = cfg
        self.store = store
        #: per partition: latest trace / feedback event time seen (ms)
        self.trace_wm: dict[int, int] = {}
        self.feedback_wm: dict[int, int] = {}
        #: per partition: tick (feedback ms // bucket_ms) whose events were counted and not yet
        #: evaluated, the slice keys they touched, and the latest feedback time in it (ms)
        self._pending_tick: dict[int, int] = {}
        self._pending_rows: dict[int, set[str]] = {}
        self._pending_at: dict[int, int] = {}
        #: per partition: feedback event time of the last evaluation (ms), and the grid point
        #: (``LEARN_EVERY_MS``) up to which the delay CDF has learned
        self.clock: dict[int, int] = {}
        self._learned_at: dict[int, int] = {}
        #: recent corrected traces per slice key (evidence for correction incidents)
        self.evidence: dict[str, list[tuple[str, int]]] = {}
        #: every feedback event, by fate (stats line): counted in a live bucket, folded with its
        #: bucket, late (its bucket had folded), unmatched (no bucket); buckets folded / coarsened
        self.counters = {"feedback_events": 0, "late_feedback": 0, "unmatched_feedback": 0,
                         "folded_feedback": 0, "folded_buckets": 0, "coarsened_buckets": 0,
                         "admitted_ahead": 0}
        self.delays = DelayModel()
        #: ``(partition, clock ms, alarms)`` after every evaluation tick, before the next one: the
        #: incidents take the tick's alarms and resolve on the feedback clock there (``Pipeline``)
        self.tick_hook: Callable[[int, int, list[Alarm]], None] | None = None
        self._ln_rho = math.log(cfg.rate_shift)

    # ------------------------------------------------------------------ compatibility figures
    @property
    def late_feedback(self) -> int:
        """Feedback events whose bucket had folded (counted in the baseline, not the CUSUM)."""
        return self.counters["late_feedback"]

    # ------------------------------------------------------------------ traces
    def add_traces(self, cols: TraceColumns, rows_by_layer: dict[str, np.ndarray],
                   fresh: dict[str, np.ndarray]) -> list[Alarm]:
        """Advance the trace watermarks and count the batch's fresh traces in the event-time
        buckets of every layer's slice (folding or coarsening a full ring first). Traces never
        raise an alarm: the statistic only rises with feedback. Returns ``[]``."""
        for p in np.unique(cols.partition).tolist():
            t = int(cols.event_time_ms[cols.partition == p].max())
            self.trace_wm[p] = max(self.trace_wm.get(p, -1), t)
        w = self.cfg.bucket_ms
        bucket = cols.event_time_ms // w
        t_ms = cols.event_time_ms
        f = self.store.f
        for layer in self.cfg.layers:
            ok = fresh[layer]
            rows = rows_by_layer[layer][ok]
            if not len(rows):
                continue
            b, t = bucket[ok], t_ms[ok]
            self._admit_to_clock(np.unique(rows))
            now = b <= f["pa_tick"][rows, 0]
            self._count_traces(rows[now], b[now], t[now])
            if not now.all():
                self._hold(rows[~now], b[~now], t[~now])
        return []

    def _admit_to_clock(self, rows: np.ndarray) -> None:
        """Admit the rows' held traces up to their partition's evaluated clock (a row is admitted
        to a tick lazily, when its traces or feedback come; the ring is the same as if at once)."""
        f, w = self.store.f, self.cfg.bucket_ms
        parts = f["partition"][rows, 0].astype(np.int64)
        tick = np.array([self.clock[p] // w if p in self.clock else -1 for p in parts.tolist()], dtype=np.int64)
        behind = tick > f["pa_tick"][rows, 0]
        for row, tk in zip(rows[behind].tolist(), tick[behind].tolist(), strict=True):
            self._admit(row, tk)

    def _hold(self, rows: np.ndarray, bucket: np.ndarray, t_ms: np.ndarray) -> None:
        """Hold traces of ticks after their row's admitted tick out of the ring: ``pa_n[i]``
        counts the row's traces of tick ``pa_tick + 1 + i``.

        The ring then holds a slice's traces only up to its partition's feedback clock, so which
        buckets merge when it is full depends on the data up to that clock, never on how far the
        trace consumer has run ahead of the feedback. A trace more than ``baselines.N_AHEAD`` ticks
        ahead first admits the row's oldest held ticks (counted ``admitted_ahead`` when they hold
        traces: from there its ring can depend on the read order). A row that never held or
        admitted anything starts its window at its earliest trace of the batch."""
        f = self.store.f
        fresh = f["pa_tick"][rows, 0] < 0
        if fresh.any():
            first = np.full(self.store.n, np.iinfo(np.int64).max)
            np.minimum.at(first, rows[fresh], bucket[fresh])
            new_rows = np.unique(rows[fresh])
            f["pa_tick"][new_rows, 0] = first[new_rows] - 1
        off = bucket - f["pa_tick"][rows, 0].astype(np.int64) - 1
        beyond = off >= N_AHEAD
        if beyond.any():
            last = np.full(self.store.n, -1, dtype=np.int64)
            np.maximum.at(last, rows[beyond], bucket[beyond])
            for row in np.unique(rows[beyond]).tolist():
                self._admit(row, int(last[row]) - N_AHEAD, early=True)
            off = bucket - f["pa_tick"][rows, 0].astype(np.int64) - 1
        late = off < 0  # the row was admitted past these ticks meanwhile
        if late.any():
            self._count_traces(rows[late], bucket[late], t_ms[late])
        ok = ~late
        np.add.at(f["pa_n"], (rows[ok], off[ok]), 1.0)
        self.store.dirty.update(np.unique(rows).tolist())

    def _admit(self, row: int, tick: int, early: bool = False) -> None:
        """Move ``row``'s held traces of ticks up to ``tick`` into its ring, oldest first (their
        trace-time range is their tick's), and admit its later traces up to ``tick`` straight to
        the ring. ``early``: admitted before the feedback clock reached ``tick`` (counted)."""
        f, w = self.store.f, self.cfg.bucket_ms
        start = int(f["pa_tick"][row, 0])
        if start >= tick:
            return
        k = min(tick - start, N_AHEAD)
        held = f["pa_n"][row]
        due = np.flatnonzero(held[:k] > 0)
        if early:
            self.counters["admitted_ahead"] += int(due.size)
        for i in due.tolist():
            b = start + 1 + i
            slot = self._slot_of(row, b)
            if slot < 0:
                slot = self._new_slot(row, b)
            f["pb_n"][row, slot] += held[i]
            f["pb_lo"][row, slot] = min(f["pb_lo"][row, slot], float(b * w))
            f["pb_hi"][row, slot] = max(f["pb_hi"][row, slot], float((b + 1) * w - 1))
        held[: N_AHEAD - k] = held[k:].copy()
        held[N_AHEAD - k:] = 0.0
        f["pa_tick"][row, 0] = tick
        self.store.dirty.add(row)

    def _count_traces(self, rows: np.ndarray, bucket: np.ndarray, t_ms: np.ndarray) -> None:
        """Add traces to their (row, bucket): ``n`` and the bucket's trace-time range."""
        if not len(rows):
            return
        f = self.store.f
        key = rows.astype(np.int64) * (1 << 40) + bucket.astype(np.int64)
        uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
        lo = np.full(len(uniq), np.inf)
        hi = np.full(len(uniq), -np.inf)
        np.minimum.at(lo, inv, t_ms.astype(np.float64))
        np.maximum.at(hi, inv, t_ms.astype(np.float64))
        for i, (kv, c) in enumerate(zip(uniq.tolist(), counts.tolist(), strict=True)):
            row, b = kv >> 40, kv & ((1 << 40) - 1)
            slot = self._slot_of(row, b)
            if slot < 0:
                slot = self._new_slot(row, b)
            f["pb_n"][row, slot] += c
            f["pb_lo"][row, slot] = min(f["pb_lo"][row, slot], lo[i])
            f["pb_hi"][row, slot] = max(f["pb_hi"][row, slot], hi[i])

    def _slot_of(self, row: int, b: int) -> int:
        """Ring slot of ``row`` whose bucket covers tick bucket ``b``, or -1."""
        f = self.store.f
        ids, span = f["pb_id"][row], f["pb_span"][row]
        hit = np.flatnonzero((ids >= 0) & (ids <= b) & (b < ids + span))
        return int(hit[0]) if hit.size else -1

    def _new_slot(self, row: int, b: int) -> int:
        """A free slot for bucket ``b`` of ``row``; a full ring coarsens until a quarter of it is
        free (buckets fold only at evaluations, so the state does not depend on when traces come)."""
        f = self.store.f
        free = np.flatnonzero(f["pb_id"][row] < 0)
        if not free.size:
            while free.size < N_BUCKETS // 4:
                self._coarsen(row)
                free = np.flatnonzero(f["pb_id"][row] < 0)
        s = int(free[0])
        f["pb_id"][row, s] = b
        f["pb_span"][row, s] = 1.0
        f["pb_n"][row, s] = 0.0
        f["pb_lo"][row, s] = np.inf
        f["pb_hi"][row, s] = -np.inf
        f["pb_k"][row, s * N_POISSON : (s + 1) * N_POISSON] = 0.0
        return s

    def _coarsen(self, row: int) -> None:
        """Merge the two adjacent buckets (in trace time) whose merged width is smallest relative
        to their age (time from the pair's newest trace to the row's newest): old buckets widen
        first and each keeps about the same relative resolution, width / age, so the ring holds
        a few buckets per doubling of age (an exponential histogram)."""
        f = self.store.f
        ids, span = f["pb_id"][row], f["pb_span"][row]
        live = np.flatnonzero(ids >= 0)
        order = live[np.argsort(ids[live], kind="stable")]
        end = ids[order] + span[order]
        newest = end[-1]
        width = end[1:] - ids[order][:-1]  # tick buckets the merged pair would cover
        age = np.maximum(newest - end[1:], 1.0)
        a = int(np.argmin(width / age))
        keep, s = int(order[a]), int(order[a + 1])
        f["pb_n"][row, keep] += f["pb_n"][row, s]
        f["pb_lo"][row, keep] = min(f["pb_lo"][row, keep], f["pb_lo"][row, s])
        f["pb_hi"][row, keep] = max(f["pb_hi"][row, keep], f["pb_hi"][row, s])
        f["pb_k"][row, keep * N_POISSON : (keep + 1) * N_POISSON] += f["pb_k"][row, s * N_POISSON : (s + 1) * N_POISSON]
        f["pb_span"][row, keep] = ids[s] + span[s] - ids[keep]
        f["pb_id"][row, s] = -1.0
        f["pb_k"][row, s * N_POISSON : (s + 1) * N_POISSON] = 0.0
        f["pb_n"][row, s] = 0.0
        self.counters["coarsened_buckets"] += 1
        self.store.dirty.add(row)

    # ------------------------------------------------------------------ feedback
    def add_feedback(self, rows: np.ndarray, metric_idx: np.ndarray, trace_event_ms: np.ndarray,
                     trace_ids: Sequence[str], feedback_event_ms: dict[int, int],
                     lag_samples: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                     feedback_ms: np.ndarray | None = None,
                     lag_keys: Sequence[tuple[str, str]] | None = None) -> list[Alarm]:
        """Count feedback events in their traces' buckets, tick by tick of feedback event time,
        and evaluate every tick that is complete (see the module docstring).

        Args:
            rows: slice row of each event, shape ``(k,)`` (one event per slice layer it counts in).
            metric_idx: Poisson metric index of each event (``metrics.POISSON_INDEX``), ``(k,)``.
            trace_event_ms: event time of the trace each event refers to, ms, ``(k,)``.
            trace_ids: the trace id of each event (evidence).
            feedback_event_ms: per trace partition, the latest feedback event time of the batch, ms
                (feedback up to it has been consumed).
            lag_samples: ``(trace event ms, partition, delay ms)`` arrays, one entry per distinct
                feedback: the delay distribution learns from them (:class:`DelayModel`).
            feedback_ms: feedback event time of each event, ms, ``(k,)``; ``None``: the batch's
                watermark of the event's partition.
            lag_keys: ``(tenant, workflow)`` of each lag sample; ``None``: learned for no key.

        Returns the alarms of the evaluated ticks.
        """
        f = self.store.f
        rows = np.asarray(rows, dtype=np.int64)
        if lag_samples is not None and len(lag_samples[0]) and lag_keys is not None:
            self.delays.observe(lag_keys, *lag_samples)
        for p, t in feedback_event_ms.items():
            self.feedback_wm[p] = max(self.feedback_wm.get(p, -1), int(t))
        t_tr = np.asarray(trace_event_ms, dtype=np.int64)
        parts = f["partition"][rows, 0].astype(np.int64) if len(rows) else np.zeros(0, np.int64)
        if feedback_ms is None:
            fb = np.array([self.feedback_wm.get(int(p), 0) for p in parts.tolist()], dtype=np.int64)
        else:
            fb = np.asarray(feedback_ms, dtype=np.int64)
        for p in np.unique(parts).tolist():  # events are feedback up to their own time
            self.feedback_wm[p] = max(self.feedback_wm.get(p, -1), int(fb[parts == p].max()))
        alarms: list[Alarm] = []
        w = self.cfg.bucket_ms
        metric_idx = np.asarray(metric_idx, dtype=np.int64)
        for p in np.unique(parts).tolist():
            sel = np.flatnonzero(parts == p)
            sel = sel[np.argsort(fb[sel], kind="stable")]
            tick = fb[sel] // w
            if p in self.clock:  # at or before the last evaluation (out of order): the next tick
                tick = np.maximum(tick, self.clock[p] // w + 1)
            cuts = np.flatnonzero(np.diff(tick)) + 1
            for grp in np.split(np.arange(len(sel)), cuts):
                idx = sel[grp]
                tk = int(tick[grp[0]])
                pend = self._pending_tick.get(p)
                if pend is not None and tk > pend:
                    alarms += self._tick(p)
                self._pending_tick[p] = tk
                info = self.store.info
                self._pending_rows.setdefault(p, set()).update(info[r].key for r in set(rows[idx].tolist()))
                self._pending_at[p] = max(self._pending_at.get(p, -1), int(fb[idx].max()))
                for row in np.unique(rows[idx]).tolist():  # the ring holds every trace up to the tick
                    self._admit(row, tk)
                self._count_events(rows[idx], metric_idx[idx], t_tr[idx], w)
        keys = [self.store.info[r].key for r in rows.tolist()]
        for key, tid, t in zip(keys, trace_ids, t_tr.tolist(), strict=True):
            ev = self.evidence.setdefault(key, [])
            ev.append((tid, int(t)))
            if len(ev) > 2 * self.cfg.evidence:
                del ev[: len(ev) - self.cfg.evidence]
        for p in list(self._pending_tick):  # a tick is complete once feedback past its end is read
            if self.feedback_wm.get(p, -1) >= (self._pending_tick[p] + 1) * w:
                alarms += self._tick(p)
        return alarms

    def _count_events(self, rows: np.ndarray, j: np.ndarray, t_ms: np.ndarray, w: int) -> None:
        """Count events (row, metric ``j``, trace ms) in their traces' live buckets; the others as
        late (the trace's bucket had folded) or unmatched, in the baseline only (not while the
        group has an incident open)."""
        f = self.store.f
        self.counters["feedback_events"] += len(rows)
        b = (t_ms // w)[:, None]
        ids, span = f["pb_id"][rows], f["pb_span"][rows]
        match = (ids >= 0) & (ids <= b) & (b < ids + span)
        has = match.any(axis=1)
        slot = match.argmax(axis=1)
        np.add.at(f["pb_k"], (rows[has], slot[has] * N_POISSON + j[has]), 1.0)
        miss = ~has
        if miss.any():
            r, jj = rows[miss], j[miss]
            late = t_ms[miss] <= f["p_fold_ms"][r, 0]
            self.counters["late_feedback"] += int(late.sum())
            self.counters["unmatched_feedback"] += int((~late).sum())
            ok = f["i_open"][r, POISSON_GROUP[jj]] == 0
            np.add.at(f["p_num"], (r[ok], jj[ok]), 1.0)
            self.store.dirty.update(r.tolist())

    def _tick(self, p: int) -> list[Alarm]:
        """Evaluate partition ``p``'s pending tick; its alarms go to :attr:`tick_hook` when set
        (then ``[]`` is returned), else back to the caller."""
        alarms = self._evaluate_pending(p)
        if self.tick_hook is None:
            return alarms
        self.tick_hook(p, self.clock[p], alarms)
        return []

    def _evaluate_pending(self, p: int) -> list[Alarm]:
        """Evaluate partition ``p``'s pending tick at its latest feedback time."""
        at = self._pending_at.pop(p)
        index = self.store.index  # keys, not rows: a rebalance renumbers rows
        rows = np.array(sorted(index[k] for k in self._pending_rows.pop(p, set()) if k in index), dtype=np.int64)
        self._pending_tick.pop(p, None)
        self.clock[p] = max(self.clock.get(p, -1), at)
        # the delay CDF learns what is observable at a grid point of this clock, so what it knows
        # at an evaluation depends on event times only, not on where feedback batches end
        grid = (self.clock[p] // LEARN_EVERY_MS) * LEARN_EVERY_MS
        if grid > self._learned_at.get(p, -1):
            self._learned_at[p] = grid
            self.delays.release(dict(self._learned_at), partition=p)
        return self._evaluate(rows, self.clock[p], alarms=True)

    # ------------------------------------------------------------------ evaluation
    def _ring(self, rows: np.ndarray, clock_ms: float) -> _Ring:
        """The rows' live buckets sorted by trace time, with ``G`` at ``clock_ms``."""
        f = self.store.f
        ids = f["pb_id"][rows]
        live0 = ids >= 0
        slot = np.argsort(np.where(live0, ids, np.inf), axis=1, kind="stable")
        take = np.take_along_axis
        live = take(live0, slot, axis=1)
        lo, hi = take(f["pb_lo"][rows], slot, axis=1), take(f["pb_hi"][rows], slot, axis=1)
        n = take(f["pb_n"][rows], slot, axis=1)
        k = f["pb_k"][rows].reshape(len(rows), N_BUCKETS, N_POISSON)
        k = take(k, slot[:, :, None], axis=1)
        g = np.zeros(lo.shape)
        learned = np.zeros(len(rows), dtype=bool)
        # age of a bucket's youngest trace up to which its row's delay estimate is supported (ms)
        support = np.zeros(len(rows))
        info = self.store.info
        maturity_ms = float(self.cfg.feedback_maturity_ms)
        models: list[DelayCDF | float] = []
        for r in rows.tolist():
            tenant, workflow = info[int(r)].tenant_id, info[int(r)].workflow
            m = self.delays.model_for(tenant, workflow)
            models.append(m if m is not None else self.delays.step_support_ms(tenant, maturity_ms))
        for m in {id(m): m for m in models}.values():
            sel = np.array([mm is m for mm in models])
            lo_s, hi_s = np.where(live[sel], lo[sel], 0.0), np.where(live[sel], hi[sel], 0.0)
            if isinstance(m, float) and m > 0:  # the maturity step, not refuted by the delays seen so far
                g[sel] = step_average(clock_ms - hi_s, clock_ms - lo_s, maturity_ms)
                support[sel] = m / SUPPORT_FACTOR
            elif isinstance(m, DelayCDF):
                g[sel] = m.average(clock_ms - hi_s, clock_ms - lo_s)
                learned[sel] = True
                support[sel] = m.support_ms() / SUPPORT_FACTOR
            # else the step is refuted and F not learned yet: the buckets wait (G = 0, no fold)
        g = np.where(live, g, 0.0)
        # with the maturity step (no learned F) a bucket counts only whole, events with exposure
        usable = live & (learned[:, None] | (g >= 1.0))
        foldable = live & (g >= FOLD_AT) & (clock_ms - hi <= support[:, None])
        return _Ring(slot, live, lo, hi, n, k, g, usable, foldable)

    def _evaluate(self, rows: np.ndarray, clock_ms: float, alarms: bool) -> list[Alarm]:
        """Page's CUSUM over the rows' folded state and live buckets at ``clock_ms``; alarms
        (when asked), then fold the buckets that are due. Vectorised over rows and metrics."""
        if rows.size == 0 or clock_ms < 0:
            return []
        cfg, f, st = self.cfg, self.store.f, self.store
        rg = self._ring(rows, clock_ms)
        R = len(rows)
        expo = rg.n * rg.g  # (R, B) exposure per unit rate
        after_reset = rg.live & (rg.hi >= f["p_reset_ms"][rows][:, :1])
        out: list[Alarm] = []
        fold = self._fold_mask(rg)
        n_live = int(rg.live.sum(axis=1).max())
        # the slices' traces up to the clock (those held for later ticks are not yet in the ring)
        admitted_count = f["count"][rows, 0] - f["pa_n"][rows].sum(axis=1)
        for j in range(N_POISSON):
            kj = rg.k[:, :, j]
            # baseline: folded EW counts plus live buckets before the previous evaluation's change point
            pre = rg.usable & (rg.hi < f["p_cp_ms"][rows, j][:, None])
            num = f["p_num"][rows, j] + np.where(pre, kj, 0.0).sum(axis=1)
            den = f["p_den"][rows, j] + np.where(pre, expo, 0.0).sum(axis=1)
            r0, r0g = guarded_poisson_rate(num, den, cfg.guard_z)
            armed = (admitted_count >= cfg.warmup_traces) & (num >= MIN_POISSON_EVENTS)
            use = rg.usable & after_reset
            llr = np.where(use, kj * self._ln_rho - (cfg.rate_shift - 1.0) * r0g[:, None] * expo, 0.0)
            s = f["p_s"][rows, j].copy()
            start = np.where(s > 0, -1, 0)  # sorted position where the current run starts (-1: folded part)
            best = s.copy()
            best_at = np.full(R, -1)
            best_start = np.full(R, -1)
            for b in range(n_live):  # sorted: live buckets first
                step = llr[:, b]
                on = use[:, b]
                s_new = np.maximum(s + step, 0.0)
                restart = on & (s + step <= 0.0)
                start = np.where(restart, b + 1, start)
                s = np.where(on, s_new, s)
                better = on & (s > best)
                best, best_at, best_start = (np.where(better, s, best), np.where(better, b, best_at),
                                             np.where(better, start, best_start))
            cp_ms = np.where(s > 0, _take_lo(rg.lo, start), np.inf)
            f["p_cp_ms"][rows, j] = np.where(s > cfg.threshold * HOLD_AT, cp_ms, np.inf)
            if alarms:
                for i in np.flatnonzero(armed & (best > cfg.threshold)).tolist():
                    a = self._alarm(int(rows[i]), j, rg, i, int(best_start[i]), int(best_at[i]), float(best[i]),
                                    float(r0[i]), expo[i], clock_ms)
                    if a is not None:
                        out.append(a)
                        # the incident tracks this episode: the detector restarts after its last bucket
                        f["p_s"][rows[i], j] = 0.0
                        f["p_n"][rows[i], j] = f["p_k"][rows[i], j] = f["p_t"][rows[i], j] = 0.0
                        end_ms = rg.hi[i, int(best_at[i])] if best_at[i] >= 0 else f["p_fold_ms"][rows[i], 0]
                        f["p_reset_ms"][rows[i], 0] = max(f["p_reset_ms"][rows[i], 0], end_ms + 1)
            self._fold(rows, j, rg, fold, llr, expo, after_reset)
        self._clear_folded(rows, rg, fold)
        st.dirty.update(rows.tolist())
        return out

    def _fold_mask(self, rg: _Ring) -> np.ndarray:
        """Buckets to fold: the oldest prefix of live buckets whose ``G >= FOLD_AT`` within the
        ages their delay estimate supports (:meth:`DelayCDF.support_ms`)."""
        due = rg.foldable
        return np.cumprod(due | ~rg.live, axis=1).astype(bool) & rg.live

    def _fold(self, rows: np.ndarray, j: int, rg: _Ring, fold: np.ndarray, llr: np.ndarray, expo: np.ndarray,
              after_reset: np.ndarray) -> None:
        """Fold the due buckets of metric ``j``: Page's recursion of the folded CUSUM and its
        since-change-point figures, and the EW baseline (frozen while the group has an incident
        open, slowed while the CUSUM holds evidence)."""
        cfg, f = self.cfg, self.store.f
        frozen = f["i_open"][rows, POISSON_GROUP[j]] > 0
        for b in range(N_BUCKETS):
            on = fold[:, b]
            if not on.any():
                break
            kb, eb, nb = rg.k[:, b, j], expo[:, b], rg.n[:, b]
            s0 = f["p_s"][rows, j]
            stepped = on & after_reset[:, b]
            s_new = np.maximum(s0 + llr[:, b], 0.0)
            zero = stepped & (s_new <= 0.0)
            f["p_s"][rows, j] = np.where(stepped, s_new, s0)
            for name, add in (("p_n", eb), ("p_k", kb), ("p_t", nb)):
                f[name][rows, j] = np.where(zero, 0.0, np.where(stepped, f[name][rows, j] + add, f[name][rows, j]))
            scale = np.where(f["p_s"][rows, j] > cfg.threshold * HOLD_AT, HOLD_WEIGHT, 1.0)
            lam_n = cfg.lam ** nb
            learn = on & ~frozen
            f["p_den"][rows, j] = np.where(learn, f["p_den"][rows, j] * lam_n + eb * scale, f["p_den"][rows, j])
            f["p_num"][rows, j] = np.where(learn, f["p_num"][rows, j] * lam_n + kb * scale, f["p_num"][rows, j])
            if j == 0:
                self.counters["folded_buckets"] += int(on.sum())
            self.counters["folded_feedback"] += int(kb[on].sum())

    def _clear_folded(self, rows: np.ndarray, rg: _Ring, fold: np.ndarray) -> None:
        """Free the folded slots and move the rows' folded boundary (later events for them are late)."""
        f = self.store.f
        rr, bb = np.nonzero(fold)
        if not rr.size:
            return
        slots = rg.slot[rr, bb]
        r = rows[rr]
        np.maximum.at(f["p_fold_ms"][:, 0], r, rg.hi[rr, bb])
        f["pb_id"][r, slots] = -1.0
        f["pb_n"][r, slots] = 0.0
        for j in range(N_POISSON):
            f["pb_k"][r, slots * N_POISSON + j] = 0.0

    def _alarm(self, row: int, j: int, rg: _Ring, i: int, start: int, end: int, stat: float, r0: float,
               expo: np.ndarray, clock_ms: float) -> Alarm | None:
        """The alarm of metric ``j`` on ``row``: the run of buckets ``start..end`` (``start`` -1:
        it began in the folded part), observed rate with its exact interval, change point in trace
        time. ``samples`` counts the slice's traces since the change point, ``slice_index`` all of
        its traces, so a release slice whose change began with it is recognised as its onset."""
        cfg, f = self.cfg, self.store.f
        b0 = max(start, 0)
        span = slice(b0, max(end + 1, b0))
        use = rg.usable[i, span]
        kk = float(np.where(use, rg.k[i, span, j], 0.0).sum())
        ee = float(np.where(use, expo[span], 0.0).sum())
        traces_since = float(np.where(rg.live[i, b0:], rg.n[i, b0:], 0.0).sum())
        if start < 0:
            kk += float(f["p_k"][row, j])
            ee += float(f["p_n"][row, j])
            traces_since += float(f["p_t"][row, j])
            cp_ms = None
        else:
            cp_ms = int(rg.lo[i, b0]) if np.isfinite(rg.lo[i, b0]) else None
        if kk <= 0 or ee <= 0:
            return None
        obs = kk / ee
        lo, hi = poisson_rate_interval(kk, ee)
        ev = self.evidence.get(self.store.info[row].key, [])
        if cp_ms is not None:
            ev = [e for e in ev if e[1] >= cp_ms] or ev
        ids_ = [tid for tid, _ in ev]
        own = f["own"][row, 0] - f["pa_n"][row].sum()  # its traces up to the clock (not those held)
        return Alarm(row=row, metric=POISSON[j], pos=-1, statistic=stat, threshold=cfg.threshold, baseline=r0,
                     observed=obs, ci_low=lo, ci_high=hi, effect=obs / max(r0, 1e-9), samples=int(traces_since),
                     direction=+1, slice_index=int(own), trace_id=ids_[-1] if ids_ else "",
                     event_time_ms=int(clock_ms), evidence_ids=ids_[-cfg.evidence:], cp_event_time_ms=cp_ms)

    def live_events(self) -> int:
        """Feedback events held in live buckets now (for the counting identity)."""
        return int(self.store.f["pb_k"][: self.store.n].sum())


def _take_lo(lo: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``lo[i, start[i]]`` (``-inf`` where the run starts in the folded part or past the ring)."""
    idx = np.clip(start, 0, lo.shape[1] - 1)
    v = np.take_along_axis(lo, idx[:, None], axis=1)[:, 0]
    return np.where((start < 0), -np.inf, np.where(start >= lo.shape[1], np.inf, v))


def step_average(age_lo_ms: np.ndarray, age_hi_ms: np.ndarray, maturity_ms: float) -> np.ndarray:
    """Share of a bucket's traces (ages uniform on ``[age_lo, age_hi]`` ms) at least ``maturity_ms``
    old: ``G`` under the step CDF used until a delay distribution is learned."""
    width = age_hi_ms - age_lo_ms
    frac = np.clip((age_hi_ms - maturity_ms) / np.maximum(width, 1e-9), 0.0, 1.0)
    return np.where(width > 0, frac, (age_lo_ms >= maturity_ms).astype(np.float64))


class DelayCDF:
    """One feedback-delay distribution, learned online from right-truncated observations.

    Delays are log-binned (``EDGES_MS``: 0, then 1 s to 7 days, 64 bins each 23.5 % wider than the
    last). A feedback is seen only once it has happened, so the recent traces show only their
    short delays; instead of waiting until every trace is 7 days old, the CDF is the product of
    *reverse-time hazards* (J. D. Kalbfleisch & J. F. Lawless, "Regression models for right
    truncated data with applications to AIDS incubation times and reporting lags", Statistica
    Sinica 1(1), 1991): ``F(e_j) = prod_{i >= j} q_i`` with ``q_i = P(D < e_i | D < e_{i+1})``, and
    ``q_i`` is estimated from the feedback of traces at least ``e_{i+1}`` old (for those, every
    delay below ``e_{i+1}`` has been observed). Bins with no such trace yet have ``q = 1`` (no
    mass), so early on ``F`` is optimistic: expected counts are too high, which delays detection
    but never fakes it; buckets must not fold on it, hence :meth:`support_ms`. Counts are EW
    (half-life ``half_life`` feedback).

    **The pending aggregate.** A delay is learned edge by edge as its trace ages past the bin
    edges, until the trace is 7 days old. Instead of one entry per delay, the delays waiting are
    counted per (trace partition, trace time *rounded up* to a grid, delay bin, last bin learned):
    a delay then counts no earlier than it really could, so the estimate stays the conditional
    one above (a trace counted later than it could be is still a trace whose delays below the
    edge have all been seen), only slightly later. The grid is a power of two of milliseconds, at
    most ``grid_share`` of the next edge the entry waits for and at least ``grid_floor_ms`` (below
    the learning grid ``LEARN_EVERY_MS``, which delays every edge that much anyway); powers of two
    nest, so an entry re-rounded to a coarser grid as it ages is rounded once from its true time.
    Once an entry has learned its own bin its delay bin no longer matters (``bin = -1``), so
    entries of every delay merge. Memory is bounded by partitions x about a dozen cells per edge x
    64 edges (x 2 while the bin matters), whatever the traffic; every delay below 7 days is
    learned. Delays of 7 days or more cannot be learned (the support ends there) and are counted
    in :attr:`beyond_horizon`.

    Args:
        half_life: EW half-life of the counts, in feedback (delays learned at their own bin).
        grid_share: the trace-time grid as a share of the next edge (``0``: only the floor).
        grid_floor_ms: the smallest grid, ms (``1``: exact trace times, one entry per distinct
            trace time: the per-event estimate).
    """

    EDGES_MS = np.concatenate(([0.0], np.exp(np.linspace(np.log(1_000.0), np.log(7 * 86_400_000.0), 64))))
    K = 64  # bins [e_j, e_{j+1}), j = 0..63
    #: the defaults of ``grid_share`` / ``grid_floor_ms`` (BENCHMARKS.md, issue 17, "the pending aggregate")
    GRID_SHARE = 1.0 / 64.0
    GRID_FLOOR_MS = 65_536
    #: the pending aggregate's columns (name, dtype as serialised)
    PENDING = (("t", "<i8"), ("part", "<i4"), ("bin", "<i2"), ("done", "<i2"), ("n", "<i8"))
    #: serialisation layout tag (:meth:`to_arrays`)
    FORMAT = 1

    def __init__(self, half_life: float, grid_share: float = GRID_SHARE, grid_floor_ms: int = GRID_FLOOR_MS) -> None:
        self.a = np.zeros(self.K)  # feedback with D < e_{j+1} of traces >= e_{j+1} old
        self.b = np.zeros(self.K)  # the same with D < e_j
        self.seen = 0.0  # EW count of feedback learned at its own bin
        #: longest delay learned so far (lower edge of its bin, ms)
        self.longest_ms = 0.0
        self.half_life = half_life
        self.lam = 0.5 ** (1.0 / half_life)
        self.grid_share = grid_share
        self.grid_floor_ms = int(grid_floor_ms)
        #: the pending aggregate: per entry the trace time rounded up (ms), trace partition, delay
        #: bin (-1 once learned at it), last bin learned (-1 .. K-2), number of delays
        self.t = np.zeros(0, dtype=np.int64)
        self.part = np.zeros(0, dtype=np.int64)
        self.bin = np.zeros(0, dtype=np.int64)
        self.done = np.zeros(0, dtype=np.int64)
        self.n = np.zeros(0, dtype=np.int64)
        #: delays of 7 days or more (not learnable), and delays observed (both since creation)
        self.beyond_horizon = 0
        self.observed = 0
        #: trace partitions it has learned from
        self.partitions: set[int] = set()
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def pending(self) -> int:
        """Delays waiting to be learned at a later edge (all entries' counts)."""
        return int(self.n.sum())

    def _rounded(self, t_ms: np.ndarray, done: np.ndarray) -> np.ndarray:
        """``t_ms`` rounded up to the grid of the next edge ``e[done + 2]`` (module docstring)."""
        target = np.maximum(self.EDGES_MS[np.minimum(done + 2, self.K)] * self.grid_share, float(self.grid_floor_ms))
        grid = np.exp2(np.floor(np.log2(target))).astype(np.int64)
        return -((-t_ms) // grid) * grid

    def _merge(self) -> None:
        """Sum the entries that have the same (time, partition, bin, done)."""
        if len(self.t) < 2:
            return
        keys = np.stack([self.t, self.part, self.bin, self.done], axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        if len(uniq) == len(self.t):
            return
        self.n = np.bincount(inv.ravel(), weights=self.n, minlength=len(uniq)).astype(np.int64)
        self.t, self.part, self.bin, self.done = (uniq[:, i].copy() for i in range(4))

    def observe(self, trace_ms: np.ndarray, partitions: np.ndarray, delays_ms: np.ndarray) -> None:
        """Add observed delays to the pending aggregate.

        Args:
            trace_ms: event time of each delay's trace, ms, ``(k,)``.
            partitions: the trace's partition, ``(k,)``.
            delays_ms: feedback event time minus trace event time, ms, ``(k,)``; negative ones
                count as 0, those of 7 days or more (or NaN) only in :attr:`beyond_horizon`.
        """
        delays_ms = np.asarray(delays_ms, dtype=np.float64)
        keep = delays_ms < self.EDGES_MS[-1]
        self.observed += len(delays_ms)
        self.beyond_horizon += int((~keep).sum())
        if not keep.any():
            return
        b = np.searchsorted(self.EDGES_MS, np.maximum(delays_ms[keep], 0.0), side="right") - 1
        parts = np.asarray(partitions)[keep].astype(np.int64)
        self.partitions.update(np.unique(parts).tolist())
        done = b.astype(np.int64) - 1
        t = self._rounded(np.asarray(trace_ms)[keep].astype(np.int64), done)
        self.t = np.concatenate([self.t, t])
        self.part = np.concatenate([self.part, parts])
        self.bin = np.concatenate([self.bin, b.astype(np.int64)])
        self.done = np.concatenate([self.done, done])
        self.n = np.concatenate([self.n, np.ones(len(t), dtype=np.int64)])
        self._merge()

    def release(self, clock_ms: dict[int, float]) -> bool:
        """Learn what the partitions' clocks (feedback event time, ms) make observable (see the
        class docstring); one vectorised pass over the pending aggregate. Returns whether
        anything was learned."""
        if not len(self.t):
            return False
        parts = np.unique(self.part)
        c = np.array([clock_ms.get(int(p), -1.0) for p in parts.tolist()])[np.searchsorted(parts, self.part)]
        jmax = np.minimum(np.searchsorted(self.EDGES_MS, c - self.t, side="right") - 2, self.K - 1)
        lo = self.done + 1
        new = jmax >= lo
        if not new.any():
            return False
        first = new & (lo == self.bin)
        n_first = int(self.n[first].sum())
        if n_first:
            self.longest_ms = max(self.longest_ms, float(self.EDGES_MS[self.bin[first]].max()))
        decay = self.lam ** n_first
        self.a *= decay
        self.b *= decay
        self.seen = self.seen * decay + n_first
        da = np.zeros(self.K + 1)
        db = np.zeros(self.K + 1)
        s, e, w = lo[new], jmax[new], self.n[new].astype(np.float64)
        np.add.at(da, s, w)
        np.add.at(da, e + 1, -w)
        sb = np.maximum(s, self.bin[new] + 1)
        okb = sb <= e
        np.add.at(db, sb[okb], w[okb])
        np.add.at(db, e[okb] + 1, -w[okb])
        self.a += np.cumsum(da)[: self.K]
        self.b += np.cumsum(db)[: self.K]
        self.done = np.where(new, jmax, self.done)
        self.bin = np.where(new, -1, self.bin)  # every delay of its bin is now counted
        keep = self.done < self.K - 1
        self.t, self.part, self.bin, self.done, self.n = (x[keep] for x in (self.t, self.part, self.bin, self.done,
                                                                              self.n))
        self.t = np.where(new[keep], self._rounded(self.t, self.done), self.t)
        self._merge()
        self._cache = None
        return True

    # ------------------------------------------------------------------ persistence
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The whole state (counts, pending aggregate, partitions, settings) as named arrays for
        ``numpy.savez_compressed`` (names prefixed by ``prefix``)."""
        out = {"format": np.array(self.FORMAT), "a": self.a, "b": self.b,
               "scalars": np.array([self.seen, self.longest_ms, self.half_life, self.grid_share,
                                    float(self.grid_floor_ms), float(self.beyond_horizon), float(self.observed)]),
               "partitions": np.array(sorted(self.partitions), dtype="<i4"),
               **{f"pending_{name}": getattr(self, name).astype(dt) for name, dt in self.PENDING}}
        return {prefix + k: v for k, v in out.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> DelayCDF:
        """Inverse of :meth:`to_arrays`.

        Raises:
            ValueError: an array missing, another ``format``, or arrays of the wrong shape.
        """
        try:
            fmt = int(arrays[prefix + "format"])
            scalars = arrays[prefix + "scalars"].tolist()
            a, b = arrays[prefix + "a"], arrays[prefix + "b"]
            parts = arrays[prefix + "partitions"]
            cols = [arrays[f"{prefix}pending_{name}"].astype(np.int64) for name, _ in cls.PENDING]
        except KeyError as exc:
            raise ValueError(f"delay distribution state lacks array {exc.args[0]!r}") from exc
        if fmt != cls.FORMAT or len(scalars) != 7:
            raise ValueError(f"delay distribution state has format {fmt} with {len(scalars)} scalars; "
                             f"expected format {cls.FORMAT} with 7")
        if a.shape != (cls.K,) or b.shape != (cls.K,) or len({len(c) for c in cols}) != 1:
            raise ValueError(f"delay distribution state has hazard counts {a.shape} / {b.shape} and pending "
                             f"columns of lengths {[len(c) for c in cols]}; expected ({cls.K},) and equal lengths")
        seen, longest, half_life, share, floor, beyond, observed = scalars
        cdf = cls(half_life, share, int(floor))
        cdf.a, cdf.b = a.astype(np.float64), b.astype(np.float64)
        cdf.seen, cdf.longest_ms = seen, longest
        cdf.beyond_horizon, cdf.observed = int(beyond), int(observed)
        cdf.partitions = set(parts.tolist())
        cdf.t, cdf.part, cdf.bin, cdf.done, cdf.n = cols
        return cdf

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """``F`` at the edges and its integral ``I(e) = int_0^e F`` (trapezoid, exact for a
        piecewise-linear ``F``)."""
        if self._cache is None:
            q = np.where(self.a > 0, self.b / np.maximum(self.a, 1e-12), 1.0)
            q[0] = 0.0  # no delay is below 0
            cdf = np.append(np.cumprod(q[::-1])[::-1], 1.0)  # F(e_j), j = 0..K
            integ = np.concatenate(([0.0], np.cumsum(0.5 * (cdf[1:] + cdf[:-1]) * np.diff(self.EDGES_MS))))
            self._cache = (cdf, integ)
        return self._cache

    def support_ms(self) -> float:
        """The oldest trace age (ms, a bin edge) at which the estimate has watched at least one
        trace's feedback: ``F`` is estimated conditional on the delay being below it (beyond, the
        reverse-time hazards have no data and ``q = 1``), the identifiable range of right-truncated
        data (S. W. Lagakos, L. M. Barraj & V. De Gruttola, "Nonparametric analysis of truncated
        survival data, with application to AIDS", Biometrika 75(3), 1988). 0 before any."""
        watched = np.flatnonzero(self.a >= 1.0)
        return float(self.EDGES_MS[watched[-1] + 1]) if watched.size else 0.0

    def cdf(self, age_ms: np.ndarray) -> np.ndarray:
        """``F(age)``, linear between edges, 0 below 0, 1 beyond 7 days."""
        cdf, _ = self._tables()
        return np.interp(age_ms, self.EDGES_MS, cdf, left=0.0, right=1.0)

    def integral(self, age_ms: np.ndarray) -> np.ndarray:
        """``I(age) = int_0^age F(a) da`` (ms)."""
        cdf, integ = self._tables()
        x = np.maximum(age_ms, 0.0)
        e = self.EDGES_MS
        k = np.clip(np.searchsorted(e, x, side="right") - 1, 0, len(e) - 1)
        inside = k < len(e) - 1
        kk = np.minimum(k, len(e) - 2)
        slope = (cdf[kk + 1] - cdf[kk]) / (e[kk + 1] - e[kk])
        dx = x - e[k]
        part = integ[k] + cdf[k] * dx + np.where(inside, 0.5 * slope * dx * dx, 0.0)
        return np.where(x > 0, part, 0.0)

    def average(self, age_lo_ms: np.ndarray, age_hi_ms: np.ndarray) -> np.ndarray:
        """``G``: mean of ``F`` over ages uniform on ``[age_lo, age_hi]`` (ms) (a bucket's traces)."""
        width = age_hi_ms - age_lo_ms
        wide = width > 1.0
        g = (self.integral(age_hi_ms) - self.integral(age_lo_ms)) / np.where(wide, width, 1.0)
        return np.clip(np.where(wide, g, self.cdf(age_hi_ms)), 0.0, 1.0)


class DelayModel:
    """Feedback-delay distributions per tenant x workflow and per tenant (all its workflows),
    :class:`DelayCDF` each.

    A slice uses its tenant x workflow distribution once it has learned ``min_samples`` delays,
    else its tenant's, else none (the detector then counts a bucket only once it is
    ``feedback_maturity`` old, events and exposure together).

    **Persistence.** A tenant's distributions are one state value, ``delay|<tenant>`` in the
    slice-state backend (the worker's ``baselines`` changelog table), on the tenant's trace
    partition: :meth:`take_dirty` gives the tenants changed since the last call, which
    ``Pipeline.flush_state`` writes in the same checkpoint as the slice rows, and a tenant's
    value is read (``loader``) the first time the process needs one of its distributions. The
    value is a NumPy ``.npz`` archive (:meth:`encode`); docs/reliability.md says what a restart
    keeps.

    Args:
        half_life: EW half-life of every distribution, in feedback.
        min_samples: EW feedback a distribution needs before a slice uses it.
        loader: ``state key -> bytes | None`` (``None``: nothing persisted).
    """

    #: state-key prefix of a tenant's distributions in the slice-state backend
    KEY_PREFIX = "delay|"

    def __init__(self, half_life: float = 20_000.0, min_samples: float = 200.0,
                 loader: Callable[[str], bytes | None] | None = None) -> None:
        self.half_life, self.min_samples = half_life, min_samples
        self.loader = loader
        self.cdfs: dict[tuple[str, str | None], DelayCDF] = {}
        #: tenants whose persisted value was read (or found absent), and those changed since
        #: :meth:`take_dirty`
        self._loaded: set[str] = set()
        self.dirty: set[str] = set()
        #: per tenant: the trace partition its state is written to (its traces' partition)
        self.partition_of: dict[str, int] = {}

    @classmethod
    def state_key(cls, tenant: str) -> str:
        """The state key of ``tenant``'s distributions: ``delay|<tenant>`` (not a slice key)."""
        return f"{cls.KEY_PREFIX}{tenant}"

    def _load(self, tenant: str) -> None:
        """Read ``tenant``'s persisted distributions once (nothing happens if none)."""
        if tenant in self._loaded:
            return
        self._loaded.add(tenant)
        data = self.loader(self.state_key(tenant)) if self.loader is not None else None
        if data is None:
            return
        for workflow, cdf in self.decode(data, tenant).items():
            self.cdfs.setdefault((tenant, workflow), cdf)
            if cdf.partitions:
                self.partition_of.setdefault(tenant, min(cdf.partitions))

    def _get(self, key: tuple[str, str | None]) -> DelayCDF:
        self._load(key[0])
        cdf = self.cdfs.get(key)
        if cdf is None:
            cdf = self.cdfs[key] = DelayCDF(self.half_life)
        return cdf

    def observe(self, keys: Sequence[tuple[str, str]], trace_ms: np.ndarray, partitions: np.ndarray,
                delays_ms: np.ndarray) -> None:
        """Add delays (ms) of feedback on traces of ``keys`` = ``(tenant, workflow)`` (trace event
        time ms and partition of each) to their distributions' pending aggregates."""
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, (t, w) in enumerate(keys):
            groups.setdefault((t, w), []).append(i)
            groups.setdefault((t, None), []).append(i)
        parts = np.asarray(partitions)
        for key, idx in groups.items():
            ix = np.asarray(idx)
            self._get(key).observe(np.asarray(trace_ms)[ix], parts[ix], np.asarray(delays_ms, dtype=np.float64)[ix])
            self.dirty.add(key[0])
            self.partition_of.setdefault(key[0], int(parts[ix].min()))

    def release(self, clock_ms: dict[int, float], partition: int | None = None) -> None:
        """Learn the delays the partitions' clocks make observable (each pending aggregate in one
        pass); with ``partition``, only the distributions that learned from its traces."""
        for (tenant, _), cdf in self.cdfs.items():
            if (partition is None or partition in cdf.partitions) and cdf.release(clock_ms):
                self.dirty.add(tenant)

    def step_support_ms(self, tenant: str, maturity_ms: float) -> float:
        """Until ``tenant``'s distribution is learned: the trace age (ms) up to which its feedback
        has been watched (:meth:`DelayCDF.support_ms`) while the maturity step (every feedback
        within ``maturity_ms``) still stands, 0.0 once a longer delay has been learned (the step
        would fold buckets whose feedback is still coming) or before any feedback."""
        self._load(tenant)
        cdf = self.cdfs.get((tenant, None))
        if cdf is None or cdf.longest_ms > maturity_ms:
            return 0.0
        return cdf.support_ms()

    def model_for(self, tenant: str, workflow: str | None) -> DelayCDF | None:
        """The learned distribution a slice of ``tenant`` (x ``workflow``) uses, or ``None``."""
        self._load(tenant)
        for key in ((tenant, workflow), (tenant, None)):
            cdf = self.cdfs.get(key)
            if cdf is not None and cdf.seen >= self.min_samples:
                return cdf
        return None

    @property
    def beyond_horizon(self) -> int:
        """Delays of 7 days or more seen by this process's tenant distributions (not learnable;
        each counted once, in its tenant's distribution, since the distribution was created)."""
        return sum(c.beyond_horizon for (_, w), c in self.cdfs.items() if w is None)

    # ------------------------------------------------------------------ persistence
    def encode(self, tenant: str) -> bytes:
        """``tenant``'s distributions as one value: a NumPy ``.npz`` archive
        (``numpy.savez_compressed``) of ``workflows`` (a JSON list, ``null`` for the tenant's
        own) and each distribution's :meth:`DelayCDF.to_arrays` prefixed ``<i>_``."""
        items = sorted(((w, c) for (t, w), c in self.cdfs.items() if t == tenant),
                       key=lambda x: (x[0] is not None, x[0] or ""))
        arrays = {"workflows": np.array(json.dumps([w for w, _ in items]))}
        for i, (_, c) in enumerate(items):
            arrays.update(c.to_arrays(f"{i}_"))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes, tenant: str = "?") -> dict[str | None, DelayCDF]:
        """Inverse of :meth:`encode` (read with ``allow_pickle=False``): workflow (``None``: the
        tenant's own) -> distribution.

        Raises:
            ValueError: not such a value (names the tenant and the cause).
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            workflows = json.loads(str(arrays["workflows"]))
            return {w: DelayCDF.from_arrays(arrays, f"{i}_") for i, w in enumerate(workflows)}
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise ValueError(f"delay model state of tenant {tenant!r} ({len(data)} B) does not load: {exc}") from exc

    def take_dirty(self) -> list[tuple[str, bytes, int]]:
        """``(state key, value, partition)`` of every tenant changed since the last call (to be
        written with the slice rows of the same checkpoint)."""
        out = [(self.state_key(t), self.encode(t), self.partition_of.get(t, 0)) for t in sorted(self.dirty)]
        self.dirty = set()
        return out

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the tenants written to ``partitions`` (revoked; reloaded if they come back).
        Returns the number of tenants dropped. Flush first: their unwritten changes are lost."""
        gone = {t for t, p in self.partition_of.items() if p in partitions}
        self.cdfs = {k: c for k, c in self.cdfs.items() if k[0] not in gone}
        self._loaded -= gone
        self.dirty -= gone
        for t in gone:
            self.partition_of.pop(t, None)
        return len(gone)
