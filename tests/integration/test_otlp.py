"""OTLP ingest end to end: the real OpenTelemetry SDK with its OTLP/HTTP exporter → ``selfheal
otlp`` → trace topic → worker → ClickHouse; the Collector's Kafka path (serialized
ExportTraceServiceRequest messages on ``otlp_spans``) the same way; bad spans dead-lettered with
their reasons; counters read with prometheus_client's parser."""

from __future__ import annotations

import gzip
import json
import time

import pytest
import requests
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from schemas import default_codec
from streams.devtools.bench_otlp import OtlpProcess
from streams.devtools.otlp_spans import agent_run, make_span, request, tenant_resource
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_topics
from tests.conftest import kafka_producer, wait_caught_up

pytestmark = pytest.mark.integration

FAST = {"SELFHEAL_OTLP_SETTLE_S": "1", "SELFHEAL_OTLP_ROOT_WAIT_S": "3"}


def run_agent(tracer, i: int, *, fail_tool: bool = False, evaluate: bool = False) -> str:
    """One instrumented agent run (GenAI semconv), as an OTel-instrumented agent emits it."""
    with tracer.start_as_current_span("invoke_agent scribe", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "scribe", "gen_ai.agent.id": "scribe-7",
            "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-x", "gen_ai.conversation.id": f"c-{i}",
            "gen_ai.prompt.name": "soap", "gen_ai.prompt.version": "14"}) as root:
        with tracer.start_as_current_span("chat gpt-x", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-x",
                "gen_ai.usage.input_tokens": 100 + i, "gen_ai.usage.output_tokens": 20}):
            pass
        with tracer.start_as_current_span("execute_tool ehr_lookup", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "ehr_lookup"}) as tool:
            if fail_tool:
                tool.set_attribute("error.type", "ConnectionError")
                tool.set_status(Status(StatusCode.ERROR, "EHR unreachable"))
        if evaluate:
            root.add_event("gen_ai.evaluation.result", {
                "gen_ai.evaluation.name": "Groundedness", "gen_ai.evaluation.score.label": "fail",
                "gen_ai.evaluation.score.value": 0.1, "gen_ai.evaluation.explanation": "invented a dosage"})
        return format(root.get_span_context().trace_id, "032x")


def provider(port: int, resource: dict) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create(resource))
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{port}/v1/traces", compression=Compression.Gzip), schedule_delay_millis=200))
    return tp


def dead_letters(settings, want: int, timeout_s: float = 60.0) -> list:
    """Dead letters of the OTLP ingress on the test's dead-letter topic (``otlp_*`` and validation)."""
    codec = default_codec()
    consumer = Consumer({**settings.kafka_config(), "group.id": "dl-reader", "auto.offset.reset": "earliest"})
    found = []
    try:
        consumer.subscribe([settings.topic("deadletter")])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(found) < want:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                found.append(codec.decode(msg.value())[1])
    finally:
        consumer.close()
    return found


