-- Incident events: open, updated, resolved. One row per incident after FINAL (the highest
-- revision wins); the full history stays in the Kafka topic agent.incidents.v1.
CREATE TABLE IF NOT EXISTS {db}.incidents
(
    tenant_id           LowCardinality(String),
    incident_id         String,
    revision            UInt32,
    status              LowCardinality(String),
    kind                LowCardinality(String),
    layer               LowCardinality(String),
    cohort              LowCardinality(String),
    workflow            LowCardinality(String),
    slice_release_id    LowCardinality(String),
    metric_group        LowCardinality(String),
    metric              LowCardinality(String),
    baseline            Float64,
    observed            Float64,
    observed_ci_low     Float64,
    observed_ci_high    Float64,
    effect              Float64,
    samples             UInt64,
    detector            LowCardinality(String),
    statistic           Float64,
    threshold           Float64,
    severity            LowCardinality(String),
    action              LowCardinality(String),
    release_id          LowCardinality(String),
    release_manifest    Map(String, String),
    also_seen           Array(String),
    summary             String,
    evidence_trace_ids  Array(String),
    detected_at_trace_id String,
    first_seen          DateTime64(3, 'UTC'),
    last_seen           DateTime64(3, 'UTC'),
    emitted_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (tenant_id, incident_id);
