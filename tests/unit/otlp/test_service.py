"""The OTLP service without a broker: backpressure of the receiver's queue and the /metrics
exposition, read back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.config import Settings
from streams.devtools.otlp_spans import agent_run, make_span, request, tenant_resource
from streams.otlp.service import HTTP_SOURCE, OtlpService
from streams.processors.otlp import decode_request


def samples(service: OtlpService) -> dict[tuple[str, tuple], float]:
    text = generate_latest(service.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_queue_is_bounded_and_counted(tmp_path) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", state_dir=tmp_path, otlp_max_pending_spans=5)
    service = OtlpService(settings)
    try:
        bad = make_span(b"\1" * 16, b"\2" * 8, b"", "backwards", 10, 5, {})
        first = decode_request(request([*agent_run(tools=3, llm_calls=2), bad], tenant_resource()), HTTP_SOURCE)
        assert service.accept(first)  # 6 spans queued: the next request is refused (503) until the pump runs
        assert not service.accept(decode_request(request(agent_run(), tenant_resource()), HTTP_SOURCE))
        m = samples(service)
        assert m[("selfheal_otlp_spans_received_total", (("transport", "http"),))] == 7
        assert m[("selfheal_otlp_spans_accepted_total", (("transport", "http"),))] == 6
        assert m[("selfheal_otlp_spans_rejected_total", (("transport", "http"),))] == 1
        assert m[("selfheal_otlp_requests_total", (("transport", "http"),))] == 1
        assert m[("selfheal_otlp_requests_throttled_total", ())] == 1
        assert m[("selfheal_otlp_pending_spans", ())] == 6
    finally:
        service._inbox.clear()  # nothing to send: there is no broker
        service._rejected.clear()
        service.close()
