"""ClickHouseSink.write_traces on embedded chDB: nested fields (tool calls, attributes, rollout)
land in the right row, a redelivered batch collapses under FINAL (idempotent sink), and a stored
trace reads back as the same TraceRef the pipeline built from the batch."""

from __future__ import annotations

import copy

from schemas import default_codec
from streams.config import Settings
from streams.processors.columns import RawMessage, trace_columns
from streams.processors.feedback import TraceRef
from streams.processors.ingest import Ingest
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.queries import stored_traces_by_tenant
from tests.unit.processors.test_fast_check import BASE


def _batch(tenant: str | None = None):
    calls = [[], [{"name": "ehr_lookup", "status": "ok", "latency_ms": 120.0}],
             [{"name": "a", "status": "error", "latency_ms": 5.0},
              {"name": "b", "status": "timeout", "latency_ms": 9.5}]]
    recs = []
    for i, tc in enumerate(calls):
        r = copy.deepcopy(BASE)
        r.update(trace_id=f"tr-{i}", tool_calls=tc, attributes={"k": str(i)} if i else {},
                 rollout=None if i == 1 else r["rollout"])
        if tenant is not None:
            r["tenant_id"] = tenant
        recs.append(r)
    return _columns(recs, 0, 7, tenant or BASE["tenant_id"])


def _columns(recs: list[dict], partition: int, offset: int, key: str):
    """``recs`` as one AgentTraceBatch message at ``partition``/``offset``, through the real
    ingest, as the sink's trace columns."""
    codec = default_codec()
    msg = RawMessage("agent.traces.v1", partition, offset, key.encode(), codec.encode(
        "selfheal.v1.AgentTraceBatch", {"batch_id": f"b{partition}-{offset}", "producer_id": "p",
                                        "sent_at": BASE["event_time"], "traces": recs}))
    decoded = Ingest(codec, "traces").decode([msg])
    assert not decoded.dead_letters
    return trace_columns(decoded.records, decoded.partitions, decoded.offsets)


