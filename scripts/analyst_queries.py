"""Run the analyst queries of docs/queries.md against a store and print them with their output
as Markdown.

Usage (after `selfheal demo` has finished; it owns its chDB directory while it runs):

    SELFHEAL_CLICKHOUSE_PATH=.local/fbdemo/demo/clickhouse .venv/bin/python scripts/analyst_queries.py
    SELFHEAL_CLICKHOUSE_PATH=.local/fbdemo/demo/clickhouse .venv/bin/python scripts/analyst_queries.py --ledger

Every query is parameterised; the tenant is bound as ``{tenant:String}``.
"""

from __future__ import annotations

import argparse
from datetime import date, datetime

from streams.config import Settings
from streams.sinks.clickhouse import ClickHouseSink

QUERIES: list[tuple[str, str, str]] = [
    ("Submissions by dedup status",
     "Every submission as it arrived (keyed by Kafka position), by what dedup made of it.",
     "SELECT dedup_status, count() AS submissions FROM {db}.feedback_submissions FINAL "
     "GROUP BY dedup_status ORDER BY submissions DESC"),
    ("Correction rate by tenant, cohort, release and day",
     "Corrected traces / traces, by the day of the corrected trace (view `v_correction_rate`).",
     "SELECT day, cohort, release_id, traces, corrected_traces, corrections, correction_rate "
     "FROM {db}.v_correction_rate WHERE tenant_id = {tenant:String} ORDER BY day, cohort, release_id"),
    ("Top failure categories per release (one tenant)",
     "Rank 1-3 per release; corrections that lost a conflict are left out (view `v_top_failure_categories`).",
     "SELECT release_id, rank, category, corrections, share, mean_confidence FROM {db}.v_top_failure_categories "
     "WHERE tenant_id = {tenant:String} AND rank <= 3 ORDER BY release_id, rank"),
    ("Top failure categories per release (fleet, platform analyst)",
     "The same view summed over tenants (needs access to every tenant's rows).",
     "SELECT release_id, category, sum(corrections) AS fleet_corrections, "
     "round(fleet_corrections / sum(fleet_corrections) OVER (PARTITION BY release_id), 4) AS share "
     "FROM {db}.v_top_failure_categories GROUP BY release_id, category "
     "ORDER BY release_id, fleet_corrections DESC, category LIMIT 3 BY release_id"),
    ("Conflicts and how they were resolved",
     "Both sides of each conflict (view `v_feedback_conflicts`), with the rule that decided it.",
     "SELECT conflict_id, trace_id, category, reviewer_role, agreement_count AS agree, "
     "round(confidence, 3) AS confidence, resolution, resolution_rule, resolution_note "
     "FROM {db}.v_feedback_conflicts WHERE tenant_id = {tenant:String} "
     "ORDER BY conflict_id, resolution DESC LIMIT 8"),
    ("Conflict outcomes by deciding rule",
     "", "SELECT resolution_rule, countIf(resolution = 'won') AS won, countIf(resolution = 'lost') AS lost "
     "FROM {db}.v_feedback_conflicts GROUP BY resolution_rule ORDER BY resolution_rule"),
    ("Confidence by source and reviewer role",
     "confidence = source weight x role weight x noisy-OR agreement x severity weight.",
     "SELECT source, reviewer_role, count() AS corrections, round(avg(agreement_count), 3) AS mean_agreement, "
     "round(avg(confidence), 3) AS mean_confidence FROM {db}.feedback FINAL "
     "GROUP BY source, reviewer_role ORDER BY corrections DESC"),
    ("Scope ladder: patterns per scope",
     "Tenant rows are 'session' until a pattern recurs in 3 sessions of the tenant; segment rows need "
     "k = 3 tenants of a cohort; global candidates k tenants over >= 2 cohorts (table `feedback_patterns`).",
     "SELECT scope, count() AS patterns, sum(corrections) AS corrections FROM {db}.feedback_patterns FINAL "
     "GROUP BY scope ORDER BY scope"),
    ("Cross-tenant patterns (no tenant ids, no correction text)",
     "", "SELECT scope, cohort, category, workflow, release_id, tenants, cohorts, corrections, template "
     "FROM {db}.feedback_patterns FINAL WHERE scope IN ('segment', 'global_candidate') "
     "ORDER BY tenants DESC, corrections DESC, pattern_id LIMIT 8"),
    ("A tenant's corrections by scope",
     "The current rung of each correction's pattern (view `v_feedback_scope`).",
     "SELECT scope, count() AS corrections FROM {db}.v_feedback_scope WHERE tenant_id = {tenant:String} "
     "GROUP BY scope ORDER BY corrections DESC"),
    ("Golden set: corrections with their release manifest",
     "What `selfheal export-evalset` exports (view `v_golden_set`, usable = did not lose a conflict).",
     "SELECT trace_id, category, model, prompt_version, round(confidence, 3) AS confidence, scope, "
     "original_output_hash = trace_output_sha256 AS hash_ok, substring(corrected_text, 1, 70) AS corrected_text "
     "FROM {db}.v_golden_set WHERE tenant_id = {tenant:String} AND usable "
     "ORDER BY trace_event_time, trace_id LIMIT 6"),
    ("Redaction check",
     "Corrections that carried PHI (the simulator appends a name, DOB and phone to 10%): placeholders only.",
     "SELECT countIf(corrected_text LIKE '%[NAME]%') AS with_name_placeholder, "
     "countIf(corrected_text LIKE '%Jane%' OR corrected_text LIKE '%617-555%' OR corrected_text LIKE '%1961%') "
     "AS raw_phi, countIf(template LIKE '%<phone>%') AS templates_masked FROM {db}.feedback"),
]


