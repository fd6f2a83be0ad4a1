-- Rollout verdicts (streams.processors.canary): one row per verdict event, i.e. per revision of a
-- scorecard (tenant x candidate release x cohort x workflow scope x arm). ReplacingMergeTree keyed
-- by (tenant_id, release_id, verdict_id, revision): an event redelivered after a crash
-- (at-least-once) has the same key and collapses; every revision is kept (the scorecard's
-- history). The current verdict of a scorecard is its highest revision (read with FINAL).
CREATE TABLE IF NOT EXISTS {db}.rollout_verdicts
(
    tenant_id           LowCardinality(String),
    release_id          LowCardinality(String),
    verdict_id          String,
    revision            UInt32,
    cohort              LowCardinality(String),
    workflow            LowCardinality(String),
    arm                 LowCardinality(String),
    stage_pct           Float32,
    verdict             LowCardinality(String),
    changed             Bool,
    risk_class          LowCardinality(String),
    alpha_promote       Float64,
    alpha_rollback      Float64,
    margin              Float64,
    min_samples         UInt32,
    guardrail_fired     LowCardinality(String),
    regressed_metrics   Array(LowCardinality(String)),
    reason              String,
    samples_control     UInt64,
    samples_candidate   UInt64,
    exposure            UInt64,
    evidence_trace_ids  Array(String),
    release_manifest    Map(String, String),
    first_seen          DateTime64(3, 'UTC'),
    emitted_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, release_id, verdict_id, revision);

-- The scorecard of every verdict event, one row per metric (same key plus the metric).
-- delta, ci_low, ci_high: relative change of the metric's harmful-event rate (candidate/control - 1)
-- and its always-valid interval; p_value: always-valid p-value of "candidate no worse".
CREATE TABLE IF NOT EXISTS {db}.rollout_scorecards
(
    tenant_id           LowCardinality(String),
    release_id          LowCardinality(String),
    verdict_id          String,
    revision            UInt32,
    metric              LowCardinality(String),
    cohort              LowCardinality(String),
    workflow            LowCardinality(String),
    arm                 LowCardinality(String),
    stage_pct           Float32,
    verdict             LowCardinality(String),
    role                LowCardinality(String),
    status              LowCardinality(String),
    unit                LowCardinality(String),
    control             Float64,
    candidate           Float64,
    delta               Float64,
    ci_low              Float64,
    ci_high             Float64,
    p_value             Float64,
    samples_control     UInt64,
    samples_candidate   UInt64,
    events_control      UInt64,
    events_candidate    UInt64,
    emitted_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, release_id, verdict_id, revision, metric);
