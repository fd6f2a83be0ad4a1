"""The shipped migrations: one version number each (``schema_migrations`` is keyed by version, so a
second file with a taken number would be skipped silently on every store)."""

from __future__ import annotations

from streams.sinks.clickhouse import migrations


def test_every_migration_has_its_own_version_and_they_apply_in_order():
    found = migrations()
    versions = [v for v, _, _ in found]
    assert versions == sorted(set(versions))
    assert {"trace_ids", "incident_actions", "evalset_exports"} <= {name for _, name, _ in found}
