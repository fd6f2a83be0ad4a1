"""Ingest: decode and validate a batch of Kafka messages; bad input becomes dead-letter envelopes.

Input is a list of :class:`~streams.processors.columns.RawMessage` (what faust hands the agent
with ``value_serializer='raw'``). Each message is one Avro single-object payload: either a batch
(``AgentTraceBatch``, ``FeedbackBatch``) or a single record (``AgentTrace``, ``Feedback``). Every
record that passes is returned with its provenance (partition, offset, index in the message);
every message or record that fails becomes a :class:`schemas.DeadLetter` naming the error class,
field and value. Nothing is dropped: ``len(records) + len(dead_letters) == records seen``
(whole-message failures count as one dead letter). Valid traces become
:class:`~streams.processors.columns.TraceColumns` (:func:`~streams.processors.columns.trace_columns`).

Dead-letter reasons (``error_class``; ``field`` and ``value`` name what is at fault):

- whole message (``record_index = -1``): ``empty`` (null or empty value), ``oversized``,
  ``not_avro``, ``unknown_schema`` (fingerprint), ``truncated``, ``invalid_utf8``,
  ``unknown_enum``, ``bad_union_branch``, ``negative_length``, ``bad_boolean``,
  ``trailing_bytes``, ``malformed_avro``, ``schema_resolution`` (the decoder names the field:
  :mod:`schemas.diagnose`), ``wrong_schema`` (a record type the topic does not carry),
  ``invalid_key`` (no key, not UTF-8, or not a tenant id), ``tenant_auth`` (with
  ``SELFHEAL_TENANT_AUTH``: signature header missing, unknown key id for the key's tenant, or
  wrong HMAC; :mod:`streams.signing`), ``validation`` of an empty batch;
- per record: ``validation`` (the contract models: ranges, NaN, patterns, event-time window,
  sizes, ...), ``key_mismatch`` (record tenant differs from the message key); later stages add
  ``duplicate_conflict`` (:mod:`streams.pipeline`) and ``unknown_trace`` (feedback), and the worker
  ``processing_error`` (a poison message quarantined: :mod:`streams.worker.quarantine`).

Validation: the pydantic contract models (``model_validate`` with the event-time window in the
validation context) are the definition. For traces, the hot path first runs
:class:`TraceFastCheck`, a column-wise (numpy) check of the same constraints that is never more lenient
than the model (``tests/unit/processors/test_fast_check.py`` mutates every field to prove it); a record it
does not accept goes through the model, which accepts it or names the field and value. The fast
check costs about a quarter of the model per trace (BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
from pydantic import ValidationError

from schemas import AgentTrace, DeadLetter, Feedback, IncidentAction, PlatformSignal
from schemas.codec import AvroCodec, CodecError, canonical_json
from schemas.common import (
    LABEL_PATTERN,
    MAX_ATTRIBUTE_LEN,
    MAX_ATTRIBUTES,
    MAX_COST_USD,
    MAX_ID_LEN,
    MAX_LATENCY_MS,
    MAX_RETRIES,
    MAX_TOKENS,
    MAX_TOOL_CALLS,
    MIN_EVENT_TIME_MS,
    TENANT_ID_PATTERN,
)
from schemas.trace import MAX_REF_TEXT, MAX_REF_URI
from streams.processors.columns import ARM_CODES, OUTCOME_CODES, RawMessage, TraceColumns, TraceFields, trace_columns
from streams.signing import TenantKeys

TRACE_SCHEMAS = {"selfheal.v1.AgentTrace": None, "selfheal.v1.AgentTraceBatch": "traces"}
FEEDBACK_SCHEMAS = {"selfheal.v1.Feedback": None, "selfheal.v1.FeedbackBatch": "items"}
ACTION_SCHEMAS = {"selfheal.v1.IncidentAction": None}
SIGNAL_SCHEMAS = {"selfheal.v1.PlatformSignal": None}
_KINDS = {"traces": (TRACE_SCHEMAS, AgentTrace), "feedback": (FEEDBACK_SCHEMAS, Feedback),
          "actions": (ACTION_SCHEMAS, IncidentAction), "signals": (SIGNAL_SCHEMAS, PlatformSignal)}
#: kinds whose records are keyed by their own tenant_id (signals are all keyed "platform")
_TENANT_KEYED = ("traces", "feedback", "actions")

TENANT_KEY_RE = re.compile(TENANT_ID_PATTERN.removeprefix("^").removesuffix("$"))


@dataclass(slots=True)
class Decoded:
    """Valid records of one processing batch with their provenance (parallel lists)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)  # index inside the batch message (-1: single record)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    messages: int = 0
    #: the valid traces as columns (trace topic only; ``None`` when no record is valid)
    columns: TraceColumns | None = None


