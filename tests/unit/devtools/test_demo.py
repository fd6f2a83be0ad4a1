"""The demo's printed summary: tables that fit an 80-column terminal, and follow-up commands that
name the demo's own store."""

from __future__ import annotations

import io

from rich.console import Console

from streams.config import Settings
from streams.devtools.demo import demo_settings, print_next_steps, print_summary

INCIDENT = {"incident_id": "2103d5521579edb34ee0", "kind": "release_regression", "tenant_id": "northwind-health",
            "cohort": "oncology", "workflow": "patient_message_reply", "layer": "release",
            "metric": "correction_rate", "release_id": "rel-2026-11-20-canary", "detected_after_traces": 3860,
            "action": "freeze_rollout", "severity": "medium", "status": "resolved"}
CARD = {"tenant_id": "northwind-health", "cohort": "primary_care", "workflow": "patient_message_reply",
        "release_id": "rel-2026-11-20-canary", "arm": "canary", "stage_pct": 50.0, "verdict": "rollback",
        "first_decision": {"verdict": "rollback", "revision": 3, "stage_pct": 50.0, "samples_candidate": 199},
        "samples_candidate": 12_345, "regressed_metrics": ["correction_rate", "safety_feedback_rate"]}
SUMMARY = {"traces_produced": 50_000, "traces_ingested": 50_000, "deadlettered": 12, "feedback_produced": 9306,
           "feedback_unique_expected": 7562, "feedback_rows_raw": 9306, "feedback_rows_deduped": 7562,
           "first_detection_after_traces": 43, "elapsed_s": 22.0,
           "injected_changes": [{"tenant_id": "northwind-health"}],
           "incidents": [INCIDENT, {**INCIDENT, "workflow": None, "release_id": None, "detected_after_traces": None,
                                    "kind": "workflow_drift", "layer": "tenant_cohort_workflow"}],
           "verdicts": {"events": 46, "scorecards": [CARD, {**CARD, "first_decision": None, "verdict": "hold",
                                                            "regressed_metrics": [], "tenant_id": "acme"}]},
           "lifecycle": [{"incident_id": "2103d5521579edb34ee0", "tenant_id": "northwind-health",
                          "kind": "release_regression", "release_id": "rel-2026-11-18-rc1",
                          "restore_release_id": "rel-2026-11-01", "status": "updated", "resolution": "",
                          "time_to_detect_s": 8.4, "time_to_mitigate_s": 600.0,
                          "changed_components": ["model", "retrieval_index", "prompt"], "rollback_required": True,
                          "actions": [{"action": "acknowledge", "actor": "oncall@northwind-health"},
                                      {"action": "rollback_executed", "actor": "rollout-controller"}]},
                         {"incident_id": "x", "tenant_id": "lakeside-ortho", "kind": "output_drift",
                          "release_id": "", "restore_release_id": "", "status": "resolved",
                          "resolution": "accepted_new_baseline", "time_to_detect_s": 420.1,
                          "time_to_mitigate_s": 1800.0, "changed_components": [], "rollback_required": False,
                          "actions": [{"action": "accept_new_baseline", "actor": "sre@lakeside-ortho"}]}]}


def test_summary_tables_fit_80_columns_and_cut_nothing(tmp_path):
    out = io.StringIO()
    print_summary(SUMMARY, tmp_path / "s.json", Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for value in ("release_regression", "workflow_drift", "northwind-health", "patient_message_reply",
                  "rel-2026-11-20-canary", "correction_rate", "safety_feedback_rate", "freeze_rollout",
                  "after 3860 traces", "resolved · medium", "rollback at 50%", "(199 cand.)", "12345 cand.",
                  "canary @ 50%", "first_detection_after_traces", "rel-2026-11-01", "rollback required",
                  "rollback_executed", "rollout-controller", "accepted_new_baseline", "sre@lakeside-ortho",
                  "mitigate 600 s", "detect 420.1 s"):
        assert value in text, value


def test_the_rollout_system_acknowledges_rolls_back_regressions_and_accepts_the_benign_shift():
    from datetime import UTC, datetime

    from schemas import IncidentKind, IncidentStatus
    from streams.devtools.demo import rollout_actions
    from streams.devtools.simulate import DEMO_BENIGN_SHIFT

    class Inc:  # the fields rollout_actions reads
        def __init__(self, iid, tenant, cohort, kind, release, group="latency", status="updated"):
            self.incident_id, self.kind, self.release_id, self.metric_group = iid, kind, release, group
            self.slice = type("S", (), {"tenant_id": tenant, "cohort": cohort})()
            self.status, self.metric, self.restore_release_id = IncidentStatus(status), "latency_mean", "rel-0"
            self.detected_at = self.last_seen = datetime(2026, 12, 1, tzinfo=UTC)

    incs = [Inc("a", "northwind-health", "cardiology", IncidentKind.release_regression, "rel-2"),
            Inc("b", DEMO_BENIGN_SHIFT.tenant_id, DEMO_BENIGN_SHIFT.cohort, IncidentKind.output_drift, None),
            Inc("c", "summit-medical", "oncology", IncidentKind.output_drift, None),
            Inc("d", "summit-medical", "oncology", IncidentKind.output_drift, None, status="resolved")]
    acts = rollout_actions(incs, DEMO_BENIGN_SHIFT, now_ms=2_000_000_000_000)
    assert [(a["incident_id"], a["action"]) for a in acts] == [
        ("a", "acknowledge"), ("a", "rollback_executed"), ("b", "acknowledge"), ("b", "accept_new_baseline"),
        ("c", "acknowledge")]
    rb = acts[1]
    assert (rb["release_id"], rb["restored_release_id"]) == ("rel-2", "rel-0")
    assert rb["action_id"] == "rollback_executed-a"
    assert all(a["at"] <= 2_000_000_000_000 for a in acts)


def test_next_steps_name_the_demo_store_on_one_line_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = demo_settings(Settings(state_dir=tmp_path / ".local", clickhouse_url=None))
    assert settings.clickhouse_dir == tmp_path / ".local" / "demo" / "clickhouse"
    out = io.StringIO()
    print_next_steps(settings, SUMMARY, Console(file=out, width=40, color_system=None))
    lines = out.getvalue().splitlines()
    # a command broken across lines would lose its variable when copied into a shell
    assert "  SELFHEAL_CLICKHOUSE_PATH=.local/demo/clickhouse selfheal incidents northwind-health" in lines
    assert ("  SELFHEAL_CLICKHOUSE_PATH=.local/demo/clickhouse selfheal scorecard --release rel-2026-11-20-canary "
            "--tenant acme") in lines


def test_demo_settings_keep_a_prefix_the_user_set(tmp_path):
    assert demo_settings(Settings(state_dir=tmp_path)).topic_prefix == "demo."
    assert demo_settings(Settings(state_dir=tmp_path, topic_prefix="mine.")).topic_prefix == "mine."
