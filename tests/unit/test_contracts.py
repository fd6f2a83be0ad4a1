"""Pydantic models and .avsc contracts agree field by field, and every model round-trips."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from enum import Enum

import pytest
from pydantic import BaseModel, ValidationError

from schemas import CONTRACTS, AgentTrace, AgentTraceBatch, DeadLetter, Feedback, FeedbackBatch, Incident, default_codec
from tests.factories import feedback, now_ms, trace


def _named_records(schema, out):
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            out[schema["name"] if "." in schema["name"] else f"{schema.get('namespace')}.{schema['name']}"] = schema
            for f in schema["fields"]:
                _named_records(f["type"], out)
        elif schema.get("type") == "array":
            _named_records(schema["items"], out)
        elif schema.get("type") == "map":
            _named_records(schema["values"], out)
    elif isinstance(schema, list):
        for s in schema:
            _named_records(s, out)
    return out


ALL_RECORDS: dict = {}
for _entry in default_codec().current.values():
    _named_records(_entry.expanded, ALL_RECORDS)


def _avro_kind(t):
    """(optional, kind, detail) of an Avro field type."""
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        assert len(non_null) == 1, f"only [null, X] unions are used, got {t}"
        return (True, *_avro_kind(non_null[0])[1:])
    if isinstance(t, dict):
        if t.get("logicalType") == "timestamp-millis":
            return (False, "datetime", None)
        if t["type"] == "enum":
            return (False, "enum", tuple(t["symbols"]))
        if t["type"] == "array":
            return (False, "array", _avro_kind(t["items"]))
        if t["type"] == "map":
            return (False, "map", _avro_kind(t["values"]))
        if t["type"] == "record":
            return (False, "record", t["name"].split(".")[-1])
        return _avro_kind(t["type"])
    if (isinstance(t, str) and t in ALL_RECORDS) or (isinstance(t, str) and f"selfheal.v1.{t}" in ALL_RECORDS):
        return (False, "record", t.split(".")[-1])
    return (False, {"string": "str", "int": "int", "long": "int", "double": "float", "float": "float",
                    "boolean": "bool", "bytes": "bytes"}[t], None)


def _py_kind(ann):
    """(optional, kind, detail) of a pydantic annotation."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _py_kind(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        assert len(args) == 1
        return (True, *_py_kind(args[0])[1:])
    if origin is list:
        return (False, "array", _py_kind(typing.get_args(ann)[0]))
    if origin is dict:
        return (False, "map", _py_kind(typing.get_args(ann)[1]))
    if isinstance(ann, type) and issubclass(ann, Enum):
        return (False, "enum", tuple(m.value for m in ann))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return (False, "record", ann.__name__)
    if ann is datetime:
        return (False, "datetime", None)
    return (False, ann.__name__, None)


@pytest.mark.parametrize("model", CONTRACTS, ids=lambda m: m.__name__)
def test_model_matches_avsc_field_by_field(model):
    record = ALL_RECORDS[model.AVRO_NAME]
    avro_fields = {f["name"]: f for f in record["fields"]}
    assert list(avro_fields) == list(model.model_fields), "same fields, same order"
    for name, info in model.model_fields.items():
        a = _avro_kind(avro_fields[name]["type"])
        p = _py_kind(info.annotation)
        assert a == p, f"{model.__name__}.{name}: avro {a} != model {p}"
        assert ("default" in avro_fields[name]) == (not info.is_required()), f"{model.__name__}.{name}: default"


def test_models_round_trip_through_avro():
    codec = default_codec()
    t = AgentTrace.model_validate(trace(1))
    samples = [
        t,
        AgentTraceBatch.model_validate({"batch_id": "b1", "producer_id": "p", "sent_at": now_ms(),
                                        "traces": [trace(1), trace(2, rollout={"arm": "canary", "stage_pct": 5.0,
                                                                               "candidate_release_id": "rel-2"})]}),
        Feedback.model_validate(feedback(1)),
        FeedbackBatch.model_validate({"batch_id": "b2", "producer_id": "p", "sent_at": now_ms(),
                                      "items": [feedback(2)]}),
        DeadLetter(dead_letter_id="d", source_topic="t", source_partition=1, source_offset=5, record_index=-1,
                   key=b"acme", payload=b"\x00\x01", error_class="not_avro", message="m", occurred_at=now_ms()),
        Incident.model_validate({
            "incident_id": "i", "status": "open", "revision": 0, "kind": "release_regression",
            "slice": {"layer": "release", "tenant_id": "acme", "cohort": "c", "workflow": None, "release_id": "r"},
            "metric_group": "latency", "metric": "latency_p95", "baseline": 1.0, "observed": 2.0,
            "observed_ci_low": 1.5, "observed_ci_high": 2.5, "effect": 2.0, "samples": 40,
            "detector": "bernoulli_cusum",
            "statistic": 19.0, "threshold": 18.0, "severity": "high", "action": "roll_back", "release_id": "r",
            "release": t.release.model_dump(), "also_seen": [], "summary": "s", "evidence_trace_ids": ["a"],
            "detected_at_trace_id": "a", "first_seen": now_ms(), "last_seen": now_ms(), "emitted_at": now_ms()}),
    ]
    for model in samples:
        name, record = codec.decode(codec.encode_model(model))
        assert name == type(model).AVRO_NAME
        assert type(model).model_validate(record) == model


@pytest.mark.parametrize(("model", "record"), [(AgentTrace, trace), (Feedback, feedback)], ids=["trace", "feedback"])
def test_event_time_outside_the_window_is_an_error_naming_the_field_and_value(model, record):
    now = now_ms()
    ctx = {"now_ms": now, "max_event_age_s": 3600, "max_clock_skew_s": 60}
    cases = [(1_500_000_000_000, None, "event_time=1500000000000 ms is before 2020-01-01"),
             (now + 120_000, ctx, f"event_time={now + 120_000} ms is in the future (now={now} ms)"),
             (now - 7_200_000, ctx, f"event_time={now - 7_200_000} ms is older than the accepted age")]
    for event_ms, context, message in cases:
        with pytest.raises(ValidationError) as err:
            model.model_validate(record(1, event_time=event_ms), context=context)
        (e,) = err.value.errors()
        assert e["loc"] == ("event_time",) and message in e["msg"], e
    # inside the window: accepted, and the time read as epoch ms in UTC
    assert model.model_validate(record(1, event_time=now - 60_000), context=ctx).event_time.timestamp() * 1000 == \
        pytest.approx(now - 60_000)
    # the window applies to assignment too (validate_assignment)
    ok = model.model_validate(record(1))
    with pytest.raises(ValidationError, match="before 2020-01-01"):
        ok.event_time = 1_500_000_000_000
