"""The OTLP → AgentTrace mapping and the span assembler (pure: no network, no broker)."""

from __future__ import annotations

import os
import time

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from schemas import AgentTrace, Feedback
from streams.devtools.otlp_spans import agent_run, make_span, request, tenant_resource
from streams.errors import ContractViolation
from streams.processors.otlp import (
    OffsetTracker,
    OtlpMapping,
    SpanAssembler,
    decode_request,
    map_run,
    parse_json,
    parse_protobuf,
    split_runs,
)

SRC = ("otlp_spans", 0, 7)


def spans_of(req: ExportTraceServiceRequest):
    decoded = decode_request(req, SRC)
    assert not decoded.rejected
    return decoded.spans


def one_run(**kw):
    res = kw.pop("resource", tenant_resource())
    spans = spans_of(request(agent_run(**kw), res))
    runs, outside = split_runs(spans)
    assert len(runs) == 1 and not outside
    return runs[0]


def test_genai_run_maps_every_field() -> None:
    root, members = one_run(latency_ms=1500.0, tools=2, llm_calls=3, input_tokens=901, output_tokens=77,
                            tool_error=True)
    mapped = map_run(root, members, OtlpMapping())
    t = mapped.trace
    AgentTrace.model_validate(t)
    assert t["trace_id"] == root.trace_id and len(t["trace_id"]) == 32  # the OTel root: its trace id
    assert (t["tenant_id"], t["cohort"], t["workflow"]) == ("acme", "cardiology", "scribe")
    assert t["release"]["release_id"] == "rel-1"  # service.version fallback
    assert t["release"]["model"] == "gpt-x" and t["release"]["tool_schema_version"] == "unset"
    assert t["agent_id"] == "scribe-1" and t["session_id"].startswith("conv-")
    assert t["latency_ms"] == pytest.approx(1500.0)
    assert (t["input_tokens"], t["output_tokens"]) == (901, 77)  # summed over the three chat spans
    assert [c["name"] for c in t["tool_calls"]] == ["ehr_lookup_0", "ehr_lookup_1"]
    assert [c["status"] for c in t["tool_calls"]] == ["timeout", "ok"]  # error.type TimeoutError
    assert t["outcome"] == "success"
    assert t["event_time"] == root.start_ns // 1_000_000
    assert t["attributes"]["gen_ai.provider.name"] == "openai"
    assert t["attributes"]["gen_ai.response.model"] == "gpt-x-2026-10"  # from the first model call


def test_root_usage_wins_over_children_and_error_status_is_failure() -> None:
    root, members = one_run(failed=True)
    root.attributes["gen_ai.usage.input_tokens"] = 5000
    root.attributes["gen_ai.usage.output_tokens"] = 10
    t = map_run(root, members, OtlpMapping()).trace
    assert (t["input_tokens"], t["output_tokens"], t["outcome"]) == (5000, 10, "failure")
    assert t["attributes"]["error.type"] == "AgentError"


def test_selfheal_attributes_override_fallbacks() -> None:
    root, members = one_run(resource={**tenant_resource(), "selfheal.workflow": "soap_note",
                                      "selfheal.release.id": "rel-9", "selfheal.release.policy_version": "pol-2",
                                      "selfheal.rollout.arm": "canary", "selfheal.rollout.stage_pct": 5,
                                      "selfheal.rollout.candidate_release_id": "rel-9"})
    root.attributes.update({"selfheal.cost_usd": 0.25, "selfheal.outcome": "escalated", "selfheal.confidence": 0.7})
    t = map_run(root, members, OtlpMapping()).trace
    assert (t["workflow"], t["release"]["release_id"]) == ("soap_note", "rel-9")
    assert t["release"]["policy_version"] == "pol-2"
    assert t["rollout"] == {"arm": "canary", "stage_pct": 5.0, "candidate_release_id": "rel-9"}
    assert (t["cost_usd"], t["outcome"], t["confidence"]) == (0.25, "escalated", 0.7)


