"""The canary monitor: rollout traffic and its feedback into scorecards, verdicts out.

:class:`CanaryMonitor` groups rollout traces by tenant x candidate release x cohort x workflow
scope (:class:`~streams.processors.canary.scorecard.Group`), counts each trace's harmful events
into its event-time bucket x workflow stratum, folds a bucket into the scorecards once the
watermarks have passed it (trace metrics at ``lateness_ms``, feedback metrics at ``maturity_ms``),
and emits a verdict when a scorecard's decision changes or ``verdict_interval_ms`` of event time
passed (:class:`~streams.processors.canary.scorecard.ScorecardRules`).

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

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.verdict import RolloutVerdict
from streams.processors.canary.scorecard import (
    ARM_NAMES,
    CANARY_METRICS,
    CONTROL_HISTOGRAMS,
    DELAYED,
    EVENT_SLOT,
    IMMEDIATE,
    M_CORR,
    M_COST,
    M_LAT,
    M_SAFETY,
    N_BINS,
    SLOT_FEEDBACK_TRACES,
    SLOT_TRACES,
    STRATUM_LEN,
    THRESHOLD_INDEX,
    CanaryConfig,
    Group,
    Scorecard,
    ScorecardRules,
    hist_bins,
    pack,
    push_bounded,
    threshold_bin,
    unpack,
)
from streams.processors.canary.sequential import stratum_loglik
from streams.processors.columns import TraceColumns
from streams.processors.metrics import CANARY_USES
from streams.state import StateBackend

#: per threshold metric, the quantile of the control that its harmful event is measured against
_THRESHOLD_QUANTILES = {m: CANARY_USES[m].control_quantile for m in THRESHOLD_INDEX}


@dataclass(slots=True)
class Emitted:
    """A verdict to publish and the source partition of its tenant (for incident state)."""

    verdict: RolloutVerdict
    partition: int



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
        self.rules = ScorecardRules(cfg)
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
        return Group.from_json(unpack(raw)) if raw else None

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
                self.backend.put(f"cg|{key}", pack(g.to_json()), g.partition)
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

    def scorecards(self, tenant: str, release: str) -> list[dict[str, Any]]:
        """The scorecards this monitor holds for candidate ``release`` of ``tenant`` (the read API
        of rollout controllers): the groups of the owned partitions, from memory or the backend,
        one dict per compared arm, sorted by cohort, workflow, arm::

            {"cohort": str, "workflow": str | None (a high-risk workflow's own scorecard),
             "arm": "canary" | "shadow", "stage_pct": float, "verdict": "promote" | "hold" |
             "rollback" | None (no verdict event yet), "revision": int (of the last verdict event),
             "candidate_traces": int (seen in all stages), "last_event_ms": int (event time, ms)}
        """
        prefix = f"cg|{tenant}|{release}|"
        keys = {k[3:] for k, _ in self.backend.items() if k.startswith(prefix)}
        keys |= {k for k in self.groups if k.startswith(prefix[3:])}
        out = []
        for key in sorted(keys):
            g = self.groups.get(key) or self._load(key)
            if g is None or g.tenant != tenant or g.release != release:  # a "|" inside a name
                continue
            for sc in g.scorecards.values():
                out.append({"cohort": g.cohort, "workflow": None if g.scope == "*" else g.scope, "arm": sc.sid,
                            "stage_pct": float(sc.stage), "verdict": sc.verdict, "revision": int(sc.revision),
                            "candidate_traces": int(sc.seen), "last_event_ms": int(g.last_event_ms)})
        return sorted(out, key=lambda d: (d["cohort"], d["workflow"] or "", d["arm"]))

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
                :class:`~streams.processors.feedback.traces.TraceRef` (its ``rollout_arm``,
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
            vec[EVENT_SLOT[M_CORR]] += new_corr
            vec[EVENT_SLOT[M_SAFETY]] += new_safety
            if side != "c":
                sc = g.scorecards[side]
                if new_corr:
                    push_bounded(sc.evidence[M_CORR], tid, self.cfg.evidence)
                if new_safety:
                    push_bounded(sc.evidence[M_SAFETY], tid, self.cfg.evidence)
            self._dirty_groups.add(key)
        for p, t in feedback_wm.items():
            self._load_wm(p)
            if t > self.feedback_wm.get(p, -1):
                self.feedback_wm[p] = int(t)
                self._dirty_wm.add(p)
        return self._fold()

    def _add_traces(self, g: Group, cols: TraceColumns, pos: np.ndarray) -> None:
        """Count the fresh rollout traces ``pos`` of group ``g``: candidate traces into their
        arm's scorecard (created on first sight; a new stage restarts the per-stage counts),
        every trace's harmful events into its bucket x workflow stratum (thresholds of the
        control quantiles fixed when the stratum opens), control traces into the control
        histograms. Traces of a bucket already folded count as late."""
        cfg = self.cfg
        g.last_offset = max(g.last_offset, int(cols.offset[pos].max()))
        g.last_event_ms = max(g.last_event_ms, int(cols.event_time_ms[pos].max()))
        self.stats["rollout_traces"] += int(pos.size)
        bins = {m: hist_bins(CANARY_METRICS[m].value(cols)[pos], lo, hi).tolist()
                for m, (_, lo, hi) in CONTROL_HISTOGRAMS.items()}
        lat_bins = bins[M_LAT]
        # per immediate metric: (metric, its slot, its threshold's index or -1, per-trace bins or events)
        immediate = [(m, EVENT_SLOT[m], THRESHOLD_INDEX[m], bins[m]) if m in THRESHOLD_INDEX
                     else (m, EVENT_SLOT[m], -1, CANARY_METRICS[m].event(cols)[pos].tolist()) for m in IMMEDIATE]
        buckets = (cols.event_time_ms[pos] // cfg.bucket_ms).tolist()
        arms = cols.rollout_arm[pos].tolist()
        cost = CANARY_METRICS[M_COST].value(cols)[pos].tolist()
        times = cols.event_time_ms[pos].tolist()
        for j, i in enumerate(pos.tolist()):
            wf = cols.workflow[i]
            arm = arms[j]
            sc = None
            if arm == 0:
                side = "c"
                if g.control_manifest is None and cols.records:
                    g.control_manifest = dict(cols.records[i]["release"])
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
                push_bounded(sc.recent, cols.trace_id[i], cfg.evidence)
                if g.manifest is None and cols.records:
                    g.manifest = dict(cols.records[i]["release"])
                self._dirty_groups.add(g.key)
            ctrl = g.ctrl.get(wf)
            if ctrl is None:
                ctrl = g.ctrl[wf] = {"n": 0, **{key: np.zeros(N_BINS, dtype=np.int64)
                                                for key, _, _ in CONTROL_HISTOGRAMS.values()}, "cost_sum": 0.0}
            b = buckets[j]
            if b <= g.mat_upto:
                self.stats["late_traces"] += 1  # its bucket is closed: not compared
            else:
                entry = g.buckets.setdefault(b, {}).get(wf)
                if entry is None:
                    # thresholds from control data seen before this stratum opened (predictable)
                    entry = g.buckets[b][wf] = {
                        "thr": [threshold_bin(ctrl[CONTROL_HISTOGRAMS[m][0]], q, cfg.min_control)
                                for m, q in _THRESHOLD_QUANTILES.items()],
                        "c": np.zeros(STRATUM_LEN)}
                vec = entry.get(side)
                if vec is None:
                    vec = entry[side] = np.zeros(STRATUM_LEN)
                vec[SLOT_FEEDBACK_TRACES] += 1
                if b > g.imm_upto:
                    thr = entry["thr"]
                    vec[SLOT_TRACES] += 1
                    for m, slot, t, per_trace in immediate:
                        hit = (thr[t] >= 0 and per_trace[j] >= thr[t]) if t >= 0 else per_trace[j]
                        if hit:
                            vec[slot] += 1
                            if sc is not None:
                                push_bounded(sc.evidence[m], cols.trace_id[i], cfg.evidence)
                else:
                    self.stats["late_traces"] += 1
            if arm == 0:
                ctrl["n"] += 1
                for m, (key, _, _) in CONTROL_HISTOGRAMS.items():
                    ctrl[key][bins[m][j]] += 1
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
        """Add bucket ``b``'s strata to the grid log-likelihoods and counts of each scorecard that
        has candidate traces in it: the feedback metrics (``delayed``) or the trace metrics.
        A threshold metric's stratum counts only once its control threshold exists."""
        wfs = g.buckets[b]
        sids = {k for e in wfs.values() for k in e if k not in ("thr", "c", "ids")}
        for sid in sids:
            strata = [(e["c"], e[sid], e["thr"]) for e in wfs.values() if sid in e]
            ctrl = np.array([s[0] for s in strata])  # (s, STRATUM_LEN)
            cand = np.array([s[1] for s in strata])
            sc = g.scorecards[sid]
            if delayed:
                metrics = DELAYED
                e_c = np.broadcast_to(ctrl[:, SLOT_FEEDBACK_TRACES], (len(metrics), len(strata)))
                e_t = np.broadcast_to(cand[:, SLOT_FEEDBACK_TRACES], (len(metrics), len(strata)))
            else:
                metrics = IMMEDIATE
                ready = np.array([[s[2][THRESHOLD_INDEX[m]] >= 0 if m in THRESHOLD_INDEX else True for s in strata]
                                  for m in metrics])
                e_c = np.where(ready, ctrl[:, SLOT_TRACES][None, :], 0.0)
                e_t = np.where(ready, cand[:, SLOT_TRACES][None, :], 0.0)
            slots = [EVENT_SLOT[m] for m in metrics]
            k_c = ctrl[:, slots].T
            k_t = cand[:, slots].T
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
    def _decide(self, g: Group, sc: Scorecard) -> Emitted | None:
        """Apply the decision rules to ``sc``; the verdict event when its decision changed or
        ``verdict_interval_ms`` of event time passed since its last one, else ``None``."""
        verdict, harm, enough, blocking = self.rules.decide(g, sc)
        changed = verdict.value != sc.verdict
        if not changed and g.last_event_ms - sc.last_emit_ms < self.cfg.verdict_interval_ms:
            return None
        sc.revision += 1
        sc.verdict = verdict.value
        sc.last_emit_ms = g.last_event_ms
        self._dirty_groups.add(g.key)
        self.stats["verdicts"] += 1
        return Emitted(self.rules.build(g, sc, verdict, harm, enough, blocking, changed), g.partition)
