-- One row per agent run. ReplacingMergeTree on the natural key: a trace redelivered after a
-- crash (at-least-once) has the same key and collapses at merge time; read with FINAL.
-- ORDER BY starts with tenant_id: every analyst and evaluation query filters on one tenant, then
-- slices by cohort/workflow and a time range.
CREATE TABLE IF NOT EXISTS {db}.traces
(
    tenant_id               LowCardinality(String),
    cohort                  LowCardinality(String),
    workflow                LowCardinality(String),
    event_time              DateTime64(3, 'UTC'),
    trace_id                String,
    intent                  LowCardinality(String),
    agent_id                LowCardinality(String),
    session_id              String,
    release_id              LowCardinality(String),
    model                   LowCardinality(String),
    prompt_version          LowCardinality(String),
    tool_schema_version     LowCardinality(String),
    policy_version          LowCardinality(String),
    retrieval_index_version LowCardinality(String),
    rollout_arm             LowCardinality(String),
    rollout_stage_pct       Float32,
    candidate_release_id    LowCardinality(String),
    latency_ms              Float64,
    input_tokens            UInt32,
    output_tokens           UInt32,
    cost_usd                Float64,
    confidence              Nullable(Float32),
    outcome                 LowCardinality(String),
    tool_names              Array(LowCardinality(String)),
    tool_statuses           Array(LowCardinality(String)),
    tool_latency_ms         Array(Float32),
    retrieval_queries       UInt16,
    retrieval_hits          UInt16,
    policy_blocked          Bool,
    retries                 UInt16,
    fallback_used           Bool,
    output_sha256           String,
    attributes              Map(String, String),
    source_partition        UInt16,
    source_offset           UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, cohort, workflow, event_time, trace_id);