def test_otel_sdk_spans_arrive_in_clickhouse_as_traces(settings, worker_factory, tmp_path) -> None:
    ensure_topics(settings)
    worker = worker_factory()
    receiver = OtlpProcess(settings, tmp_path / "otlp.log", env=FAST)
    try:
        receiver.wait_ready()
        tp = provider(receiver.port, {"service.name": "scribe-svc", "service.version": "rel-7",
                                      "selfheal.tenant_id": "acme", "deployment.environment.name": "cardiology"})
        tracer = tp.get_tracer("agent")
        ids = [run_agent(tracer, i, fail_tool=i % 5 == 0, evaluate=i == 3) for i in range(40)]
        no_tenant = provider(receiver.port, {"service.name": "anon", "service.version": "rel-7",
                                             "deployment.environment.name": "cardiology"})
        lost = run_agent(no_tenant.get_tracer("agent"), 99)
        for p in (tp, no_tenant):
            assert p.force_flush(10_000)
            p.shutdown()
        receiver.wait_metric("selfheal_otlp_traces_emitted_total", 40)
        receiver.wait_metric("selfheal_otlp_dead_letters_total{reason=otlp_missing_attribute}", 1)
        assert receiver.metric("selfheal_otlp_spans_received_total{transport=http}") == 41 * 3
        assert receiver.metric("selfheal_otlp_feedback_emitted_total") == 1
        assert receiver.metric("selfheal_otlp_evaluations_total{outcome=feedback}") == 1
        assert receiver.stop() == 0
    finally:
        receiver.stop()
    wait_caught_up(settings, ["traces", "feedback"], worker=worker)
    assert worker.stop() == 0
    with ClickHouseSink(settings) as sink:
        rows = sink.query("SELECT trace_id, tenant_id, cohort, workflow, release_id, model, prompt_version, "
                          "input_tokens, output_tokens, tool_names, tool_statuses, outcome FROM {db}.traces FINAL "
                          "ORDER BY input_tokens")
        fb = sink.query("SELECT trace_id, category FROM {db}.feedback FINAL")
    assert [r[0] for r in rows] == ids
    r = rows[0]
    assert r[1:9] == ("acme", "cardiology", "scribe", "rel-7", "gpt-x", "soap@14", 100, 20)
    assert list(r[9]) == ["ehr_lookup"] and list(r[10]) == ["error"]  # run 0 had a failing tool
    assert list(rows[1][10]) == ["ok"]
    assert fb == [(ids[3], "hallucination")]
    (dl,) = [d for d in dead_letters(settings, 1) if d["error_class"].startswith("otlp")]
    assert (dl["error_class"], dl["field"]) == ("otlp_missing_attribute", "tenant_id") and lost in dl["message"]


