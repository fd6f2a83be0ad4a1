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
                                                            "regressed_metrics": [], "tenant_id": "acme"}]}}


def test_summary_tables_fit_80_columns_and_cut_nothing(tmp_path):
    out = io.StringIO()
    print_summary(SUMMARY, tmp_path / "s.json", Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for value in ("release_regression", "workflow_drift", "northwind-health", "patient_message_reply",
                  "rel-2026-11-20-canary", "correction_rate", "safety_feedback_rate", "freeze_rollout",
                  "after 3860 traces", "resolved · medium", "rollback at 50%", "(199 cand.)", "12345 cand.",
                  "canary @ 50%", "first_detection_after_traces"):
        assert value in text, value


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
