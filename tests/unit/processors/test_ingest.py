"""Ingest: valid records pass with provenance; every bad message or record becomes a dead letter
naming the reason, the field and the value."""

from __future__ import annotations

import pytest

from schemas.codec import AvroCodec
from streams.processors.columns import RawMessage, trace_columns
from streams.processors.ingest import Ingest
from tests.factories import feedback, now_ms, trace

CODEC = AvroCodec()


def msg(value, key=b"acme", offset=0, topic="agent.traces.v1"):
    return RawMessage(topic, 0, offset, key, value)


def batch(*traces):
    return CODEC.encode("selfheal.v1.AgentTraceBatch", {"batch_id": "b", "producer_id": "p", "sent_at": now_ms(),
                                                         "traces": list(traces)})


def test_valid_batch_passes_with_provenance():
    out = Ingest(CODEC, "traces").decode([msg(batch(trace(1), trace(2)), offset=7)])
    assert [r["trace_id"] for r in out.records] == ["tr-00000001", "tr-00000002"]
    assert out.offsets == [7, 7] and out.indexes == [0, 1] and out.dead_letters == []
    cols = trace_columns(out.records, out.partitions, out.offsets)
    assert cols.n == 2 and cols.latency_ms.tolist() == [1234.5, 1234.5]


@pytest.mark.parametrize(("record", "field", "value"), [
    (trace(latency_ms=-5.0), "latency_ms", -5.0),
    (trace(latency_ms=float("nan")), "latency_ms", float("nan")),
    (trace(output_tokens=3_000_000), "output_tokens", 3_000_000),
    (trace(tenant_id=""), "tenant_id", ""),
    (trace(tenant_id="Acme Corp!"), "tenant_id", "Acme Corp!"),
    (trace(confidence=1.7), "confidence", 1.7),
    (trace(event_time=now_ms() + 3_600_000), "event_time", None),
    (trace(event_time=1_000), "event_time", 1_000),
    (trace(event_time=1_700_000_000), "event_time", 1_700_000_000),  # seconds sent instead of ms
    (trace(retrieval_hits=5, retrieval_queries=1), "retrieval_hits", 5),
])
def test_bad_record_inside_batch_is_dead_lettered_alone(record, field, value):
    out = Ingest(CODEC, "traces").decode([msg(batch(trace(1), {**record, "trace_id": "bad"}), offset=3)])
    assert [r["trace_id"] for r in out.records] == ["tr-00000001"]
    (dl,) = out.dead_letters
    assert dl.error_class == "validation" and dl.record_index == 1 and dl.source_offset == 3
    assert dl.field == field
    if value is not None:
        assert dl.value == repr(value) if isinstance(value, float) else dl.value == str(value)
    assert b'"trace_id":"bad"' in dl.payload  # the record itself, as canonical JSON


def test_whole_message_failures():
    ing = Ingest(CODEC, "traces", max_message_bytes=2000)
    good = batch(trace(1))
    out = ing.decode([msg(b"garbage", offset=1), msg(good[:40], offset=2), msg(b"", offset=3),
                      msg(batch(*[trace(i) for i in range(20)]), offset=4),
                      msg(CODEC.encode("selfheal.v1.Feedback", feedback()), offset=5)])
    reasons = {d.source_offset: d.error_class for d in out.dead_letters}
    assert reasons == {1: "not_avro", 2: "truncated", 3: "empty", 4: "oversized", 5: "wrong_schema"}
    assert all(d.record_index == -1 for d in out.dead_letters)
    assert out.dead_letters[0].payload == b"garbage"


def test_key_must_be_the_records_tenant():
    out = Ingest(CODEC, "traces").decode([msg(batch(trace(1, tenant_id="other")), key=b"acme")])
    (dl,) = out.dead_letters
    assert dl.error_class == "key_mismatch" and dl.field == "tenant_id" and dl.value == "other"


def test_dead_letter_ids_are_deterministic():
    a = Ingest(CODEC, "traces").decode([msg(b"x", offset=9)]).dead_letters[0]
    b = Ingest(CODEC, "traces").decode([msg(b"x", offset=9)]).dead_letters[0]
    assert a.dead_letter_id == b.dead_letter_id


@pytest.mark.parametrize(("key", "value"), [
    (None, "null"),
    (b"", "null"),
    (b"\xff\xfeacme", "ff fe 61 63 6d 65"),
    (b"Acme Corp", "Acme Corp"),
    (b"acme\n", "acme\n"),
    (b"a" * 64, "a" * 64),
])
def test_a_message_must_be_keyed_by_a_tenant_id(key, value):
    out = Ingest(CODEC, "traces").decode([msg(batch(trace(1)), key=key)])
    (dl,) = out.dead_letters
    assert (dl.error_class, dl.field, dl.value, dl.tenant_id) == ("invalid_key", "(key)", value, None)
    assert out.records == []


def test_decoding_errors_name_the_field_and_value():
    good = CODEC.encode("selfheal.v1.AgentTrace", trace(7, event_time=1_700_000_000_000))
    abandoned = CODEC.encode("selfheal.v1.AgentTrace", trace(7, event_time=1_700_000_000_000, outcome="abandoned"))
    at = next(i for i, (a, b) in enumerate(zip(good, abandoned, strict=True)) if a != b)
    bad = bytearray(good)
    bad[at] = 0x12  # enum index 9
    (dl,) = Ingest(CODEC, "traces").decode([msg(bytes(bad))]).dead_letters
    assert (dl.error_class, dl.field, dl.value) == ("unknown_enum", "outcome", "9")
    assert "Outcome" in dl.message and dl.payload == bytes(bad)


def test_dead_letters_of_a_record_are_attributed_to_the_sending_tenant():
    out = Ingest(CODEC, "traces").decode([msg(batch(trace(1, tenant_id="Evil Corp")), key=b"acme")])
    (dl,) = out.dead_letters
    assert dl.tenant_id == "acme" and dl.value == "Evil Corp"
