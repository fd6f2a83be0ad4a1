"""Synthetic OTLP traffic: ``ExportTraceServiceRequest`` messages of GenAI agent runs, built with
opentelemetry-proto (tests and ``selfheal bench-otlp``; real-SDK traffic is in the integration tests).

Each run is an ``invoke_agent`` root with ``chat`` model calls and ``execute_tool`` children,
following the GenAI semantic conventions, and the ``selfheal.*`` resource attributes that give
tenant, cohort and release.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def any_value(value: Any) -> AnyValue:
    """An OTLP ``AnyValue`` for a Python str, bool, int, float or list of those."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list | tuple):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    return AnyValue(string_value=str(value))


def key_values(attrs: Mapping[str, Any]) -> list[KeyValue]:
    """OTLP attributes from a dict."""
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def make_span(trace_id: bytes, span_id: bytes, parent: bytes, name: str, start_ns: int, end_ns: int,
              attrs: Mapping[str, Any], *, error: bool = False,
              events: Iterable[tuple[str, int, Mapping[str, Any]]] = ()) -> Span:
    """One OTLP span (``error``: status ERROR)."""
    span = Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name, kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=start_ns, end_time_unix_nano=end_ns, attributes=key_values(attrs))
    if error:
        span.status.code = Status.STATUS_CODE_ERROR
    for ev_name, ev_time, ev_attrs in events:
        span.events.add(name=ev_name, time_unix_nano=ev_time, attributes=key_values(ev_attrs))
    return span