def test_receiver_protocol_json_gzip_partial_success_and_errors(settings, tmp_path) -> None:
    ensure_topics(settings)
    receiver = OtlpProcess(settings, tmp_path / "otlp.log", env={**FAST, "SELFHEAL_OTLP_MAX_REQUEST_BYTES": "200000"})
    try:
        receiver.wait_ready()
        url = f"http://127.0.0.1:{receiver.port}/v1/traces"
        good = agent_run(tools=1, llm_calls=1)
        bad = make_span(b"\x01" * 16, b"\x02" * 8, b"", "backwards", 10_000, 5_000, {})
        req = request([*good, bad], tenant_resource())
        resp = requests.post(url, data=gzip.compress(req.SerializeToString()),
                             headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, timeout=10)
        assert resp.status_code == 200
        answer = ExportTraceServiceResponse.FromString(resp.content)
        assert answer.partial_success.rejected_spans == 1
        assert "end_time_unix_nano" in answer.partial_success.error_message
        # OTLP/JSON: hex ids
        trace_id, root_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
        body = {"resourceSpans": [{"resource": {"attributes": [
            {"key": "selfheal.tenant_id", "value": {"stringValue": "globex"}},
            {"key": "selfheal.cohort", "value": {"stringValue": "billing"}},
            {"key": "service.version", "value": {"stringValue": "rel-2"}}]},
            "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": root_id, "name": "agent", "kind": 1,
                                       "startTimeUnixNano": str(time.time_ns() - 10**9),
                                       "endTimeUnixNano": str(time.time_ns()),
                                       "attributes": [{"key": "openinference.span.kind",
                                                       "value": {"stringValue": "AGENT"}},
                                                      {"key": "selfheal.workflow", "value": {"stringValue": "claims"}}],
                                       "someFutureField": True}]}]}]}
        resp = requests.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=10)
        assert resp.status_code == 200 and resp.json() == {}
        assert requests.post(url, data=b"\xff\x00garbage", headers={"Content-Type": "application/x-protobuf"},
                             timeout=10).status_code == 400
        assert requests.post(url, data=b"x", headers={"Content-Type": "text/plain"}, timeout=10).status_code == 415
        bomb = gzip.compress(b"\0" * 300_000)  # 300 kB inflated from a few hundred bytes, limit 200 kB
        assert requests.post(url, data=bomb, timeout=10, headers={
            "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}).status_code == 413
        receiver.wait_metric("selfheal_otlp_traces_emitted_total", 2)
        assert receiver.metric("selfheal_otlp_spans_rejected_total{transport=http}") == 1
        assert receiver.metric("selfheal_otlp_requests_total{transport=http}") == 2
    finally:
        assert receiver.stop() == 0
    (dl,) = [d for d in dead_letters(settings, 1) if d["error_class"] == "otlp_invalid_span"]
    assert dl["field"] == "end_time_unix_nano" and dl["tenant_id"] == "acme"


def test_collector_kafka_topic_to_clickhouse_at_least_once(settings, worker_factory, tmp_path) -> None:
    """The Collector's Kafka exporter path; a second source with another consumer group re-reads
    every message (what a crash before the commit does): the pipeline's trace_id dedup keeps each
    run once."""
    ensure_topics(settings)
    topic = settings.topic_prefix + settings.otlp_kafka_topic
    admin = AdminClient(settings.kafka_config())
    for fut in admin.create_topics([NewTopic(topic, settings.partitions, 1)]).values():
        fut.result(30)
    del admin  # librdkafka clients are released at once (the session checks for open ones)
    runs = [agent_run(tools=2, llm_calls=1) for _ in range(30)]
    orphan = agent_run(tools=1, llm_calls=0)[:-1]  # the root never comes
    with kafka_producer(settings.kafka_config()) as producer:
        for i, spans in enumerate(runs):
            root, children = spans[-1], spans[:-1]  # children and root in different messages
            producer.produce(topic, request(children, tenant_resource()).SerializeToString(), key=b"%d" % (i % 3))
            producer.produce(topic, request([root], tenant_resource()).SerializeToString(), key=b"%d" % (i % 3))
        producer.produce(topic, request(orphan, tenant_resource()).SerializeToString(), key=b"0")
        producer.produce(topic, b"not a protobuf \xff", key=b"1")
        assert producer.flush(30) == 0
    worker = worker_factory()
    first = OtlpProcess(settings, tmp_path / "otlp-1.log", kafka=True, env=FAST)
    try:
        first.wait_ready()
        first.wait_metric("selfheal_otlp_traces_emitted_total", 30)
        first.wait_metric("selfheal_otlp_dead_letters_total{reason=otlp_no_root}", 1)
        assert first.metric("selfheal_otlp_dead_letters_total{reason=otlp_not_protobuf}") == 1
        assert first.metric("selfheal_otlp_requests_total{transport=kafka}") == 62
    finally:
        assert first.stop() == 0
    from streams.topics import group_lag

    done, end = group_lag(settings, settings.topic_prefix + settings.otlp_group_id, [topic])
    assert (done, end) == (62, 62)  # every message committed once its output was flushed
    second = OtlpProcess(settings, tmp_path / "otlp-2.log", kafka=True,
                         env={**FAST, "SELFHEAL_OTLP_GROUP_ID": "reread"})
    try:
        second.wait_ready()
        second.wait_metric("selfheal_otlp_traces_emitted_total", 30)
        second.wait_metric("selfheal_otlp_dead_letters_total{reason=otlp_no_root}", 1)
    finally:
        assert second.stop() == 0
    wait_caught_up(settings, ["traces"], worker=worker)
    assert worker.stop() == 0
    with ClickHouseSink(settings) as sink:
        n, distinct = sink.query("SELECT count(), uniqExact(trace_id) FROM {db}.traces")[0]  # no FINAL: raw rows
        duplicate_conflicts = sink.query(
            "SELECT count() FROM {db}.dead_letters FINAL WHERE error_class = 'duplicate_conflict'")[0][0]
    assert (n, distinct, duplicate_conflicts) == (30, 30, 0)
    letters = [d for d in dead_letters(settings, 4) if d["error_class"].startswith("otlp")]
    assert sorted(d["error_class"] for d in letters) == [
        "otlp_no_root", "otlp_no_root", "otlp_not_protobuf", "otlp_not_protobuf"]  # once per source
    assert len({d["dead_letter_id"] for d in letters}) == 2  # a re-read dead letter keeps its id


class OtlpFleetSink:
    """Stands in for the SDK under the fleet simulator: traces leave as OTLP spans on the
    Collector's topic (100 runs per ExportTraceServiceRequest, as a Collector batches), feedback
    goes through the real SDK."""

    def __init__(self, settings, sdk, producer) -> None:
        self.settings, self.sdk, self.producer = settings, sdk, producer
        self.topic = settings.topic_prefix + settings.otlp_kafka_topic
        self.spans: list = []
        self.runs = 0

    def send_trace(self, trace) -> None:
        from streams.devtools.otlp_spans import trace_spans

        self.spans += trace_spans(trace)
        self.runs += 1
        if self.runs % 100 == 0:
            self._send()

    def send_feedback(self, item) -> None:
        self.sdk.send_feedback(item)

    def _send(self) -> None:
        if self.spans:
            self.producer.produce(self.topic, request(self.spans, {"service.name": "sim"}).SerializeToString())
            self.producer.poll(0)
            self.spans = []

    def flush(self) -> None:
        self._send()
        assert self.producer.flush(60) == 0
        self.sdk.flush()


def incident_kinds(settings, tenant: str) -> set[tuple[str, str, str]]:
    with ClickHouseSink(settings) as sink:
        rows = sink.query("SELECT kind, metric_group, release_id FROM {db}.incidents FINAL "
                          "WHERE tenant_id = {t:String}", {"t": tenant})
    return {tuple(r) for r in rows}


@pytest.mark.slow
def test_regression_through_otel_spans_raises_the_same_incident_as_through_the_sdk(
        settings, worker_factory, tmp_path) -> None:
    from streams.devtools.launcher import WorkerProcess
    from streams.devtools.simulate import FleetSimulator
    from streams.sdk import SelfhealProducer
    from tests.conftest import _delete_topics, settings_env

    sim = {"traces": 12_000, "seed": 5, "inject_at": 0.5, "latency_factor": 1.8, "correction_factor": 1.0,
           "bad_input": False}
    # 1. through the SDK
    ensure_topics(settings)
    worker = worker_factory(name="sdk")
    with SelfhealProducer(settings) as sdk:
        rep = FleetSimulator(**sim).run(sdk)
    wait_caught_up(settings, ["traces", "feedback"], worker=worker)
    assert worker.stop() == 0
    change = rep.injected[0]
    via_sdk = incident_kinds(settings, change.tenant_id)
    assert ("release_regression", "latency", change.release_id) in via_sdk, via_sdk
    # 2. the same traffic as OTel spans through the Collector's topic and selfheal otlp --kafka
    otel = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "otel.",
                                       "clickhouse_path": tmp_path / "clickhouse-otel"})
    try:
        ensure_topics(otel)
        admin = AdminClient(otel.kafka_config())
        topic = otel.topic_prefix + otel.otlp_kafka_topic
        for fut in admin.create_topics([NewTopic(topic, otel.partitions, 1)]).values():
            fut.result(30)
        del admin
        source = OtlpProcess(otel, tmp_path / "otlp.log", kafka=True, env={"SELFHEAL_OTLP_SETTLE_S": "0.5"})
        worker = WorkerProcess(settings_env(otel), tmp_path / "worker-otel.log").start()
        try:
            source.wait_ready()
            with SelfhealProducer(otel) as sdk, kafka_producer(otel.kafka_config()) as producer:
                FleetSimulator(**sim).run(OtlpFleetSink(otel, sdk, producer))
            source.wait_metric("selfheal_otlp_traces_emitted_total", 12_000, timeout_s=300)
            assert source.metric("selfheal_otlp_dead_letters_total{reason=validation}") == 0
            wait_caught_up(otel, ["traces", "feedback"], worker=worker)
            assert worker.stop() == 0
        finally:
            source.stop()
            if worker.alive():
                worker.kill()
        via_otel = incident_kinds(otel, change.tenant_id)
    finally:
        _delete_topics(otel.kafka_bootstrap, otel.topic_prefix)
    assert ("release_regression", "latency", change.release_id) in via_otel, via_otel
    assert via_otel == via_sdk
