"""Ingest: decode and validate a batch of Kafka messages; bad input becomes dead-letter envelopes.

Input is a list of :class:`RawMessage` (what faust hands the agent with ``value_serializer='raw'``).
Each message is one Avro single-object payload: either a batch (``AgentTraceBatch``,
``FeedbackBatch``) or a single record (``AgentTrace``, ``Feedback``). Every record that passes is
returned with its provenance (partition, offset, index in the message); every message or record
that fails becomes a :class:`schemas.DeadLetter` naming the error class, field and value. Nothing
is dropped: ``len(records) + len(dead_letters) == records seen`` (whole-message failures count as
one dead letter).

Dead-letter reasons (``error_class``; ``field`` and ``value`` name what is at fault):

- whole message (``record_index = -1``): ``empty`` (null or empty value), ``oversized``,
  ``not_avro``, ``unknown_schema`` (fingerprint), ``truncated``, ``invalid_utf8``,
  ``unknown_enum``, ``bad_union_branch``, ``negative_length``, ``bad_boolean``,
  ``trailing_bytes``, ``malformed_avro``, ``schema_resolution`` (the decoder names the field:
  :mod:`schemas.diagnose`), ``wrong_schema`` (a record type the topic does not carry),
  ``invalid_key`` (no key, not UTF-8, or not a tenant id), ``validation`` of an empty batch;
- per record: ``validation`` (the contract models: ranges, NaN, patterns, event-time window,
  sizes, ...), ``key_mismatch`` (record tenant differs from the message key); later stages add
  ``duplicate_conflict`` (:mod:`streams.pipeline`) and ``unknown_trace`` (feedback).

Validation uses the pydantic contract models (``AgentTrace.model_validate`` with the event-time
window in the validation context). It is per record (~7 µs per trace); see BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from schemas import AgentTrace, DeadLetter, Feedback
from schemas.codec import AvroCodec, CodecError, canonical_json
from schemas.common import TENANT_ID_PATTERN

TRACE_SCHEMAS = {"selfheal.v1.AgentTrace": None, "selfheal.v1.AgentTraceBatch": "traces"}
FEEDBACK_SCHEMAS = {"selfheal.v1.Feedback": None, "selfheal.v1.FeedbackBatch": "items"}

OUTCOME_CODES = {"success": 0, "failure": 1, "escalated": 2, "abandoned": 3}
ARM_CODES = {"control": 0, "canary": 1, "shadow": 2}
TENANT_KEY_RE = re.compile(TENANT_ID_PATTERN.removeprefix("^").removesuffix("$"))


@dataclass(slots=True)
class RawMessage:
    """One Kafka message as consumed: bytes plus where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0