def test_traces_round_trip_with_nested_fields(tmp_path):
    cols = _batch()
    sink = ClickHouseSink(Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch"))
    try:
        sink.migrate()
        sink.write_traces(cols)
        sink.write_traces(cols)  # redelivery
        rows = sink.query("SELECT trace_id, tool_names, tool_statuses, tool_latency_ms, attributes, rollout_arm "
                          "FROM {db}.traces FINAL ORDER BY trace_id")
    finally:
        sink.close()
    assert [r[0] for r in rows] == ["tr-0", "tr-1", "tr-2"]
    assert [r[1] for r in rows] == [[], ["ehr_lookup"], ["a", "b"]]
    assert [r[2] for r in rows] == [[], ["ok"], ["error", "timeout"]]
    assert [r[3] for r in rows] == [[], [120.0], [5.0, 9.5]]
    assert [r[4] for r in rows] == [{}, {"k": "1"}, {"k": "2"}]
    assert [r[5] for r in rows] == ["canary", "", "canary"]


def test_a_stored_trace_reads_back_as_the_reference_built_from_its_batch(tmp_path):
    # a TraceRef is built from a batch (TraceRef.from_columns, the pipeline) and from the sink's
    # rows (TraceRef.from_row over TRACE_REF_COLUMNS, the feedback join of older traces): field by
    # field the same, tool failures and rollout (or none) included
    cols = _batch()
    sink = ClickHouseSink(Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch"))
    try:
        sink.migrate()
        sink.write_traces(cols)
        stored = TraceRef.by_trace_id(cols.tenant_id[0], sink.for_tenant(cols.tenant_id[0]).trace_refs(cols.trace_id))
    finally:
        sink.close()
    built = dict(zip(cols.trace_id, TraceRef.from_columns(cols, [0] * cols.n), strict=True))
    # except where each comes from: the stored one carries its source offset, the built one -1
    # (counted by this process; the worker's join waits on the first, streams.worker.join_wait)
    assert {t: r.offset for t, r in stored.items()} == dict(zip(cols.trace_id, cols.offset.tolist(), strict=True))
    assert {t: r._replace(offset=-1) for t, r in stored.items()} == built
    assert [built[t].tool for t in cols.trace_id] == ["", "", "a"]
    assert [built[t].rollout_arm for t in cols.trace_id] == [1, -1, 1]


def _varied_batch():
    """Traces with everything a row can vary in: content references (some, with a missing uri),
    no confidence, no intent, no output hash, no rollout, empty and unicode attribute maps, 0-2
    tool calls."""
    recs = []
    for i in range(6):
        r = copy.deepcopy(BASE)
        r.update(trace_id=f"tr-{i}", intent=None if i % 3 == 0 else "summarise",
                 confidence=None if i % 2 else 0.8123, output_sha256=None if i == 4 else "b" * 64,
                 rollout=None if i % 2 else r["rollout"],
                 attributes={} if i == 0 else {"channel": "ambient", "note": f"é{i}"},
                 tool_calls=[{"name": "ehr_lookup", "status": "ok", "latency_ms": 120.5}] * (i % 3))
        if i in (1, 4):
            r["input_ref"] = {"uri": f"s3://notes/{i}.json", "text": "Transcript.", "sha256": "c" * 64}
            r["output_ref"] = {"uri": None, "text": "Draft note.", "sha256": "d" * 64}
        recs.append(r)
    return _columns(recs, 2, 11, "acme-health")


def test_content_references_are_stored_where_traces_carry_them_and_empty_elsewhere(tmp_path):
    # trace_table reads only the traces with a content reference and builds the rest of each
    # column as empty strings without a Python object per row (BENCHMARKS.md, issue 16 sink)
    cols = _varied_batch()
    sink = ClickHouseSink(Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch"))
    try:
        sink.migrate()
        assert sink.write_traces(cols, batch_seq=5) == cols.n
        stored = sink.query("SELECT trace_id, input_ref_uri, input_ref_text, input_ref_sha256, output_ref_uri, "
                            "output_ref_text, output_ref_sha256, attributes FROM {db}.traces ORDER BY batch_pos")
        ids = sink.query("SELECT trace_id, outcome, source_partition, source_offset FROM {db}.trace_ids "
                         "ORDER BY trace_id")
    finally:
        sink.close()
    by_id = {r[0]: r for r in stored}
    assert len(stored) == cols.n
    for i in (1, 4):
        assert by_id[f"tr-{i}"][1:7] == (f"s3://notes/{i}.json", "Transcript.", "c" * 64, "", "Draft note.", "d" * 64)
    for i in (0, 2, 3, 5):
        assert by_id[f"tr-{i}"][1:7] == ("",) * 6
    assert by_id["tr-0"][7] == {} and by_id["tr-3"][7] == {"channel": "ambient", "note": "é3"}
    assert [r[0] for r in ids] == cols.trace_id and {r[2:] for r in ids} == {(2, 11)}  # the view saw the insert


def test_the_batch_lookup_of_stored_traces_equals_the_per_tenant_lookups(tmp_path):
    # stored_traces_by_tenant (one query for a batch's tenants) returns per tenant exactly what
    # TenantQueries.stored_traces returns, and never another tenant's row of a shared trace id
    acme, other = _batch(), _batch("other-clinic")
    sink = ClickHouseSink(Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch"))
    try:
        sink.migrate()
        sink.write_traces(acme)
        sink.write_traces(other)
        asked = {acme.tenant_id[0]: ["tr-0", "tr-2", "tr-9"], "other-clinic": ["tr-1"], "quiet": ["tr-0"]}
        batch = stored_traces_by_tenant(sink, asked)
        single = {t: sink.for_tenant(t).stored_traces(ids) for t, ids in asked.items()}
    finally:
        sink.close()
    assert {t: sorted(rows) for t, rows in batch.items()} == {t: sorted(rows) for t, rows in single.items() if rows}
    assert sorted(r[0] for r in batch[acme.tenant_id[0]]) == ["tr-0", "tr-2"]
    assert [r[0] for r in batch["other-clinic"]] == ["tr-1"]
