"""Sealed dead letters (streams.processors.deadletters): the envelope always fits, its payload's
hash and size survive leaving it out, numeric diagnoses survive redaction, and the Avro contract
evolved compatibly (old envelopes decode with the new reader and new ones with the old)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas import DeadLetter
from schemas.codec import AvroCodec
from schemas.common import MAX_TOKENS
from streams.privacy import Redactor
from streams.processors.columns import RawMessage
from streams.processors.deadletters import OVER_BOUND, redact_around, seal
from streams.processors.ingest import Ingest, make_dead_letter
from tests.factories import now_ms, trace

CODEC = AvroCodec()
REDACT = Redactor().redact


def msg(value: bytes, key: bytes | None = b"acme") -> RawMessage:
    return RawMessage("agent.traces.v1", 2, 41, key, value)


def test_an_out_of_range_token_count_keeps_its_value_through_redaction():
    bad = CODEC.encode("selfheal.v1.AgentTrace", trace(1, input_tokens=2_147_483_647))
    (d,) = Ingest(CODEC, "traces").decode([msg(bad)]).dead_letters
    assert d.field == "input_tokens" and d.value == "2147483647" and d.value_numeric
    assert "[PHONE]" in REDACT(d.message)  # what the redactor alone makes of it (issue 18)
    (s,) = seal([d], redact=REDACT)
    assert s.value == "2147483647" and "got 2147483647" in s.message and "[PHONE]" not in s.message
    assert f"equal to {MAX_TOKENS} (got" in s.message  # and the bound it broke


def test_a_numeric_dead_letter_keeps_every_standalone_number_and_redacts_the_rest():
    d = make_dead_letter(msg(b"x"), index=-1, error_class="validation", field_path="latency_ms", value=2147483647.5,
                         message="latency_ms: at most 3600000.0 (got 2147483647.5) from Dr. Alice Wong 617-555-0134")
    (s,) = seal([d], redact=REDACT)
    assert s.value == "2147483647.5" and s.message.startswith("latency_ms: at most 3600000.0 (got 2147483647.5)")
    assert "Alice" not in s.message and "0134" not in s.message


def test_free_text_values_and_messages_are_still_redacted_once():
    d = make_dead_letter(msg(b"x"), index=-1, error_class="validation", field_path="attributes.note",
                         value="call 617-555-0134", message="attributes.note: too long (got 'call 617-555-0134')")
    calls = []

    def counting(text):
        calls.append(text)
        return REDACT(text)

    (s,) = seal([d], redact=counting)
    assert not s.value_numeric and s.value == "call [PHONE]" and "617" not in s.message
    assert len(calls) == 3  # field, value, message: once each, shared by the sink and the topic


def test_a_number_inside_a_longer_token_is_not_kept():
    text = "got 555 near 415-555-0199 and 555"
    assert redact_around(text, ["555"], REDACT) == "got 555 near [PHONE] and 555"


def test_payload_over_the_bound_or_switched_off_is_left_out_with_its_hash_and_size():
    big = bytes(range(256)) * 12_000  # 3,072,000 bytes
    d = make_dead_letter(msg(big), index=-1, error_class="oversized", field_path="(message)", value=len(big),
                         message=f"message of {len(big)} bytes exceeds max_message_bytes=1048576")
    assert (d.payload_sha256, d.payload_bytes) == (hashlib.sha256(big).hexdigest(), len(big))
    (s,) = seal([d], redact=REDACT, max_payload_bytes=1_048_576)
    assert (s.payload, s.payload_left_out, s.payload_bytes) == (b"", OVER_BOUND, len(big))
    assert s.payload_sha256 == hashlib.sha256(big).hexdigest() and s.value == str(len(big))
    assert len(CODEC.encode_model(s)) < 10_000
    small = make_dead_letter(msg(b"not avro"), index=-1, error_class="not_avro", message="no magic")
    (kept,) = seal([small], redact=REDACT)
    assert kept.payload == b"not avro" and kept.payload_left_out is None
    (out,) = seal([small], redact=REDACT, include_payload=False)
    assert (out.payload, out.payload_left_out, out.payload_bytes) == (b"", "setting", 8)


def test_the_envelope_bounds_key_and_message():
    d = make_dead_letter(msg(b"v", key=b"k" * 5_000_000), index=-1, error_class="invalid_key", message="m" * 100_000)
    assert len(d.key) == 1024 and len(d.message) == 4000
    (s,) = seal([d], redact=REDACT)
    assert len(CODEC.encode_model(s)) < 8_000


def test_the_dead_letter_contract_evolved_compatibly():
    new = json.loads((Path(__file__).resolve().parents[3] / "avro/dead_letter.avsc").read_text())
    added = {"payload_sha256", "payload_bytes", "payload_left_out", "value_numeric"}
    old = {**new, "fields": [f for f in new["fields"] if f["name"] not in added]}
    assert all("default" in f for f in new["fields"] if f["name"] in added)
    record = {"dead_letter_id": "d", "source_topic": "t", "source_partition": 1, "source_offset": 5,
              "record_index": -1, "key": None, "payload": b"p", "schema_fingerprint": None, "error_class": "x",
              "field": None, "value": None, "message": "m", "tenant_id": None, "occurred_at": now_ms()}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(old), record)  # an envelope written before the change
    read = schemaless_reader(io.BytesIO(buf.getvalue()), parse_schema(old), parse_schema(new))
    assert read["payload_sha256"] is None and read["value_numeric"] is False
    DeadLetter.model_validate(read)
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(new), {**record, "payload_sha256": "h", "payload_bytes": 1,
                                               "payload_left_out": None, "value_numeric": True})
    read = schemaless_reader(io.BytesIO(buf.getvalue()), parse_schema(new), parse_schema(old))  # old consumer
    assert read["message"] == "m" and "value_numeric" not in read
