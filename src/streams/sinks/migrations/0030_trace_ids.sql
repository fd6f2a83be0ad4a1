-- Every stored trace's id with the fields its duplicate check compares (issue 18): the worker asks
-- here for trace ids its in-memory index does not hold (after a restart, a rebalance or an
-- eviction), so a forged copy with a known trace_id is dead-lettered (duplicate_conflict) instead
-- of replacing the original in traces FINAL. Ordered by (tenant_id, trace_id): the lookup reads
-- a few granules, whereas traces is ordered by slice and time. Filled by a materialized view on
-- every insert into traces; one row per (trace, source position), so a redelivered message
-- collapses and a replay from another position is visible as such.
CREATE TABLE IF NOT EXISTS {db}.trace_ids
(
    tenant_id        LowCardinality(String),
    trace_id         String,
    event_time       DateTime64(3, 'UTC'),
    latency_ms       Float64,
    output_tokens    UInt32,
    outcome          LowCardinality(String),
    release_id       LowCardinality(String),
    source_partition UInt16,
    source_offset    UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, trace_id, source_partition, source_offset);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_ids_mv TO {db}.trace_ids AS
SELECT tenant_id, trace_id, event_time, latency_ms, output_tokens, outcome, release_id, source_partition,
       source_offset
FROM {db}.traces;

-- traces stored before this migration
INSERT INTO {db}.trace_ids
SELECT tenant_id, trace_id, event_time, latency_ms, output_tokens, outcome, release_id, source_partition,
       source_offset
FROM {db}.traces;
