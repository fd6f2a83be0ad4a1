"""Feedback: join to the trace, deduplicate, and turn corrections into rows and detector events.

Deduplication (stream side; the ClickHouse table deduplicates again by ``dedup_key``):

- **exact replay**: a ``feedback_id`` seen before (any number of redeliveries) → ``replay``;
- **resubmit**: a new ``feedback_id`` with the same tenant, trace, category and normalised
  correction (:func:`normalise_correction`) → ``resubmit``; its ``dedup_key`` equals the first
  submission's, so ``FINAL`` keeps one row.

Only ``new`` feedback counts in the correction-rate detectors, so replays cannot fake a
regression. Seen ids and keys persist in the worker's changelog table (``StateBackend``), so a
restarted worker still recognises replays.

Trace join: a feedback item needs its trace's slice (cohort, workflow, release). The
:class:`TraceIndex` keeps recent traces of this worker's partitions (bounded FIFO); older ones
are looked up in ClickHouse. Feedback always follows its trace, so while the partition's trace
watermark (latest event time seen) is behind the feedback's event time, the item waits; once the
watermark passes (plus ``allowed_lateness_ms``) and the trace is still unknown, it is dead-lettered
as ``unknown_trace``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas import DeadLetter
from schemas.feedback import SAFETY_CATEGORIES
from streams.processors.incidents import StateBackend
from streams.processors.ingest import RawMessage, make_dead_letter
from streams.redact import Redactor, tenant_hmac

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


@dataclass(slots=True, frozen=True)
class TraceRef:
    """What feedback needs from its trace."""

    tenant_id: str
    cohort: str
    workflow: str
    release_id: str
    partition: int
    session_id: str = ""
    fingerprint: int = 0
    event_time_ms: int = 0
    #: rollout of the trace: arm (``ingest.ARM_CODES``, -1 = none), candidate release, stage %
    rollout_arm: int = -1
    candidate_release_id: str = ""
    stage_pct: float = 0.0


class TraceIndex:
    """Recent traces by id (bounded, oldest evicted first) and the trace watermark per partition.

    Args:
        capacity: traces kept (about 250 bytes each).
    """

    def __init__(self, capacity: int = 500_000) -> None:
        self.capacity = capacity
        self.refs: dict[str, TraceRef] = {}
        self.watermark_ms: dict[int, int] = {}

    def add_many(self, trace_ids: list[str], refs: list[TraceRef], max_event_ms: dict[int, int]) -> None:
        """Add traces (parallel lists) and advance the per-partition watermarks."""
        self.refs.update(zip(trace_ids, refs, strict=True))
        over = len(self.refs) - self.capacity
        if over > 0:
            for k in list(self._oldest(over)):
                del self.refs[k]
        for p, t in max_event_ms.items():
            if t > self.watermark_ms.get(p, -1):
                self.watermark_ms[p] = t

    def _oldest(self, n: int) -> Iterable[str]:
        it = iter(self.refs)
        for _ in range(n):
            yield next(it)

    def get(self, trace_id: str) -> TraceRef | None:
        """The trace's ref, if it is still in memory."""
        return self.refs.get(trace_id)


