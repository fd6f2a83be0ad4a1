"""Row policies generated from the migrations: every table and view has one (also tables added by
later migrations), the committed deploy file is the generated one, and ClickHouse parses it."""

from pathlib import Path

import pytest

from streams.config import Settings
from streams.sinks import row_policies
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.row_policies import RowPolicyError, predicate, relations, render, statements

DEPLOY_FILE = Path(__file__).resolve().parents[3] / "deploy" / "clickhouse" / "row_policies.sql"


def test_every_table_and_view_of_the_migrations_has_a_tenant_policy_and_a_grant():
    sql = statements()
    names = [name for name, _, _ in relations()]
    assert {"traces", "baseline_snapshots", "feedback_patterns", "v_golden_set"} <= set(names)
    for name in names:
        policy = [s for s in sql if s.startswith("CREATE ROW POLICY") and f"`tenant_TENANT_{name}` ON" in s]
        assert len(policy) == 1 and "tenant_id" in policy[0], name
        assert f"GRANT SELECT ON selfheal.{name} TO `tenant_TENANT`" in sql
    # no blanket grant: a relation without a policy is not readable by a tenant role
    assert not any("selfheal.*" in s for s in sql)


def test_the_parser_finds_every_relation_the_migrations_create_in_clickhouse(tmp_path):
    # real chDB: whatever CREATE form a later migration uses, it must not escape the generator
    with ClickHouseSink(Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch")) as sink:
        sink.migrate()
        created = {r[0] for r in sink.query("SELECT name FROM system.tables WHERE database = {db:String}",
                                            {"db": sink.db})}
        for stmt in statements():  # ClickHouse's own parser accepts every generated statement
            assert sink.query("SELECT formatQuery({q:String})", {"q": stmt})[0][0]
    assert created - {"schema_migrations"} == {name for name, _, _ in relations()}


def test_a_relation_without_a_tenant_column_fails_the_generation(monkeypatch):
    with pytest.raises(RowPolicyError, match="audit_log"):
        predicate("audit_log", "CREATE TABLE IF NOT EXISTS {db}.audit_log (at DateTime, what String)")
    extra = (9999, "later_branch", "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_x ENGINE = Memory AS SELECT 1 AS x")
    real = row_policies.migrations
    monkeypatch.setattr(row_policies, "migrations", lambda: [*real(), extra])
    assert "mv_x" in [n for n, _, _ in relations()]
    with pytest.raises(RowPolicyError, match="mv_x"):
        statements()


def test_shared_rows_are_readable_by_every_tenant_only_where_declared():
    assert predicate("feedback_patterns", "tenant_id") == "tenant_id IN ('TENANT', '')"
    assert predicate("traces", "tenant_id") == "tenant_id = 'TENANT'"


def test_the_committed_deploy_file_is_the_generated_one():
    assert DEPLOY_FILE.read_text() == render(), "regenerate: selfheal row-policies > deploy/clickhouse/row_policies.sql"
