-- Periodic snapshots of every slice's baseline, one row per slice and metric, for analysts:
-- what "normal" was for a tenant / cohort / workflow / release at a point in time.
-- value: rate for rate metrics (failure_rate ...), corrections per trace for label-delayed ones,
-- the metric in its unit for continuous ones (latency ms as geometric mean, tokens, USD,
-- confidence); variance is on the detector's scale (log / logit); p50/p95/p99 for latency only.
CREATE TABLE IF NOT EXISTS {db}.baseline_snapshots
(
    tenant_id    LowCardinality(String),
    slice_key    String,
    layer        LowCardinality(String),
    cohort       LowCardinality(String),
    workflow     LowCardinality(String),
    release_id   LowCardinality(String),
    snapshot_at  DateTime64(3, 'UTC'),
    traces       UInt64,
    weight       Float64,
    metric       LowCardinality(String),
    family       LowCardinality(String),
    value        Float64,
    variance     Float64,
    p50_ms       Float64,
    p95_ms       Float64,
    p99_ms       Float64,
    cusum        Float64,
    frozen       Bool
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(snapshot_at)
ORDER BY (tenant_id, slice_key, metric, snapshot_at);
