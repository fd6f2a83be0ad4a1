"""Feedback processing: deduplicate, reconcile and score corrections of joined feedback, and turn
them into rows and detector events.

Deduplication (stream side; the ClickHouse table collapses again by ``dedup_key``):

- **exact replay**: a ``feedback_id`` seen before (any number of redeliveries) → ``replay``;
  no new correction, the trace's current rows are written again (identical, so ``FINAL`` is
  unchanged; this also repairs ClickHouse when the changelog got ahead of it before a crash);
- **redelivery**: the same Kafka position again (the worker crashed before acknowledging) →
  the submission keeps the status it got the first time, the rows are written again;
- **resubmit**: a new ``feedback_id`` with the same tenant, trace, category and normalised
  correction (:func:`normalise_correction`) → ``resubmit``, same ``dedup_key``;
- **near-duplicate**: a new ``feedback_id`` on the same tenant, trace and category whose
  correction is the same one worded differently
  (:func:`streams.processors.feedback.corrections.compare`, rapidfuzz token-set ratio >=
  ``near_dup_threshold`` plus number and polarity guards) →
  ``near_duplicate``, and it takes the ``dedup_key`` of the correction it duplicates.

Each unique correction (``dedup_key``) has one row after ``FINAL``: its first submission's
wording (resubmits and near-duplicates only add agreement), with the correction's aggregates
(submissions, distinct agreeing reviewers, confidence, conflict outcome, pattern). Every change
writes a new row with a higher ``version`` (``max(previous version + 1, event time)``), so
ReplacingMergeTree keeps the newest.

Conflicts: two corrections of one trace conflict when different reviewers gave them and they
differ in category or contradict each other; both stay, flagged, and the rule of
:func:`streams.processors.feedback.corrections.resolve` (role weight, then majority, then recency)
says which wins and why. Confidence: :func:`streams.processors.feedback.corrections.confidence`.

Only ``new`` feedback counts in the correction-rate detectors, so replays cannot fake a
regression.

State (``StateBackend``, the worker's ``feedback-seen`` changelog table, written to the trace's
partition): ``fb|<tenant>|<trace>`` holds the trace's corrections (category, similarity text,
reviewers, counters, conflict outcome; bounded by ``max_corrections_per_trace`` and
``max_submissions_per_trace``, beyond which submissions are dead-lettered as
``feedback_limit``); ``fr|<tenant>|<dedup_key>`` the correction's latest row (redacted text only);
``fid|<tenant>|<feedback_id>`` the trace of every id seen. The trace record is written last, so
after a crash either it and the rows it refers to are in the changelog or the submission is
processed again from scratch: a restarted worker behaves as if it had never stopped. The
pipeline holds these writes until its state checkpoint (:class:`streams.state.CheckpointedBackend`),
which writes them after the slice rows counting the same corrections: a crash takes both back
to the same checkpoint, so a redelivered correction is new again and counted once.

Trace join (which trace a feedback item belongs to, and how long it waits for it):
:mod:`streams.processors.feedback.traces`.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas import DeadLetter
from schemas.codec import canonical_json
from streams.privacy import Redactor, tenant_hmac
from streams.processors.columns import RawMessage
from streams.processors.feedback.corrections import (
    NEAR_DUP_THRESHOLD,
    ROLE_WEIGHT,
    SEVERITY_ORDER,
    Candidate,
    compare,
    confidence,
    correction_template,
    pattern_id,
    resolve,
    similarity,
    similarity_text,
)
from streams.processors.feedback.traces import TraceIndex, TraceRef
from streams.processors.ingest import make_dead_letter
from streams.state import StateBackend

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_WS = re.compile(r"\s+")


def normalise_correction(text: str | None) -> str:
    """Canonical form of a correction for resubmit detection: NFKC, case-folded, punctuation
    removed, whitespace collapsed. ``"Metoprolol 25 mg, BID."`` → ``"metoprolol 25 mg bid"``."""
    if not text:
        return ""
    t = unicodedata.normalize("NFKC", text).casefold()
    return _WS.sub(" ", _PUNCT.sub(" ", t)).strip()


def dedup_key(tenant_id: str, trace_id: str, category: str, normalised: str) -> str:
    """Resubmit identity: SHA-1 of tenant, trace, category and normalised correction (hex, 32)."""
    return hashlib.sha1(f"{tenant_id}\x1f{trace_id}\x1f{category}\x1f{normalised}".encode()).hexdigest()[:32]


def conflict_id(tenant_id: str, trace_id: str) -> str:
    """Id of a trace's conflict group: SHA-1 of tenant and trace (hex, 16)."""
    return hashlib.sha1(f"{tenant_id}\x1f{trace_id}".encode()).hexdigest()[:16]


