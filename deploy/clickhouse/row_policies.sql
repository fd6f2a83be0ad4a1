-- Tenant isolation on a real ClickHouse server (the embedded chDB has no users).
-- One role per tenant; a row policy on every tenant-bearing table restricts that role to its
-- tenant's rows. Analysts of a tenant get the tenant's role; the selfheal service user (writer)
-- keeps full access. Template: replace TENANT (a slug, [a-z0-9_-]) and run per tenant, e.g.
--   sed 's/TENANT/acme/g' row_policies.sql | clickhouse-client --multiquery
-- Run it after `selfheal migrate` has created the tables.
CREATE ROLE IF NOT EXISTS tenant_TENANT;
GRANT SELECT ON selfheal.* TO tenant_TENANT;
CREATE ROW POLICY IF NOT EXISTS tenant_TENANT_traces ON selfheal.traces FOR SELECT USING tenant_id = 'TENANT' TO tenant_TENANT;
CREATE ROW POLICY IF NOT EXISTS tenant_TENANT_feedback ON selfheal.feedback FOR SELECT USING tenant_id = 'TENANT' TO tenant_TENANT;
CREATE ROW POLICY IF NOT EXISTS tenant_TENANT_feedback_submissions ON selfheal.feedback_submissions FOR SELECT USING tenant_id = 'TENANT' TO tenant_TENANT;
CREATE ROW POLICY IF NOT EXISTS tenant_TENANT_incidents ON selfheal.incidents FOR SELECT USING tenant_id = 'TENANT' TO tenant_TENANT;
CREATE ROW POLICY IF NOT EXISTS tenant_TENANT_dead_letters ON selfheal.dead_letters FOR SELECT USING tenant_id = 'TENANT' TO tenant_TENANT;
-- feedback patterns: the tenant's own rows and the cross-tenant ones (tenant_id '': counts and masked
-- templates only, see migration 0010)
CREATE ROW POLICY IF NOT EXISTS tenant_TENANT_feedback_patterns ON selfheal.feedback_patterns FOR SELECT USING tenant_id IN ('TENANT', '') TO tenant_TENANT;
-- canary scorecards and rollout verdicts (migration 0020)
CREATE ROW POLICY IF NOT EXISTS tenant_TENANT_rollout_verdicts ON selfheal.rollout_verdicts FOR SELECT USING tenant_id = 'TENANT' TO tenant_TENANT;
CREATE ROW POLICY IF NOT EXISTS tenant_TENANT_rollout_scorecards ON selfheal.rollout_scorecards FOR SELECT USING tenant_id = 'TENANT' TO tenant_TENANT;
