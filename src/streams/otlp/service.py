"""The OTLP ingress service: one assembler, two ways in, the SDK out, counters for Prometheus.

:class:`OtlpService` takes decoded requests from the HTTP receiver (:mod:`streams.otlp.receiver`)
and, with ``kafka=True``, consumes the Collector's ``otlp_proto`` topic itself
(confluent-kafka; each message value one serialized ``ExportTraceServiceRequest``). A pump
(:meth:`OtlpService.step`, run in a background thread by :meth:`OtlpService.run`) moves complete
runs out of the assembler, sends their traces and feedback through
:class:`streams.sdk.SelfhealProducer` and dead letters to ``agent.deadletter.v1`` (the worker's
envelope and key convention, quoted text redacted), flushes both, and only then commits the
Kafka offsets below the first message that still has held spans (:class:`OffsetTracker`):
at-least-once. A re-read run maps to the same AgentTrace (same id and content), which the
pipeline's trace_id dedup skips as a replay.

Delivery of the HTTP path: a request is answered once its spans are decoded and held; spans held
when the process dies (at most ``SELFHEAL_OTLP_SETTLE_S`` of traffic, longer for runs waiting
for their root) are lost. Put a Collector with the Kafka exporter in front when that matters.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from schemas import DeadLetter, default_codec
from streams.config import Settings
from streams.errors import ContractViolation, DeliveryError
from streams.privacy import Redactor
from streams.processors.otlp import (
    AssemblyOutput,
    DecodedRequest,
    OffsetTracker,
    OtlpMapping,
    SpanAssembler,
    decode_request,
    otlp_dead_letter,
    parse_protobuf,
)
from streams.sdk import SelfhealProducer

log = logging.getLogger(__name__)

HTTP_SOURCE = ("otlp-http", -1, -1)


class OtlpService:
    """Assembler, producers and (optionally) the Kafka source of one ``selfheal otlp`` process.

    Args:
        settings: ``SELFHEAL_OTLP_*`` settings, Kafka connection, topic prefix.
        kafka: consume ``topic_prefix + otlp_kafka_topic`` (consumer group
            ``topic_prefix + otlp_group_id``).

    Thread safety: :meth:`accept` may be called from the receiver's event loop while
    :meth:`step` runs in the pump thread; one lock guards the queue between them, and only the
    pump thread touches the assembler.
    """

    def __init__(self, settings: Settings, *, kafka: bool = False) -> None:
        self.settings = settings
        self.assembler = SpanAssembler(
            OtlpMapping.parse(settings.otlp_attribute_map), settle_s=settings.otlp_settle_s,
            root_wait_s=settings.otlp_root_wait_s, max_pending_spans=settings.otlp_max_pending_spans,
            max_event_age_s=settings.max_event_age_s, max_clock_skew_s=settings.max_clock_skew_s)
        self.lock = threading.Lock()
        self.codec = default_codec()
        self.redactor = Redactor(enabled=settings.redact)
        #: per transport (http, kafka): requests, spans received / accepted / rejected
        self.counts: Counter[str] = Counter()
        self.deadletter_topic = settings.topic("deadletter")
        self.kafka_topic = settings.topic_prefix + settings.otlp_kafka_topic
        self.tracker = OffsetTracker()
        self._committed: dict[int, int] = {}
        self._rejected: list[DeadLetter] = []  # dead letters made at receipt, sent by the next step
        self._inbox: list[tuple[list[Any], float]] = []  # (spans, arrival s) accepted, not yet assembled
        self._inbox_spans = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.sdk = SelfhealProducer(settings, producer_id=f"otlp-{uuid.uuid4().hex[:8]}", validate=False)
        self._dlq = Producer({**settings.kafka_config(), "enable.idempotence": True, "acks": "all", "linger.ms": 20})
        self._dlq_errors: list[str] = []
        self.consumer: Consumer | None = None
        if kafka:
            self.consumer = Consumer({**settings.kafka_config(), "group.id": settings.topic_prefix
                                      + settings.otlp_group_id, "enable.auto.commit": False,
                                      "auto.offset.reset": "earliest", "log_level": 3})
            self.consumer.subscribe([self.kafka_topic], on_revoke=self._on_revoke)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------------ input
    def accept(self, decoded: DecodedRequest, transport: str = "http", now_s: float | None = None) -> bool:
        """Queue a request's valid spans for assembly (the pump thread moves them into the
        assembler, so the receiver's event loop never waits for run mapping); its rejected spans'
        dead letters go out with the next :meth:`step`.

        Returns ``False`` (nothing taken) when the queue already holds ``otlp_max_pending_spans``
        spans, e.g. while the broker does not acknowledge: the receiver answers 503, which OTLP
        exporters retry with backoff (memory stays bounded).
        """
        n_ok, n_bad = len(decoded.spans), decoded.rejected_spans
        with self.lock:
            if transport == "http" and self._inbox_spans >= self.settings.otlp_max_pending_spans:
                self.counts["http:requests_throttled"] += 1
                return False
            self._inbox.append((decoded.spans, time.monotonic() if now_s is None else now_s))
            self._inbox_spans += n_ok
            self._rejected.extend(decoded.rejected)
            self.counts[f"{transport}:requests"] += 1
            self.counts[f"{transport}:spans_received"] += n_ok + n_bad
            self.counts[f"{transport}:spans_accepted"] += n_ok
            self.counts[f"{transport}:spans_rejected"] += n_bad
        return True

    def consume(self, max_messages: int = 500, timeout_s: float = 0.2) -> int:
        """Read up to ``max_messages`` from the OTLP topic into the assembler; returns the count."""
        if self.consumer is None:
            return 0
        msgs = self.consumer.consume(max_messages, timeout_s)
        for msg in msgs:
            if msg.error() is not None:  # partition EOF events are off (librdkafka default)
                log.warning("OTLP topic %s: %s", self.kafka_topic, msg.error().str())
                continue
            self._accept_message(msg)
        return len(msgs)

    def _accept_message(self, msg: Message) -> None:
        source = (msg.topic(), msg.partition(), msg.offset())
        try:
            decoded = decode_request(parse_protobuf(msg.value() or b""), source)
        except ContractViolation as exc:
            self.counts["kafka:messages_undecodable"] += 1
            decoded = DecodedRequest(rejected=[otlp_dead_letter(
                source, exc.error_class, f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc}", msg.value() or b"",
                field_path=exc.field, value=exc.value, key=f"{msg.partition()}|{msg.offset()}")])
            self.counts["kafka:requests"] += 1
            with self.lock:
                self._rejected.extend(decoded.rejected)
            self.tracker.track(msg.partition(), msg.offset(), 0)
            return
        self.tracker.track(msg.partition(), msg.offset(), len(decoded.spans))
        self.accept(decoded, "kafka")

    # ------------------------------------------------------------------ output
    def step(self, now_s: float | None = None, *, drain: bool = False) -> AssemblyOutput:
        """Consume (Kafka source), move complete runs out, produce and flush them, then commit.

        Raises:
            DeliveryError: the broker did not acknowledge traces, feedback or dead letters
                (nothing is committed; the caller exits and the spans are read again).
        """
        if not drain:
            self.consume()
        with self.lock:
            inbox, self._inbox, self._inbox_spans = self._inbox, [], 0
            rejected, self._rejected = self._rejected, []
        for spans, arrived_s in inbox:  # the assembler is used by this thread only
            self.assembler.add(spans, arrived_s)
        if drain:
            out = self.assembler.drain(keep=lambda s: s.source[0] == self.kafka_topic)
        else:
            out = self.assembler.poll(time.monotonic() if now_s is None else now_s)
        out.dead_letters[:0] = rejected
        self.send(out)
        for topic, partition, offset in out.released:
            if topic == self.kafka_topic:
                self.tracker.release(partition, offset)
        self.commit()
        return out

    def send(self, out: AssemblyOutput) -> None:
        """Produce an output's traces and feedback (SDK) and dead letters, and wait for the acks.

        Raises:
            DeliveryError: a message was not acknowledged.
        """
        if not (out.traces or out.feedback or out.dead_letters):
            return
        for trace in out.traces:
            self.sdk.send_trace(trace)
        for item in out.feedback:
            self.sdk.send_feedback(item)
        for d in out.dead_letters:
            # the worker's convention (streams.worker.outputs): key = tenant, quoted text redacted,
            # the original spans kept in the payload (restricted topic, for replay)
            red = d.model_copy(update={"value": self.redactor.redact(d.value),
                                       "message": self.redactor.redact(d.message)})
            self._produce_dead_letter((d.tenant_id or "").encode(), self.codec.encode_model(red))
        self.sdk.flush()
        remaining = self._dlq.flush(60.0)
        errors, self._dlq_errors = self._dlq_errors, []
        if errors or remaining:
            raise DeliveryError(f"{len(errors) or remaining} dead letter(s) to {self.deadletter_topic} not "
                                f"acknowledged; first: {errors[0] if errors else 'timeout'}")
        self.counts["traces_sent"] += len(out.traces)
        self.counts["feedback_sent"] += len(out.feedback)
        self.counts["dead_letters_sent"] += len(out.dead_letters)

    def _produce_dead_letter(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._dlq.produce(self.deadletter_topic, value, key=key, on_delivery=self._on_dlq_delivery)
                return
            except BufferError:
                self._dlq.poll(0.05)

    def _on_dlq_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._dlq_errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def commit(self) -> None:
        """Commit, per partition, the offset below the first message with spans still held."""
        if self.consumer is None:
            return
        offsets = self.tracker.committable()
        # only what moved (TopicPartition equality ignores the offset, so compare plain dicts)
        moved = {p: o for p, o in offsets.items() if self._committed.get(p) != o}
        if moved:
            try:
                self.consumer.commit(offsets=[TopicPartition(self.kafka_topic, p, o) for p, o in moved.items()],
                                     asynchronous=False)
            except KafkaException as exc:  # e.g. mid-rebalance: not a loss, the next step commits again
                self.counts["kafka:commit_failures"] += 1
                log.warning("commit of %s failed (%s); retried with the next step", self.kafka_topic, exc)
                return
            self._committed.update(moved)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # runs inside consume() in the pump thread. A revoked partition's held spans stay in the
        # assembler and are still emitted; its new owner re-reads from the last commit, and the
        # pipeline's trace_id dedup drops the runs both emit (docs/otlp.md, re-reads)
        for tp in partitions:
            self.tracker.forget(tp.partition)
            self._committed.pop(tp.partition, None)

    # ------------------------------------------------------------------ lifecycle
    def run(self, interval_s: float = 0.2) -> None:
        """Start the pump thread (:meth:`step` every ``interval_s`` s, or after each Kafka poll).
        An error stops it and is kept in :attr:`error` (the CLI exits on it)."""
        def loop() -> None:
            try:
                while not self._stop.is_set():
                    self.step()
                    if self.consumer is None:
                        self._stop.wait(interval_s)
            except BaseException as exc:  # the pump must not die silently: the CLI checks .error
                log.exception("OTLP pump stopped")
                self.error = exc

        self._thread = threading.Thread(target=loop, name="selfheal-otlp-pump", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the pump thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the pump, emit what can be emitted (runs with a root; rootless groups from HTTP are
        dead-lettered, those from Kafka stay uncommitted and are read again), close the clients."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.error is None:
                self.step(drain=True)
        finally:
            if self.consumer is not None:
                self.consumer.close()
            self.sdk.close()
            self._dlq.purge()
            self._dlq.close()

    def __enter__(self) -> OtlpService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ metrics
    def collect(self) -> Iterator[Any]:
        """prometheus_client custom collector: the counters at scrape time (``/metrics``)."""
        # C-level copies (atomic under the GIL): the pump thread may add keys meanwhile
        c, s = Counter(dict.copy(self.counts)), Counter(dict.copy(self.assembler.stats))
        for name, doc in (("requests", "OTLP export requests (HTTP) or messages (Kafka) received"),
                          ("spans_received", "spans received"),
                          ("spans_accepted", "spans taken into assembly"),
                          ("spans_rejected", "spans rejected at receipt (OTLP partial success; dead-lettered)")):
            fam = CounterMetricFamily(f"selfheal_otlp_{name}", doc, labels=["transport"])
            for transport in ("http", "kafka"):
                fam.add_metric([transport], c[f"{transport}:{name}"])
            yield fam
        yield CounterMetricFamily("selfheal_otlp_traces_emitted", "AgentTrace records produced to the trace topic",
                                  value=c["traces_sent"])
        yield CounterMetricFamily("selfheal_otlp_feedback_emitted",
                                  "Feedback records produced from gen_ai.evaluation.result events",
                                  value=c["feedback_sent"])
        fam = CounterMetricFamily("selfheal_otlp_dead_letters", "dead letters produced, by reason", labels=["reason"])
        for key, value in sorted(s.items()):
            if key.startswith("dead_letters:"):
                fam.add_metric([key.split(":", 1)[1]], value)
        fam.add_metric(["otlp_invalid_span"], c["http:spans_rejected"] + c["kafka:spans_rejected"])
        fam.add_metric(["otlp_not_protobuf"], c["kafka:messages_undecodable"])
        yield fam
        fam = CounterMetricFamily("selfheal_otlp_evaluations", "gen_ai.evaluation.result events, by outcome",
                                  labels=["outcome"])
        for outcome in ("feedback", "passed", "unjudged", "unmapped"):
            fam.add_metric([outcome], s[f"evaluations:{outcome}"])
        yield fam
        yield CounterMetricFamily("selfheal_otlp_spans_outside_run",
                                  "spans of a trace outside every agent run (e.g. HTTP server spans above it)",
                                  value=s["spans_outside_run"])
        yield GaugeMetricFamily("selfheal_otlp_pending_spans", "spans held for assembly (queued or grouped)",
                                value=self.assembler.pending_spans + self._inbox_spans)
        yield CounterMetricFamily("selfheal_otlp_commit_failures", "Kafka source offset commits that failed "
                                  "(retried with the next step)", value=c["kafka:commit_failures"])
        yield CounterMetricFamily("selfheal_otlp_requests_throttled",
                                  "HTTP requests answered 503 because otlp_max_pending_spans spans were queued",
                                  value=c["http:requests_throttled"])
