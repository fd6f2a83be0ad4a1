-- One row per golden-set export (streams.evalset.export_evalset): which set (tenant, version,
-- content hash), what selected it (filter as JSON), how many records, when. A later evaluation
-- run names the version it was checked on; an export of unchanged content reuses its version.
-- ReplacingMergeTree keyed by tenant first: the newest export of a (tenant, version) wins.
CREATE TABLE IF NOT EXISTS {db}.evalset_exports
(
    tenant_id       LowCardinality(String),
    version         UInt32,
    records_sha256  String,
    format_version  UInt16,
    filter          String,
    records         UInt64,
    exported_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(exported_at)
ORDER BY (tenant_id, version);
