"""OTLP/HTTP receiver (aiohttp): ``POST /v1/traces`` and ``GET /metrics``.

Follows the OTLP/HTTP specification (https://opentelemetry.io/docs/specs/otlp/#otlphttp):
request bodies ``application/x-protobuf`` (binary ``ExportTraceServiceRequest``) or
``application/json`` (OTLP/JSON: hex ids, unknown fields ignored), optionally
``Content-Encoding: gzip`` (aiohttp decompresses; ``SELFHEAL_OTLP_MAX_REQUEST_BYTES`` bounds the
decompressed body: 413 beyond). The response is an ``ExportTraceServiceResponse`` in the request's
encoding: empty on full success, ``partial_success {rejected_spans, error_message}`` when spans
were rejected at receipt (those are dead-lettered too). A body that does not parse is answered
400 with a ``google.rpc.Status`` (not retryable, per the spec) and counted; another content type
415; 503 (retryable, ``Retry-After``) while ``SELFHEAL_OTLP_MAX_PENDING_SPANS`` spans wait to be
assembled (the pump is behind, e.g. the broker does not acknowledge). ``/metrics`` serves the
service's counters in the Prometheus text format (prometheus_client). Bound to
``SELFHEAL_OTLP_HOST`` (127.0.0.1 by default), port ``SELFHEAL_OTLP_PORT`` (4318, the OTLP/HTTP
default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.errors import ContractViolation
from streams.otlp.service import HTTP_SOURCE, OtlpService
from streams.processors.otlp import decode_request, parse_json, parse_protobuf

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SERVICE_KEY = web.AppKey("otlp_service", OtlpService)


def _encode(message, content_type: str) -> bytes:
    if content_type == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()


async def export_traces(request: web.Request) -> web.Response:
    """``POST /v1/traces``: decode, hold the spans for assembly, answer (partial) success."""
    service = request.app[SERVICE_KEY]
    ctype = request.content_type
    if ctype not in (PROTOBUF, JSON):
        service.counts["http:requests_unsupported"] += 1
        return web.Response(status=415, text=f"Content-Type {ctype!r} is not {PROTOBUF} or {JSON}")
    body = await request.read()
    try:
        req = parse_json(body) if ctype == JSON else parse_protobuf(body)
    except ContractViolation as exc:
        service.counts["http:requests_bad"] += 1
        return web.Response(status=400, body=_encode(Status(code=3, message=str(exc)), ctype), content_type=ctype)
    decoded = decode_request(req, HTTP_SOURCE)
    if not service.accept(decoded, "http"):
        return web.Response(status=503, headers={"Retry-After": "2"}, body=_encode(
            Status(code=14, message="receiver busy: too many spans waiting for assembly"), ctype), content_type=ctype)
    resp = ExportTraceServiceResponse()
    if decoded.rejected:
        resp.partial_success.rejected_spans = decoded.rejected_spans
        first = decoded.rejected[0]
        resp.partial_success.error_message = (f"{decoded.rejected_spans} span(s) rejected and dead-lettered; first: "
                                              f"{first.message}")
    return web.Response(body=_encode(resp, ctype), content_type=ctype)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text exposition of the service's counters."""
    body = generate_latest(request.app[SERVICE_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(service: OtlpService) -> web.Application:
    """The aiohttp application of one receiver (request size bound from the service's settings)."""
    app = web.Application(client_max_size=service.settings.otlp_max_request_bytes)
    app[SERVICE_KEY] = service
    app.router.add_post("/v1/traces", export_traces)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(service: OtlpService, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set or the service's pump fails (its error is raised)."""
    runner = web.AppRunner(make_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.warning("selfheal otlp: OTLP/HTTP on http://%s:%d/v1/traces, metrics on /metrics%s", host, port,
                f", Kafka source {service.kafka_topic}" if service.consumer is not None else "")
    try:
        while not stop.is_set() and service.alive:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await runner.cleanup()
    if service.error is not None:
        raise service.error


def run_receiver(service: OtlpService, host: str, port: int) -> None:
    """Run receiver and pump until SIGTERM / SIGINT, then close the service (flushes what is complete).

    Raises:
        DeliveryError (or another error of the pump): the broker did not acknowledge output.
    """
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(service, host, port, stop)

    service.run()
    try:
        asyncio.run(main())
    finally:
        service.close()