def agent_run(trace_id: bytes | None = None, *, start_ns: int | None = None, latency_ms: float = 1200.0,
              tools: int = 2, llm_calls: int = 2, input_tokens: int = 500, output_tokens: int = 120,
              tool_error: bool = False, failed: bool = False, agent_name: str = "scribe",
              evaluations: Iterable[Mapping[str, Any]] = ()) -> list[Span]:
    """Spans of one agent run: root ``invoke_agent`` + ``llm_calls`` ``chat`` spans (tokens split
    evenly) + ``tools`` ``execute_tool`` spans; ``evaluations``: attributes of
    ``gen_ai.evaluation.result`` events on the root. Root last (as an SDK exports it)."""
    trace_id = trace_id or os.urandom(16)
    start_ns = start_ns if start_ns is not None else time.time_ns() - int(latency_ms * 1e6) - 1_000_000
    end_ns = start_ns + int(latency_ms * 1e6)
    root_id = os.urandom(8)
    spans = []
    step = (end_ns - start_ns) // (tools + llm_calls + 1)
    t = start_ns
    for i in range(llm_calls):
        spans.append(make_span(trace_id, os.urandom(8), root_id, "chat gpt-x", t, t + step, {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-x",
            "gen_ai.response.model": "gpt-x-2026-10", "gen_ai.usage.input_tokens": input_tokens // llm_calls
            + (input_tokens % llm_calls if i == 0 else 0),
            "gen_ai.usage.output_tokens": output_tokens // llm_calls + (output_tokens % llm_calls if i == 0 else 0)}))
        t += step
    for i in range(tools):
        err = tool_error and i == 0
        spans.append(make_span(trace_id, os.urandom(8), root_id, f"execute_tool ehr_lookup_{i}", t, t + step, {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": f"ehr_lookup_{i}",
            "gen_ai.tool.type": "function", **({"error.type": "TimeoutError"} if err else {})}, error=err))
        t += step
    root_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent_name,
                  "gen_ai.agent.id": f"{agent_name}-1", "gen_ai.provider.name": "openai",
                  "gen_ai.request.model": "gpt-x", "gen_ai.conversation.id": f"conv-{trace_id.hex()[:8]}"}
    if failed:
        root_attrs["error.type"] = "AgentError"
    spans.append(make_span(trace_id, root_id, b"", f"invoke_agent {agent_name}", start_ns, end_ns, root_attrs,
                           error=failed, events=[("gen_ai.evaluation.result", end_ns, e) for e in evaluations]))
    return spans


def request(spans: Iterable[Span], resource: Mapping[str, Any]) -> ExportTraceServiceRequest:
    """One ``ExportTraceServiceRequest`` with one resource and one scope."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(key_values(resource))
    ss = rs.scope_spans.add()
    ss.scope.name = "selfheal.devtools"
    ss.spans.extend(spans)
    return req


def tenant_resource(tenant: str = "acme", cohort: str = "cardiology", release: str = "rel-1",
                    service: str = "scribe-svc") -> dict[str, Any]:
    """Resource attributes of a selfheal-aware agent: ``selfheal.*`` tenant and cohort, and the
    release through the default fallback (``service.version``)."""
    return {"service.name": service, "service.version": release, "selfheal.tenant_id": tenant,
            "selfheal.cohort": cohort, "deployment.environment.name": "prod"}


def trace_spans(trace: Mapping[str, Any]) -> list[Span]:
    """The spans an OTel-instrumented agent would emit for an AgentTrace dict (the inverse of
    :func:`streams.processors.otlp.map_run` for the fields it maps): an ``invoke_agent`` root
    carrying the ``selfheal.*`` attributes and ``gen_ai.usage.*``, one ``execute_tool`` span per
    tool call and one OpenInference RETRIEVER span per retrieval query. Lets the fleet simulator's
    traffic (and its injected regressions) travel through the OTLP ingress."""
    tid = bytes.fromhex(hashlib.sha256(trace["trace_id"].encode()).hexdigest()[:32])
    root_id = hashlib.sha256(b"root" + tid).digest()[:8]
    start = trace["event_time"] * 1_000_000
    end = start + int(trace["latency_ms"] * 1e6)
    rel = trace["release"]
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": trace["workflow"],
        "gen_ai.agent.id": trace["agent_id"], "gen_ai.conversation.id": trace["session_id"],
        "gen_ai.request.model": rel["model"], "gen_ai.usage.input_tokens": trace["input_tokens"],
        "gen_ai.usage.output_tokens": trace["output_tokens"],
        "selfheal.trace_id": trace["trace_id"], "selfheal.tenant_id": trace["tenant_id"],
        "selfheal.cohort": trace["cohort"], "selfheal.workflow": trace["workflow"],
        "selfheal.release.id": rel["release_id"], "selfheal.release.prompt_version": rel["prompt_version"],
        "selfheal.release.tool_schema_version": rel["tool_schema_version"],
        "selfheal.release.policy_version": rel["policy_version"],
        "selfheal.release.retrieval_index_version": rel["retrieval_index_version"],
        "selfheal.outcome": trace["outcome"], "selfheal.cost_usd": float(trace["cost_usd"]),
        "selfheal.retries": trace["retries"], "selfheal.fallback_used": trace["fallback_used"],
        "selfheal.policy_blocked": trace["policy_blocked"],
    }
    for key in ("intent", "confidence", "output_sha256"):
        if trace.get(key) is not None:
            attrs[f"selfheal.{key}"] = trace[key]
    if trace.get("rollout"):
        for key, value in trace["rollout"].items():
            attrs[f"selfheal.rollout.{key}"] = value
    spans = [make_span(tid, root_id, b"", f"invoke_agent {trace['workflow']}", start, end, attrs,
                       error=trace["outcome"] == "failure")]
    t = start
    for i, call in enumerate(trace["tool_calls"]):
        sid = hashlib.sha256(b"tool%d" % i + tid).digest()[:8]
        spans.append(make_span(tid, sid, root_id, f"execute_tool {call['name']}", t, t + int(call["latency_ms"] * 1e6),
                               {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call["name"],
                                "selfheal.tool.status": call["status"]}, error=call["status"] != "ok"))
    for i in range(trace["retrieval_queries"]):
        sid = hashlib.sha256(b"retr%d" % i + tid).digest()[:8]
        spans.append(make_span(tid, sid, root_id, "retrieve", t, t + 1_000_000, {
            "openinference.span.kind": "RETRIEVER", "selfheal.retrieval.hits": i < trace["retrieval_hits"]}))
    return spans
