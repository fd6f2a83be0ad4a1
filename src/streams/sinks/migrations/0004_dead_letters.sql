-- Everything the pipeline rejected, with its reason. The original bytes stay on the Kafka topic
-- agent.deadletter.v1 (restricted, for replay); here only their SHA-256 and size, so PHI in a
-- rejected payload is not copied into the analytics store. Deterministic dead_letter_id: a
-- redelivered bad message collapses to one row.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    tenant_id          LowCardinality(String),
    dead_letter_id     String,
    source_topic       LowCardinality(String),
    source_partition   UInt16,
    source_offset      UInt64,
    record_index       Int32,
    error_class        LowCardinality(String),
    field              String,
    value              String,
    message            String,
    schema_fingerprint String,
    payload_sha256     String,
    payload_bytes      UInt32,
    occurred_at        DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, source_topic, dead_letter_id);