@dataclass
class FeedbackResult:
    """Outcome of one feedback batch."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # feedback table rows (new revisions + rewrites)
    submissions: list[dict[str, Any]] = field(default_factory=list)  # feedback_submissions rows
    corrections: list[tuple[dict[str, Any], TraceRef]] = field(default_factory=list)  # new ones only
    dead_letters: list[DeadLetter] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # indexes still waiting for their trace
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STATUSES})
    #: tenant → pattern ids whose rows were written (for :meth:`ClickHouseSink.refresh_patterns`)
    patterns: dict[str, set[str]] = field(default_factory=dict)


#: dedup_status values of a submission.
STATUSES = ("new", "replay", "resubmit", "near_duplicate")
#: distinct reviewer hashes / roles / sources kept per correction (more still count as submissions)
MAX_REVIEWERS_PER_CORRECTION = 32


@dataclass(slots=True)
class _Correction:
    """State of one unique correction on a trace (JSON in the trace record)."""

    cat: str
    text: str  # similarity text of the first wording (redacted)
    tpl: str  # pattern template of the first wording
    pattern: str  # pattern id
    rev: int = 0  # version of the last row written
    rv: list[str] = field(default_factory=list)  # distinct reviewer hashes
    roles: list[str] = field(default_factory=list)
    srcs: list[str] = field(default_factory=list)
    sev: str = "low"
    subs: int = 0  # non-replay submissions folded in
    last: int = 0  # latest submission event time, ms
    res: list[Any] = field(default_factory=lambda: [False, "", "", "", ""])  # Resolution fields

    def add(self, reviewer: str, role: str, source: str, severity: str, event_ms: int) -> None:
        """Fold one submission in."""
        for lst, v in ((self.rv, reviewer), (self.roles, role), (self.srcs, source)):
            if v not in lst and len(lst) < MAX_REVIEWERS_PER_CORRECTION:
                lst.append(v)
        if SEVERITY_ORDER[severity] > SEVERITY_ORDER[self.sev]:
            self.sev = severity
        self.subs += 1
        self.last = max(self.last, event_ms)

    def candidate(self, key: str) -> Candidate:
        """View for conflict resolution."""
        return Candidate(key, self.cat, self.text, frozenset(self.rv), max(ROLE_WEIGHT[r] for r in self.roles),
                         self.last)

    def aggregates(self, tenant: str, trace_id: str) -> dict[str, Any]:
        """Row columns derived from the state (confidence, agreement, conflict outcome)."""
        conflict, outcome, rule, against, note = self.res
        return {"submissions": self.subs, "agreement_count": len(self.rv),
                "confidence": confidence(self.srcs, self.roles, len(self.rv), self.sev),
                "conflict": bool(conflict), "conflict_id": conflict_id(tenant, trace_id) if conflict else "",
                "resolution": outcome, "resolution_rule": rule, "resolved_against": against,
                "resolution_note": note}


class _TraceState:
    """Corrections and submission ids of one (tenant, trace), as stored under ``fb|``."""

    def __init__(self, raw: bytes | None) -> None:
        d = json.loads(raw) if raw else {"k": {}, "f": {}}
        self.keys: dict[str, _Correction] = {k: _Correction(**v) for k, v in d["k"].items()}
        self.fids: dict[str, list[Any]] = d["f"]  # feedback_id → [dedup_key, status, partition, offset, index]

    def dumps(self) -> bytes:
        return json.dumps({"k": {k: {f: getattr(c, f) for f in _Correction.__slots__} for k, c in self.keys.items()},
                           "f": self.fids}, separators=(",", ":"), sort_keys=True).encode()


class FeedbackProcessor:
    """Dedup + join + reconciliation + row building for decoded feedback.

    Args:
        backend: persistent state (faust changelog table in the worker), see module docstring.
        index: recent traces.
        redactor: applied to corrected text and edits before they are stored or compared.
        hmac_key: tenant-keyed HMAC key for reviewer ids.
        lookup: ``(tenant_id, [trace_id]) -> {trace_id: TraceRef}`` for traces no longer in the
            index (ClickHouse in the worker); may return fewer.
        allowed_lateness_ms: how far the trace watermark must pass the feedback's event time
            before an unknown trace is declared unknown.
        near_dup_threshold: rapidfuzz token-set ratio (0-100) from which two corrections of one
            trace and category are near-duplicates.
        max_corrections_per_trace: unique corrections kept per trace; a further distinct one is
            dead-lettered (``feedback_limit``).
        max_submissions_per_trace: distinct feedback ids kept per trace; a further one is
            dead-lettered (``feedback_limit``).
    """

    def __init__(self, backend: StateBackend, index: TraceIndex, redactor: Redactor, hmac_key: bytes,
                 lookup: Callable[[str, list[str]], dict[str, TraceRef]] | None = None,
                 allowed_lateness_ms: int = 5_000, *, near_dup_threshold: float = NEAR_DUP_THRESHOLD,
                 max_corrections_per_trace: int = 32, max_submissions_per_trace: int = 256) -> None:
        self.backend = backend
        self.index = index
        self.redactor = redactor
        self.hmac_key = hmac_key
        self.lookup = lookup
        self.allowed_lateness_ms = allowed_lateness_ms
        self.near_dup_threshold = near_dup_threshold
        self.max_corrections_per_trace = max_corrections_per_trace
        self.max_submissions_per_trace = max_submissions_per_trace

    def resolve(self, records: list[dict[str, Any]], partitions: list[int]) -> tuple[list[TraceRef | None], list[int]]:
        """Trace refs for ``records`` (index, then ``lookup``), and the indexes still to wait for.

        An item waits while its partition's trace watermark is below its event time plus the
        allowed lateness; an item with no ref that does not wait is an unknown trace.
        """
        refs: list[TraceRef | None] = [self.index.get(r["trace_id"]) for r in records]
        missing = [i for i, ref in enumerate(refs) if ref is None]
        if missing and self.lookup is not None:
            by_tenant: dict[str, list[str]] = {}
            for i in missing:
                by_tenant.setdefault(records[i]["tenant_id"], []).append(records[i]["trace_id"])
            found: dict[str, TraceRef] = {}
            for tenant, ids in by_tenant.items():
                found.update(self.lookup(tenant, ids))
            for i in missing:
                refs[i] = found.get(records[i]["trace_id"])
        wm = self.index.watermark_ms
        wait = [i for i, ref in enumerate(refs)
                if ref is None and wm.get(partitions[i], -1) < records[i]["event_time"] + self.allowed_lateness_ms]
        return refs, wait

    # ------------------------------------------------------------------ state
    def _load(self, tenant: str, trace_id: str) -> _TraceState:
        return _TraceState(self.backend.get(f"fb|{tenant}|{trace_id}"))

    def _row(self, tenant: str, key: str) -> dict[str, Any] | None:
        raw = self.backend.get(f"fr|{tenant}|{key}")
        return json.loads(raw) if raw else None

    def process(self, records: list[dict[str, Any]], partitions: list[int], offsets: list[int],
                refs: list[TraceRef | None], source: list[RawMessage], indexes: list[int] | None = None
                ) -> FeedbackResult:
        """Deduplicate, reconcile and build rows for records whose trace is resolved (``refs[i]``
        set); records with ``refs[i] is None`` are dead-lettered as ``unknown_trace``, records over
        the per-trace limits as ``feedback_limit``.

        ``source[i]`` is the message each record came from (for the dead-letter envelope);
        ``indexes[i]`` the record's index inside it (-1 or ``None``: a single-record message).
        Rows and state are a function of the records and their Kafka positions only, so
        processing the same stream again gives the same rows.
        """
        out = FeedbackResult()
        for i, (rec, ref) in enumerate(zip(records, refs, strict=True)):
            tenant = rec["tenant_id"]
            pos = [partitions[i], offsets[i], indexes[i] if indexes else -1]
            if ref is None or ref.tenant_id != tenant:
                out.dead_letters.append(make_dead_letter(
                    source[i], index=pos[2], error_class="unknown_trace", field_path="trace_id", value=rec["trace_id"],
                    payload=canonical_json(rec) if pos[2] >= 0 else None,
                    message=f"feedback {rec['feedback_id']} refers to trace {rec['trace_id']!r}, unknown for tenant "
                            f"{tenant!r} after the trace watermark passed its event time",
                    tenant_id=tenant))
                continue
            self._one(rec, ref, pos, source[i], out)
        return out

    def _one(self, rec: dict[str, Any], ref: TraceRef, pos: list[int], src: RawMessage, out: FeedbackResult) -> None:
        tenant, trace_id, fid = rec["tenant_id"], rec["trace_id"], rec["feedback_id"]
        st = self._load(tenant, trace_id)
        text = rec.get("corrected_text") or rec.get("edit_diff") or ""
        norm = normalise_correction(text)
        key = dedup_key(tenant, trace_id, rec["category"], norm)
        seen = st.fids.get(fid)
        if seen is not None:
            # replay (or redelivery): the correction does not change. Its row is written with
            # version 0, so FINAL keeps the correction's real row; a redelivery (same Kafka
            # position) also writes the trace's current rows again, in case the changelog got
            # ahead of ClickHouse before a crash, and its submission keeps its first status.
            key = seen[0]
            corr = st.keys[key]
            row = self._new_row(rec, ref, key, corr, "replay", norm,
                                tenant_hmac(self.hmac_key, tenant, rec["reviewer_id"]), version=0)
            out.rows.append(row)
            redelivery = seen[2:] == pos
            touched = out.patterns.setdefault(tenant, set())
            touched.add(corr.pattern)
            if redelivery:
                for k in sorted(st.keys):
                    stored = self._row(tenant, k)
                    if stored is not None:
                        out.rows.append(stored)
                        touched.add(stored["pattern_id"])
            self._submission(out, rec, pos, key, seen[1] if redelivery else "replay")
            return
        other = self.backend.get(f"fid|{tenant}|{fid}")
        if other is not None and other.decode() != trace_id:
            # the id was used before on another trace: a replay as far as dedup goes, no row
            self._submission(out, rec, pos, key, "replay")
            return
        red_text = self.redactor.redact(text) or ""
        sim = similarity_text(red_text)
        if key in st.keys:
            status = "resubmit"
        else:
            match = self._near_duplicate(st, rec["category"], sim)
            if match is not None:
                status, key = "near_duplicate", match
            else:
                status = "new"
        limit = None
        if len(st.fids) >= self.max_submissions_per_trace:
            limit = f"{len(st.fids)} feedback ids (SELFHEAL_FEEDBACK_MAX_SUBMISSIONS_PER_TRACE)"
        elif status == "new" and len(st.keys) >= self.max_corrections_per_trace:
            limit = f"{len(st.keys)} unique corrections (SELFHEAL_FEEDBACK_MAX_CORRECTIONS_PER_TRACE)"
        if limit is not None:
            out.dead_letters.append(make_dead_letter(
                src, index=pos[2], error_class="feedback_limit", field_path="trace_id", value=trace_id,
                message=f"feedback {fid} not aggregated: trace {trace_id!r} of tenant {tenant!r} already has {limit}",
                tenant_id=tenant))
            return
        reviewer = tenant_hmac(self.hmac_key, tenant, rec["reviewer_id"])
        if status == "new":
            tpl = correction_template(red_text)
            st.keys[key] = _Correction(rec["category"], sim, tpl,
                                       pattern_id(rec["category"], ref.workflow, ref.tool, tpl, ref.release_id))
            out.corrections.append((rec, ref))
        corr = st.keys[key]
        corr.add(reviewer, rec["reviewer_role"], rec["source"], rec["severity"], int(rec["event_time"]))
        st.fids[fid] = [key, status, *pos]
        # conflicts: re-resolve the trace; rewrite every correction whose outcome changed
        resolutions = resolve([c.candidate(k) for k, c in st.keys.items()], self.near_dup_threshold)
        changed = []
        for k, c in st.keys.items():
            r = resolutions[k]
            res = [r.conflict, r.outcome, r.rule, r.against, r.note]
            if res != c.res:
                c.res = res
                if k != key:
                    changed.append(k)
        row = self._new_row(rec, ref, key, corr, status, norm, reviewer)
        if status != "new":
            # a resubmit or near-duplicate is the same correction sent again: the row keeps the
            # original wording (evaluation sets get the reviewer's first text, not a re-typing)
            first = self._row(tenant, key)
            if first is not None:
                for col in ("corrected_text", "edit_diff", "normalised_correction"):
                    row[col] = first[col]
        rows = [row]
        for k in changed:
            row = self._row(tenant, k)
            if row is not None:
                c = st.keys[k]
                c.rev = row["version"] = c.rev + 1
                row.update(c.aggregates(tenant, trace_id))
                rows.append(row)
        for row in rows:
            self.backend.put(f"fr|{tenant}|{row['dedup_key']}", json.dumps(row, separators=(",", ":")).encode(),
                             ref.partition)
            out.rows.append(row)
            out.patterns.setdefault(tenant, set()).add(row["pattern_id"])
        self.backend.put(f"fb|{tenant}|{trace_id}", st.dumps(), ref.partition)  # last: the commit record
        self.backend.put(f"fid|{tenant}|{fid}", trace_id.encode(), ref.partition)
        self._submission(out, rec, pos, key, status)

    def _near_duplicate(self, st: _TraceState, category: str, sim: str) -> str | None:
        """Dedup key of the correction (same category) that ``sim`` near-duplicates, if any
        (the most similar one; ties: smallest key)."""
        best: tuple[float, str] | None = None
        for k in sorted(st.keys):
            c = st.keys[k]
            if c.cat == category and compare(sim, c.text, self.near_dup_threshold) == "near_duplicate":
                score = similarity(sim, c.text)
                if best is None or score > best[0]:
                    best = (score, k)
        return best[1] if best is not None else None

    def _new_row(self, rec: dict[str, Any], ref: TraceRef, key: str, corr: _Correction, status: str, norm: str,
                 reviewer: str, version: int | None = None) -> dict[str, Any]:
        """The row a submission writes: its own wording and the correction's aggregates.

        ``version`` ``None`` advances the correction's version (``max(previous + 1, event time)``).
        """
        tenant = rec["tenant_id"]
        if version is None:
            corr.rev = version = max(corr.rev + 1, int(rec["event_time"]))
        return {
            "tenant_id": tenant, "dedup_key": key, "feedback_id": rec["feedback_id"], "trace_id": rec["trace_id"],
            "session_id": rec.get("session_id") or ref.session_id, "cohort": ref.cohort, "workflow": ref.workflow,
            "release_id": ref.release_id, "source": rec["source"], "category": rec["category"],
            "regulatory_tags": list(rec["regulatory_tags"]), "severity": rec["severity"],
            "original_output_hash": rec["original_output_hash"],
            "corrected_text": self.redactor.redact(rec.get("corrected_text")) or "",
            "edit_diff": self.redactor.redact(rec.get("edit_diff")) or "",
            # normalise the redacted text: redacting the normalised one misses case-folded names
            "normalised_correction": normalise_correction(self.redactor.redact(rec.get("corrected_text")
                                                                               or rec.get("edit_diff") or "")),
            "reviewer_id_hash": reviewer, "reviewer_role": rec["reviewer_role"], "event_time": int(rec["event_time"]),
            "dedup_status": status, "version": version, "trace_event_time": ref.event_time_ms, "tool": ref.tool,
            "pattern_id": corr.pattern, "template": corr.tpl, **corr.aggregates(tenant, rec["trace_id"]),
        }

    @staticmethod
    def _submission(out: FeedbackResult, rec: dict[str, Any], pos: list[int], key: str, status: str) -> None:
        out.counts[status] += 1
        out.submissions.append({
            "tenant_id": rec["tenant_id"], "source_partition": pos[0], "source_offset": pos[1],
            "record_index": pos[2], "feedback_id": rec["feedback_id"], "dedup_key": key,
            "trace_id": rec["trace_id"], "category": rec["category"], "dedup_status": status,
            "event_time": rec["event_time"]})