@dataclass
class FeedbackResult:
    """Outcome of one feedback batch."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # feedback table rows (all statuses)
    submissions: list[dict[str, Any]] = field(default_factory=list)  # feedback_submissions rows
    corrections: list[tuple[dict[str, Any], TraceRef]] = field(default_factory=list)  # new ones only
    dead_letters: list[DeadLetter] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # indexes still waiting for their trace
    counts: dict[str, int] = field(default_factory=lambda: {"new": 0, "replay": 0, "resubmit": 0})


class FeedbackProcessor:
    """Dedup + join + row building for decoded feedback.

    Args:
        backend: persistent seen-set (faust changelog table in the worker).
        index: recent traces.
        redactor: applied to corrected text and edits before they are stored.
        hmac_key: tenant-keyed HMAC key for reviewer ids.
        lookup: ``(tenant_id, [trace_id]) -> {trace_id: TraceRef}`` for traces no longer in the
            index (ClickHouse in the worker); may return fewer.
        allowed_lateness_ms: how far the trace watermark must pass the feedback's event time
            before an unknown trace is declared unknown.
    """

    def __init__(self, backend: StateBackend, index: TraceIndex, redactor: Redactor, hmac_key: bytes,
                 lookup: Callable[[str, list[str]], dict[str, TraceRef]] | None = None,
                 allowed_lateness_ms: int = 5_000) -> None:
        self.backend = backend
        self.index = index
        self.redactor = redactor
        self.hmac_key = hmac_key
        self.lookup = lookup
        self.allowed_lateness_ms = allowed_lateness_ms

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
        wait = [
            i for i, ref in enumerate(refs)
            if ref is None and self.index.watermark_ms.get(partitions[i], -1) < records[i]["event_time"] + self.allowed_lateness_ms
        ]
        return refs, wait

    def process(self, records: list[dict[str, Any]], partitions: list[int], offsets: list[int],
                refs: list[TraceRef | None], source: list[RawMessage], indexes: list[int] | None = None
                ) -> FeedbackResult:
        """Deduplicate and build rows for records whose trace is resolved (``refs[i]`` set);
        records with ``refs[i] is None`` are dead-lettered as ``unknown_trace``.

        ``source[i]`` is the message each record came from (for the dead-letter envelope).
        """
        out = FeedbackResult()
        for i, (rec, ref) in enumerate(zip(records, refs, strict=True)):
            tenant = rec["tenant_id"]
            if ref is None or ref.tenant_id != tenant:
                out.dead_letters.append(make_dead_letter(
                    source[i], index=i, error_class="unknown_trace", field_path="trace_id", value=rec["trace_id"],
                    message=f"feedback {rec['feedback_id']} refers to trace {rec['trace_id']!r}, unknown for tenant "
                            f"{tenant!r} after the trace watermark passed its event time",
                    tenant_id=tenant))
                continue
            text = rec.get("corrected_text") or rec.get("edit_diff") or ""
            norm = normalise_correction(text)
            key = dedup_key(tenant, rec["trace_id"], rec["category"], norm)
            fid_key = f"fid|{tenant}|{rec['feedback_id']}"
            dk_key = f"dk|{tenant}|{key}"
            if self.backend.get(fid_key) is not None:
                status = "replay"
            elif self.backend.get(dk_key) is not None:
                status = "resubmit"
                self.backend.put(fid_key, key.encode(), ref.partition)
            else:
                status = "new"
                self.backend.put(fid_key, key.encode(), ref.partition)
                self.backend.put(dk_key, rec["feedback_id"].encode(), ref.partition)
                out.corrections.append((rec, ref))
            out.counts[status] += 1
            out.submissions.append({
                "tenant_id": tenant, "source_partition": partitions[i], "source_offset": offsets[i],
                "record_index": indexes[i] if indexes else -1, "feedback_id": rec["feedback_id"], "dedup_key": key,
                "trace_id": rec["trace_id"], "category": rec["category"], "dedup_status": status,
                "event_time": rec["event_time"]})
            out.rows.append({
                "tenant_id": tenant, "dedup_key": key, "feedback_id": rec["feedback_id"], "trace_id": rec["trace_id"],
                "session_id": rec.get("session_id") or ref.session_id, "cohort": ref.cohort, "workflow": ref.workflow,
                "release_id": ref.release_id, "source": rec["source"], "category": rec["category"],
                "regulatory_tags": list(rec["regulatory_tags"]), "severity": rec["severity"],
                "original_output_hash": rec["original_output_hash"],
                "corrected_text": self.redactor.redact(rec.get("corrected_text")) or "",
                "edit_diff": self.redactor.redact(rec.get("edit_diff")) or "",
                "normalised_correction": self.redactor.redact(norm) or "",
                "reviewer_id_hash": tenant_hmac(self.hmac_key, tenant, rec["reviewer_id"]),
                "reviewer_role": rec["reviewer_role"], "event_time": rec["event_time"], "dedup_status": status,
                "version": int(rec["event_time"]),
            })
        return out


def is_safety(record: dict[str, Any]) -> bool:
    """Feedback that counts as a safety signal (unsafe recommendation, medication error)."""
    return record["category"] in SAFETY_CATEGORIES