@dataclass(slots=True)
class Decoded:
    """Valid records of one processing batch with their provenance (parallel lists)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)  # index inside the batch message (-1: single record)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    messages: int = 0


def dead_letter_id(topic: str, partition: int, offset: int, index: int) -> str:
    """Deterministic id of a dead letter: a redelivered bad message maps to the same row."""
    return hashlib.sha1(f"{topic}|{partition}|{offset}|{index}".encode()).hexdigest()[:24]


def _short(value: Any, limit: int = 200) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple | dict):  # a collection at fault is about its size, not its content
        return f"{type(value).__name__} of {len(value)} items"
    text = value.hex() if isinstance(value, bytes) else repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tenant_of(key: bytes | None) -> str | None:
    """The tenant a message key names, or ``None`` when the key is not a valid tenant slug."""
    if not key:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if TENANT_KEY_RE.fullmatch(text) else None


def key_problem(key: bytes | None) -> tuple[str, str] | None:
    """Why a message key is not a tenant id: ``(value shown, reason)``, or ``None`` when it is.

    Topics are keyed by tenant_id so that a tenant's records, baselines and changelog state live
    on one partition; a message without a valid key cannot be placed and is dead-lettered.
    """
    if key is None or len(key) == 0:
        return "null", "message has no key; records must be keyed by their tenant_id"
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        return key[:32].hex(" "), f"message key is not UTF-8 ({exc.reason} at byte {exc.start})"
    if not TENANT_KEY_RE.fullmatch(text):
        return text, f"message key {_short(text, 80)!r} is not a tenant_id ({TENANT_ID_PATTERN})"
    return None


def make_dead_letter(
    msg: RawMessage,
    *,
    index: int,
    error_class: str,
    message: str,
    payload: bytes | None = None,
    field_path: str | None = None,
    value: Any = None,
    fingerprint_hex: str | None = None,
    tenant_id: str | None = None,
    now_ms: int | None = None,
) -> DeadLetter:
    """Build the dead-letter envelope for a message (``index=-1``) or a record inside it.

    ``payload`` defaults to the message's original bytes.
    """
    return DeadLetter(
        dead_letter_id=dead_letter_id(msg.topic, msg.partition, msg.offset, index),
        source_topic=msg.topic,
        source_partition=msg.partition,
        source_offset=msg.offset,
        record_index=index,
        key=msg.key,
        payload=payload if payload is not None else (msg.value or b""),
        schema_fingerprint=fingerprint_hex,
        error_class=error_class,
        field=field_path,
        value=_short(value),
        message=message,
        tenant_id=tenant_id or _tenant_of(msg.key),
        occurred_at=now_ms if now_ms is not None else int(time.time() * 1000),
    )


def _first_error(exc: ValidationError) -> tuple[str, Any, str]:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(record)"
    return loc, err.get("input"), f"{loc}: {err['msg']} (got {_short(err.get('input'), 80)!s})"


class Ingest:
    """Decoder + validator for one source topic kind (``"traces"`` or ``"feedback"``).

    Args:
        codec: the Avro codec (knows current and older writer schemas).
        kind: ``"traces"`` or ``"feedback"``; decides which schemas the topic accepts.
        max_message_bytes: larger messages are dead-lettered as ``oversized`` before decoding.
        max_event_age_s, max_clock_skew_s: event-time window, seconds relative to wall clock.
    """

    def __init__(
        self,
        codec: AvroCodec,
        kind: str,
        *,
        max_message_bytes: int = 1_048_576,
        max_event_age_s: int = 30 * 86400,
        max_clock_skew_s: int = 300,
    ) -> None:
        if kind not in ("traces", "feedback"):
            raise ValueError(f"kind must be 'traces' or 'feedback', got {kind!r}")
        self.codec = codec
        self.kind = kind
        self.accepted = TRACE_SCHEMAS if kind == "traces" else FEEDBACK_SCHEMAS
        self.model = AgentTrace if kind == "traces" else Feedback
        self.max_message_bytes = max_message_bytes
        self.max_event_age_s = max_event_age_s
        self.max_clock_skew_s = max_clock_skew_s

    def decode(self, messages: Sequence[RawMessage], now_ms: int | None = None) -> Decoded:
        """Decode and validate ``messages``; see the module docstring for the guarantees."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        ctx = {"now_ms": now_ms, "max_event_age_s": self.max_event_age_s, "max_clock_skew_s": self.max_clock_skew_s}
        out = Decoded(messages=len(messages))
        validate = self.model.model_validate
        for msg in messages:
            value = msg.value
            if value is None or len(value) == 0:
                out.dead_letters.append(make_dead_letter(
                    msg, index=-1, error_class="empty", field_path="(message)",
                    value="null" if value is None else "0 bytes",
                    message=f"{msg.topic}: {'tombstone (null value)' if value is None else 'empty message value'}",
                    now_ms=now_ms))
                continue
            if len(value) > self.max_message_bytes:
                out.dead_letters.append(make_dead_letter(
                    msg, index=-1, error_class="oversized", field_path="(message)", value=len(value),
                    message=f"message of {len(value)} bytes exceeds max_message_bytes={self.max_message_bytes}",
                    now_ms=now_ms))
                continue
            try:
                name, record = self.codec.decode(value)
            except CodecError as exc:
                out.dead_letters.append(make_dead_letter(
                    msg, index=-1, error_class=exc.error_class, message=str(exc), field_path=exc.field,
                    value=exc.value, fingerprint_hex=exc.fingerprint_hex, now_ms=now_ms))
                continue
            if name not in self.accepted:
                out.dead_letters.append(make_dead_letter(
                    msg, index=-1, error_class="wrong_schema", field_path="(schema)", value=name,
                    message=f"{msg.topic} does not accept {name}; expected one of {', '.join(self.accepted)}",
                    now_ms=now_ms))
                continue
            bad_key = key_problem(msg.key)
            if bad_key is not None:
                out.dead_letters.append(make_dead_letter(
                    msg, index=-1, error_class="invalid_key", field_path="(key)", value=bad_key[0],
                    message=f"{msg.topic}: {bad_key[1]}", now_ms=now_ms))
                continue
            items_field = self.accepted[name]
            items = [record] if items_field is None else record[items_field]
            if not items:
                out.dead_letters.append(make_dead_letter(
                    msg, index=-1, error_class="validation", field_path=items_field, value="[]",
                    message=f"{name}.{items_field} is empty", now_ms=now_ms))
                continue
            batched = items_field is not None
            key_tenant = _tenant_of(msg.key)
            for i, rec in enumerate(items):
                try:
                    validate(rec, context=ctx)
                except ValidationError as exc:
                    loc, bad, text = _first_error(exc)
                    out.dead_letters.append(make_dead_letter(
                        msg, index=i if batched else -1, error_class="validation", field_path=loc, value=bad,
                        message=f"{self.model.__name__} {text}",
                        payload=canonical_json(rec) if batched else None,
                        tenant_id=key_tenant, now_ms=now_ms))
                    continue
                if rec["tenant_id"] != key_tenant:
                    out.dead_letters.append(make_dead_letter(
                        msg, index=i if batched else -1, error_class="key_mismatch", field_path="tenant_id",
                        value=rec["tenant_id"],
                        message=f"record tenant_id={rec['tenant_id']!r} differs from message key {key_tenant!r}; "
                                "records must be keyed by their tenant",
                        # attributed to the sender (the key's tenant), not to the tenant the record claims
                        payload=canonical_json(rec) if batched else None, tenant_id=key_tenant,
                        now_ms=now_ms))
                    continue
                out.records.append(rec)
                out.partitions.append(msg.partition)
                out.offsets.append(msg.offset)
                out.indexes.append(i if batched else -1)
        return out