#: a dead letter's ``key`` keeps at most this many bytes of the message key (a tenant id is far shorter)
MAX_DEAD_LETTER_KEY_BYTES = 1024
#: a dead letter's ``message`` keeps at most this many characters
MAX_DEAD_LETTER_MESSAGE_CHARS = 4000


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

    ``payload`` defaults to the message's original bytes; its SHA-256 and size are recorded
    (they stay when a size bound or a setting later leaves the payload out:
    :func:`streams.processors.deadletters.seal`). ``value`` is shown as text (at most 200
    characters); an ``int`` or ``float`` value (not ``bool``) comes from a numeric field and is
    marked ``value_numeric`` (kept through redaction). The key is kept up to
    :data:`MAX_DEAD_LETTER_KEY_BYTES`, the message up to :data:`MAX_DEAD_LETTER_MESSAGE_CHARS`.
    """
    body = payload if payload is not None else (msg.value or b"")
    key = msg.key[:MAX_DEAD_LETTER_KEY_BYTES] if msg.key is not None else None
    return DeadLetter(
        dead_letter_id=dead_letter_id(msg.topic, msg.partition, msg.offset, index),
        source_topic=msg.topic,
        source_partition=msg.partition,
        source_offset=msg.offset,
        record_index=index,
        key=key,
        payload=body,
        schema_fingerprint=fingerprint_hex,
        error_class=error_class,
        field=field_path,
        value=_short(value),
        message=_short(message, MAX_DEAD_LETTER_MESSAGE_CHARS) or "",
        tenant_id=tenant_id or _tenant_of(msg.key),
        occurred_at=now_ms if now_ms is not None else int(time.time() * 1000),
        payload_sha256=hashlib.sha256(body).hexdigest(),
        payload_bytes=len(body),
        value_numeric=isinstance(value, int | float) and not isinstance(value, bool),
    )


def _first_error(exc: ValidationError) -> tuple[str, Any, str]:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(record)"
    return loc, err.get("input"), f"{loc}: {err['msg']} (got {_short(err.get('input'), 80)!s})"


_LABEL = re.compile(LABEL_PATTERN.strip("^$"))
_TENANT = re.compile(TENANT_ID_PATTERN.strip("^$"))
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OUTCOMES = frozenset(OUTCOME_CODES)
_TOOL_STATUSES = frozenset(("ok", "error", "timeout", "denied"))
_ARMS = frozenset(ARM_CODES)
_RELEASE_IDS = ("model", "prompt_version", "tool_schema_version", "policy_version", "retrieval_index_version")


class TraceFastCheck:
    """Which decoded ``AgentTrace`` dicts of a batch certainly pass ``AgentTrace.model_validate``.

    :meth:`batch` checks every constraint of the model column-wise (numpy for numbers and
    lengths, one regex per distinct label): patterns, lengths, ranges, enum symbols, list and map
    sizes, the event-time window (one millisecond inside it, so model rounding never rejects what
    this accepts) and the cross-field rule. ``False`` means "ask the model", never "invalid".

    Precondition: the records come from :class:`schemas.codec.AvroCodec` with the current
    ``AgentTrace`` schema, so every value has its Avro type (``tests/unit/test_contracts.py``
    keeps model and schema in step). A value of another type makes the whole batch ``False``
    (the model then judges each record).

    Args:
        max_event_age_s, max_clock_skew_s: the event-time window, seconds around ``now_ms``.
        cache_size: distinct labels remembered as valid before the memo is cleared.
    """

    def __init__(self, max_event_age_s: int, max_clock_skew_s: int, cache_size: int = 65_536) -> None:
        self.max_age_ms = max_event_age_s * 1000
        self.max_skew_ms = max_clock_skew_s * 1000
        self.cache_size = cache_size
        self._valid: dict[re.Pattern[str], set[str]] = {_LABEL: set(), _TENANT: set()}

    def _bad_values(self, values: list[Any], pattern: re.Pattern[str], optional: bool = False) -> set[Any]:
        """Distinct ``values`` that do not fully match ``pattern`` (``None`` allowed if optional)."""
        known = self._valid[pattern]
        bad = set()
        for v in set(values) - known:
            if v is None and optional:
                continue
            if pattern.fullmatch(v) is None:
                bad.add(v)
            else:
                if len(known) >= self.cache_size:
                    known.clear()
                known.add(v)
        return bad

    def batch(self, recs: Sequence[dict[str, Any]], now_ms: int) -> np.ndarray:
        """Boolean mask, shape ``(len(recs),)``: ``True`` where the model certainly accepts."""
        try:
            fields_ = TraceFields(recs)
        except (TypeError, ValueError, KeyError, AttributeError):
            return np.zeros(len(recs), dtype=bool)
        return self.check(fields_, now_ms)

    def check(self, tf: TraceFields, now_ms: int) -> np.ndarray:
        """:meth:`batch` on records already read into columns (:class:`TraceFields`, the decode
        pass); shape ``(tf.n,)``."""
        try:
            return self._check(tf, tf.n, now_ms)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            return np.zeros(tf.n, dtype=bool)

    def _check(self, tf: TraceFields, n: int, now_ms: int) -> np.ndarray:
        v = tf.values

        def num(values: Any, dtype: Any = np.float64) -> np.ndarray:
            return np.fromiter(values, dtype=dtype, count=n)

        def not_in(values: Sequence[Any], bad: set[Any]) -> np.ndarray | bool:
            return np.fromiter((x not in bad for x in values), dtype=bool, count=n) if bad else True

        ok = num(map(len, tf.records), np.int64) == _TRACE_FIELDS
        ev = num(v["event_time"], np.int64)
        ok &= (ev > max(MIN_EVENT_TIME_MS, now_ms - self.max_age_ms)) & (ev < now_ms + self.max_skew_ms)
        for k, hi in (("latency_ms", MAX_LATENCY_MS), ("cost_usd", MAX_COST_USD)):
            x = num(v[k])
            ok &= (x >= 0.0) & (x <= hi)  # NaN fails both
        for k, hi in (("input_tokens", MAX_TOKENS), ("output_tokens", MAX_TOKENS), ("retries", MAX_RETRIES)):
            x = num(v[k], np.int64)
            ok &= (x >= 0) & (x <= hi)
        q, h = num(v["retrieval_queries"], np.int64), num(v["retrieval_hits"], np.int64)
        ok &= (h >= 0) & (h <= q) & (q <= MAX_RETRIES)
        conf = num(0.5 if c is None else c for c in v["confidence"])
        ok &= (conf >= 0.0) & (conf <= 1.0)
        ok &= num((o in _OUTCOMES for o in v["outcome"]), bool)
        for k in ("trace_id", "agent_id", "session_id"):
            lens = num(map(len, v[k]), np.int64)
            ok &= (lens > 0) & (lens <= MAX_ID_LEN)
        tenants = v["tenant_id"]
        ok &= not_in(tenants, self._bad_values(tenants, _TENANT))
        for k in ("cohort", "workflow", "intent"):
            values = v[k]
            ok &= not_in(values, self._bad_values(values, _LABEL, optional=k == "intent"))
        ok &= num(map(len, v["release"]), np.int64) == 6
        rids = tf.release["release_id"]
        ok &= not_in(rids, self._bad_values(rids, _LABEL))
        for k in _RELEASE_IDS:
            lens = num(map(len, tf.release[k]), np.int64)
            ok &= (lens > 0) & (lens <= MAX_ID_LEN)
        rollouts = v["rollout"]
        cands = [ro["candidate_release_id"] for ro in rollouts if ro is not None]
        if cands:
            bad = self._bad_values(cands, _LABEL)
            ok &= num((ro is None or (len(ro) == 3 and ro["arm"] in _ARMS and 0.0 < ro["stage_pct"] <= 100.0
                                      and ro["candidate_release_id"] not in bad) for ro in rollouts), bool)
        ok &= num((sha is None or _SHA256.fullmatch(sha) is not None for sha in v["output_sha256"]), bool)
        counts = tf.tool_counts
        ok &= counts <= MAX_TOOL_CALLS
        flat = tf.tool_calls
        if flat:
            owner = np.repeat(np.arange(n), counts)
            good = np.fromiter((len(c) == 3 and c["status"] in _TOOL_STATUSES for c in flat), dtype=bool,
                               count=len(flat))
            lat = np.fromiter(tf.tool_latency_ms, dtype=np.float64, count=len(flat))
            names = tf.tool_names
            good &= (lat >= 0.0) & (lat <= MAX_LATENCY_MS) & not_in_flat(names, self._bad_values(names, _LABEL))
            ok[owner[~good]] = False
        attrs = v["attributes"]
        counts = num(map(len, attrs), np.int64)
        ok &= counts <= MAX_ATTRIBUTES
        if counts.any():
            owner = np.repeat(np.arange(n), counts)
            klen = np.fromiter((len(k) for a in attrs for k in a), dtype=np.int64, count=len(owner))
            vlen = np.fromiter((len(x) for a in attrs for x in a.values()), dtype=np.int64, count=len(owner))
            ok[owner[~((klen > 0) & (klen <= 128) & (vlen <= MAX_ATTRIBUTE_LEN))]] = False
        for k in ("input_ref", "output_ref"):  # optional content references (ContentRef)
            refs = [r.get(k) for r in tf.records]
            if any(ref is not None for ref in refs):
                ok &= num((ref is None or _content_ref_ok(ref) for ref in refs), bool)
        return ok


def _content_ref_ok(ref: dict[str, Any]) -> bool:
    """A ``ContentRef`` within its bounds (:class:`schemas.trace.ContentRef`)."""
    uri, text, sha = ref.get("uri"), ref.get("text"), ref.get("sha256")
    return ((uri is None or 0 < len(uri) <= MAX_REF_URI) and (text is None or len(text) <= MAX_REF_TEXT)
            and (sha is None or _SHA256.fullmatch(sha) is not None))


def not_in_flat(values: list[Any], bad: set[Any]) -> np.ndarray | bool:
    """Mask of ``values`` not in ``bad`` (``True`` when nothing is bad)."""
    return np.fromiter((v not in bad for v in values), dtype=bool, count=len(values)) if bad else True


_TRACE_FIELDS = len(AgentTrace.model_fields)


class Ingest:
    """Decoder + validator for one source topic kind (``"traces"``, ``"feedback"`` or ``"actions"``).

    Args:
        codec: the Avro codec (knows current and older writer schemas).
        kind: ``"traces"``, ``"feedback"``, ``"actions"`` (incident actions) or ``"signals"``
            (platform signals, keyed ``"platform"``, not by their tenant); decides which schemas
            the topic accepts.
        max_message_bytes: larger messages are dead-lettered as ``oversized`` before decoding.
        max_event_age_s, max_clock_skew_s: event-time window, seconds relative to wall clock.
        tenant_keys: verify every message's signature with its tenant's keys (``None``: off).
    """

    def __init__(
        self,
        codec: AvroCodec,
        kind: str,
        *,
        max_message_bytes: int = 1_048_576,
        max_event_age_s: int = 30 * 86400,
        max_clock_skew_s: int = 300,
        tenant_keys: TenantKeys | None = None,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        self.codec = codec
        self.kind = kind
        self.accepted, self.model = _KINDS[kind]
        self.tenant_keyed = kind in _TENANT_KEYED
        self.max_message_bytes = max_message_bytes
        self.max_event_age_s = max_event_age_s
        self.max_clock_skew_s = max_clock_skew_s
        self.tenant_keys = tenant_keys
        self.fast_check = TraceFastCheck(max_event_age_s, max_clock_skew_s) if kind == "traces" else None

    def decode(self, messages: Sequence[RawMessage], now_ms: int | None = None) -> Decoded:
        """Decode and validate ``messages``; see the module docstring for the guarantees.

        Traces are read into columns once for the whole batch (:class:`TraceFields`): the fast
        check runs on those columns, the model only on the records it does not accept, and the
        valid traces' :class:`TraceColumns` (``Decoded.columns``) are taken from the same columns.
        Dead letters come in message order, then record order within a message.
        """
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        out = Decoded(messages=len(messages))
        #: (position of the message, record index) of each dead letter, to keep message order
        order: list[tuple[int, int]] = []
        #: messages whose records are checked: (position, message, records, batched, key tenant)
        taken: list[tuple[int, RawMessage, list[dict[str, Any]], bool, str | None]] = []
        for pos, msg in enumerate(messages):
            got = self._open(msg, now_ms)
            if isinstance(got, DeadLetter):
                out.dead_letters.append(got)
                order.append((pos, -1))
            else:
                taken.append((pos, msg, got[0], got[1], _tenant_of(msg.key)))
        items = [rec for t in taken for rec in t[2]]
        fields_ = None
        if self.fast_check is not None and items:
            try:
                fields_ = TraceFields(items)
            except (TypeError, ValueError, KeyError, AttributeError):
                fields_ = None  # the model judges each record
        sure = self.fast_check.check(fields_, now_ms) if fields_ is not None else np.zeros(len(items), dtype=bool)
        tenants = fields_.values["tenant_id"] if fields_ is not None else None
        kept: list[int] = []
        at = 0
        for pos, msg, recs, batched, key_tenant in taken:
            m = len(recs)
            if sure[at:at + m].all() and tenants is not None and tenants[at:at + m].count(key_tenant) == m:
                kept.extend(range(at, at + m))  # the common case: every record valid, keyed right
                out.records.extend(recs)
                out.indexes.extend(range(m) if batched else (-1,))
            else:
                for i, rec in enumerate(recs):
                    dl = self._check_record(msg, rec, i, batched, key_tenant, bool(sure[at + i]), now_ms)
                    if dl is not None:
                        out.dead_letters.append(dl)
                        order.append((pos, i))
                        continue
                    kept.append(at + i)
                    out.records.append(rec)
                    out.indexes.append(i if batched else -1)
            out.partitions.extend([msg.partition] * (len(out.records) - len(out.partitions)))
            out.offsets.extend([msg.offset] * (len(out.records) - len(out.offsets)))
            at += m
        if len(order) > 1 and order != sorted(order):
            out.dead_letters = [dl for _, dl in sorted(zip(order, out.dead_letters, strict=True), key=itemgetter(0))]
        if self.kind == "traces" and out.records:
            out.columns = (fields_.columns(np.asarray(kept, dtype=np.intp), out.partitions, out.offsets)
                           if fields_ is not None else trace_columns(out.records, out.partitions, out.offsets))
        return out

    def _open(self, msg: RawMessage, now_ms: int) -> tuple[list[dict[str, Any]], bool] | DeadLetter:
        """The records of one message and whether it is a batch, or the dead letter of the whole
        message (empty, oversized, undecodable, wrong schema, bad key, empty batch)."""
        value = msg.value
        if value is None or len(value) == 0:
            return make_dead_letter(
                msg, index=-1, error_class="empty", field_path="(message)",
                value="null" if value is None else "0 bytes",
                message=f"{msg.topic}: {'tombstone (null value)' if value is None else 'empty message value'}",
                now_ms=now_ms)
        if len(value) > self.max_message_bytes:
            return make_dead_letter(
                msg, index=-1, error_class="oversized", field_path="(message)", value=len(value),
                message=f"message of {len(value)} bytes exceeds max_message_bytes={self.max_message_bytes}",
                now_ms=now_ms)
        try:
            name, record = self.codec.decode(value)
        except CodecError as exc:
            return make_dead_letter(
                msg, index=-1, error_class=exc.error_class, message=str(exc), field_path=exc.field,
                value=exc.value, fingerprint_hex=exc.fingerprint_hex, now_ms=now_ms)
        if name not in self.accepted:
            return make_dead_letter(
                msg, index=-1, error_class="wrong_schema", field_path="(schema)", value=name,
                message=f"{msg.topic} does not accept {name}; expected one of {', '.join(self.accepted)}",
                now_ms=now_ms)
        bad_key = key_problem(msg.key)
        if bad_key is not None:
            return make_dead_letter(
                msg, index=-1, error_class="invalid_key", field_path="(key)", value=bad_key[0],
                message=f"{msg.topic}: {bad_key[1]}", now_ms=now_ms)
        if self.tenant_keys is not None:
            forged = self.tenant_keys.verify(_tenant_of(msg.key), value, msg.headers)
            if forged is not None:
                return make_dead_letter(
                    msg, index=-1, error_class="tenant_auth", field_path="(headers)",
                    value=msg.headers.get("selfheal-key-id", b"").decode("ascii", "replace")[:64] or "unsigned",
                    message=f"{msg.topic}: {forged}", now_ms=now_ms)
        items_field = self.accepted[name]
        items = [record] if items_field is None else record[items_field]
        if not items:
            return make_dead_letter(
                msg, index=-1, error_class="validation", field_path=items_field, value="[]",
                message=f"{name}.{items_field} is empty", now_ms=now_ms)
        return items, items_field is not None

    def _check_record(self, msg: RawMessage, rec: dict[str, Any], i: int, batched: bool, key_tenant: str | None,
                      sure: bool, now_ms: int) -> DeadLetter | None:
        """The dead letter of record ``i`` of ``msg`` (``validation`` by the model unless the fast
        check was ``sure``, or ``key_mismatch``), or ``None`` when it is valid."""
        try:
            if not sure:
                self.model.model_validate(rec, context={"now_ms": now_ms, "max_event_age_s": self.max_event_age_s,
                                                        "max_clock_skew_s": self.max_clock_skew_s})
        except ValidationError as exc:
            loc, bad, text = _first_error(exc)
            return make_dead_letter(
                msg, index=i if batched else -1, error_class="validation", field_path=loc, value=bad,
                message=f"{self.model.__name__} {text}",
                payload=canonical_json(rec) if batched else None,
                tenant_id=key_tenant, now_ms=now_ms)
        if self.tenant_keyed and rec["tenant_id"] != key_tenant:
            return make_dead_letter(
                msg, index=i if batched else -1, error_class="key_mismatch", field_path="tenant_id",
                value=rec["tenant_id"],
                message=f"record tenant_id={rec['tenant_id']!r} differs from message key {key_tenant!r}; "
                        "records must be keyed by their tenant",
                # attributed to the sender (the key's tenant), not to the tenant the record claims
                payload=canonical_json(rec) if batched else None, tenant_id=key_tenant,
                now_ms=now_ms)
        return None
