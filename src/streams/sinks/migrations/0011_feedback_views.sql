-- Analyst views over the evaluation store (docs/queries.md shows each with real output).
-- All read FINAL; on a ClickHouse server the row policies of the underlying tables apply to the
-- querying user (deploy/clickhouse/row_policies.sql), so a tenant's analyst sees their rows only.

-- Correction rate per tenant, cohort, release and day of the corrected trace:
-- corrected_traces / traces (unique corrections, FINAL), and corrections per trace.
CREATE VIEW IF NOT EXISTS {db}.v_correction_rate AS
SELECT
    t.tenant_id AS tenant_id, t.cohort AS cohort, t.release_id AS release_id, t.day AS day,
    t.traces AS traces, c.corrected_traces AS corrected_traces, c.corrections AS corrections,
    round(c.corrected_traces / t.traces, 6) AS correction_rate
FROM
(
    SELECT tenant_id, cohort, release_id, toDate(event_time) AS day, count() AS traces
    FROM {db}.traces FINAL
    GROUP BY tenant_id, cohort, release_id, day
) AS t
LEFT JOIN
(
    SELECT tenant_id, cohort, release_id, toDate(trace_event_time) AS day,
           uniqExact(trace_id) AS corrected_traces, count() AS corrections
    FROM {db}.feedback FINAL
    GROUP BY tenant_id, cohort, release_id, day
) AS c ON c.tenant_id = t.tenant_id AND c.cohort = t.cohort AND c.release_id = t.release_id AND c.day = t.day;

-- Failure categories per tenant and release, ranked (rank 1 = most corrections). Corrections
-- that lost a conflict are left out.
CREATE VIEW IF NOT EXISTS {db}.v_top_failure_categories AS
SELECT
    tenant_id, release_id, category, corrections, traces_corrected, mean_confidence,
    round(corrections / sum(corrections) OVER (PARTITION BY tenant_id, release_id), 4) AS share,
    row_number() OVER (PARTITION BY tenant_id, release_id ORDER BY corrections DESC, category) AS rank
FROM
(
    SELECT tenant_id, release_id, category, count() AS corrections, uniqExact(trace_id) AS traces_corrected,
           round(avg(confidence), 4) AS mean_confidence
    FROM {db}.feedback FINAL
    WHERE resolution != 'lost'
    GROUP BY tenant_id, release_id, category
);

-- Conflicting corrections (different reviewers, different category or opposite correction on
-- the same trace): both sides, with the outcome and the rule that decided it.
CREATE VIEW IF NOT EXISTS {db}.v_feedback_conflicts AS
SELECT
    tenant_id, conflict_id, trace_id, cohort, workflow, release_id, dedup_key, category, source, reviewer_role,
    agreement_count, submissions, confidence, resolution, resolution_rule, resolved_against, resolution_note,
    corrected_text, event_time
FROM {db}.feedback FINAL
WHERE conflict;

-- The current scope of every correction: the highest rung its pattern reached.
CREATE VIEW IF NOT EXISTS {db}.v_feedback_scope AS
SELECT
    f.tenant_id AS tenant_id, f.dedup_key AS dedup_key, f.trace_id AS trace_id, f.cohort AS cohort,
    f.pattern_id AS pattern_id,
    multiIf(g.pattern_id != '', 'global_candidate', s.pattern_id != '', 'segment',
            tp.scope = 'tenant', 'tenant', 'session') AS scope
FROM {db}.feedback AS f FINAL
LEFT JOIN
(
    SELECT tenant_id, pattern_id, scope FROM {db}.feedback_patterns FINAL WHERE tenant_id != ''
) AS tp ON tp.tenant_id = f.tenant_id AND tp.pattern_id = f.pattern_id
LEFT JOIN
(
    SELECT cohort, pattern_id FROM {db}.feedback_patterns FINAL WHERE scope = 'segment'
) AS s ON s.cohort = f.cohort AND s.pattern_id = f.pattern_id
LEFT JOIN
(
    SELECT pattern_id FROM {db}.feedback_patterns FINAL WHERE scope = 'global_candidate'
) AS g ON g.pattern_id = f.pattern_id;

-- Golden set: every unique correction joined to its trace's release manifest and output hash.
-- usable = not a correction that lost a conflict (what `selfheal export-evalset` exports).
CREATE VIEW IF NOT EXISTS {db}.v_golden_set AS
SELECT
    f.tenant_id AS tenant_id, f.cohort AS cohort, f.workflow AS workflow, f.release_id AS release_id,
    f.trace_id AS trace_id, f.dedup_key AS dedup_key, f.feedback_id AS feedback_id,
    f.trace_event_time AS trace_event_time, f.event_time AS event_time, f.category AS category,
    f.severity AS severity, f.regulatory_tags AS regulatory_tags, f.source AS source,
    f.reviewer_role AS reviewer_role, f.original_output_hash AS original_output_hash,
    t.output_sha256 AS trace_output_sha256, f.corrected_text AS corrected_text, f.edit_diff AS edit_diff,
    f.confidence AS confidence, f.agreement_count AS agreement_count, f.submissions AS submissions,
    f.conflict AS conflict, f.resolution AS resolution, f.pattern_id AS pattern_id, sc.scope AS scope,
    t.intent AS intent, t.model AS model, t.prompt_version AS prompt_version,
    t.tool_schema_version AS tool_schema_version, t.policy_version AS policy_version,
    t.retrieval_index_version AS retrieval_index_version,
    f.resolution != 'lost' AS usable
FROM {db}.feedback AS f FINAL
INNER JOIN {db}.traces AS t FINAL ON t.tenant_id = f.tenant_id AND t.trace_id = f.trace_id
LEFT JOIN {db}.v_feedback_scope AS sc ON sc.tenant_id = f.tenant_id AND sc.dedup_key = f.dedup_key;
