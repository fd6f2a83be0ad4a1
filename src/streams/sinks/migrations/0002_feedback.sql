-- Every feedback submission that passed validation, one row per submission as it arrived.
-- ReplacingMergeTree ordered by (tenant_id, dedup_key): exact replays (same feedback_id) and
-- resubmits (same tenant, trace, category and normalised correction) share a dedup_key, so
-- SELECT ... FINAL shows one row per unique correction; count() without FINAL shows what arrived.
-- version grows with every change of the correction (aggregates, conflict outcome); the text stays
-- the first submission's wording (streams.processors.feedback).
CREATE TABLE IF NOT EXISTS {db}.feedback
(
    tenant_id            LowCardinality(String),
    dedup_key            String,
    feedback_id          String,
    trace_id             String,
    session_id           String,
    cohort               LowCardinality(String),
    workflow             LowCardinality(String),
    release_id           LowCardinality(String),
    source               LowCardinality(String),
    category             LowCardinality(String),
    regulatory_tags      Array(LowCardinality(String)),
    severity             LowCardinality(String),
    original_output_hash String,
    corrected_text       String,
    edit_diff            String,
    normalised_correction String,
    reviewer_id_hash     String,
    reviewer_role        LowCardinality(String),
    event_time           DateTime64(3, 'UTC'),
    dedup_status         LowCardinality(String),
    version              UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, dedup_key);

-- Every submission as it arrived, keyed by its Kafka position (partition, offset, index in the
-- batch message): a redelivery after a crash collapses, a replay sent again by a client (a new
-- message) is a new row. count() ... FINAL here = submissions; on `feedback` = unique corrections.
CREATE TABLE IF NOT EXISTS {db}.feedback_submissions
(
    tenant_id        LowCardinality(String),
    source_partition UInt16,
    source_offset    UInt64,
    record_index     Int32,
    feedback_id      String,
    dedup_key        String,
    trace_id         String,
    category         LowCardinality(String),
    dedup_status     LowCardinality(String),
    event_time       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, source_partition, source_offset, record_index);
