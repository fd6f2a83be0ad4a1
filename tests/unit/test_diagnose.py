"""The Avro failure locator names the field and value at fault for every corruption it knows."""

from __future__ import annotations

import pytest

from schemas.codec import AvroCodec, CodecError
from schemas.diagnose import locate
from tests.factories import feedback, trace

CODEC = AvroCodec()
ET = 1_700_000_000_000


def encode(rec, name="selfheal.v1.AgentTrace"):
    return CODEC.encode(name, rec)


def at(a: bytes, b: bytes) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


def corrupt(payload: bytes, pos: int, byte: int) -> bytes:
    out = bytearray(payload)
    out[pos] = byte
    return bytes(out)


def decode_error(payload: bytes) -> CodecError:
    with pytest.raises(CodecError) as err:
        CODEC.decode(payload)
    return err.value


def test_valid_bodies_have_no_diagnosis():
    entry = CODEC.current["selfheal.v1.AgentTrace"]
    assert locate(entry.expanded, encode(trace(1))[10:]) is None


def test_unknown_enum_symbol():
    base = trace(1, event_time=ET)
    p = encode(base)
    e = decode_error(corrupt(p, at(p, encode(dict(base, outcome="failure"))), 0x12))
    assert (e.error_class, e.field, e.value) == ("unknown_enum", "outcome", "9")


def test_enum_inside_an_array_names_the_item():
    base = trace(1, event_time=ET)
    p = encode(base)
    pos = at(p, encode(dict(base, tool_calls=[{"name": "ehr_lookup", "status": "error", "latency_ms": 120.0}])))
    e = decode_error(corrupt(p, pos, 0x7E))
    assert (e.error_class, e.field, e.value) == ("unknown_enum", "tool_calls.0.status", "63")


def test_bad_union_branch():
    base = trace(1, event_time=ET, intent=None)
    p = encode(base)
    e = decode_error(corrupt(p, at(p, encode(dict(base, intent="x"))), 0x08))
    assert (e.error_class, e.field, e.value) == ("bad_union_branch", "intent", "4")


def test_truncated_names_the_field_where_the_body_ended():
    p = encode(trace(1, trace_id="tr-0123456789"))
    e = decode_error(p[:14])  # inside trace_id
    assert (e.error_class, e.field) == ("truncated", "trace_id")


def test_negative_string_length():
    p = encode(trace(1))
    e = decode_error(corrupt(p, 10, 0x03))  # trace_id length -2
    assert (e.error_class, e.field, e.value) == ("negative_length", "trace_id", "-2")


def test_invalid_utf8_in_a_map_value_names_the_key():
    p = encode(trace(1, attributes={"channel": "ambient"}))
    e = decode_error(p.replace(b"ambient", b"amb\xff\xfeen"))
    assert (e.error_class, e.field) == ("invalid_utf8", "attributes.channel") and "ff fe" in e.value


def test_feedback_enum():
    p = encode(feedback(), "selfheal.v1.Feedback")
    e = decode_error(corrupt(p, at(p, encode(dict(feedback(), category="tone"), "selfheal.v1.Feedback")), 0x40))
    assert (e.error_class, e.field, e.value) == ("unknown_enum", "category", "32")


def test_header_and_fingerprint_errors_name_what_they_saw():
    e = decode_error(b'{"a": 1}' + b" " * 8)
    assert (e.error_class, e.field, e.value) == ("not_avro", "(header)", "7b 22 61 22")
    e = decode_error(b"\xc3\x01" + bytes(range(8)) + b"\x00")
    assert (e.error_class, e.field, e.value) == ("unknown_schema", "(schema fingerprint)", "0001020304050607")
