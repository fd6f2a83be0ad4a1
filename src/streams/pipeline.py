"""The processing core, one method per source topic, independent of faust.

:class:`Pipeline` chains the processors for one batch of Kafka messages:

    traces:   ingest (decode, validate → dead-letter) → dedup by trace_id → baselines + drift
              → incidents → rows for ClickHouse
    feedback: ingest → join to trace (index, ClickHouse) → dedup → correction events into the
              detectors → incidents → rows
    rollouts: traces with ``rollout`` and their corrections → canary scorecards
              (:mod:`streams.processors.canary`) → rollout verdicts (+ rollback incidents)

It returns what must be written and published; the caller (:mod:`streams.worker.agents` in the worker,
the benchmarks, the tests) performs the I/O and acknowledges the batch afterwards, which is what
makes the whole path at-least-once. State lives in :class:`~streams.state.StateBackend`
objects (faust changelog tables in the worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from schemas import DeadLetter, Incident, RolloutVerdict, Verdict
from schemas.codec import AvroCodec, canonical_json
from streams.config import Settings
from streams.privacy import Redactor
from streams.processors.baselines import LAYER_PARTS, SliceStore
from streams.processors.canary import CanaryConfig, CanaryMonitor, Emitted
from streams.processors.columns import RawMessage, TraceColumns, trace_columns
from streams.processors.drift import Alarm, DriftConfig, DriftEngine
from streams.processors.feedback import STATUSES, FeedbackProcessor, TraceIndex, TraceRef
from streams.processors.incidents import IncidentManager, TraceContext
from streams.processors.ingest import Decoded, Ingest, make_dead_letter
from streams.processors.metrics import POISSON, is_safety_feedback
from streams.signing import verifying_keys
from streams.state import CheckpointedBackend, DictBackend, StateBackend

#: what the store holds of trace ids outside the in-memory index: ``{(tenant_id, trace_id):
#: [(fingerprint, source partition, source offset)]}`` (:meth:`Pipeline.unindexed_trace_ids`)
StoredTraces = dict[tuple[str, str], list[tuple[int, int, int]]]


def trace_fingerprint(event_time_ms: int, latency_ms: float, output_tokens: int, outcome: str, release_id: str,
                      tenant_id: str) -> int:
    """Content fingerprint of a trace for duplicate detection: a hash of the fields a replay
    cannot change (valid within one process: Python's string hash is salted per process, so the
    store's values are fingerprinted again after a restart, never stored)."""
    return hash((int(event_time_ms), float(latency_ms), int(output_tokens), outcome, release_id, tenant_id))


@dataclass
class TraceOutput:
    """Result of one trace batch."""

    cols: TraceColumns | None
    attributes: list[dict[str, str]]  # redacted attribute maps, parallel to cols
    incidents: list[Incident]
    dead_letters: list[DeadLetter]
    duplicates: int = 0
    verdicts: list[RolloutVerdict] = field(default_factory=list)
    #: processing sequence number of the batch (:meth:`Pipeline.next_batch_seq`), stored with the traces
    batch_seq: int = 0


@dataclass
class ActionOutput:
    """Result of one batch of incident actions."""

    incidents: list[Incident]  # the revisions the actions caused
    dead_letters: list[DeadLetter]
    rows: list[dict[str, Any]]  # ``incident_actions`` ledger rows (one per applied action)
    replays: int = 0  # actions already applied (redelivered or resent)


@dataclass
class DedupedTraces:
    """Valid traces of a batch without replays, with their provenance (parallel lists)."""

    records: list[dict[str, Any]]
    partitions: list[int]
    offsets: list[int]
    fingerprints: list[int]  # content hash per trace (TraceRef.fingerprint)
    duplicates: int  # replays skipped
    dead_letters: list[DeadLetter]  # the batch's, conflicting duplicates included
    kept: np.ndarray | None = None  # indexes of the decoded records kept; None: all


@dataclass
class FeedbackOutput:
    """Result of one feedback batch."""

    rows: list[dict[str, Any]]
    submissions: list[dict[str, Any]]
    incidents: list[Incident]
    dead_letters: list[DeadLetter]
    counts: dict[str, int] = field(default_factory=dict)
    verdicts: list[RolloutVerdict] = field(default_factory=list)
    #: tenant → pattern ids whose rows were written (refresh of ``feedback_patterns``)
    patterns: dict[str, set[str]] = field(default_factory=dict)


def drift_config(settings: Settings) -> DriftConfig:
    """Detector settings from :class:`Settings`."""
    return DriftConfig(
        layers=tuple(layer for layer in LAYER_PARTS if layer in settings.layers),
        warmup_traces=settings.warmup_traces,
        half_life_traces=settings.baseline_half_life_traces,
        threshold=settings.cusum_threshold,
        rate_shift=settings.rate_shift,
        rate_shift_large=settings.rate_shift_large,
        mean_shift_sigma=settings.mean_shift_sigma,
        evidence=settings.evidence_traces,
        feedback_maturity_ms=int(settings.feedback_maturity_s * 1000),
    )


def canary_config(settings: Settings) -> CanaryConfig:
    """Canary scorecard settings from :class:`Settings` (``canary_*``, feedback maturity, evidence)."""
    return CanaryConfig(
        alpha=settings.canary_alpha, high_risk_alpha=settings.canary_high_risk_alpha,
        high_risk_workflows=tuple(settings.canary_high_risk_workflows), min_samples=settings.canary_min_samples,
        high_risk_min_samples=settings.canary_high_risk_min_samples, margin=settings.canary_margin,
        mixture_scale=settings.canary_mixture_scale,
        verdict_interval_ms=int(settings.canary_verdict_interval_s * 1000),
        maturity_ms=int(settings.feedback_maturity_s * 1000), bucket_ms=int(settings.canary_bucket_s * 1000),
        evidence=settings.evidence_traces,
    )


class Pipeline:
    """All per-batch processing of a worker.

    Args:
        settings: configuration.
        codec: Avro codec.
        baselines: persistence of slice rows (key → :meth:`SliceStore.row_bytes`).
        incidents: persistence of open incidents and episode counters.
        feedback_state: persistence of seen feedback ids and dedup keys.
        trace_lookup: ``(tenant, [trace_id]) -> {trace_id: TraceRef}`` for traces older than the
            in-memory index (ClickHouse in the worker).
        canary_state: persistence of the canary scorecards (rollout groups and scorecards).
        platform_signals: platform-wide incidents are decided from signals (:meth:`on_signals`)
            that every worker sends (:meth:`take_signals`), as the worker does; off, the pipeline
            decides from the tenants it sees (one process sees all: tests, benchmarks).
    """

    def __init__(self, settings: Settings, codec: AvroCodec, *, baselines: StateBackend | None = None,
                 incidents: StateBackend | None = None, feedback_state: StateBackend | None = None,
                 trace_lookup: Callable[[str, list[str]], dict[str, TraceRef]] | None = None,
                 canary_state: StateBackend | None = None, platform_signals: bool = False) -> None:
        self.settings = settings
        self.codec = codec
        self.baselines = baselines or DictBackend()
        kw = dict(max_message_bytes=settings.max_message_bytes, max_event_age_s=settings.max_event_age_s,
                  max_clock_skew_s=settings.max_clock_skew_s, tenant_keys=verifying_keys(settings))
        self.trace_ingest = Ingest(codec, "traces", **kw)
        self.feedback_ingest = Ingest(codec, "feedback", **kw)
        self.action_ingest = Ingest(codec, "actions", **kw)
        self.engine = DriftEngine(drift_config(settings), SliceStore(), loader=self.baselines.get)
        #: release manifests seen, by release_id (incidents name the manifest they implicate)
        self.releases: dict[str, dict[str, Any]] = {}
        self.incidents = IncidentManager(
            self.engine.store, incidents or DictBackend(), releases=self.releases,
            resolve_after_traces=settings.resolve_after_traces,
            update_interval_s=settings.incident_update_interval_s, evidence=settings.evidence_traces,
            drained_nats=settings.cusum_threshold / 2, warmup_traces=settings.warmup_traces,
            platform_signals=platform_signals)
        # label-delayed alarms become incidents tick by tick of the feedback clock, and their
        # incidents resolve there (IncidentManager.sweep_delayed): the same input gives the same
        # episodes however feedback and trace batches interleave
        self._tick_incidents: list[Incident] = []
        self.engine.delayed.tick_hook = self._on_feedback_tick
        # platform signals are the workers' own records (keyed "platform", no tenant's key signs them)
        self.signal_ingest = Ingest(codec, "signals", **{**kw, "tenant_keys": None})
        #: source partition -> tenants seen there, and the event time of its last census (ms)
        self._tenants_seen: dict[int, set[str]] = {}
        self._census_ms: dict[int, int] = {}
        self.redactor = Redactor(enabled=settings.redact)
        self.index = TraceIndex(settings.trace_index_size)
        # written at the checkpoint with the slice rows that count the same feedback (a crash
        # between the two lost the redelivered corrections: CheckpointedBackend)
        self.feedback_state = CheckpointedBackend(feedback_state or DictBackend())
        self.feedback = FeedbackProcessor(
            self.feedback_state, self.index, self.redactor,
            settings.tenant_hmac_key.get_secret_value().encode(), lookup=trace_lookup,
            near_dup_threshold=settings.feedback_near_dup_threshold,
            max_corrections_per_trace=settings.feedback_max_corrections_per_trace,
            max_submissions_per_trace=settings.feedback_max_submissions_per_trace)
        self.canary = CanaryMonitor(canary_config(settings), canary_state or DictBackend())
        self._snapshot_dirty: set[int] = set()
        self._batch_seq = 0
        self.stats = {"traces": 0, "trace_duplicates": 0, "feedback": 0, "dead_letters": 0, "incident_events": 0,
                      "verdicts": 0, "actions": 0, "action_replays": 0}
        #: feedback submissions by dedup status (only ``new`` counts in detectors and scorecards)
        self.feedback_statuses = dict.fromkeys(STATUSES, 0)

    def counters(self) -> dict[str, int]:
        """Cumulative counters of the pipeline and its processors, by stats key: :attr:`stats`, the
        label-delayed detectors' feedback events by fate and their buckets folded / coarsened
        (:attr:`DelayedMetrics.counters`: nothing is discarded), feedback delays of 7 days or more
        that the delay distributions cannot learn (``delays_beyond_horizon``), the canary
        monitor's (``canary_*``), feedback submissions by dedup status (``feedback_<status>``).
        The worker's stats line and its Prometheus metrics (:data:`streams.telemetry.STATS_COUNTERS`)
        both read them here."""
        return {**self.stats, **{k: int(v) for k, v in self.engine.delayed.counters.items()},
                "delays_beyond_horizon": self.engine.delayed.delays.beyond_horizon,
                **{f"canary_{k}": int(v) for k, v in self.canary.stats.items()},
                **{f"feedback_{k}": int(v) for k, v in self.feedback_statuses.items()}}

    # ------------------------------------------------------------------ partitions
    def on_assigned(self, partitions: set[int]) -> None:
        """After a rebalance: drop state of partitions no longer owned, reload open incidents."""
        owned = {info.partition for info in self.engine.store.info}
        self.flush_state()
        self._snapshot_dirty = set()  # row numbers change when partitions are dropped
        self.engine.store.drop_partitions(owned - partitions)
        delays = self.engine.delayed.delays
        delays.drop_partitions(set(delays.partition_of.values()) - partitions)
        self.incidents.load(partitions)
        self.canary.on_assigned(partitions)

    def baseline_snapshot(self, at_ms: int | None = None) -> list[dict[str, Any]]:
        """Snapshot rows of the slices that changed since the previous snapshot."""
        store = self.engine.store
        rows = sorted(r for r in self._snapshot_dirty if r < store.n)
        self._snapshot_dirty = set()
        return store.snapshot_rows(rows, at_ms if at_ms is not None else now_ms())

    def flush_state(self) -> int:
        """Persist dirty slice rows and changed delay distributions (``delay|<tenant>``,
        :class:`~streams.processors.drift.delayed.DelayModel`) to the baselines backend, the open
        incidents changed without an event (:meth:`IncidentManager.flush`), then the feedback
        dedup state written since the last call (:class:`~streams.state.CheckpointedBackend`) and
        changed canary scorecards to theirs; returns slice rows written."""
        store = self.engine.store
        dirty = store.dirty
        self._snapshot_dirty |= dirty
        rows = sorted(dirty)
        for row, value in zip(rows, store.rows_bytes(rows), strict=True):
            info = store.info[row]
            self.baselines.put(info.key, value, info.partition)
        n = len(dirty)
        store.dirty = set()
        # the delay distributions changed since the last flush: same checkpoint as the slice rows
        # their learned counts belong with (docs/reliability.md)
        for key, value, partition in self.engine.delayed.delays.take_dirty():
            self.baselines.put(key, value, partition)
        # open incidents changed without an event (their marks count these rows' traffic)
        self.incidents.flush()
        # the feedback ids and dedup keys whose corrections these rows count, after them
        self.feedback_state.flush()
        self.canary.flush()
        return n

    def next_batch_seq(self) -> int:
        """The processing sequence number of the next batch: wall-clock microseconds since the
        epoch, strictly increasing in this pipeline (so also across a restart on a sane clock).
        Stored with every trace and feedback submission (``batch_seq``, ``batch_pos``) so that
        :mod:`streams.replay` rebuilds the worker's batches and their order; it never enters
        processing."""
        self._batch_seq = max(self._batch_seq + 1, time.time_ns() // 1000)
        return self._batch_seq

    # ------------------------------------------------------------------ traces
    def decode_traces(self, messages: Sequence[RawMessage], now_ms: int | None = None) -> Decoded:
        """Decode + validate trace messages (step 1 of :meth:`on_traces`)."""
        return self.trace_ingest.decode(messages, now_ms)

    def unindexed_trace_ids(self, decoded: Decoded) -> dict[str, list[str]]:
        """``{tenant: [trace_id]}`` of the valid traces of ``decoded`` that the in-memory index
        does not hold: the ids to look up in the store (:class:`StoredTraces`) before
        :meth:`on_traces`, so a trace_id ingested before a restart, a rebalance or an eviction
        is still recognised."""
        index = self.index.refs
        out: dict[str, set[str]] = {}
        cols = decoded.columns
        pairs = (zip(cols.tenant_id, cols.trace_id, strict=True) if cols is not None
                 else ((r["tenant_id"], r["trace_id"]) for r in decoded.records))
        for tenant, tid in pairs:
            if tid not in index:
                out.setdefault(tenant, set()).add(tid)
        return {t: sorted(ids) for t, ids in out.items()}

    def on_traces(self, messages: Sequence[RawMessage], now_ms: int | None = None, *,
                  decoded: Decoded | None = None, stored: StoredTraces | None = None) -> TraceOutput:
        """Process one batch of trace messages (see module docstring): decode and validate,
        drop replayed trace ids, detectors and incidents, canary scorecards, index the traces for
        the feedback join, redact their attributes.

        ``decoded`` comes from :meth:`decode_traces`; ``stored`` holds what the store knows of the
        ids :meth:`unindexed_trace_ids` named (without it only the in-memory index and the batch
        are checked for duplicates)."""
        seq = self.next_batch_seq()
        if decoded is None:
            decoded = self.decode_traces(messages, now_ms)
        traces = self._dedup_traces(decoded, messages, stored or {})
        if not traces.records:
            return TraceOutput(None, [], [], traces.dead_letters, traces.duplicates)
        cols = decoded.columns if decoded.columns is not None else trace_columns(
            decoded.records, decoded.partitions, decoded.offsets)
        if traces.kept is not None:  # replays dropped
            cols = cols.take(traces.kept)
        self._remember_releases(cols)
        incidents = self.process_columns(cols)
        emitted = self.canary.on_traces(cols)
        incidents += self._rollbacks(emitted)
        self._index_traces(cols, traces.fingerprints)
        if self.incidents.platform_signals:
            self._census(cols)
        attrs = self.redactor.redact_maps(cols.detail.attributes)
        self._redact_content_refs(traces.records)  # the same ref dicts cols.detail holds
        self.stats["traces"] += cols.n
        self.stats["incident_events"] += len(incidents)
        self.stats["verdicts"] += len(emitted)
        return TraceOutput(cols, attrs, incidents, traces.dead_letters, traces.duplicates,
                           [e.verdict for e in emitted], seq)

    def _dedup_traces(self, decoded: Decoded, messages: Sequence[RawMessage], stored: StoredTraces) -> DedupedTraces:
        """Drop traces whose id was seen before (in the trace index, earlier in this batch, or in
        the store: ``stored``): same content is a replay (skipped, counted), different content a
        ``duplicate_conflict`` dead letter, so a stored trace is never replaced by another record
        with its id (the traces table's ReplacingMergeTree key would let a copy with the same
        slice and event time replace it). A stored trace from the same Kafka message (partition,
        offset) is that message redelivered after a crash: processed again, as before (the
        baselines' replay guard counts it once; the row collapses in ClickHouse). The fingerprint
        of a trace (:func:`trace_fingerprint`) is a hash of the fields a replay cannot change."""
        dls = decoded.dead_letters
        records, parts, offs, idxs = decoded.records, decoded.partitions, decoded.offsets, decoded.indexes
        keep: list[int] = []
        seen_now: dict[str, int] = {}
        index = self.index
        cols = decoded.columns
        if cols is not None:  # trace_fingerprint of the same values, read from the decode pass's columns
            rec = cols.records  # (Avro ints and doubles: the int()/float() of trace_fingerprint change no hash)
            fps = list(map(hash, zip(map(itemgetter("event_time"), rec), map(itemgetter("latency_ms"), rec),
                                     map(itemgetter("output_tokens"), rec), map(itemgetter("outcome"), rec),
                                     cols.release_id, cols.tenant_id, strict=True)))
        else:
            fps = [trace_fingerprint(r["event_time"], r["latency_ms"], r["output_tokens"], r["outcome"],
                                     r["release"]["release_id"], r["tenant_id"]) for r in records]
        dup = 0
        msg_by_off = {(m.partition, m.offset): m for m in messages}
        for i, r in enumerate(records):
            tid = r["trace_id"]
            prev = index.get(tid)
            prev_fp = prev.fingerprint if prev is not None else (fps[seen_now[tid]] if tid in seen_now else None)
            if prev_fp is None and stored:
                rows = stored.get((r["tenant_id"], tid))
                if rows and not any(p == parts[i] and o == offs[i] for _, p, o in rows):
                    prev_fp = fps[i] if any(fp == fps[i] for fp, _, _ in rows) else rows[0][0]
            if prev_fp is None:
                seen_now[tid] = i
                keep.append(i)
            elif prev_fp == fps[i]:
                dup += 1
            else:
                dls.append(make_dead_letter(  # index in its message: deterministic id across redeliveries
                    msg_by_off[(parts[i], offs[i])], index=idxs[i], error_class="duplicate_conflict",
                    field_path="trace_id",
                    value=tid, payload=canonical_json(r) if idxs[i] >= 0 else None, tenant_id=r["tenant_id"],
                    message=f"trace_id {tid!r} was already ingested with different content"))
        kept = None
        if len(keep) != len(records):
            records = [records[i] for i in keep]
            parts = [parts[i] for i in keep]
            offs = [offs[i] for i in keep]
            fps = [fps[i] for i in keep]
            kept = np.asarray(keep, dtype=np.intp)
        self.stats["trace_duplicates"] += dup
        self.stats["dead_letters"] += len(dls)
        return DedupedTraces(records, parts, offs, fps, dup, dls, kept)

    def _redact_content_refs(self, records: list[dict[str, Any]]) -> None:
        """Redact the inline texts of the traces' ``input_ref`` / ``output_ref`` in place (after
        detection, which does not read them; before the sink stores them)."""
        for r in records:
            for k in ("input_ref", "output_ref"):
                ref = r.get(k)
                if ref and ref.get("text"):
                    ref["text"] = self.redactor.redact(ref["text"])

    def _remember_releases(self, cols: TraceColumns) -> None:
        """Keep the manifest of every release seen (incidents name the manifest they implicate)."""
        new = set(cols.release_id).difference(self.releases)
        if not new:
            return
        for i, rid in enumerate(cols.release_id):  # the first trace of each new release
            if rid in new:
                self.releases[rid] = dict(cols.records[i]["release"])
                new.discard(rid)
                if not new:
                    break

    def _index_traces(self, cols: TraceColumns, fingerprints: list[int]) -> None:
        """Remember the batch's traces for feedback joins and duplicate detection, and advance
        the per-partition trace watermarks."""
        wm = {int(p): int(cols.event_time_ms[cols.partition == p].max()) for p in np.unique(cols.partition)}
        self.index.add_many(cols.trace_id, TraceRef.from_columns(cols, fingerprints), wm)

    def process_columns(self, cols: TraceColumns) -> list[Incident]:
        """Baselines, detectors and incidents for validated traces (the part of :meth:`on_traces`
        after decoding; benchmarks call it directly with synthetic columns)."""
        alarms = self.engine.process_traces(cols)
        ctx = TraceContext(trace_id=lambda p: cols.trace_id[p], event_time_ms=lambda p: int(cols.event_time_ms[p]))
        incidents = self.incidents.on_alarms(alarms, ctx) if alarms else []
        incidents += self.incidents.sweep(int(cols.event_time_ms.max()))
        return incidents

    def apply_corrections(self, corrections: Sequence[tuple[dict[str, Any], TraceRef]],
                          feedback_watermarks: dict[int, int]) -> list[Incident]:
        """Count new corrections (``(feedback record, its trace)``) in the label-delayed detectors
        of every layer's slice of the trace, advance the feedback watermarks (partition → latest
        feedback event time, ms) and turn matured-bucket alarms into incidents."""
        rows, midx, t_ms, tids, fb_ms = [], [], [], [], []
        eng = self.engine
        timed = [(ref.event_time_ms, ref.partition, rec["event_time"] - ref.event_time_ms)
                 for rec, ref in corrections if "event_time" in rec]
        lag_keys = [(ref.tenant_id, ref.workflow) for rec, ref in corrections if "event_time" in rec]
        lags = tuple(np.array([x[i] for x in timed], dtype=np.int64 if i < 2 else np.float64) for i in range(3))
        # the feedback clock is kept per *trace* partition (the buckets' partition), from the
        # corrections' own event times: the feedback topic's partitions need not match
        fb_clock: dict[int, int] = {}
        for rec, ref in corrections:
            at = int(rec.get("event_time", feedback_watermarks.get(ref.partition, ref.event_time_ms)))
            fb_clock[ref.partition] = max(fb_clock.get(ref.partition, -1), at)
            metrics = [j for j, metric in enumerate(POISSON) if metric.feedback_event(rec)]
            for layer in eng.cfg.layers:
                use_c, use_w, use_r = LAYER_PARTS[layer][1:]
                row = eng.row_for(layer, ref.tenant_id, ref.cohort if use_c else None, ref.workflow if use_w else None,
                                  ref.release_id if use_r else None, ref.partition)
                for j in metrics:
                    rows.append(row)
                    midx.append(j)
                    t_ms.append(ref.event_time_ms)
                    tids.append(rec["trace_id"])
                    fb_ms.append(int(rec.get("event_time", fb_clock[ref.partition])))
        for p, t in feedback_watermarks.items():
            fb_clock[p] = max(fb_clock.get(p, -1), int(t))
        alarms = eng.process_feedback(np.asarray(rows, dtype=np.int64), np.asarray(midx, dtype=np.int64),
                                      np.asarray(t_ms, dtype=np.int64), tids, fb_clock, lags,
                                      np.asarray(fb_ms, dtype=np.int64), lag_keys)
        self.stats.update(eng.delayed.counters)
        incidents, self._tick_incidents = self._tick_incidents, []
        return incidents + (self.incidents.on_alarms(alarms, _NO_CONTEXT) if alarms else [])

    def _on_feedback_tick(self, partition: int, clock_ms: int, alarms: list[Alarm]) -> None:
        """One evaluation tick of a partition's feedback clock: its alarms become incidents, then
        the label-delayed incidents that are quiet resolve (kept for :meth:`apply_corrections`)."""
        if alarms:
            self._tick_incidents += self.incidents.on_alarms(alarms, _NO_CONTEXT)
        self._tick_incidents += self.incidents.sweep_delayed(partition, int(clock_ms))

    # ------------------------------------------------------------------ feedback
    def decode_feedback(self, messages: Sequence[RawMessage], now_ms: int | None = None) -> Decoded:
        """Decode + validate feedback messages (step 1 of :meth:`on_feedback`)."""
        return self.feedback_ingest.decode(messages, now_ms)

    def on_feedback(self, messages: Sequence[RawMessage], decoded: Decoded | None = None,
                    refs: list[TraceRef | None] | None = None) -> FeedbackOutput:
        """Process one batch of feedback messages whose traces are resolved: decode, join,
        dedup and rows (:class:`FeedbackProcessor`), new corrections into the label-delayed
        detectors and the canary scorecards.

        ``decoded``/``refs`` come from :meth:`decode_feedback` and
        :meth:`FeedbackProcessor.resolve` when the caller waited for the trace watermark;
        unresolved refs are dead-lettered as ``unknown_trace``.
        """
        seq = self.next_batch_seq()
        if decoded is None:
            decoded = self.decode_feedback(messages)
        if refs is None:
            refs, _ = self.feedback.resolve(decoded.records, decoded.partitions)
        res = self.feedback.process(decoded.records, decoded.partitions, decoded.offsets, refs,
                                    _source_messages(decoded, messages), decoded.indexes)
        for pos, sub in enumerate(res.submissions):  # where it was processed (streams.replay)
            sub["batch_seq"], sub["batch_pos"] = seq, pos
        dls = decoded.dead_letters + res.dead_letters
        fb_wm = _feedback_watermarks(decoded)
        incidents = self.apply_corrections(res.corrections, fb_wm)
        emitted = self.canary.on_feedback(
            ((rec["trace_id"], ref, is_safety_feedback(rec)) for rec, ref in res.corrections), fb_wm)
        incidents += self._rollbacks(emitted)
        self.stats["feedback"] += len(res.rows)
        for status, n in res.counts.items():
            self.feedback_statuses[status] = self.feedback_statuses.get(status, 0) + n
        self.stats["dead_letters"] += len(dls)
        self.stats["incident_events"] += len(incidents)
        self.stats["verdicts"] += len(emitted)
        return FeedbackOutput(res.rows, res.submissions, incidents, dls, res.counts,
                              verdicts=[e.verdict for e in emitted], patterns=res.patterns)

    # ------------------------------------------------------------------ platform signals
    def _census(self, cols: TraceColumns) -> None:
        """Queue a census signal for each partition of the batch whose tenant count grew or whose
        last census is ``platform_window_s / 10`` of event time old (the platform detector's
        clock and denominator)."""
        heartbeat_ms = self.incidents.platform_window_ms // 10
        parts = cols.partition.tolist()
        times = cols.event_time_ms.tolist()
        latest: dict[int, int] = {}
        for p, t, tenant in zip(parts, times, cols.tenant_id, strict=True):
            seen = self._tenants_seen.setdefault(p, set())
            if tenant not in seen:
                seen.add(tenant)
                self._census_ms[p] = -1  # grew: send now
            latest[p] = max(latest.get(p, 0), t)
        for p, t in latest.items():
            if t - self._census_ms.get(p, -1) >= heartbeat_ms or self._census_ms.get(p, -1) < 0:
                self._census_ms[p] = t
                self.incidents.signals_out.append({
                    "kind": "census", "source_partition": p, "tenants": len(self._tenants_seen[p]),
                    "event_time": t, "first_seen": t, "evidence_trace_ids": []})

    def take_signals(self) -> list[dict[str, Any]]:
        """The platform signals queued by the batches processed since the last call (for
        ``agent.platform-signals.v1``, key ``"platform"``); empty unless ``platform_signals``."""
        out, self.incidents.signals_out = self.incidents.signals_out, []
        return out

    def on_signals(self, messages: Sequence[RawMessage], now_ms: int | None = None) -> ActionOutput:
        """Process a batch of platform signals (the worker owning the signals partition): decode
        and validate (dead letters as for every input), then
        :meth:`IncidentManager.on_signals` per partition; returns the platform incident events
        (``rows`` is empty)."""
        decoded = self.signal_ingest.decode(messages, now_ms)
        events: list[Incident] = []
        by_part: dict[int, list[dict[str, Any]]] = {}
        for rec, p in zip(decoded.records, decoded.partitions, strict=True):
            by_part.setdefault(p, []).append(rec)
        for p, recs in sorted(by_part.items()):
            events += self.incidents.on_signals(recs, p)
        self.stats["dead_letters"] += len(decoded.dead_letters)
        self.stats["incident_events"] += len(events)
        return ActionOutput(events, list(decoded.dead_letters), [])

    # ------------------------------------------------------------------ incident actions
    def on_actions(self, messages: Sequence[RawMessage], now_ms: int | None = None) -> ActionOutput:
        """Process one batch of ``agent.incident-actions.v1`` messages: decode and validate
        (dead letters as for every input), apply each action to its incident
        (:meth:`IncidentManager.on_action`: refusals become dead letters with the reason, replays
        count once), and return the incident revisions and the ledger rows (reason redacted)."""
        decoded = self.action_ingest.decode(messages, now_ms)
        dls = list(decoded.dead_letters)
        events: list[Incident] = []
        rows: list[dict[str, Any]] = []
        replays = 0
        msg_by_off = {(m.partition, m.offset): m for m in messages}
        for rec, p, o in zip(decoded.records, decoded.partitions, decoded.offsets, strict=True):
            out = self.incidents.on_action(rec, p)
            if out.replay:
                replays += 1
            elif out.error_class is not None:
                dls.append(make_dead_letter(msg_by_off[(p, o)], index=-1, error_class=out.error_class,
                                            field_path=out.field, value=out.value, message=out.message,
                                            tenant_id=rec["tenant_id"], now_ms=now_ms))
            elif out.event is not None:
                events.append(out.event)
                rows.append(_action_row(rec, out.event, self.redactor.redact))
        self.stats["actions"] += len(rows)
        self.stats["action_replays"] += replays
        self.stats["dead_letters"] += len(dls)
        self.stats["incident_events"] += len(events)
        return ActionOutput(events, dls, rows, replays)

    def _rollbacks(self, emitted: list[Emitted]) -> list[Incident]:
        """Release-regression incident events opened or updated by rollback verdicts."""
        out = []
        for em in emitted:
            if em.verdict.verdict == Verdict.rollback:
                event = self.incidents.on_rollback(em.verdict, em.partition)
                if event is not None:
                    out.append(event)
        return out


def _action_row(rec: dict[str, Any], event: Incident, redact: Callable[[str], str]) -> dict[str, Any]:
    """The ``incident_actions`` ledger row of an applied action (times in epoch ms): the action
    and what it was applied to (the incident's release, restore release, kind, group and the
    revision it caused), as the ledger views need them without joining."""
    taken = next(a for a in reversed(event.actions) if a.action_id == rec["action_id"])
    return {"tenant_id": rec["tenant_id"], "incident_id": rec["incident_id"], "action_id": rec["action_id"],
            "action": rec["action"], "actor": rec["actor"], "reason": redact(rec["reason"]), "at": rec["at"],
            "until": rec.get("until"), "release_id": taken.release_id or "",
            "restored_release_id": taken.restored_release_id or "", "incident_release_id": event.release_id or "",
            "incident_kind": event.kind.value, "metric_group": event.metric_group, "revision": event.revision,
            "status": event.status.value}


_NO_CONTEXT = TraceContext(trace_id=lambda p: "", event_time_ms=lambda p: 0)


def _source_messages(decoded: Decoded, messages: Sequence[RawMessage]) -> list[RawMessage]:
    """The message each decoded record came from (dead letters carry its envelope)."""
    msg_by_off = {(m.partition, m.offset): m for m in messages}
    return [msg_by_off[(p, o)] for p, o in zip(decoded.partitions, decoded.offsets, strict=True)]


def _feedback_watermarks(decoded: Decoded) -> dict[int, int]:
    """Per partition, the latest feedback event time of the batch, ms."""
    fb_wm: dict[int, int] = {}
    for rec, p in zip(decoded.records, decoded.partitions, strict=True):
        fb_wm[p] = max(fb_wm.get(p, -1), int(rec["event_time"]))
    return fb_wm


def now_ms() -> int:
    """Wall clock, epoch ms."""
    return int(time.time() * 1000)
