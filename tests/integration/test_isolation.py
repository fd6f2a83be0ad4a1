"""Tenant isolation and redaction on real chDB.

Two tenants' traces (with PHI in attributes and in an invalid field), incidents-free, go through the
processing core (``Pipeline``) and are written with ``ClickHouseSink`` exactly as the worker writes
them (redacted attribute maps, dead letters with the pipeline's redactor). Then:

- every ``TenantQueries`` helper returns only its tenant's rows, also when the other arguments
  carry SQL metacharacters or the other tenant's ids;
- crafted tenant ids (SQL, NUL, newline, look-alike Unicode, over-long, wrong type) are refused
  before any query runs;
- no PHI reaches a String column of ``traces`` or ``dead_letters``.
"""

from __future__ import annotations

import pytest

from schemas import default_codec
from streams.errors import TenantScopeError
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.sinks.clickhouse import ClickHouseSink
from tests.factories import now_ms, trace

pytestmark = pytest.mark.integration

CODEC = default_codec()
PHI = {"note": "Patient: John Smith, SSN 123-45-6789, call 617-555-0134"}
LEAKS = ("John Smith", "123-45-6789", "555-0134")
SQL_TRICKS = ("' OR 1=1 --", "acme' OR tenant_id != 'acme", "\\' OR ''='", "x'); DROP TABLE traces; --",
              "%", "_", "*", "globex")


def batch_message(tenant: str, offset: int, records: list[dict]) -> RawMessage:
    value = CODEC.encode("selfheal.v1.AgentTraceBatch",
                         {"batch_id": f"b-{tenant}-{offset}", "producer_id": "iso", "sent_at": now_ms(),
                          "traces": records})
    return RawMessage("agent.traces.v1", 0, offset, tenant.encode(), value)


@pytest.fixture
def sink(settings):
    pipe = Pipeline(settings, CODEC)
    msgs = []
    for off, tenant in enumerate(("acme", "globex")):
        recs = [trace(100 * off + i, trace_id=f"tr-{tenant}-{i:03d}", tenant_id=tenant, attributes=dict(PHI))
                for i in range(20)]
        # an invalid record whose bad value is PHI: the dead letter quotes it, redacted
        recs.append(trace(100 * off + 99, trace_id=f"tr-{tenant}-bad", tenant_id=tenant,
                          cohort="Patient: John Smith SSN 123-45-6789"))
        msgs.append(batch_message(tenant, off, recs))
    out = pipe.on_traces(msgs)
    s = ClickHouseSink(settings)
    s.migrate()
    s.write_traces(out.cols, out.attributes)
    s.write_dead_letters(out.dead_letters, pipe.redactor.redact)
    assert len(out.dead_letters) == 2, [d.message for d in out.dead_letters]
    yield s
    s.close()


def test_helpers_return_only_their_tenants_rows(sink):
    acme, globex = sink.for_tenant("acme"), sink.for_tenant("globex")
    assert acme.trace_count() == globex.trace_count() == 20
    assert sink.query("SELECT count() FROM {db}.traces FINAL")[0][0] == 40
    for trick in SQL_TRICKS:
        assert acme.trace_count(cohort=trick) == 0, trick
        assert acme.incidents(status=trick) == [], trick
    # the other tenant's trace ids (the feedback join) return nothing
    assert acme.trace_refs([f"tr-globex-{i:03d}" for i in range(20)]) == []
    assert {r[0] for r in acme.trace_refs([f"tr-{t}-{i:03d}" for t in ("acme", "globex") for i in range(20)])} == {
        f"tr-acme-{i:03d}" for i in range(20)}
    assert acme.trace_refs([*SQL_TRICKS, "tr-acme-000' OR '1'='1"]) == []
    letters = acme.dead_letters()
    assert len(letters) == 1 and letters[0][6] == "cohort"
    assert acme.feedback() == [] and globex.incidents() == []
    assert acme.golden_set(0, now_ms(), cohort="' OR 1=1 --") == []


@pytest.mark.parametrize("tenant", [
    "acme' OR '1'='1", "acme\n", "acme\x00", "ACME", "acme ", " acme", "", "a" * 64, "аcme",  # Cyrillic а
    "acme;globex", "*", "%", "acme/../globex", None, 7, ["acme"], b"acme",
])
def test_crafted_tenant_ids_are_refused(sink, tenant):
    with pytest.raises(TenantScopeError):
        sink.for_tenant(tenant)


@pytest.mark.parametrize(("call", "args"), [
    ("incidents", {"limit": 0}), ("incidents", {"limit": 10_001}), ("incidents", {"limit": "1; DROP"}),
    ("incidents", {"limit": True}), ("incidents", {"status": "x" * 257}), ("trace_count", {"cohort": 5}),
    ("feedback", {"limit": -1}), ("dead_letters", {"limit": 1.5}), ("trace_refs", {"trace_ids": [1, 2]}),
    ("golden_set", {"since_ms": "0", "until_ms": 1}), ("golden_set", {"since_ms": 0, "until_ms": 1, "cohort": 3}),
])
def test_other_arguments_are_type_checked(sink, call, args):
    with pytest.raises(TenantScopeError):
        getattr(sink.for_tenant("acme"), call)(**args)


def test_no_phi_is_persisted_in_traces_or_dead_letters(sink):
    for table in ("traces", "dead_letters"):
        cols = [r[0] for r in sink.query(
            "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String} "
            "AND type LIKE '%String%'", {"d": sink.db, "t": table})]
        assert cols, table
        for col in cols:
            values = sink.query(f"SELECT toString({col}) FROM {{db}}.{table}")  # names from system.columns
            for (v,) in values:
                assert not any(leak in v for leak in LEAKS), (table, col, v)
    attrs = sink.query("SELECT attributes['note'] FROM {db}.traces FINAL LIMIT 1")[0][0]
    assert attrs and "[" in attrs  # redacted, not dropped