def test_missing_tenant_names_the_field_and_the_attributes_tried() -> None:
    res = tenant_resource()
    del res["selfheal.tenant_id"]
    root, members = one_run(resource=res)
    with pytest.raises(ContractViolation, match="no tenant_id") as err:
        map_run(root, members, OtlpMapping())
    assert err.value.error_class == "otlp_missing_attribute" and err.value.field == "tenant_id"
    # a configured fallback finds it
    mapped = map_run(root, members, OtlpMapping.parse("tenant_id=service.name"))
    assert mapped.trace["tenant_id"] == "scribe-svc"


def test_attribute_map_rejects_an_unknown_field() -> None:
    with pytest.raises(ContractViolation, match=r"tenant=service\.name"):
        OtlpMapping.parse("tenant=service.name")


def test_bad_value_is_a_validation_error_naming_the_field() -> None:
    root, members = one_run(resource={**tenant_resource(), "selfheal.cohort": "card iology"})
    with pytest.raises(ContractViolation) as err:
        map_run(root, members, OtlpMapping())
    assert err.value.error_class == "validation" and err.value.field == "cohort" and err.value.value == "card iology"
    root, members = one_run()
    root.attributes["selfheal.confidence"] = "high"
    with pytest.raises(ContractViolation) as err:
        map_run(root, members, OtlpMapping())
    assert err.value.field == "selfheal.confidence"


def test_openinference_run() -> None:
    tid, root_id, now = os.urandom(16), os.urandom(8), time.time_ns() - 10**9
    spans = [
        make_span(tid, os.urandom(8), root_id, "llm", now + 1, now + 10**8,
                  {"openinference.span.kind": "LLM", "llm.token_count.prompt": 30, "llm.token_count.completion": 7,
                   "llm.model_name": "claude-x"}),
        make_span(tid, os.urandom(8), root_id, "search", now + 2, now + 10**8,
                  {"openinference.span.kind": "RETRIEVER", "retrieval.documents.0.document.content": "x"}),
        make_span(tid, os.urandom(8), root_id, "search2", now + 3, now + 10**8,
                  {"openinference.span.kind": "RETRIEVER"}),
        make_span(tid, os.urandom(8), root_id, "lookup", now + 4, now + 10**8,
                  {"openinference.span.kind": "TOOL", "tool.name": "ehr_lookup"}),
        make_span(tid, os.urandom(8), root_id, "guard", now + 5, now + 10**8, {"openinference.span.kind": "GUARDRAIL"},
                  error=True),
        make_span(tid, root_id, b"", "agent", now, now + 2 * 10**8,
                  {"openinference.span.kind": "AGENT", "session.id": "sess-1", "selfheal.workflow": "triage"}),
    ]
    ((root, members),), _ = split_runs(spans_of(request(spans, tenant_resource())))
    t = map_run(root, members, OtlpMapping()).trace
    assert (t["input_tokens"], t["output_tokens"], t["release"]["model"]) == (30, 7, "claude-x")
    assert (t["retrieval_queries"], t["retrieval_hits"], t["policy_blocked"]) == (2, 1, True)
    assert t["tool_calls"][0]["name"] == "ehr_lookup" and t["session_id"] == "sess-1"


