"""OTLP spans → ``AgentTrace`` records: the one mapping behind both OTLP ingress paths.

Input is an OpenTelemetry ``ExportTraceServiceRequest`` (opentelemetry-proto), as the OTLP/HTTP
receiver gets it or as the OpenTelemetry Collector's Kafka exporter writes it (``otlp_proto``).
:func:`decode_request` turns it into :class:`OtlpSpan` views; :class:`SpanAssembler` groups them
by OTel trace id, waits a bounded time for the spans of one agent run to arrive (children before
or after their root), and calls :func:`map_run`, a pure function from one run's spans to one
``AgentTrace`` dict plus typed ``Feedback`` dicts from ``gen_ai.evaluation.result`` events.

Conventions read (docs/otlp.md has the full attribute table and what was left out):

- OpenTelemetry GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/):
  ``gen_ai.operation.name`` (``invoke_agent`` / ``invoke_workflow`` roots, ``execute_tool`` tool
  calls, ``chat`` / ``text_completion`` / ``generate_content`` model calls), ``gen_ai.provider.name``,
  ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` /
  ``output_tokens``, ``gen_ai.agent.*``, ``gen_ai.conversation.id``, ``gen_ai.prompt.name`` /
  ``version``, ``gen_ai.tool.*``, ``gen_ai.response.finish_reasons``, ``error.type``, span status,
  and the ``gen_ai.evaluation.result`` event.
- OpenInference (https://github.com/Arize-ai/openinference, ``semantic_conventions.md``):
  ``openinference.span.kind`` AGENT / CHAIN roots, LLM, TOOL, RETRIEVER, GUARDRAIL children,
  ``llm.token_count.prompt`` / ``completion``, ``llm.model_name``, ``tool.name``, ``session.id``,
  ``retrieval.documents.*``.
- Neither has tenant, cohort or release: ``selfheal.*`` span or resource attributes carry them
  (:data:`SELFHEAL_ATTRIBUTES`), with a configurable fallback from common resource attributes
  (:class:`OtlpMapping`, default ``cohort ← deployment.environment.name``,
  ``release_id ← service.version``, ``workflow ← gen_ai.agent.name``, ``agent_id ← service.name``).

A run is the outermost agent-kind span of an OTel trace (an agent-kind span with no agent-kind
ancestor among the spans received) and all its descendants; nested agents belong to the run of
their outermost ancestor. What cannot become a valid trace becomes a :class:`schemas.DeadLetter`
(the spans re-serialized as an ``ExportTraceServiceRequest`` in ``payload``) with one of the
reasons in :data:`DEAD_LETTER_REASONS`; every other outcome is a counter in
:attr:`SpanAssembler.stats`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from pydantic import ValidationError

from schemas import AgentTrace, DeadLetter, Feedback
from schemas.common import MAX_ATTRIBUTE_LEN, MAX_ATTRIBUTES, MAX_ID_LEN
from schemas.feedback import SAFETY_CATEGORIES, FeedbackCategory
from streams.errors import ContractViolation

#: dead-letter ``error_class`` values this module produces, and what each means
DEAD_LETTER_REASONS = {
    "otlp_not_protobuf": "a Kafka message that is not a serialized ExportTraceServiceRequest",
    "otlp_invalid_span": "a span without a 16-byte trace id / 8-byte span id, or ending before it starts",
    "otlp_no_root": "no agent root span (invoke_agent, invoke_workflow, OpenInference AGENT/CHAIN) "
                    "arrived within SELFHEAL_OTLP_ROOT_WAIT_S",
    "otlp_missing_attribute": "the run has no tenant, cohort, workflow or release id (field names which)",
    "otlp_late_span": "a span of a run that was already emitted (arrived after SELFHEAL_OTLP_SETTLE_S)",
    "otlp_evicted": "a run without root pushed out by SELFHEAL_OTLP_MAX_PENDING_SPANS",
    "validation": "the mapped AgentTrace or Feedback breaks its contract (field and value named)",
}

ROOT_OPERATIONS = frozenset({"invoke_agent", "invoke_workflow"})
ROOT_OPENINFERENCE_KINDS = frozenset({"AGENT", "CHAIN"})
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
STATUS_ERROR = Status.STATUS_CODE_ERROR
EVALUATION_EVENT = "gen_ai.evaluation.result"
UNSET = "unset"

#: ``selfheal.*`` attributes (span attribute of the root, else resource attribute) → AgentTrace field
SELFHEAL_ATTRIBUTES = {
    "selfheal.tenant_id": "tenant_id",
    "selfheal.cohort": "cohort",
    "selfheal.workflow": "workflow",
    "selfheal.intent": "intent",
    "selfheal.agent_id": "agent_id",
    "selfheal.session_id": "session_id",
    "selfheal.trace_id": "trace_id",
    "selfheal.release.id": "release_id",
    "selfheal.release.model": "release.model",
    "selfheal.release.prompt_version": "release.prompt_version",
    "selfheal.release.tool_schema_version": "release.tool_schema_version",
    "selfheal.release.policy_version": "release.policy_version",
    "selfheal.release.retrieval_index_version": "release.retrieval_index_version",
    "selfheal.rollout.arm": "rollout.arm",
    "selfheal.rollout.stage_pct": "rollout.stage_pct",
    "selfheal.rollout.candidate_release_id": "rollout.candidate_release_id",
    "selfheal.outcome": "outcome",
    "selfheal.cost_usd": "cost_usd",
    "selfheal.confidence": "confidence",
    "selfheal.retries": "retries",
    "selfheal.fallback_used": "fallback_used",
    "selfheal.policy_blocked": "policy_blocked",
    "selfheal.output_sha256": "output_sha256",
}

#: evaluation name (lower case, ``-``/space → ``_``) → correction category (docs/otlp.md)
EVALUATION_CATEGORIES: dict[str, FeedbackCategory] = {
    **{c.value: c for c in FeedbackCategory if c is not FeedbackCategory.other},
    "groundedness": FeedbackCategory.hallucination,
    "faithfulness": FeedbackCategory.hallucination,
    "factuality": FeedbackCategory.hallucination,
    "factual_correctness": FeedbackCategory.hallucination,
    "completeness": FeedbackCategory.omission,
    "response_completeness": FeedbackCategory.omission,
    "tool_call_accuracy": FeedbackCategory.tool_failure,
    "tool_correctness": FeedbackCategory.tool_failure,
    "format": FeedbackCategory.formatting_error,
    "format_compliance": FeedbackCategory.formatting_error,
    "json_validity": FeedbackCategory.formatting_error,
    "safety": FeedbackCategory.unsafe_recommendation,
    "harmfulness": FeedbackCategory.unsafe_recommendation,
    "toxicity": FeedbackCategory.unsafe_recommendation,
    "intent_resolution": FeedbackCategory.routing_error,
    "routing": FeedbackCategory.routing_error,
    "context_relevance": FeedbackCategory.retrieval_miss,
    "retrieval_relevance": FeedbackCategory.retrieval_miss,
    "document_relevance": FeedbackCategory.retrieval_miss,
    "politeness": FeedbackCategory.tone,
}
#: ``gen_ai.evaluation.score.label`` values (lower case) that mean the run failed the evaluation
FAIL_LABELS = frozenset({"fail", "failed", "failure", "false", "no", "incorrect", "hallucinated", "unsafe",
                         "toxic", "bad", "negative", "not_grounded", "ungrounded", "irrelevant", "incomplete"})
#: ... and that mean it passed (no correction; kept as a trace attribute)
PASS_LABELS = frozenset({"pass", "passed", "success", "true", "yes", "correct", "factual", "safe", "good",
                         "positive", "grounded", "relevant", "complete"})

_NS_PER_MS = 1_000_000


# ---------------------------------------------------------------------------------- decoding
@dataclass(slots=True)
class OtlpSpan:
    """One span with its resource, as the mapping reads it.

    ``trace_id`` (32 hex), ``span_id`` / ``parent_span_id`` (16 hex; ``""``: no parent), times in
    Unix ns, ``status_code`` the OTLP ``Status.StatusCode`` (0 unset, 1 ok, 2 error),
    ``attributes`` / ``resource`` plain Python values (str, bool, int, float, list, dict),
    ``events`` as ``(name, time_unix_nano, attributes)``. ``source`` is where the span came from:
    ``(topic, partition, offset)``, ``("otlp-http", -1, -1)`` for the receiver. ``proto`` /
    ``resource_proto`` / ``scope_proto`` keep the original messages for the dead-letter payload.
    """

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    source: tuple[str, int, int]
    proto: Span
    resource_proto: Any
    scope_proto: Any

    def attr(self, key: str, default: Any = None) -> Any:
        """Span attribute ``key``, else resource attribute ``key``, else ``default``."""
        value = self.attributes.get(key)
        if value is None:
            value = self.resource.get(key, default)
        return value

    @property
    def operation(self) -> str | None:
        """``gen_ai.operation.name`` of the span (GenAI semconv), or ``None``."""
        return self.attributes.get("gen_ai.operation.name")

    @property
    def oi_kind(self) -> str | None:
        """``openinference.span.kind`` in upper case, or ``None``."""
        kind = self.attributes.get("openinference.span.kind")
        return kind.upper() if isinstance(kind, str) else None

    @property
    def is_agent(self) -> bool:
        """An agent-kind span: GenAI ``invoke_agent`` / ``invoke_workflow`` or OpenInference AGENT / CHAIN."""
        return self.operation in ROOT_OPERATIONS or self.oi_kind in ROOT_OPENINFERENCE_KINDS


def any_value(value: AnyValue) -> Any:
    """Python value of an OTLP ``AnyValue`` (str, bool, int, float, bytes, list, dict; ``None`` if empty)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def span_problem(span: Span) -> tuple[str, str, str] | None:
    """Why a span cannot be assembled: ``(field, value shown, message)``, or ``None`` when it can.

    OTLP requires a 16-byte non-zero trace id and an 8-byte non-zero span id
    (opentelemetry-proto ``trace.proto``); an end before the start has no duration.
    """
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return "trace_id", span.trace_id.hex(), f"span {span.name!r}: trace_id must be 16 non-zero bytes"
    if len(span.span_id) != 8 or not any(span.span_id):
        return "span_id", span.span_id.hex(), f"span {span.name!r}: span_id must be 8 non-zero bytes"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id", span.parent_span_id.hex(), f"span {span.name!r}: parent_span_id must be 8 bytes"
    if span.start_time_unix_nano == 0 or span.end_time_unix_nano < span.start_time_unix_nano:
        return ("end_time_unix_nano", str(span.end_time_unix_nano),
                f"span {span.name!r}: end_time_unix_nano {span.end_time_unix_nano} is before start "
                f"{span.start_time_unix_nano} (or start is 0)")
    return None


