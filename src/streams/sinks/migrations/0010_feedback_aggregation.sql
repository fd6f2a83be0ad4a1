-- Feedback aggregation (docs/feedback.md): near-duplicates, conflicts, confidence, patterns.
--
-- `feedback` keeps one row per unique correction after FINAL (ORDER BY tenant_id, dedup_key).
-- Every change to a correction (a resubmit, a near-duplicate, another reviewer agreeing, a
-- conflict appearing on its trace) writes a new row with a higher `version`
-- (max(previous version + 1, event time)), so FINAL shows its latest state; replays write a row
-- with version 0 that FINAL never picks. New columns:
--   trace_event_time   event time of the corrected trace (correction rate by trace day)
--   tool               first tool call of the trace that did not return ok ('' if none)
--   template           the correction, redacted, normalised, numbers masked as <num>
--   pattern_id         SHA-1 of (category, workflow, tool, template, release_id): no tenant in it
--   submissions        non-replay submissions folded into the correction (new, resubmits, near-dups)
--   agreement_count    distinct reviewers behind it
--   confidence         source x role x noisy-OR agreement x severity weight, in [0, 1]
--   conflict, conflict_id, resolution ('won'/'lost'), resolution_rule ('role_weight',
--   'majority', 'recency', 'dedup_key'), resolved_against (deciding dedup_key), resolution_note
ALTER TABLE {db}.feedback
    ADD COLUMN IF NOT EXISTS trace_event_time DateTime64(3, 'UTC') DEFAULT event_time,
    ADD COLUMN IF NOT EXISTS tool LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS template String DEFAULT '',
    ADD COLUMN IF NOT EXISTS pattern_id String DEFAULT '',
    ADD COLUMN IF NOT EXISTS submissions UInt32 DEFAULT 1,
    ADD COLUMN IF NOT EXISTS agreement_count UInt16 DEFAULT 1,
    ADD COLUMN IF NOT EXISTS confidence Float32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS conflict Bool DEFAULT false,
    ADD COLUMN IF NOT EXISTS conflict_id String DEFAULT '',
    ADD COLUMN IF NOT EXISTS resolution LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS resolution_rule LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS resolved_against String DEFAULT '',
    ADD COLUMN IF NOT EXISTS resolution_note String DEFAULT '';

ALTER TABLE {db}.feedback ADD INDEX IF NOT EXISTS idx_pattern_id pattern_id TYPE bloom_filter GRANULARITY 4;

-- Correction patterns per scope (the scope ladder). Recomputed from `feedback` FINAL for the
-- patterns a feedback batch touched (ClickHouseSink.refresh_patterns); refreshed_at is the
-- version, so FINAL shows the latest computation. Every unique correction counts, also one that
-- lost a conflict (`conflicts`, `lost` say how many): counts only grow, so a pattern climbs the
-- ladder and never falls back, whatever the order and batching of the stream.
--   scope 'session' / 'tenant': one row per (tenant_id, pattern_id), cohort ''. 'tenant' once the
--     pattern recurred in >= SELFHEAL_FEEDBACK_TENANT_MIN_SESSIONS distinct sessions.
--   scope 'segment': one row per (cohort, pattern_id), tenant_id '', written only when the
--     pattern was seen in >= k (SELFHEAL_FEEDBACK_SEGMENT_MIN_TENANTS) distinct tenants of it.
--   scope 'global_candidate': one row per pattern_id, tenant_id and cohort '', seen in >= k
--     distinct tenants spanning >= SELFHEAL_FEEDBACK_GLOBAL_MIN_COHORTS cohorts.
-- Rows outside tenant scope carry counts of distinct tenants, never tenant ids, and the masked
-- template, never correction text.
CREATE TABLE IF NOT EXISTS {db}.feedback_patterns
(
    scope           LowCardinality(String),
    tenant_id       LowCardinality(String),
    cohort          LowCardinality(String),
    pattern_id      String,
    category        LowCardinality(String),
    workflow        LowCardinality(String),
    tool            LowCardinality(String),
    template        String,
    release_id      LowCardinality(String),
    corrections     UInt64,
    sessions        UInt64,
    traces          UInt64,
    tenants         UInt32,
    cohorts         UInt32,
    conflicts       UInt64,
    lost            UInt64,
    mean_confidence Float64,
    first_seen      DateTime64(3, 'UTC'),
    last_seen       DateTime64(3, 'UTC'),
    refreshed_at    DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(refreshed_at)
ORDER BY (tenant_id, cohort, pattern_id);
