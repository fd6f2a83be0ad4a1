-- The release ledger (issue 17): what was done about incidents, and the governance views over
-- incidents, actions and rollout verdicts. docs/queries.md shows each view with real output.

-- What a revision of an incident says about its lifecycle and what to restore (Incident fields
-- detected_at .. drift_matrix); older rows get the defaults.
ALTER TABLE {db}.incidents
    ADD COLUMN IF NOT EXISTS detected_at        DateTime64(3, 'UTC') DEFAULT first_seen,
    ADD COLUMN IF NOT EXISTS resolution         LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS acknowledged_by    String DEFAULT '',
    ADD COLUMN IF NOT EXISTS suppressed_until   Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS mitigated_at       Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS restore_release_id LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS changed_components Array(LowCardinality(String)),
    ADD COLUMN IF NOT EXISTS likely_cause       String DEFAULT '',
    ADD COLUMN IF NOT EXISTS safe_fix           String DEFAULT '',
    ADD COLUMN IF NOT EXISTS validation_gate    String DEFAULT '',
    ADD COLUMN IF NOT EXISTS rollback_required  Bool DEFAULT false;

-- What a rollout verdict says to restore (RolloutVerdict fields restore_release_id,
-- changed_components; the drift matrix row of a rollback is on its incident).
ALTER TABLE {db}.rollout_verdicts
    ADD COLUMN IF NOT EXISTS restore_release_id LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS changed_components Array(LowCardinality(String));

-- One row per applied incident action (agent.incident-actions.v1), keyed by tenant, incident and
-- the producer's action_id: an action redelivered or resent collapses (ReplacingMergeTree; the
-- worker also applies it once). Refused actions are in dead_letters, not here. release_id: the
-- release rolled back or promoted; incident_release_id: the release the incident implicates;
-- revision/status: the incident revision the action caused.
CREATE TABLE IF NOT EXISTS {db}.incident_actions
(
    tenant_id           LowCardinality(String),
    incident_id         String,
    action_id           String,
    action              LowCardinality(String),
    actor               String,
    reason              String,
    at                  DateTime64(3, 'UTC'),
    until               Nullable(DateTime64(3, 'UTC')),
    release_id          LowCardinality(String),
    restored_release_id LowCardinality(String),
    incident_release_id LowCardinality(String),
    incident_kind       LowCardinality(String),
    metric_group        LowCardinality(String),
    revision            UInt32,
    status              LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, incident_id, action_id);

-- Per incident: its release, when the change started (first_seen), was detected (detected_at)
-- and first mitigated (mitigated_at: rollback executed, new baseline accepted or false positive),
-- in seconds of event time; resolution and who acted.
CREATE VIEW IF NOT EXISTS {db}.v_incident_lifecycle AS
SELECT
    i.tenant_id AS tenant_id, i.release_id AS release_id, i.incident_id AS incident_id, i.kind AS kind,
    i.severity AS severity, i.status AS status, i.resolution AS resolution, i.restore_release_id AS restore_release_id,
    i.first_seen AS first_seen, i.detected_at AS detected_at, i.mitigated_at AS mitigated_at,
    round(dateDiff('millisecond', i.first_seen, i.detected_at) / 1000, 1) AS time_to_detect_s,
    if(i.mitigated_at IS NULL, NULL, round(dateDiff('millisecond', i.detected_at, assumeNotNull(i.mitigated_at)) / 1000, 1))
        AS time_to_mitigate_s,
    a.actions AS actions, a.actors AS actors
FROM (SELECT * FROM {db}.incidents FINAL) AS i
LEFT JOIN
(
    SELECT tenant_id, incident_id, count() AS actions, arraySort(groupUniqArray(actor)) AS actors
    FROM {db}.incident_actions FINAL GROUP BY tenant_id, incident_id
) AS a ON a.tenant_id = i.tenant_id AND a.incident_id = i.incident_id;

