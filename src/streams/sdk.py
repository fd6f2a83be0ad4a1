"""Producer SDK for agents and feedback sources (confluent-kafka + fastavro).

    from streams.sdk import SelfhealProducer
    with SelfhealProducer() as sh:                 # settings from SELFHEAL_* env
        sh.send_trace(trace)                       # AgentTrace model or dict; validated here
        sh.send_feedback(feedback)
        sh.send_action(action)                     # an incident action (acknowledge, rollback_executed, ...)
    # leaving the block flushes: every record is acknowledged by Kafka or an error is raised

Records are validated with the contract models before they leave the process
(:class:`~streams.errors.ContractViolation` names the field and value), grouped per tenant and sent
as one ``AgentTraceBatch``/``FeedbackBatch`` message of up to ``batch_max_records`` records (or
after ``linger_ms``), keyed by tenant_id: one Kafka message per run would cost the worker
~115 µs each in faust (BENCHMARKS.md), batches amortise that, as OTLP exporters do for spans.
``batch=False`` sends single-record messages instead (the topic accepts both).

Delivery: idempotent producer (``enable.idempotence=true``, ``acks=all``); delivery reports
are checked in :meth:`flush`, which raises :class:`~streams.errors.DeliveryError` naming
topic and error if any message was not acknowledged, or was acknowledged without an offset:
librdkafka reports a DUPLICATE_SEQUENCE_NUMBER answer as delivered, but a broker before Kafka 4.5
also gives it for a first batch it never wrote (KAFKA-15591, see :mod:`streams.topics`); such
messages are in ``DeliveryError.unconfirmed``, to be sent again.

Signing: with ``SELFHEAL_TENANT_KEYS_FILE`` set, every message carries the headers
``selfheal-key-id`` and ``selfheal-signature`` (HMAC-SHA256 of the value with the tenant's last
listed key, :mod:`streams.signing`); a worker with ``SELFHEAL_TENANT_AUTH=true`` dead-letters
messages without a valid one (``tenant_auth``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import ValidationError

from schemas import AgentTrace, Feedback, IncidentAction
from schemas.codec import AvroCodec, default_codec, to_avro_dict
from streams.config import Settings, get_settings
from streams.errors import ContractViolation, DeliveryError
from streams.signing import signing_keys

log = logging.getLogger(__name__)


def _violation(model: str, exc: ValidationError) -> ContractViolation:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(record)"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return ContractViolation(f"{model}.{loc}: {err['msg']} (got {shown[:120]})", field=loc, value=value)


class SelfhealProducer:
    """Validating, batching Avro producer for ``agent.traces.v1`` and ``agent.feedback.v1``.

    Args:
        settings: connection and topic settings (``get_settings()`` by default).
        producer_id: identifies this producer in batch envelopes (default: random).
        batch: send batches per tenant (default) or one message per record.
        batch_max_records: records per batch message.
        batch_max_bytes: encoded size limit per message, bytes (kept below the broker's 2 MiB).
        linger_ms: a partly filled batch is sent after this long (checked on every send and by
            a background flusher thread), ms.
        kafka_config: extra librdkafka settings (e.g. ``{"linger.ms": 5}``).
        retry_s: how long a retriable ``produce`` error (topic or partition not yet known to the
            client) is retried before it is raised, s. A batch that fails to send stays buffered
            (nothing is dropped, also from the background flusher) until sent or raised by
            :meth:`flush`.
        validate: validate records with the contract models (disable only for load generators
            that send pre-validated data).
    """

    def __init__(self, settings: Settings | None = None, *, producer_id: str | None = None, batch: bool = True,
                 batch_max_records: int = 256, batch_max_bytes: int = 900_000, linger_ms: float = 50.0,
                 kafka_config: Mapping[str, Any] | None = None, validate: bool = True,
                 codec: AvroCodec | None = None, retry_s: float = 30.0) -> None:
        self.settings = settings or get_settings()
        self.codec = codec or default_codec()
        self.producer_id = producer_id or f"sdk-{uuid.uuid4().hex[:12]}"
        self.batch = batch
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self.linger_s = linger_ms / 1000.0
        self.retry_s = retry_s
        self.validate = validate
        #: per-tenant signing keys (``SELFHEAL_TENANT_KEYS_FILE``), ``None``: messages are not signed
        self.tenant_keys = signing_keys(self.settings)
        conf = {
            **self.settings.kafka_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "message.max.bytes": 2_000_000,
            "queue.buffering.max.kbytes": 256_000,
        }
        conf.update(kafka_config or {})
        self._producer = Producer(conf)
        self._topics = {"traces": self.settings.topic("traces"), "feedback": self.settings.topic("feedback"),
                        "actions": self.settings.topic("actions")}
        self._buffers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._born: dict[tuple[str, str], float] = {}
        self._lock = threading.RLock()
        self._errors: list[str] = []
        self._unconfirmed: list[tuple[str, bytes, bytes]] = []
        self.sent_records = {"traces": 0, "feedback": 0, "actions": 0}
        self.sent_messages = 0
        self.delivered_messages = 0
        self._closed = False
        #: set by close(): wakes the flusher at once (it would otherwise sleep up to linger_ms / 2)
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._linger_loop, name="selfheal-sdk-linger", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------------ public API
    def send_trace(self, trace: AgentTrace | Mapping[str, Any]) -> None:
        """Validate and enqueue one trace.

        Raises:
            ContractViolation: the trace breaks the contract (field and value named).
        """
        self._enqueue("traces", AgentTrace, trace)

    def send_feedback(self, feedback: Feedback | Mapping[str, Any]) -> None:
        """Validate and enqueue one feedback record.

        Raises:
            ContractViolation: the record breaks the contract (field and value named).
        """
        self._enqueue("feedback", Feedback, feedback)

    def send_action(self, action: IncidentAction | Mapping[str, Any]) -> None:
        """Validate and send one incident action to ``agent.incident-actions.v1`` (key: its
        tenant_id, one message per action, not batched: actions are rare and each one matters).
        Delivery is confirmed by :meth:`flush`. Give every action its own ``action_id``: the
        worker applies an id once, so resending after a failed flush is safe.

        Example::

            producer.send_action({"action_id": "rb-42", "incident_id": inc.incident_id,
                                  "tenant_id": "acme", "action": "rollback_executed",
                                  "actor": "rollout-controller", "reason": "canary rollback",
                                  "at": datetime.now(UTC), "release_id": "rel-2",
                                  "restored_release_id": "rel-1"})

        Raises:
            ContractViolation: the action breaks the contract (field and value named). Whether the
                action and incident are known is decided by the worker (dead letter).
        """
        try:
            model = action if isinstance(action, IncidentAction) else IncidentAction.model_validate(action)
            data = to_avro_dict(IncidentAction.model_validate(model.model_dump()))
        except ValidationError as exc:
            raise _violation("IncidentAction", exc) from None
        self._produce("actions", data["tenant_id"], self.codec.encode("selfheal.v1.IncidentAction", data), 1)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Send every buffered batch and wait for all delivery reports.

        Raises:
            DeliveryError: a message was not acknowledged (topic, partition and error named), was
                acknowledged without an offset (``unconfirmed`` holds those messages), or the
                timeout passed with messages in flight.
        """
        with self._lock:
            for key in list(self._buffers):
                self._send_batch(key)
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
            unconfirmed, self._unconfirmed = self._unconfirmed, []
        if errors:
            raise DeliveryError(f"{len(errors)} message(s) not delivered; first: {errors[0]}", unconfirmed=unconfirmed)
        if unconfirmed:
            raise DeliveryError(
                f"{len(unconfirmed)} message(s) to {sorted({t for t, _, _ in unconfirmed})} acknowledged without an "
                "offset (a duplicate-sequence answer): the broker may not have written them (KAFKA-15591 on a "
                "partition its leader had not loaded yet); send DeliveryError.unconfirmed again",
                unconfirmed=unconfirmed)
        if remaining:
            raise DeliveryError(f"{remaining} message(s) still in flight after {timeout_s} s")

    def close(self, timeout_s: float = 60.0, *, discard: bool = False) -> None:
        """Stop the background flusher, send every buffered batch and wait for the delivery reports
        (:meth:`flush`), then release the Kafka client: its librdkafka handle and threads end here,
        not whenever the garbage collector finds them (a client still running while the
        interpreter exits can crash it). Idempotent: a second call does nothing. Afterwards a send
        raises ``RuntimeError`` ("Producer has been closed").

        Args:
            timeout_s: how long to wait for delivery reports, s.
            discard: drop buffered and in-flight records instead of sending them: nothing is
                delivered and nothing is raised (for a producer whose broker is unreachable).

        Raises:
            DeliveryError: as :meth:`flush` (not with ``discard``). The client is released all the
                same, dropping what it still held.
        """
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._flusher.join()  # it uses the client: stopped before the client goes
        try:
            if discard:
                with self._lock:
                    self._buffers.clear()
                    self._born.clear()
            else:
                self.flush(timeout_s)
        finally:
            # librdkafka's close() flushes first and would wait forever for a message the broker
            # never acknowledges (broker gone, or discard): purge whatever is still queued or in flight
            self._producer.purge()
            self._producer.close()

    def __enter__(self) -> SelfhealProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _enqueue(self, kind: str, model: type, record: Any) -> None:
        ctx = {"now_ms": int(time.time() * 1000), "max_event_age_s": self.settings.max_event_age_s,
               "max_clock_skew_s": self.settings.max_clock_skew_s}
        if isinstance(record, model):
            if self.validate:
                # re-validate with the time-window context (the model may have been built earlier)
                try:
                    model.model_validate(record.model_dump(), context=ctx)
                except ValidationError as exc:
                    raise _violation(model.__name__, exc) from None
            data = to_avro_dict(record)
        else:
            if self.validate:
                try:
                    data = to_avro_dict(model.model_validate(record, context=ctx))
                except ValidationError as exc:
                    raise _violation(model.__name__, exc) from None
            else:
                data = dict(record)
        tenant = data["tenant_id"]
        if not self.batch:
            name = "selfheal.v1.AgentTrace" if kind == "traces" else "selfheal.v1.Feedback"
            self._produce(kind, tenant, self.codec.encode(name, data), 1)
            return
        key = (kind, tenant)
        with self._lock:
            buf = self._buffers.get(key)
            if buf is None:
                buf = self._buffers[key] = []
                self._born[key] = time.monotonic()
            buf.append(data)
            if len(buf) >= self.batch_max_records or time.monotonic() - self._born[key] >= self.linger_s:
                self._send_batch(key)
        self._producer.poll(0)

    def _send_batch(self, key: tuple[str, str]) -> None:
        buf = self._buffers.pop(key, None)
        born = self._born.pop(key, None)
        if not buf:
            return
        kind, tenant = key
        try:
            self._encode_and_send(kind, tenant, buf)
        except Exception:
            # nothing is dropped: the records go back in front of newer ones and are sent again
            # (a record already handed to Kafka is a replay the worker recognises by trace_id)
            self._buffers[key] = buf + self._buffers.get(key, [])
            self._born[key] = born if born is not None else time.monotonic()
            raise

    def _encode_and_send(self, kind: str, tenant: str, items: list[dict[str, Any]]) -> None:
        name = "selfheal.v1.AgentTraceBatch" if kind == "traces" else "selfheal.v1.FeedbackBatch"
        field = "traces" if kind == "traces" else "items"
        payload = self.codec.encode(name, {"batch_id": uuid.uuid4().hex, "producer_id": self.producer_id,
                                           "sent_at": int(time.time() * 1000), field: items})
        if len(payload) > self.batch_max_bytes and len(items) > 1:
            half = len(items) // 2
            self._encode_and_send(kind, tenant, items[:half])
            self._encode_and_send(kind, tenant, items[half:])
            return
        self._produce(kind, tenant, payload, len(items))

    def _produce(self, kind: str, tenant: str, payload: bytes, records: int) -> None:
        topic = self._topics[kind]
        headers = self.tenant_keys.sign(tenant, payload) if self.tenant_keys is not None else None
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                self._producer.produce(topic, payload, key=tenant.encode(), headers=headers,
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: wait for deliveries (backpressure)
            except KafkaException as exc:
                # e.g. a topic or partition not yet in the client's metadata right after creation
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None or err.fatal() or time.monotonic() > deadline:
                    raise
                log.warning("produce to %s failed (%s); retrying", topic, err.str())
                self._producer.poll(0.1)
        self.sent_records[kind] += records
        self.sent_messages += 1

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # runs in whichever thread polls (the caller's or the linger thread)
        with self._lock:
            if err is not None:
                self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")
            elif msg.offset() is None:  # acks=all always returns an offset, except for a duplicate
                self._unconfirmed.append((msg.topic(), msg.key(), msg.value()))
            else:
                self.delivered_messages += 1

    def _linger_loop(self) -> None:
        # a background thread must not die on an error: the batch stays buffered (see _send_batch)
        # and the next tick, or flush() in the caller's thread, sends it or raises
        while not self._closed:
            self._wake.wait(max(self.linger_s / 2, 0.005))
            if self._closed:  # close() sends what is left itself, after this thread has ended
                return
            now = time.monotonic()
            try:
                with self._lock:
                    for key in [k for k, born in self._born.items() if now - born >= self.linger_s]:
                        self._send_batch(key)
                self._producer.poll(0)
            except Exception:
                log.warning("background send failed; the batch stays buffered", exc_info=True)
                self._wake.wait(0.1)