#: the release ledger (migration 0031_incident_actions.sql): incidents, verdicts and incident actions
LEDGER: list[tuple[str, str, str]] = [
    ("Release ledger per tenant and release",
     "Incidents implicating the release, its canary scorecards by current verdict, the actions taken on its "
     "incidents, rollbacks and promotions executed, mean time to detect and to mitigate (view `v_release_ledger`).",
     "SELECT tenant_id, release_id, incidents, verdict_scorecards, rollback_verdicts, promote_verdicts, actions, "
     "rollbacks_executed, promotions_executed, mean_time_to_detect_s, mean_time_to_mitigate_s "
     "FROM {db}.v_release_ledger ORDER BY tenant_id, release_id"),
    ("Incident lifecycle: time to detect and to mitigate",
     "Per incident: change start (first_seen) to detection, detection to first mitigation (rollback executed, "
     "new baseline accepted, false positive), in seconds of event time (view `v_incident_lifecycle`).",
     "SELECT tenant_id, kind, release_id, restore_release_id, status, resolution, time_to_detect_s, "
     "time_to_mitigate_s, actions, actors FROM {db}.v_incident_lifecycle ORDER BY detected_at"),
    ("What to restore and what changed",
     "The restore release, the manifest components that differ from it and the drift matrix row "
     "(docs/drift-matrix.md) each incident carries (table `incidents`).",
     "SELECT tenant_id, kind, release_id, restore_release_id, changed_components, rollback_required, "
     "likely_cause FROM {db}.incidents FINAL ORDER BY detected_at"),
    ("Actions taken and by whom",
     "Per tenant, actor and action (view `v_actions_by_actor`; refused actions are dead letters, not here).",
     "SELECT tenant_id, actor, action, actions, incidents, first_at FROM {db}.v_actions_by_actor "
     "ORDER BY tenant_id, first_at, action"),
    ("Rollbacks per month",
     "Rollbacks executed per tenant and calendar month, with the releases rolled back (view `v_rollbacks_per_month`).",
     "SELECT tenant_id, month, rollbacks, releases_rolled_back FROM {db}.v_rollbacks_per_month "
     "ORDER BY tenant_id, month"),
    ("Candidates blocked",
     "Releases with a rollback verdict or a rollback executed and no promotion executed (view "
     "`v_blocked_candidates`).",
     "SELECT tenant_id, release_id, rollback_verdicts, rollbacks_executed, incidents FROM {db}.v_blocked_candidates "
     "ORDER BY tenant_id, release_id"),
]


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, datetime | date):
        return v.isoformat()
    return str(v).replace("|", "\\|")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenant", default="northwind-health")
    ap.add_argument("--ledger", action="store_true", help="the release-ledger queries instead of the feedback ones")
    args = ap.parse_args()
    sink = ClickHouseSink(Settings())
    try:
        for title, note, sql in LEDGER if args.ledger else QUERIES:
            # no parameters without placeholders: clickhouse-connect would bind client-side (%-format)
            rows = sink.query_dicts(sql, {"tenant": args.tenant} if "{tenant:" in sql else None)
            print(f"### {title}\n")
            if note:
                print(f"{note}\n")
            shown = sql.replace("{db}.", "selfheal.").replace("{tenant:String}", f"'{args.tenant}'")
            print(f"```sql\n{shown}\n```\n")
            if not rows:
                print("(no rows)\n")
                continue
            cols = list(rows[0])
            print("| " + " | ".join(cols) + " |")
            print("|" + "---|" * len(cols))
            for r in rows:
                print("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
            print()
    finally:
        sink.close()


if __name__ == "__main__":
    main()
