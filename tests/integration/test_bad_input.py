"""Bad input through the real broker to a real worker: every kind ends on the dead-letter topic and
in ClickHouse with its reason (error class, field, value), the original bytes stay on the topic,
and the valid records around the bad ones are all stored (the worker keeps going).

Each case is one Kafka message; whole-message failures have ``record_index = -1``, bad records
inside an otherwise valid batch message carry their index and the record as canonical JSON.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas import AgentTrace, DeadLetter, default_codec
from schemas.codec import canonical_json
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_topics
from tests.conftest import kafka_producer, read_contract_topic, wait_caught_up
from tests.factories import feedback, now_ms, trace

pytestmark = pytest.mark.integration

CODEC = default_codec()
DAY_MS = 86_400_000
Check = str | None | Callable[[str], bool]


@dataclass
class Expect:
    """One dead letter the worker must produce."""

    index: int  # record index in the message, -1 = whole message
    error_class: str
    field: Check
    value: Check = None  # None: not checked
    tenant: str = ""


@dataclass
class Case:
    name: str
    topic: str  # "traces" or "feedback"
    key: bytes | None
    value: bytes | None
    expect: list[Expect]
    records: list[dict[str, Any]] = field(default_factory=list)  # batch items (for in-batch payloads)
    partition: int = -1
    offset: int = -1


def tbatch(*traces: dict) -> bytes:
    return CODEC.encode("selfheal.v1.AgentTraceBatch",
                        {"batch_id": "b", "producer_id": "test", "sent_at": now_ms(), "traces": list(traces)})


def fbatch(*items: dict) -> bytes:
    return CODEC.encode("selfheal.v1.FeedbackBatch",
                        {"batch_id": "b", "producer_id": "test", "sent_at": now_ms(), "items": list(items)})


def single(rec: dict) -> bytes:
    return CODEC.encode("selfheal.v1.AgentTrace", rec)


def first_diff(a: bytes, b: bytes) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


class Ids:
    """Fresh valid trace ids (the valid records around the bad ones)."""

    def __init__(self) -> None:
        self.n = 0
        self.valid: list[str] = []

    def ok(self, **over: Any) -> dict:
        self.n += 1
        rec = trace(self.n, **over)
        self.valid.append(rec["trace_id"])
        return rec


def trace_cases(ids: Ids, max_bytes: int) -> list[Case]:
    """Bad input on the traces topic (>= 30 kinds)."""
    t0 = ids.ok(trace_id="tr-base-0000")  # sent first on its own; the duplicate below conflicts with it
    cases = [Case("valid base trace", "traces", b"acme", tbatch(t0), [])]
    good = single(trace(9000, trace_id="tr-ABCDEFGH"))
    et = now_ms() - 1000
    enum_bad = bytearray(single(dict(trace(9001), event_time=et)))
    enum_bad[first_diff(bytes(enum_bad), single(dict(trace(9001), event_time=et, outcome="abandoned")))] = 0x12
    # ^ zig-zag 9: Outcome has 4 symbols
    rec = dict(trace(9002), event_time=et)
    union_bad = bytearray(single(dict(rec, intent=None)))
    union_bad[first_diff(bytes(union_bad), single(dict(rec, intent="x")))] = 0x08  # zig-zag 4: 2 branches
    bool_bad = bytearray(single(dict(trace(9006), event_time=et)))
    bool_bad[first_diff(bytes(bool_bad), single(dict(trace(9006), event_time=et, policy_blocked=True)))] = 0x05
    # ^ the Avro specification writes a boolean as one byte, 0 or 1 (fastavro reads 0x05 as True)
    e_acute = "amb\u00e9ent"
    utf8_batch = tbatch(trace(9003), dict(trace(9004), attributes={"channel": e_acute}))
    utf8_batch = utf8_batch.replace(e_acute.encode(), b"amb\xff\xfeent")  # same length, not UTF-8
    big = [dict(trace(20_000 + i), attributes={"note": "x" * 2000}) for i in range(max_bytes // 2000 + 10)]
    fp_unknown = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + good[10:]
    top_fields = set(AgentTrace.model_fields)
    cases += [
        Case("not Avro (JSON)", "traces", b"acme", b'{"trace_id": "tr-json"}',
             [Expect(-1, "not_avro", "(header)", "7b 22 74 72", "acme")]),
        Case("empty value", "traces", b"acme", b"", [Expect(-1, "empty", "(message)", "0 bytes", "acme")]),
        Case("tombstone (null value)", "traces", b"acme", None, [Expect(-1, "empty", "(message)", "null", "acme")]),
        Case("truncated", "traces", b"acme", good[: len(good) // 2],
             [Expect(-1, "truncated", lambda f: f.split(".")[0] in top_fields, None, "acme")]),
        Case("unknown schema fingerprint", "traces", b"acme", fp_unknown,
             [Expect(-1, "unknown_schema", "(schema fingerprint)", "0123456789abcdef", "acme")]),
        Case("invalid UTF-8 in trace_id", "traces", b"acme", good.replace(b"tr-ABCDEFGH", b"tr-\xff\xfeCDEFGH"),
             [Expect(-1, "invalid_utf8", "trace_id", lambda v: "ff fe" in v, "acme")]),
        Case("invalid UTF-8 in an attribute inside a batch", "traces", b"acme", utf8_batch,
             [Expect(-1, "invalid_utf8", "traces.1.attributes.channel", lambda v: "ff fe" in v, "acme")]),
        Case("trailing bytes", "traces", b"acme", single(trace(9005)) + b"\x00\x00",
             [Expect(-1, "trailing_bytes", "(end of record)", "2", "acme")]),
        Case("unknown enum symbol (outcome index 9)", "traces", b"acme", bytes(enum_bad),
             [Expect(-1, "unknown_enum", "outcome", "9", "acme")]),
        Case("bad union branch (intent index 4)", "traces", b"acme", bytes(union_bad),
             [Expect(-1, "bad_union_branch", "intent", "4", "acme")]),
        Case("boolean byte 0x05 (policy_blocked)", "traces", b"acme", bytes(bool_bad),
             [Expect(-1, "bad_boolean", "policy_blocked", "5", "acme")]),
        Case("oversized message", "traces", b"acme", tbatch(*big),
             [Expect(-1, "oversized", "(message)", lambda v: int(v) > max_bytes, "acme")]),
        Case("feedback on the traces topic", "traces", b"acme", CODEC.encode("selfheal.v1.Feedback", feedback()),
             [Expect(-1, "wrong_schema", "(schema)", "selfheal.v1.Feedback", "acme")]),
        Case("batch envelope with an empty list", "traces", b"acme", tbatch(),
             [Expect(-1, "validation", "traces", "[]", "acme")]),
        Case("key not UTF-8", "traces", b"\xff\xfeacme", tbatch(trace(30_001)),
             [Expect(-1, "invalid_key", "(key)", "ff fe 61 63 6d 65")]),
        Case("no key", "traces", None, tbatch(trace(30_002)), [Expect(-1, "invalid_key", "(key)", "null")]),
        Case("key is not a tenant id (SQL metacharacters)", "traces", b"acme' OR 1=1 --", tbatch(trace(30_003)),
             [Expect(-1, "invalid_key", "(key)", "acme' OR 1=1 --")]),
        Case("single record: negative latency", "traces", b"acme", single(trace(30_004, latency_ms=-5.0)),
             [Expect(-1, "validation", "latency_ms", "-5.0", "acme")]),
    ]
    # one batch, valid records around bad ones: each bad record is dead-lettered alone
    bad_records: list[tuple[dict, Expect]] = [
        (trace(40_001, trace_id=""), Expect(0, "validation", "trace_id", "", "acme")),
        (trace(40_002, agent_id=""), Expect(0, "validation", "agent_id", "", "acme")),
        (trace(40_003, latency_ms=float("nan")), Expect(0, "validation", "latency_ms", "nan", "acme")),
        (trace(40_004, cost_usd=float("inf")), Expect(0, "validation", "cost_usd", "inf", "acme")),
        (trace(40_005, output_tokens=3_000_000), Expect(0, "validation", "output_tokens", "3000000", "acme")),
        (trace(40_006, input_tokens=-1), Expect(0, "validation", "input_tokens", "-1", "acme")),
        (trace(40_007, event_time=now_ms() + 3_600_000), Expect(0, "validation", "event_time", None, "acme")),
        (trace(40_008, event_time=now_ms() - 40 * DAY_MS), Expect(0, "validation", "event_time", None, "acme")),
        (trace(40_009, event_time=1_700_000_000), Expect(0, "validation", "event_time", "1700000000", "acme")),
        (trace(40_010, tenant_id=""), Expect(0, "validation", "tenant_id", "", "acme")),
        (trace(40_011, tenant_id="Acme Corp!"), Expect(0, "validation", "tenant_id", "Acme Corp!", "acme")),
        (trace(40_012, tenant_id="acme' OR 1=1 --"), Expect(0, "validation", "tenant_id", "acme' OR 1=1 --", "acme")),
        (trace(40_024, tenant_id="\u0430cme"), Expect(0, "validation", "tenant_id", "\u0430cme", "acme")),
        (trace(40_013, confidence=1.7), Expect(0, "validation", "confidence", "1.7", "acme")),
        (trace(40_014, retrieval_queries=1, retrieval_hits=5), Expect(0, "validation", "retrieval_hits", "5", "acme")),
        (trace(40_015, tool_calls=[{"name": "t", "status": "ok", "latency_ms": 1.0}] * 257),
         Expect(0, "validation", "tool_calls", "list of 257 items", "acme")),
        (trace(40_016, tool_calls=[{"name": "t", "status": "ok", "latency_ms": -3.0}]),
         Expect(0, "validation", "tool_calls.0.latency_ms", "-3.0", "acme")),
        (trace(40_017, attributes={"note": "y" * 3000}),
         Expect(0, "validation", "attributes.note", lambda v: v.startswith("yyy") and v.endswith("..."), "acme")),
        (trace(40_018, attributes={f"k{i}": "v" for i in range(65)}),
         Expect(0, "validation", "attributes", "dict of 65 items", "acme")),
        (trace(40_019, output_sha256="not-a-sha256"), Expect(0, "validation", "output_sha256", "not-a-sha256", "acme")),
        (trace(40_020, rollout={"arm": "canary", "stage_pct": 150.0, "candidate_release_id": "rel-2"}),
         Expect(0, "validation", "rollout.stage_pct", "150.0", "acme")),
        (trace(40_021, cohort="cardio|logy"), Expect(0, "validation", "cohort", "cardio|logy", "acme")),
        (trace(40_022, release={"release_id": "rel-1", "model": "", "prompt_version": "p", "tool_schema_version": "t",
                                "policy_version": "p", "retrieval_index_version": "i"}),
         Expect(0, "validation", "release.model", "", "acme")),
        (trace(40_023, tenant_id="globex"), Expect(0, "key_mismatch", "tenant_id", "globex", "acme")),
        (dict(t0, latency_ms=t0["latency_ms"] + 1),
         Expect(0, "duplicate_conflict", "trace_id", "tr-base-0000", "acme")),
    ]
    items: list[dict] = []
    expects: list[Expect] = []
    for rec, exp in bad_records:
        items.append(ids.ok())
        exp.index = len(items)
        items.append(rec)
        expects.append(exp)
    items.append(ids.ok())
    items.append(dict(t0))  # exact replay of an ingested trace: deduplicated, not a dead letter
    cases.append(Case(f"batch with {len(expects)} bad records between valid ones", "traces", b"acme",
                      tbatch(*items), expects, records=items))
    return cases


def feedback_cases(acme_trace: str) -> list[Case]:
    """Bad input on the feedback topic (batches and single records)."""
    old = now_ms() - 20 * 60_000  # older than the trace watermark: an unknown trace is declared at once
    ok1 = feedback(1, trace_id=acme_trace)
    ok2 = feedback(2, trace_id=acme_trace, category="tone", corrected_text="Softer wording.")
    fb_single = CODEC.encode("selfheal.v1.Feedback", feedback(3, trace_id=acme_trace))
    cat_at = first_diff(fb_single, CODEC.encode("selfheal.v1.Feedback", feedback(3, trace_id=acme_trace,
                                                                                 category="tone")))
    fb_enum = bytearray(fb_single)
    fb_enum[cat_at] = 0x40  # zig-zag 32: FeedbackCategory has 13 symbols
    items = [
        ok1,
        feedback(10, trace_id="tr-does-not-exist", event_time=old),
        feedback(11, trace_id=acme_trace, original_output_hash="zz"),
        feedback(12, trace_id=acme_trace, corrected_text="c" * 70_000),
        feedback(13, trace_id=acme_trace, event_time=now_ms() + 3_600_000),
        feedback(14, trace_id=acme_trace, reviewer_id=""),
        feedback(15, trace_id=acme_trace, tenant_id="globex"),
        ok2,
    ]
    expects = [
        Expect(1, "unknown_trace", "trace_id", "tr-does-not-exist", "acme"),
        Expect(2, "validation", "original_output_hash", "zz", "acme"),
        Expect(3, "validation", "corrected_text", lambda v: v.startswith("ccc") and v.endswith("..."), "acme"),
        Expect(4, "validation", "event_time", None, "acme"),
        Expect(5, "validation", "reviewer_id", "", "acme"),
        Expect(6, "key_mismatch", "tenant_id", "globex", "acme"),
    ]
    return [
        Case("feedback batch with bad items between valid ones", "feedback", b"acme", fbatch(*items), expects,
             records=items),
        # another tenant's feedback on acme's trace: must not join across tenants
        Case("feedback referring to another tenant's trace", "feedback", b"globex",
             fbatch(feedback(20, trace_id=acme_trace, tenant_id="globex", event_time=old)),
             [Expect(0, "unknown_trace", "trace_id", acme_trace, "globex")],
             records=[feedback(20, trace_id=acme_trace, tenant_id="globex", event_time=old)]),
        Case("unknown enum symbol in feedback category", "feedback", b"acme", bytes(fb_enum),
             [Expect(-1, "unknown_enum", "category", "32", "acme")]),
        Case("trace on the feedback topic", "feedback", b"acme", single(trace(50_001)),
             [Expect(-1, "wrong_schema", "(schema)", "selfheal.v1.AgentTrace", "acme")]),
        Case("not Avro on the feedback topic", "feedback", b"acme", b"\x00\x01garbage",
             [Expect(-1, "not_avro", "(header)", "00 01 67 61", "acme")]),
        Case("feedback batch with an empty list", "feedback", b"acme", fbatch(),
             [Expect(-1, "validation", "items", "[]", "acme")]),
    ]


def produce(settings, cases: list[Case]) -> None:
    """Send the cases in order (one Kafka message each) and record where each one landed."""
    conf = {**settings.kafka_config(), "enable.idempotence": True, "message.max.bytes": 2_000_000}
    with kafka_producer(conf) as p:
        for case in cases:
            landed: list = []
            p.produce(settings.topic(case.topic), case.value, key=case.key,
                      on_delivery=lambda err, msg, out=landed: out.append((err, msg)))
            p.flush(30)  # one at a time: order on a partition = order sent
            (err, msg), = landed
            assert err is None, err
            case.partition, case.offset = msg.partition(), msg.offset()


def read_dead_letter_topic(settings, timeout_s: float = 60.0) -> dict[str, DeadLetter]:
    """Every envelope on the dead-letter topic, by id (redeliveries collapse)."""
    return {d.dead_letter_id: d for _, d in read_contract_topic(settings, "deadletter", DeadLetter, timeout_s)}


def check(spec: Check, actual: str) -> bool:
    return True if spec is None else spec(actual) if callable(spec) else actual == spec


def test_bad_input_is_dead_lettered_with_its_reason_and_the_worker_keeps_going(settings, worker_factory):
    max_bytes = 100_000
    ensure_topics(settings)
    worker = worker_factory({"SELFHEAL_MAX_MESSAGE_BYTES": str(max_bytes), "SELFHEAL_FEEDBACK_GRACE_S": "3"})
    ids = Ids()
    tcases = trace_cases(ids, max_bytes)
    # valid single messages between the bad ones: the worker must keep going past each
    interleaved: list[Case] = []
    for c in tcases:
        interleaved.append(c)
        interleaved.append(Case("valid", "traces", b"acme", tbatch(ids.ok()), []))
    produce(settings, interleaved)
    wait_caught_up(settings, ["traces"], worker=worker)
    fcases = feedback_cases(acme_trace=ids.valid[1])
    produce(settings, fcases)
    wait_caught_up(settings, ["traces", "feedback"], worker=worker)
    started = time.time()
    assert worker.stop() == 0, worker.log.read_text()[-3000:]

    cases = [c for c in interleaved + fcases if c.expect]
    expected = {(settings.topic(c.topic), c.partition, c.offset, e.index): (c, e) for c in cases for e in c.expect}
    kinds = {(e.error_class, e.field if isinstance(e.field, str) else "(computed)") for _, e in expected.values()}
    assert len(kinds) >= 30, sorted(kinds)

    sink = ClickHouseSink(settings)
    try:
        rows = sink.query(
            "SELECT source_topic, source_partition, source_offset, record_index, error_class, field, value, message, "
            "tenant_id, payload_sha256, payload_bytes, dead_letter_id FROM {db}.dead_letters FINAL")
        stored = {(r[0], r[1], r[2], r[3]): r for r in rows}
        missing = [f"{c.name} [{e.index}] {e.error_class}" for k, (c, e) in expected.items() if k not in stored]
        assert not missing, f"not dead-lettered: {missing}"
        unexpected = [r for k, r in stored.items() if k not in expected]
        assert not unexpected, f"dead letters nobody expected: {unexpected}"
        for k, (c, e) in expected.items():
            _, _, _, _, error_class, fld, value, message, tenant, *_ = stored[k]
            where = f"{c.name} [record {e.index}]"
            assert error_class == e.error_class, f"{where}: {error_class} ({message})"
            assert check(e.field, fld), f"{where}: field {fld!r} ({message})"
            assert check(e.value, value), f"{where}: value {value!r} ({message})"
            assert tenant == e.tenant, f"{where}: tenant {tenant!r}"
            assert message, where

        # the worker kept going: every valid record around the bad ones is stored, once
        got = {r[0] for r in sink.query("SELECT trace_id FROM {db}.traces FINAL")}
        assert got == set(ids.valid), (sorted(set(ids.valid) - got)[:10], sorted(got - set(ids.valid))[:10])
        assert sink.query("SELECT count() FROM {db}.traces FINAL")[0][0] == len(ids.valid)
        base = sink.query("SELECT latency_ms FROM {db}.traces FINAL WHERE trace_id = 'tr-base-0000'")
        assert base == [(1234.5,)], "the conflicting duplicate must not replace the original"
        fb = {r[0] for r in sink.query("SELECT feedback_id FROM {db}.feedback_submissions FINAL")}
        assert fb == {"fb-00000001", "fb-00000002"}
    finally:
        sink.close()

    # the dead-letter topic: envelopes with the original bytes, source position, reason and time
    topic_dls = read_dead_letter_topic(settings)
    by_pos = {(d.source_topic, d.source_partition, d.source_offset, d.record_index): d for d in topic_dls.values()}
    assert set(by_pos) == set(expected)
    for k, (c, e) in expected.items():
        d = by_pos[k]
        assert d.key == c.key or (c.key is None and d.key in (None, b""))
        if e.index < 0:
            assert d.payload == (c.value or b""), c.name  # the original message bytes
        else:
            rec = c.records[e.index]
            sent = CODEC.decode(tbatch(rec) if c.topic == "traces" else fbatch(rec))[1]
            item = sent["traces" if c.topic == "traces" else "items"][0]
            assert d.payload == canonical_json(item), c.name  # the failing record itself
        assert stored[k][9] == hashlib.sha256(d.payload).hexdigest() and stored[k][10] == len(d.payload)
        assert d.error_class == e.error_class and d.message
        assert started - 600 < d.occurred_at.timestamp() <= time.time()
