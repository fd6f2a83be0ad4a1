"""Avro single-object framing: what decodes, what is rejected with which reason, schema evolution."""

from __future__ import annotations

import copy
import json

import pytest

from schemas.codec import (
    AvroCodec,
    BadBooleanError,
    InvalidUtf8Error,
    NotAvroError,
    TrailingBytesError,
    TruncatedError,
    UnknownSchemaError,
    default_avro_dir,
)
from tests.factories import now_ms, trace


def test_header_is_marker_plus_crc64_fingerprint():
    codec = AvroCodec()
    payload = codec.encode("selfheal.v1.AgentTrace", trace())
    assert payload[:2] == b"\xc3\x01"
    assert payload[2:10] == codec.current["selfheal.v1.AgentTrace"].fingerprint
    name, record = codec.decode(payload)
    assert name == "selfheal.v1.AgentTrace" and record["trace_id"] == "tr-00000000"


@pytest.mark.parametrize(("payload", "error"), [
    (b"", NotAvroError),
    (b'{"trace_id": 1}', NotAvroError),
    (b"\xc3\x01" + b"\x00" * 8 + b"\x02", UnknownSchemaError),
])
def test_rejects_non_selfheal_payloads(payload, error):
    with pytest.raises(error):
        AvroCodec().decode(payload)


def test_truncated_and_trailing_bytes():
    codec = AvroCodec()
    good = codec.encode("selfheal.v1.AgentTrace", trace())
    with pytest.raises(TruncatedError):
        codec.decode(good[: len(good) - 20])
    with pytest.raises(TrailingBytesError):
        codec.decode(good + b"\x00\x00")


def test_invalid_utf8_is_named():
    codec = AvroCodec()
    good = codec.encode("selfheal.v1.AgentTrace", trace(trace_id="tr-ABCDEFGH"))
    bad = good.replace(b"tr-ABCDEFGH", b"tr-\xff\xfeCDEFGH")
    with pytest.raises(InvalidUtf8Error):
        codec.decode(bad)


def _schemas_v2():
    """A newer AgentTrace with one more optional field (what a newer producer writes)."""
    raw = json.loads((default_avro_dir() / "agent_trace.avsc").read_text())
    v2 = copy.deepcopy(raw)
    v2["fields"].append({"name": "locale", "type": ["null", "string"], "default": None})
    v2["fields"][8]["type"] = json.loads((default_avro_dir() / "release_manifest.avsc").read_text())
    return v2


def test_schema_evolution_new_producer_old_consumer():
    v2 = _schemas_v2()
    new_writer = AvroCodec(extra_writer_schemas=[v2])
    # a producer on v2 encodes with the v2 schema under its own fingerprint
    v2_entry = next(e for fp, e in new_writer.by_fingerprint.items() if fp not in AvroCodec().by_fingerprint)
    import io

    from fastavro import schemaless_writer
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + v2_entry.fingerprint)
    schemaless_writer(buf, v2_entry.parsed, {**trace(), "locale": "de-DE"})
    payload = buf.getvalue()
    # an old consumer (current schemas only) does not know the fingerprint: dead-letter, not a crash
    with pytest.raises(UnknownSchemaError):
        AvroCodec().decode(payload)
    # a consumer that registered v2 as a known writer resolves it to the current reader schema
    name, record = new_writer.decode(payload)
    assert name == "selfheal.v1.AgentTrace" and "locale" not in record and record["trace_id"] == "tr-00000000"


def test_schema_evolution_old_producer_new_consumer():
    v2 = _schemas_v2()
    old = AvroCodec()
    payload = old.encode("selfheal.v1.AgentTrace", trace())
    # the new consumer reads with v2 as its reader schema: the missing field takes its default
    import io

    from fastavro import parse_schema, schemaless_reader
    reader = parse_schema(_strip(v2))
    record = schemaless_reader(io.BytesIO(payload[10:]), old.current["selfheal.v1.AgentTrace"].parsed, reader)
    assert record["locale"] is None and record["trace_id"] == "tr-00000000"


def _strip(schema):
    from schemas.codec import _strip_logical_types
    return _strip_logical_types(schema)


def test_messages_of_an_earlier_contract_version_stay_decodable():
    # AgentTrace gained input_ref / output_ref (ContentRef) after v1.0; producers on v1.0 still
    # send the old fingerprint, which avro/history/ keeps known and resolves to the current schema
    import io

    from fastavro import parse_schema, schemaless_writer
    old = json.loads((default_avro_dir() / "history" / "agent_trace_batch.1.avsc").read_text())
    codec = AvroCodec()
    entry = next(e for e in codec.by_fingerprint.values() if e.expanded == old)
    assert entry.fingerprint != codec.current["selfheal.v1.AgentTraceBatch"].fingerprint
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + entry.fingerprint)
    schemaless_writer(buf, parse_schema(_strip(old)), {"batch_id": "b1", "producer_id": "p", "sent_at": now_ms(),
                                                       "traces": [trace()]})
    name, record = codec.decode(buf.getvalue())
    assert name == "selfheal.v1.AgentTraceBatch"
    assert record["traces"][0]["input_ref"] is None and record["traces"][0]["output_ref"] is None
    # and a current producer's references round-trip
    ref = {"uri": "s3://bucket/in/1.json", "text": "note text", "sha256": "a" * 64}
    _, back = codec.decode(codec.encode("selfheal.v1.AgentTrace", {**trace(), "input_ref": ref,
                                                                  "output_ref": {**ref, "uri": None}}))
    assert back["input_ref"] == ref and back["output_ref"] == {**ref, "uri": None}


def _flip_boolean_byte(codec: AvroCodec, name: str, record: dict, set_true) -> bytes:
    """The encoded ``record`` with the one byte that differs when ``set_true(record)`` sets a
    boolean replaced by 0x05 (the position of the boolean in the Avro body)."""
    off = codec.encode(name, record)
    on_rec = copy.deepcopy(record)
    set_true(on_rec)
    on = codec.encode(name, on_rec)
    diff = [i for i in range(len(off)) if off[i] != on[i]]
    assert len(off) == len(on) and len(diff) == 1 and off[diff[0]] == 0 and on[diff[0]] == 1
    return off[: diff[0]] + b"\x05" + off[diff[0] + 1:]


def test_a_boolean_byte_other_than_0_or_1_is_bad_boolean_naming_the_field():
    codec = AvroCodec()
    bad = _flip_boolean_byte(codec, "selfheal.v1.AgentTrace", trace(), lambda r: r.update(policy_blocked=True))
    with pytest.raises(BadBooleanError) as err:
        codec.decode(bad)
    assert err.value.error_class == "bad_boolean"
    assert (err.value.field, err.value.value) == ("policy_blocked", "5")
    # inside a batch the path names the trace
    batch = {"batch_id": "b-1", "producer_id": "p-1", "sent_at": 0, "traces": [trace(0), trace(1), trace(2)]}
    bad = _flip_boolean_byte(codec, "selfheal.v1.AgentTraceBatch", batch,
                             lambda r: r["traces"][2].update(fallback_used=True))
    with pytest.raises(BadBooleanError) as err:
        codec.decode(bad)
    assert err.value.field == "traces.2.fallback_used"


def test_booleans_still_decode_as_bool_after_the_byte_check():
    codec = AvroCodec()
    for flag in (False, True):
        rec = trace(policy_blocked=flag, fallback_used=not flag)
        _, rec = codec.decode(codec.encode("selfheal.v1.AgentTrace", rec))
        assert rec["policy_blocked"] is flag and rec["fallback_used"] is (not flag)