@dataclass(slots=True)
class DecodedRequest:
    """Spans of one ``ExportTraceServiceRequest``: the valid ones and the rejected ones."""

    spans: list[OtlpSpan] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)

    @property
    def rejected_spans(self) -> int:
        """Spans rejected at receipt (OTLP partial success ``rejected_spans``)."""
        return len(self.rejected)


def decode_request(request: ExportTraceServiceRequest, source: tuple[str, int, int],
                   now_ms: int | None = None) -> DecodedRequest:
    """Flatten an ``ExportTraceServiceRequest`` into :class:`OtlpSpan` views.

    Spans failing :func:`span_problem` become ``otlp_invalid_span`` dead letters (payload: the
    span alone as a request) instead of views.
    """
    out = DecodedRequest()
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                problem = span_problem(span)
                if problem is not None:
                    fld, shown, message = problem
                    out.rejected.append(otlp_dead_letter(
                        source, "otlp_invalid_span", message, _request_bytes([(rs.resource, ss.scope, span)]),
                        field_path=fld, value=shown, key=span.trace_id.hex() + span.span_id.hex(),
                        tenant_id=_tenant_guess(span, resource), now_ms=now_ms))
                    continue
                out.spans.append(OtlpSpan(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(), name=span.name,
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    status_code=span.status.code, status_message=span.status.message,
                    attributes=_attributes(span.attributes), resource=resource,
                    events=[(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in span.events],
                    source=source, proto=span, resource_proto=rs.resource, scope_proto=ss.scope))
    return out


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """Parse a binary (``application/x-protobuf``) request.

    Raises:
        ContractViolation: ``error_class="otlp_not_protobuf"`` when the bytes do not parse.
    """
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise ContractViolation(f"body is not a serialized ExportTraceServiceRequest: {exc}",
                                field="(message)", value=body[:16].hex(), error_class="otlp_not_protobuf") from None
    return req


_HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(spans: Iterable[Any]) -> None:
    import base64

    for obj in spans:
        if not isinstance(obj, dict):
            continue
        for key in _HEX_ID_FIELDS:
            value = obj.get(key)
            if isinstance(value, str) and value:
                try:
                    obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise ContractViolation(f"{key} {value[:40]!r} is not hex (OTLP/JSON encodes ids as hex)",
                                            field=key, value=value, error_class="otlp_not_protobuf") from None
        _hex_ids_to_base64(obj.get("links") or ())


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    """Parse an OTLP/JSON request (``application/json``).

    OTLP/JSON is protobuf's JSON mapping with two differences (OTLP spec, "JSON Protobuf
    Encoding"): trace and span ids are hex, not base64, and unknown fields must be ignored.
    Ids are converted, then protobuf's ``json_format.ParseDict`` does the rest.

    Raises:
        ContractViolation: ``error_class="otlp_not_protobuf"``: not JSON, not the message shape,
            or an id that is not hex.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractViolation(f"body is not JSON: {exc}", field="(message)", value=body[:40],
                                error_class="otlp_not_protobuf") from None
    if not isinstance(doc, dict):
        raise ContractViolation("OTLP/JSON body must be an object", field="(message)", value=type(doc).__name__,
                                error_class="otlp_not_protobuf")
    for rs in doc.get("resourceSpans") or doc.get("resource_spans") or ():
        for ss in (rs.get("scopeSpans") or rs.get("scope_spans") or ()) if isinstance(rs, dict) else ():
            _hex_ids_to_base64((ss.get("spans") or ()) if isinstance(ss, dict) else ())
    req = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ContractViolation(f"not an OTLP/JSON ExportTraceServiceRequest: {exc}", field="(message)",
                                value=None, error_class="otlp_not_protobuf") from None
    return req


def _request_bytes(items: Iterable[tuple[Any, Any, Span]]) -> bytes:
    """An ``ExportTraceServiceRequest`` holding the given ``(resource, scope, span)`` triples."""
    req = ExportTraceServiceRequest()
    by_resource: dict[int, ResourceSpans] = {}
    by_scope: dict[tuple[int, int], ScopeSpans] = {}
    for resource, scope, span in items:
        rs = by_resource.get(id(resource))
        if rs is None:
            rs = by_resource[id(resource)] = req.resource_spans.add()
            rs.resource.CopyFrom(resource)
        ss = by_scope.get((id(resource), id(scope)))
        if ss is None:
            ss = by_scope[(id(resource), id(scope))] = rs.scope_spans.add()
            ss.scope.CopyFrom(scope)
        ss.spans.add().CopyFrom(span)
    return req.SerializeToString()


def spans_payload(spans: Sequence[OtlpSpan]) -> bytes:
    """The spans re-serialized as one ``ExportTraceServiceRequest`` (dead-letter payload, replayable)."""
    return _request_bytes((s.resource_proto, s.scope_proto, s.proto) for s in spans)


def _tenant_guess(span: Span, resource: Mapping[str, Any]) -> str | None:
    for kv in span.attributes:
        if kv.key == "selfheal.tenant_id":
            return kv.value.string_value or None
    value = resource.get("selfheal.tenant_id")
    return value if isinstance(value, str) else None


def otlp_dead_letter(source: tuple[str, int, int], error_class: str, message: str, payload: bytes, *,
                 field_path: str | None = None, value: Any = None, key: str = "", tenant_id: str | None = None,
                 now_ms: int | None = None) -> DeadLetter:
    topic, partition, offset = source
    text = None if value is None else str(value)
    if text is not None and len(text) > 200:
        text = text[:197] + "..."
    return DeadLetter(
        # deterministic: the same spans re-read (Kafka) or re-sent map to the same row
        dead_letter_id=hashlib.sha1(f"{topic}|{key}|{error_class}".encode()).hexdigest()[:24],
        source_topic=topic, source_partition=partition, source_offset=offset, record_index=-1,
        key=tenant_id.encode() if tenant_id else None, payload=payload, error_class=error_class,
        field=field_path, value=text, message=message, tenant_id=tenant_id,
        occurred_at=now_ms if now_ms is not None else int(time.time() * 1000))


# ---------------------------------------------------------------------------------- mapping
@dataclass(frozen=True, slots=True)
class OtlpMapping:
    """Where fields that no OTel convention defines come from when no ``selfheal.*`` attribute
    gives them: ``fallback`` maps an AgentTrace field (``tenant_id``, ``cohort``, ``workflow``,
    ``intent``, ``agent_id``, ``session_id``, ``release_id``) to the attribute names tried in
    order (root span first, then its resource).

    ``parse("cohort=deployment.environment.name,tenant_id=service.namespace")`` reads the
    ``SELFHEAL_OTLP_ATTRIBUTE_MAP`` syntax: comma-separated ``field=attribute`` pairs, a field
    may repeat (tried in the given order); a given field replaces that field's defaults.
    """

    fallback: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_FALLBACK))

    FIELDS = ("tenant_id", "cohort", "workflow", "intent", "agent_id", "session_id", "release_id")

    @classmethod
    def parse(cls, text: str) -> OtlpMapping:
        """Mapping from ``field=attribute,...`` on top of :data:`DEFAULT_FALLBACK`.

        Raises:
            ContractViolation: an unknown field or a pair without ``=`` (names it).
        """
        given: dict[str, list[str]] = {}
        for pair in (p.strip() for p in text.split(",")):
            if not pair:
                continue
            name, sep, attr = (x.strip() for x in pair.partition("="))
            if not sep or not attr or name not in cls.FIELDS:
                raise ContractViolation(f"SELFHEAL_OTLP_ATTRIBUTE_MAP: {pair!r} is not field=attribute with field "
                                        f"one of {', '.join(cls.FIELDS)}", field="otlp_attribute_map", value=pair)
            given.setdefault(name, []).append(attr)
        return cls({**DEFAULT_FALLBACK, **{k: tuple(v) for k, v in given.items()}})


#: fallbacks when no ``selfheal.*`` attribute is set (no tenant fallback: a tenant is never guessed)
DEFAULT_FALLBACK: dict[str, tuple[str, ...]] = {
    "cohort": ("deployment.environment.name", "deployment.environment"),
    "workflow": ("gen_ai.agent.name",),
    "agent_id": ("gen_ai.agent.id", "gen_ai.agent.name", "service.name"),
    "session_id": ("gen_ai.conversation.id", "session.id"),
    "release_id": ("service.version",),
}


@dataclass(slots=True)
class MappedRun:
    """One run mapped: the AgentTrace dict (Avro-shaped, event times in epoch ms), the feedback
    dicts from failing evaluations, and counts of evaluation results by outcome
    (``feedback``, ``passed``, ``unjudged``, ``unmapped``)."""

    trace: dict[str, Any]
    feedback: list[dict[str, Any]]
    evaluations: Counter[str]


def _first(root: OtlpSpan, names: Iterable[str]) -> Any:
    for name in names:
        value = root.attr(name)
        if value is not None and value != "":
            return value
    return None


def _is_llm(span: OtlpSpan) -> bool:
    return span.operation in LLM_OPERATIONS or span.oi_kind == "LLM"


def _is_tool(span: OtlpSpan) -> bool:
    return span.operation == "execute_tool" or span.oi_kind == "TOOL"


def _int_attr(span: OtlpSpan, *names: str) -> int | None:
    for name in names:
        value = span.attributes.get(name)
        if value is not None:
            return value if isinstance(value, int) and not isinstance(value, bool) else _bad(name, value, "an int")
    return None


def _bad(name: str, value: Any, expected: str) -> Any:
    raise ContractViolation(f"attribute {name}={value!r} is not {expected}", field=name, value=value)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _bad(name, value, "a boolean")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        return _bad(name, value, "a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        return _bad(name, value, "a number")


def _tool_status(span: OtlpSpan) -> str:
    given = span.attributes.get("selfheal.tool.status")
    if given is not None:
        return str(given)
    if span.status_code != STATUS_ERROR and span.attributes.get("error.type") is None:
        return "ok"
    error = f"{span.attributes.get('error.type', '')} {span.status_message}".lower()
    if "timeout" in error or "timed out" in error:
        return "timeout"
    if "denied" in error or "forbidden" in error or "permission" in error:
        return "denied"
    return "error"


def run_trace_id(root: OtlpSpan) -> str:
    """The AgentTrace id of the run under ``root``: ``selfheal.trace_id`` if set, the OTel trace id
    (32 hex) when the root is the OTel trace's root span, else ``<trace id>-<root span id>``."""
    given = root.attr("selfheal.trace_id")
    if isinstance(given, str) and given:
        return given
    return root.trace_id if not root.parent_span_id else f"{root.trace_id}-{root.span_id}"


def map_run(root: OtlpSpan, members: Sequence[OtlpSpan], mapping: OtlpMapping,
            now_ms: int | None = None, max_event_age_s: int = 30 * 86400,
            max_clock_skew_s: int = 300) -> MappedRun:
    """Map one agent run (its root span and every descendant, root included in ``members``) to
    an ``AgentTrace`` dict, validated with the contract model, plus feedback dicts.

    Field sources (docs/otlp.md has the table): identity and release from ``selfheal.*``, then the
    :class:`OtlpMapping` fallbacks; latency from the root's duration (ns → ms); tokens from the
    root's ``gen_ai.usage.*`` / ``llm.token_count.*``, else the sum over model-call spans
    (``chat`` / ``text_completion`` / ``generate_content`` / OpenInference LLM, so nested agents'
    aggregates are not counted twice); tool calls from ``execute_tool`` / TOOL spans in start
    order; retrieval from RETRIEVER spans; ``policy_blocked`` from an erroring GUARDRAIL span or a
    ``content_filter`` finish reason; outcome ``failure`` when the root's status is ERROR or it
    has ``error.type``.

    Raises:
        ContractViolation: ``error_class`` ``otlp_missing_attribute`` (no tenant, cohort, workflow
            or release id; ``field`` names it) or ``validation`` (a value breaks the AgentTrace /
            Feedback contract or an attribute has the wrong type; ``field`` and ``value`` name it).
    """
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    fb = mapping.fallback

    def ident(name: str, required: bool = True) -> Any:
        value = _first(root, (f"selfheal.{name}" if name != "release_id" else "selfheal.release.id",
                              *fb.get(name, ())))
        if value is None and required:
            tried = ", ".join([f"selfheal.{name}" if name != "release_id" else "selfheal.release.id",
                               *fb.get(name, ())])
            raise ContractViolation(f"run {run_trace_id(root)}: no {name} (tried {tried} on the root span "
                                    "and its resource)", field=name, value=None, error_class="otlp_missing_attribute")
        return str(value) if value is not None else None

    tenant_id, cohort, workflow = ident("tenant_id"), ident("cohort"), ident("workflow")
    release_id = ident("release_id")
    llms = [s for s in members if _is_llm(s)]
    first_llm = min(llms, key=lambda s: s.start_ns) if llms else None

    def release_part(name: str, *otel: str) -> str:
        value = _first(root, (f"selfheal.release.{name}",))
        if value is None:
            for span in (root, first_llm):
                if span is not None and value is None:
                    value = _first(span, otel)
        return str(value) if value is not None else UNSET

    prompt_version = _first(root, ("selfheal.release.prompt_version",))
    if prompt_version is None:
        name, version = root.attr("gen_ai.prompt.name"), root.attr("gen_ai.prompt.version")
        prompt_version = f"{name}@{version}" if name and version else (version or name or UNSET)
    release = {"release_id": release_id,
               "model": release_part("model", "gen_ai.request.model", "gen_ai.response.model", "llm.model_name"),
               "prompt_version": str(prompt_version),
               "tool_schema_version": release_part("tool_schema_version"),
               "policy_version": release_part("policy_version"),
               "retrieval_index_version": release_part("retrieval_index_version")}

    rollout = None
    arm = root.attr("selfheal.rollout.arm")
    if arm is not None:
        stage_pct = _as_float("selfheal.rollout.stage_pct", root.attr("selfheal.rollout.stage_pct"))
        rollout = {"arm": arm, "stage_pct": stage_pct,
                   "candidate_release_id": root.attr("selfheal.rollout.candidate_release_id")}

    input_tokens = _int_attr(root, "gen_ai.usage.input_tokens", "llm.token_count.prompt")
    output_tokens = _int_attr(root, "gen_ai.usage.output_tokens", "llm.token_count.completion")
    if input_tokens is None:
        input_tokens = sum(_int_attr(s, "gen_ai.usage.input_tokens", "llm.token_count.prompt") or 0 for s in llms)
    if output_tokens is None:
        output_tokens = sum(_int_attr(s, "gen_ai.usage.output_tokens", "llm.token_count.completion") or 0
                            for s in llms)
    cost = root.attr("selfheal.cost_usd")
    cost_usd = (_as_float("selfheal.cost_usd", cost) if cost is not None else
                sum(_as_float("selfheal.cost_usd", s.attributes["selfheal.cost_usd"])
                    for s in llms if "selfheal.cost_usd" in s.attributes))

    tools = sorted((s for s in members if _is_tool(s) and s is not root), key=lambda s: (s.start_ns, s.span_id))
    tool_calls = [{"name": str(s.attributes.get("gen_ai.tool.name") or s.attributes.get("tool.name")
                               or s.name.removeprefix("execute_tool ")),
                   "status": _tool_status(s), "latency_ms": (s.end_ns - s.start_ns) / _NS_PER_MS} for s in tools]
    retrievers = [s for s in members if s.oi_kind == "RETRIEVER"]
    hits = 0
    for s in retrievers:
        given = s.attributes.get("selfheal.retrieval.hits")
        if given is not None:
            hits += int(_as_bool("selfheal.retrieval.hits", given))
        elif s.status_code != STATUS_ERROR and any(k.startswith("retrieval.documents.") for k in s.attributes):
            hits += 1
    blocked = root.attr("selfheal.policy_blocked")
    policy_blocked = (_as_bool("selfheal.policy_blocked", blocked) if blocked is not None else
                      any(s.oi_kind == "GUARDRAIL" and s.status_code == STATUS_ERROR for s in members)
                      or any("content_filter" in (s.attributes.get("gen_ai.response.finish_reasons") or ())
                             for s in members))

    outcome = root.attr("selfheal.outcome")
    if outcome is None:
        outcome = "failure" if root.status_code == STATUS_ERROR or root.attributes.get("error.type") else "success"
    confidence = root.attr("selfheal.confidence")
    retries = root.attr("selfheal.retries")
    fallback_used = root.attr("selfheal.fallback_used")
    trace_id = run_trace_id(root)

    attributes: dict[str, str] = {"otel.trace_id": root.trace_id, "otel.span_id": root.span_id}
    for key in ("gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.agent.name",
                "gen_ai.agent.id", "gen_ai.agent.description", "gen_ai.conversation.id", "gen_ai.prompt.name",
                "gen_ai.prompt.version", "error.type", "service.name", "openinference.span.kind", "llm.provider"):
        value = root.attr(key)
        if value is None and first_llm is not None:
            value = first_llm.attr(key) if key.startswith(("gen_ai.provider", "gen_ai.re", "llm.")) else None
        if value is not None:
            attributes[key] = str(value)[:MAX_ATTRIBUTE_LEN]
    if root.status_code == STATUS_ERROR and root.status_message:
        attributes["otel.status_message"] = root.status_message[:MAX_ATTRIBUTE_LEN]

    trace: dict[str, Any] = {
        "trace_id": trace_id, "tenant_id": tenant_id, "cohort": cohort, "workflow": workflow,
        "intent": ident("intent", required=False), "agent_id": ident("agent_id", required=False) or "unknown",
        "session_id": ident("session_id", required=False) or trace_id,
        "event_time": root.start_ns // _NS_PER_MS, "release": release, "rollout": rollout,
        "latency_ms": (root.end_ns - root.start_ns) / _NS_PER_MS,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "cost_usd": cost_usd,
        "confidence": None if confidence is None else _as_float("selfheal.confidence", confidence),
        "outcome": str(outcome), "tool_calls": tool_calls,
        "retrieval_queries": len(retrievers), "retrieval_hits": hits, "policy_blocked": policy_blocked,
        "retries": 0 if retries is None else int(_as_float("selfheal.retries", retries)),
        "fallback_used": False if fallback_used is None else _as_bool("selfheal.fallback_used", fallback_used),
        "output_sha256": root.attr("selfheal.output_sha256"), "attributes": attributes,
    }
    feedback, evaluations = _evaluations(trace, members, attributes)
    if len(attributes) > MAX_ATTRIBUTES:  # evaluation scores first to go: they are also counted
        for key in list(attributes)[MAX_ATTRIBUTES:]:
            del attributes[key]
        evaluations["attributes_truncated"] += 1
    ctx = {"now_ms": now_ms, "max_event_age_s": max_event_age_s, "max_clock_skew_s": max_clock_skew_s}
    _validate(AgentTrace, trace, ctx, "AgentTrace")
    for item in feedback:
        _validate(Feedback, item, ctx, "Feedback")
    return MappedRun(trace, feedback, evaluations)


def _validate(model: type, record: dict[str, Any], ctx: dict[str, int], name: str) -> None:
    try:
        model.model_validate(record, context=ctx)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(record)"
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        raise ContractViolation(f"{name}.{loc}: {err['msg']} (got {shown[:120]}) in run {record.get('trace_id')}",
                                field=loc, value=value) from None


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _evaluations(trace: dict[str, Any], members: Sequence[OtlpSpan],
                 attributes: dict[str, str]) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Feedback dicts from failing ``gen_ai.evaluation.result`` span events whose name maps to a
    correction category (:data:`EVALUATION_CATEGORIES`); every other result is counted and kept
    as trace attribute ``gen_ai.evaluation.<name>`` = label or score."""
    feedback: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    output_hash = trace["output_sha256"] or hashlib.sha256(trace["trace_id"].encode()).hexdigest()
    for span in members:
        for event_name, time_ns, attrs in span.events:
            if event_name != EVALUATION_EVENT:
                continue
            name = str(attrs.get("gen_ai.evaluation.name") or "")
            label = attrs.get("gen_ai.evaluation.score.label")
            score = attrs.get("gen_ai.evaluation.score.value")
            shown = str(label if label is not None else score)
            attributes.setdefault(f"gen_ai.evaluation.{_normalise(name) or 'unnamed'}"[:128], shown[:MAX_ATTRIBUTE_LEN])
            category = EVALUATION_CATEGORIES.get(_normalise(name))
            verdict = _normalise(str(label)) if label is not None else None
            if category is None:
                counts["unmapped"] += 1
            elif verdict in PASS_LABELS:
                counts["passed"] += 1
            elif verdict not in FAIL_LABELS:
                counts["unjudged"] += 1  # a score without a pass/fail label: its scale is unknown
            else:
                counts["feedback"] += 1
                key = f"{trace['trace_id']}|{span.span_id}|{time_ns}|{name}|{len(feedback)}"
                severity = attrs.get("selfheal.severity") or ("high" if category in SAFETY_CATEGORIES else "medium")
                feedback.append({
                    "feedback_id": "otel-eval-" + hashlib.sha1(key.encode()).hexdigest()[:24],
                    "trace_id": trace["trace_id"], "tenant_id": trace["tenant_id"],
                    "session_id": trace["session_id"], "source": "reviewer", "category": category.value,
                    "regulatory_tags": [], "severity": severity, "original_output_hash": output_hash,
                    "corrected_text": (str(attrs["gen_ai.evaluation.explanation"])
                                       if attrs.get("gen_ai.evaluation.explanation") else None),
                    "edit_diff": None, "reviewer_id": f"otel-eval:{name}"[:MAX_ID_LEN], "reviewer_role": "system",
                    "event_time": (time_ns or span.end_ns) // _NS_PER_MS,
                })
    return feedback, counts


# ---------------------------------------------------------------------------------- assembly
def split_runs(spans: Sequence[OtlpSpan]) -> tuple[list[tuple[OtlpSpan, list[OtlpSpan]]], list[OtlpSpan]]:
    """Split the spans of one OTel trace into runs and the spans outside every run.

    A run root is an agent-kind span (:attr:`OtlpSpan.is_agent`) with no agent-kind ancestor among
    ``spans``; its run is itself and all its descendants. Roots in start order.
    """
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[OtlpSpan]] = {}
    for s in spans:
        children.setdefault(s.parent_span_id, []).append(s)
    roots = []
    for s in spans:
        if not s.is_agent:
            continue
        parent, seen, nested = by_id.get(s.parent_span_id), {s.span_id}, False
        while parent is not None and parent.span_id not in seen:  # ``seen``: a cyclic parent chain ends
            if parent.is_agent:
                nested = True
                break
            seen.add(parent.span_id)
            parent = by_id.get(parent.parent_span_id)
        if not nested:
            roots.append(s)
    roots.sort(key=lambda s: (s.start_ns, s.span_id))
    runs, inside = [], set()
    for root in roots:
        members, stack = [], [root]
        while stack:
            s = stack.pop()
            if s.span_id in inside:
                continue
            inside.add(s.span_id)
            members.append(s)
            stack.extend(children.get(s.span_id, ()))
        runs.append((root, members))
    return runs, [s for s in spans if s.span_id not in inside]


@dataclass(slots=True)
class AssemblyOutput:
    """What one :meth:`SpanAssembler.poll` hands to the producers: AgentTrace dicts, Feedback
    dicts, dead letters, and the ``source`` of every span released (for offset commits)."""

    traces: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    released: list[tuple[str, int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.traces or self.feedback or self.dead_letters or self.released)


@dataclass(slots=True)
class _Group:
    spans: list[OtlpSpan]
    first_s: float
    last_s: float
    has_agent: bool


class SpanAssembler:
    """Groups spans by OTel trace id and maps each group's runs once they are complete.

    A group is complete when it holds an agent-kind span and no span of it has arrived for
    ``settle_s`` (children may arrive before or after their root: OTel SDK batch processors export
    every 5 s by default, so spans of one run can straddle exports). A group without an agent
    span after ``root_wait_s`` becomes an ``otlp_no_root`` dead letter. Memory is bounded by
    ``max_pending_spans``: past it the oldest groups are finished early (mapped if they have a
    root, else ``otlp_evicted``). The trace ids of the last ``remember_runs`` emitted groups are
    kept, so a span arriving after its run was emitted becomes ``otlp_late_span`` (if it belongs
    under a run) or counts as ``spans_outside_run`` (e.g. an HTTP server span above the agent).

    Not thread-safe; times are monotonic seconds given by the caller (pure, testable).

    Counters in :attr:`stats`: ``spans_in``, ``spans_outside_run``, ``runs_emitted``,
    ``feedback_emitted``, ``dead_letters:<reason>``, ``dead_letter_spans``, ``evaluations:<outcome>``,
    ``groups_evicted``.
    """

    def __init__(self, mapping: OtlpMapping | None = None, *, settle_s: float = 5.0, root_wait_s: float = 60.0,
                 max_pending_spans: int = 200_000, remember_runs: int = 100_000,
                 max_event_age_s: int = 30 * 86400, max_clock_skew_s: int = 300) -> None:
        self.mapping = mapping or OtlpMapping()
        self.settle_s = settle_s
        self.root_wait_s = root_wait_s
        self.max_pending_spans = max_pending_spans
        self.remember_runs = remember_runs
        self.max_event_age_s = max_event_age_s
        self.max_clock_skew_s = max_clock_skew_s
        self.groups: OrderedDict[str, _Group] = OrderedDict()
        self.emitted: OrderedDict[str, frozenset[str]] = OrderedDict()  # otel trace id -> span ids in runs
        self.pending_spans = 0
        self.stats: Counter[str] = Counter()
        self._out = AssemblyOutput()

    def add(self, spans: Iterable[OtlpSpan], now_s: float) -> None:
        """Take spans in (any order, any grouping)."""
        for s in spans:
            self.stats["spans_in"] += 1
            done = self.emitted.get(s.trace_id)
            if done is not None:
                self._late(s, done)
                continue
            g = self.groups.get(s.trace_id)
            if g is None:
                g = self.groups[s.trace_id] = _Group([], now_s, now_s, False)
            g.spans.append(s)
            g.last_s = now_s
            g.has_agent = g.has_agent or s.is_agent
            self.pending_spans += 1

    def poll(self, now_s: float, *, now_ms: int | None = None) -> AssemblyOutput:
        """Finish every complete or expired group and the oldest past ``max_pending_spans``;
        return (and reset) the output gathered since the last poll."""
        for tid in [t for t, g in self.groups.items()
                    if (g.has_agent and now_s - g.last_s >= self.settle_s)
                    or (not g.has_agent and now_s - g.first_s >= self.root_wait_s)]:
            self._finish(tid, "otlp_no_root", now_ms)
        while self.pending_spans > self.max_pending_spans and self.groups:
            self.stats["groups_evicted"] += 1
            self._finish(next(iter(self.groups)), "otlp_evicted", now_ms)
        out, self._out = self._out, AssemblyOutput()
        return out

    def drain(self, now_ms: int | None = None, *, keep: Callable[[OtlpSpan], bool] | None = None) -> AssemblyOutput:
        """Finish every group now (shutdown): groups with a root are mapped, the others
        dead-lettered, except rootless groups holding a span for which ``keep`` is true (spans
        from Kafka, read again after a restart since their offsets are not committed)."""
        for tid, g in list(self.groups.items()):
            if not g.has_agent and keep is not None and any(keep(s) for s in g.spans):
                continue
            self._finish(tid, "otlp_no_root", now_ms)
        out, self._out = self._out, AssemblyOutput()
        return out

    def held_sources(self) -> Iterable[tuple[str, int, int]]:
        """``source`` of every span held (not yet released)."""
        for g in self.groups.values():
            for s in g.spans:
                yield s.source

    # ---------------------------------------------------------------- internals
    def _late(self, span: OtlpSpan, run_span_ids: frozenset[str]) -> None:
        out = self._out
        out.released.append(span.source)
        # an agent-kind span is agent data even above the emitted run (a workflow root whose
        # nested agent settled first): dead-lettered, like a child of the run
        if span.parent_span_id not in run_span_ids and not span.is_agent:
            self.stats["spans_outside_run"] += 1
            return
        self._dead(out, [span], "otlp_late_span", f"span {span.name!r} ({span.span_id}) of OTel trace "
                   f"{span.trace_id} arrived after its run was emitted (SELFHEAL_OTLP_SETTLE_S={self.settle_s})",
                   "parent_span_id", span.parent_span_id, None, None)

    def _finish(self, tid: str, no_root_reason: str, now_ms: int | None) -> None:
        g = self.groups.pop(tid)
        self.pending_spans -= len(g.spans)
        out = self._out
        out.released.extend(s.source for s in g.spans)
        runs, outside = split_runs(g.spans)
        if not runs:
            wait = self.root_wait_s if no_root_reason == "otlp_no_root" else "capacity"
            self._dead(out, g.spans, no_root_reason,
                       f"OTel trace {tid}: no invoke_agent / invoke_workflow / OpenInference AGENT or CHAIN span "
                       f"among {len(g.spans)} spans (waited {wait} s)", "gen_ai.operation.name", None, None, now_ms)
            return
        self.stats["spans_outside_run"] += len(outside)
        self.emitted[tid] = frozenset(s.span_id for _, members in runs for s in members)
        if len(self.emitted) > self.remember_runs:
            self.emitted.popitem(last=False)
        for root, members in runs:
            try:
                mapped = map_run(root, members, self.mapping, now_ms, self.max_event_age_s, self.max_clock_skew_s)
            except ContractViolation as exc:
                self._dead(out, members, exc.error_class, str(exc), exc.field, exc.value, None, now_ms,
                           key=root.span_id)
                continue
            self.stats["runs_emitted"] += 1
            self.stats["feedback_emitted"] += len(mapped.feedback)
            for k, v in mapped.evaluations.items():
                self.stats[f"evaluations:{k}"] += v
            out.traces.append(mapped.trace)
            out.feedback.extend(mapped.feedback)

    def _dead(self, out: AssemblyOutput, spans: Sequence[OtlpSpan], reason: str, message: str, fld: str | None,
              value: Any, tenant: str | None, now_ms: int | None = None, key: str = "") -> None:
        self.stats[f"dead_letters:{reason}"] += 1
        self.stats["dead_letter_spans"] += len(spans)
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)
        if tenant is None:  # the tenant the spans claim, when they claim one (the envelope's key)
            claimed = spans[0].attr("selfheal.tenant_id")
            tenant = claimed if isinstance(claimed, str) and claimed else None
        out.dead_letters.append(otlp_dead_letter(
            spans[0].source, reason, message, spans_payload(spans), field_path=fld, value=value,
            key=f"{spans[0].trace_id}|{key or spans[0].span_id}", tenant_id=tenant, now_ms=now_ms))


class OffsetTracker:
    """Committable Kafka offsets when records are released out of order (at-least-once).

    Each consumed message is :meth:`track`-ed with the number of spans it carries; each released
    span is :meth:`release`-d; :meth:`committable` gives, per partition, the lowest offset that
    still has held spans (or one past the last tracked offset), the offset to commit after the
    released spans' outputs are flushed. The same head-of-line rule as
    :class:`streams.worker.sequencer.OffsetSequencer`: a message is committed only when it and
    every earlier one are done. Messages must be tracked in offset order per partition.
    """

    def __init__(self) -> None:
        self.pending: dict[int, OrderedDict[int, int]] = {}
        self.next_offset: dict[int, int] = {}

    def track(self, partition: int, offset: int, spans: int) -> None:
        """Record a consumed message holding ``spans`` spans still to be released (0: done already)."""
        self.pending.setdefault(partition, OrderedDict())[offset] = spans
        self.next_offset[partition] = offset + 1

    def release(self, partition: int, offset: int, spans: int = 1) -> None:
        """``spans`` spans of message ``(partition, offset)`` were released (ignored for a partition
        no longer tracked)."""
        held = self.pending.get(partition)
        if held is not None and offset in held:
            held[offset] -= spans

    def forget(self, partition: int) -> None:
        """Drop a partition (revoked from this consumer): nothing of it is committed any more."""
        self.pending.pop(partition, None)
        self.next_offset.pop(partition, None)

    def committable(self) -> dict[int, int]:
        """Partition → offset to commit (the next message to read after a restart)."""
        out = {}
        for partition, held in self.pending.items():
            while held and next(iter(held.values())) <= 0:
                held.popitem(last=False)
            out[partition] = next(iter(held)) if held else self.next_offset[partition]
        return out