-- Per tenant and release: incidents raised (implicating the release), rollout verdicts raised
-- (scorecards of the release as candidate, by their current verdict), actions taken on its
-- incidents, rollbacks and promotions executed, and mean time to detect / to mitigate.
CREATE VIEW IF NOT EXISTS {db}.v_release_ledger AS
SELECT
    r.tenant_id AS tenant_id, r.release_id AS release_id,
    ifNull(i.incidents, 0) AS incidents, ifNull(v.scorecards, 0) AS verdict_scorecards,
    ifNull(v.rollback_verdicts, 0) AS rollback_verdicts, ifNull(v.promote_verdicts, 0) AS promote_verdicts,
    ifNull(a.actions, 0) AS actions, ifNull(a.rollbacks_executed, 0) AS rollbacks_executed,
    ifNull(a.promotions_executed, 0) AS promotions_executed,
    i.mean_time_to_detect_s AS mean_time_to_detect_s, i.mean_time_to_mitigate_s AS mean_time_to_mitigate_s
FROM
(
    SELECT DISTINCT tenant_id, release_id FROM
    (
        SELECT tenant_id, release_id FROM {db}.incidents FINAL WHERE release_id != ''
        UNION ALL SELECT tenant_id, release_id FROM {db}.rollout_verdicts FINAL
        UNION ALL SELECT tenant_id, release_id FROM {db}.incident_actions FINAL WHERE release_id != ''
    )
) AS r
LEFT JOIN
(
    SELECT tenant_id, release_id, count() AS incidents,
           round(avg(time_to_detect_s), 1) AS mean_time_to_detect_s,
           round(avg(time_to_mitigate_s), 1) AS mean_time_to_mitigate_s
    FROM {db}.v_incident_lifecycle WHERE release_id != '' GROUP BY tenant_id, release_id
) AS i ON i.tenant_id = r.tenant_id AND i.release_id = r.release_id
LEFT JOIN
(
    SELECT tenant_id, release_id, count() AS scorecards, countIf(verdict = 'rollback') AS rollback_verdicts,
           countIf(verdict = 'promote') AS promote_verdicts
    FROM (SELECT tenant_id, release_id, verdict_id, argMax(verdict, revision) AS verdict
          FROM {db}.rollout_verdicts FINAL GROUP BY tenant_id, release_id, verdict_id)
    GROUP BY tenant_id, release_id
) AS v ON v.tenant_id = r.tenant_id AND v.release_id = r.release_id
LEFT JOIN
(
    SELECT tenant_id, if(release_id != '', release_id, incident_release_id) AS release_id, count() AS actions,
           countIf(action = 'rollback_executed') AS rollbacks_executed,
           countIf(action = 'promotion_executed') AS promotions_executed
    FROM {db}.incident_actions FINAL GROUP BY tenant_id, release_id
) AS a ON a.tenant_id = r.tenant_id AND a.release_id = r.release_id;

-- Actions taken per tenant, actor and action (who did what, first and last time).
CREATE VIEW IF NOT EXISTS {db}.v_actions_by_actor AS
SELECT tenant_id, actor, action, count() AS actions, uniqExact(incident_id) AS incidents,
       min(at) AS first_at, max(at) AS last_at
FROM {db}.incident_actions FINAL
GROUP BY tenant_id, actor, action;

-- Rollbacks executed per tenant and calendar month (of the action), with the releases rolled back.
CREATE VIEW IF NOT EXISTS {db}.v_rollbacks_per_month AS
SELECT tenant_id, toStartOfMonth(at) AS month, count() AS rollbacks,
       arraySort(groupUniqArray(release_id)) AS releases_rolled_back
FROM {db}.incident_actions FINAL
WHERE action = 'rollback_executed'
GROUP BY tenant_id, month;

-- Candidates blocked: releases with a rollback verdict (a canary scorecard whose current verdict
-- is rollback) or a rollback executed on one of their incidents, and no promotion executed.
CREATE VIEW IF NOT EXISTS {db}.v_blocked_candidates AS
SELECT tenant_id, release_id, rollback_verdicts, rollbacks_executed, incidents
FROM {db}.v_release_ledger
WHERE (rollback_verdicts > 0 OR rollbacks_executed > 0) AND promotions_executed = 0;
