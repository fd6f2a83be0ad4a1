"""The trace duplicate check beyond the in-memory index (issue 18): ids the index does not hold are
looked up in the store; a stored id with other content is a duplicate_conflict, the same content
from another position a replay, the same Kafka message redelivered is processed again."""

from __future__ import annotations

from schemas import default_codec
from streams.config import Settings
from streams.pipeline import Pipeline, trace_fingerprint
from streams.processors.columns import RawMessage
from tests.factories import now_ms, trace

CODEC = default_codec()
T0 = now_ms() - 60_000


def message(offset: int, *recs: dict) -> RawMessage:
    value = CODEC.encode("selfheal.v1.AgentTraceBatch", {"batch_id": f"b{offset}", "producer_id": "p",
                                                         "sent_at": now_ms(), "traces": list(recs)})
    return RawMessage("agent.traces.v1", 3, offset, b"acme", value)


def stored_row(rec: dict, partition: int, offset: int) -> tuple[int, int, int]:
    """What Outputs.stored_traces makes of a ClickHouse row of ``rec``."""
    return (trace_fingerprint(rec["event_time"], rec["latency_ms"], rec["output_tokens"], rec["outcome"],
                              rec["release"]["release_id"], rec["tenant_id"]), partition, offset)


def test_ids_outside_the_index_are_checked_against_the_store():
    pipe = Pipeline(Settings(state_dir="/nonexistent"), CODEC)
    original = trace(1, trace_id="tr-x", event_time=T0, latency_ms=1506.71, outcome="success")
    forged = {**original, "latency_ms": 7535.55, "outcome": "escalated"}
    fresh = trace(2, trace_id="tr-new", event_time=T0)
    msgs = [message(20, forged, fresh), message(21, dict(original))]
    decoded = pipe.decode_traces(msgs)
    assert pipe.unindexed_trace_ids(decoded) == {"acme": ["tr-new", "tr-x"]}
    stored = {("acme", "tr-x"): [stored_row(original, 3, 7)]}  # stored by a previous worker
    out = pipe.on_traces(msgs, decoded=decoded, stored=stored)
    assert out.cols.trace_id == ["tr-new"] and out.duplicates == 1
    assert [(d.error_class, d.value, d.source_offset) for d in out.dead_letters] == [
        ("duplicate_conflict", "tr-x", 20)]


def test_a_redelivered_message_is_processed_again_and_without_a_store_nothing_changes():
    pipe = Pipeline(Settings(state_dir="/nonexistent"), CODEC)
    rec = trace(1, trace_id="tr-y", event_time=T0)
    msgs = [message(7, rec)]
    stored = {("acme", "tr-y"): [stored_row(rec, 3, 7)]}  # written before a crash, not committed
    out = pipe.on_traces(msgs, stored=stored)
    assert out.cols.trace_id == ["tr-y"] and not out.dead_letters and out.duplicates == 0
    again = Pipeline(Settings(state_dir="/nonexistent"), CODEC).on_traces(msgs)
    assert again.cols.trace_id == ["tr-y"]
    assert pipe.unindexed_trace_ids(pipe.decode_traces(msgs)) == {}  # now in the index


def test_an_evicted_trace_is_looked_up_in_the_store_again():
    pipe = Pipeline(Settings(state_dir="/nonexistent", trace_index_size=1000), CODEC)
    pipe.on_traces([message(1, trace(1, trace_id="tr-a", event_time=T0))])
    pipe.on_traces([message(2, *(trace(i, trace_id=f"tr-b{i}", event_time=T0) for i in range(1000)))])  # evicts tr-a
    again = [message(3, trace(1, trace_id="tr-a", event_time=T0, latency_ms=9.0))]
    assert pipe.unindexed_trace_ids(pipe.decode_traces(again)) == {"acme": ["tr-a"]}