def test_nested_agents_are_one_run_and_spans_above_the_root_are_outside() -> None:
    tid, http, outer, inner, now = os.urandom(16), os.urandom(8), os.urandom(8), os.urandom(8), time.time_ns() - 10**9
    spans = spans_of(request([
        make_span(tid, http, b"", "POST /chat", now, now + 10**9, {"http.request.method": "POST"}),
        make_span(tid, outer, http, "invoke_workflow w", now + 1, now + 9 * 10**8,
                  {"gen_ai.operation.name": "invoke_workflow", "gen_ai.agent.name": "w"}),
        make_span(tid, inner, outer, "invoke_agent a", now + 2, now + 8 * 10**8,
                  {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"}),
        make_span(tid, os.urandom(8), inner, "chat", now + 3, now + 10**8,
                  {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 11}),
    ], tenant_resource()))
    runs, outside = split_runs(spans)
    assert [r.name for r, _ in runs] == ["invoke_workflow w"] and len(runs[0][1]) == 3
    assert [s.name for s in outside] == ["POST /chat"]
    t = map_run(*runs[0], OtlpMapping()).trace
    assert t["trace_id"] == f"{runs[0][0].trace_id}-{outer.hex()}" and t["input_tokens"] == 11


def test_evaluations_become_feedback_only_when_failing_and_mapped() -> None:
    evals = [
        {"gen_ai.evaluation.name": "Groundedness", "gen_ai.evaluation.score.label": "fail",
         "gen_ai.evaluation.score.value": 0.2, "gen_ai.evaluation.explanation": "cites a lab value not in the chart"},
        {"gen_ai.evaluation.name": "Toxicity", "gen_ai.evaluation.score.label": "pass"},
        {"gen_ai.evaluation.name": "Relevance", "gen_ai.evaluation.score.value": 4.0},
        {"gen_ai.evaluation.name": "completeness", "gen_ai.evaluation.score.value": 0.1},
    ]
    root, members = one_run(evaluations=evals)
    mapped = map_run(root, members, OtlpMapping())
    assert mapped.evaluations == {"feedback": 1, "passed": 1, "unmapped": 1, "unjudged": 1}
    (fb,) = mapped.feedback
    Feedback.model_validate(fb)
    assert (fb["category"], fb["severity"], fb["trace_id"]) == ("hallucination", "medium", mapped.trace["trace_id"])
    assert fb["corrected_text"].startswith("cites") and fb["reviewer_role"] == "system"
    assert mapped.trace["attributes"]["gen_ai.evaluation.relevance"] == "4.0"
    assert map_run(root, members, OtlpMapping()).feedback[0]["feedback_id"] == fb["feedback_id"]  # deterministic


def test_invalid_spans_are_rejected_at_decode() -> None:
    good = agent_run(tools=0, llm_calls=1)
    bad = make_span(b"\0" * 16, os.urandom(8), b"", "x", 5, 6, {})
    backwards = make_span(os.urandom(16), os.urandom(8), b"", "y", 10, 5, {})
    decoded = decode_request(request([*good, bad, backwards], tenant_resource()), SRC)
    assert len(decoded.spans) == 2 and decoded.rejected_spans == 2
    assert [d.field for d in decoded.rejected] == ["trace_id", "end_time_unix_nano"]
    assert {d.error_class for d in decoded.rejected} == {"otlp_invalid_span"}
    assert decoded.rejected[0].tenant_id == "acme"
    back = ExportTraceServiceRequest.FromString(decoded.rejected[1].payload)
    assert back.resource_spans[0].scope_spans[0].spans[0].name == "y"


def test_json_and_protobuf_decode_to_the_same_request() -> None:
    req = request(agent_run(), tenant_resource())
    doc = json_format.MessageToDict(req)
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # OTLP/JSON ids are hex
        for k in ("traceId", "spanId", "parentSpanId"):
            if k in span:
                import base64

                span[k] = base64.b64decode(span[k]).hex()
    doc["resourceSpans"][0]["unknownField"] = 1  # receivers must ignore unknown fields
    import json

    assert parse_json(json.dumps(doc).encode()) == req
    assert parse_protobuf(req.SerializeToString()) == req
    with pytest.raises(ContractViolation) as err:
        parse_protobuf(b"\xff\xff\xff")
    assert err.value.error_class == "otlp_not_protobuf"


def test_assembler_waits_for_the_root_and_for_late_children() -> None:
    spans = spans_of(request(agent_run(tools=2, llm_calls=1), tenant_resource()))
    root, children = spans[-1], spans[:-1]
    asm = SpanAssembler(settle_s=2.0, root_wait_s=10.0)
    asm.add(children[:1], now_s=0.0)
    assert not asm.poll(5.0).traces  # no root yet
    asm.add([root], now_s=5.0)
    asm.add(children[1:2], now_s=6.0)  # after the root
    assert not asm.poll(7.0).traces  # settling
    asm.add(children[2:], now_s=7.5)
    out = asm.poll(9.5)
    assert len(out.traces) == 1 and len(out.released) == 4 and asm.pending_spans == 0
    assert [c["name"] for c in out.traces[0]["tool_calls"]] == ["ehr_lookup_0", "ehr_lookup_1"]
    # a child arriving after its run was emitted: dead letter, not silently merged or dropped
    late = make_span(bytes.fromhex(root.trace_id), os.urandom(8), bytes.fromhex(root.span_id), "late", 1, 2,
                     {"gen_ai.operation.name": "chat"})
    asm.add(spans_of(request([late], tenant_resource())), now_s=20.0)
    out = asm.poll(20.0)
    assert [d.error_class for d in out.dead_letters] == ["otlp_late_span"] and len(out.released) == 1
    # an agent span above the emitted run (its nested agent settled first) is not outside data
    outer = make_span(bytes.fromhex(root.trace_id), os.urandom(8), b"", "invoke_workflow w", 1, 2,
                      {"gen_ai.operation.name": "invoke_workflow"})
    http = make_span(bytes.fromhex(root.trace_id), os.urandom(8), b"", "POST /chat", 1, 2, {})
    asm.add(spans_of(request([outer, http], tenant_resource())), now_s=21.0)
    out = asm.poll(21.0)
    assert [d.error_class for d in out.dead_letters] == ["otlp_late_span"] and asm.stats["spans_outside_run"] == 1


def test_assembler_dead_letters_no_root_missing_tenant_and_overflow() -> None:
    asm = SpanAssembler(settle_s=1.0, root_wait_s=3.0, max_pending_spans=6)
    orphan = spans_of(request(agent_run(tools=1, llm_calls=1)[:-1], tenant_resource()))
    res = tenant_resource()
    del res["selfheal.tenant_id"]
    no_tenant = spans_of(request(agent_run(tools=0, llm_calls=1), res))
    asm.add(orphan + no_tenant, 0.0)
    out = asm.poll(1.0)
    assert [(d.error_class, d.field) for d in out.dead_letters] == [("otlp_missing_attribute", "tenant_id")]
    assert not out.traces
    out = asm.poll(3.0)
    assert [d.error_class for d in out.dead_letters] == ["otlp_no_root"] and out.dead_letters[0].tenant_id == "acme"
    assert len(ExportTraceServiceRequest.FromString(out.dead_letters[0].payload)
               .resource_spans[0].scope_spans[0].spans) == 2
    # bounded memory: rootless groups of 2 spans, limit 6 -> the 4th evicts the oldest
    for _ in range(4):
        asm.add(spans_of(request(agent_run(tools=2, llm_calls=0)[:-1], tenant_resource())), 4.0)
    out = asm.poll(4.0)
    assert [d.error_class for d in out.dead_letters] == ["otlp_evicted"] and asm.pending_spans == 6
    assert asm.stats["dead_letters:otlp_no_root"] == 1 and asm.stats["groups_evicted"] == 1


def test_offset_tracker_commits_only_below_the_first_held_message() -> None:
    tr = OffsetTracker()
    tr.track(0, 10, 2)
    tr.track(0, 11, 1)
    tr.track(1, 4, 0)
    assert tr.committable() == {0: 10, 1: 5}
    tr.release(0, 11)
    assert tr.committable()[0] == 10
    tr.release(0, 10, 2)
    assert tr.committable()[0] == 12
    tr.forget(1)  # revoked: no commit for it any more, a late release is ignored
    tr.release(1, 4)
    assert tr.committable() == {0: 12}


def test_simulated_traces_survive_the_round_trip_through_spans() -> None:
    """devtools.otlp_spans.trace_spans is the inverse of map_run for every field the mapping
    carries: the regression test sends the fleet simulator's traffic through OTLP with it."""
    from streams.devtools.otlp_spans import trace_spans
    from tests.factories import trace

    for rec in (trace(1), trace(2, rollout={"arm": "canary", "stage_pct": 5.0, "candidate_release_id": "rel-2"},
                                 outcome="failure", retrieval_queries=3, retrieval_hits=1)):
        rec["tool_calls"].append({"name": "order_entry", "status": "timeout", "latency_ms": 40.5})
        runs, _ = split_runs(spans_of(request(trace_spans(rec), {"service.name": "x"})))
        (root, members), = runs
        got = map_run(root, members, OtlpMapping()).trace
        del got["attributes"], rec["attributes"]
        assert got.pop("latency_ms") == pytest.approx(rec.pop("latency_ms"))
        for call in (*got["tool_calls"], *rec["tool_calls"]):
            call["latency_ms"] = round(call["latency_ms"], 3)
        assert got == rec