@dataclass(slots=True)
class TraceColumns:
    """A batch of valid traces, columnar. Arrays have shape ``(n,)``; units in the names.

    ``records`` keeps the decoded dicts (the sink writes nested fields from them).
    """

    records: list[dict[str, Any]]
    trace_id: list[str]
    tenant_id: list[str]
    cohort: list[str]
    workflow: list[str]
    intent: list[str | None]
    release_id: list[str]
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64, source message offset
    event_time_ms: np.ndarray  # int64
    latency_ms: np.ndarray  # float64
    input_tokens: np.ndarray  # float64
    output_tokens: np.ndarray  # float64
    cost_usd: np.ndarray  # float64
    confidence: np.ndarray  # float64, NaN when absent
    outcome: np.ndarray  # int8, OUTCOME_CODES
    policy_blocked: np.ndarray  # bool
    tool_failure: np.ndarray  # bool: any tool call not ok
    retrieval_miss: np.ndarray  # bool: some retrieval query returned nothing usable
    fallback_used: np.ndarray  # bool
    rollout_arm: np.ndarray  # int8, ARM_CODES, -1 = not in a rollout
    candidate_release_id: list[str | None]
    stage_pct: np.ndarray  # float64, NaN = not in a rollout

    @property
    def n(self) -> int:
        """Number of traces."""
        return len(self.trace_id)


def trace_columns(records: list[dict[str, Any]], partitions: Sequence[int], offsets: Sequence[int]) -> TraceColumns:
    """Build :class:`TraceColumns` from validated trace dicts (one pass per column, no per-row objects)."""
    n = len(records)
    f64 = np.float64
    conf = [r["confidence"] for r in records]
    rollouts = [r["rollout"] for r in records]
    return TraceColumns(
        records=records,
        trace_id=[r["trace_id"] for r in records],
        tenant_id=[r["tenant_id"] for r in records],
        cohort=[r["cohort"] for r in records],
        workflow=[r["workflow"] for r in records],
        intent=[r["intent"] for r in records],
        release_id=[r["release"]["release_id"] for r in records],
        partition=np.asarray(partitions, dtype=np.int32).reshape(n),
        offset=np.asarray(offsets, dtype=np.int64).reshape(n),
        event_time_ms=np.fromiter((r["event_time"] for r in records), dtype=np.int64, count=n),
        latency_ms=np.fromiter((r["latency_ms"] for r in records), dtype=f64, count=n),
        input_tokens=np.fromiter((r["input_tokens"] for r in records), dtype=f64, count=n),
        output_tokens=np.fromiter((r["output_tokens"] for r in records), dtype=f64, count=n),
        cost_usd=np.fromiter((r["cost_usd"] for r in records), dtype=f64, count=n),
        confidence=np.fromiter((math.nan if c is None else c for c in conf), dtype=f64, count=n),
        outcome=np.fromiter((OUTCOME_CODES[r["outcome"]] for r in records), dtype=np.int8, count=n),
        policy_blocked=np.fromiter((r["policy_blocked"] for r in records), dtype=bool, count=n),
        tool_failure=np.fromiter(
            (any(t["status"] != "ok" for t in r["tool_calls"]) for r in records), dtype=bool, count=n),
        retrieval_miss=np.fromiter(
            (r["retrieval_hits"] < r["retrieval_queries"] for r in records), dtype=bool, count=n),
        fallback_used=np.fromiter((r["fallback_used"] for r in records), dtype=bool, count=n),
        rollout_arm=np.fromiter((-1 if ro is None else ARM_CODES[ro["arm"]] for ro in rollouts), dtype=np.int8, count=n),
        candidate_release_id=[None if ro is None else ro["candidate_release_id"] for ro in rollouts],
        stage_pct=np.fromiter((math.nan if ro is None else ro["stage_pct"] for ro in rollouts), dtype=f64, count=n),
    )
