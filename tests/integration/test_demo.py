"""The main job end to end: `selfheal demo` on the real broker and chDB."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import settings_env

pytestmark = pytest.mark.integration


def test_demo_detects_the_injected_regression_and_dedups_feedback(settings, tmp_path):
    out = tmp_path / "summary.json"
    env = settings_env(settings)
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--traces", "20000", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["traces_ingested"] == s["traces_produced"] == 20000
    assert s["deadlettered"] == s["bad_input_sent"]["messages"] + s["bad_input_sent"]["records"] > 0
    assert s["feedback_rows_raw"] == s["feedback_produced"]
    assert s["feedback_rows_deduped"] == s["feedback_unique_expected"] < s["feedback_produced"]
    assert s["injected_detected"] and 0 <= s["first_detection_after_traces"] < 500
    change = s["injected_changes"][0]
    on_slice = [i for i in s["incidents"] if i["tenant_id"] == change["tenant_id"]]
    assert any(i["kind"] == "release_regression" and i["release_id"] == change["release_id"] for i in on_slice)
    # corrections come with clinician-like delays in event time (log-normal, median 20 min, p99 3 h;
    # the sent ones are cut at the run's end), and the delayed-label detector still names the
    # injected release on correction_rate
    delay = s["feedback_delay"]
    assert 900 < delay["median_s"] < 1800 and delay["p99_s"] > 3600 and delay["not_yet_due"] > 0, delay
    assert any(i["metric"] == "correction_rate" and i["release_id"] == change["release_id"] for i in on_slice), \
        on_slice
    # ... and the worker counted them: every feedback's trace was sent before it, so none is unmatched
    counters = s["detector_counters"]
    assert counters["feedback_events"] >= delay["sent"] and counters["unmatched_feedback"] == 0, counters
    assert counters["late_feedback"] is not None, counters
    # a bucket folds only once the learned delay distribution supports its age: about 0.1 % of
    # the feedback may come after its bucket folded (47 % / 17 % before, when the maturity step
    # folded buckets 5 minutes after their traces)
    assert s["late_feedback_share"] < 0.01, counters
    corr = [i for i in on_slice if i["metric"] == "correction_rate" and i["release_id"] == change["release_id"]]
    assert any(i["detected_after_traces"] is not None and i["detected_after_traces"] >= 0 for i in corr), corr
    shift = s["benign_shift"]
    elsewhere = [i for i in s["incidents"] if i["tenant_id"] != change["tenant_id"]]
    assert all((i["tenant_id"], i["kind"], i["release_id"]) == (shift["tenant_id"], "output_drift", None)
               for i in elsewhere), ("no incident elsewhere but the benign shift", shift, elsewhere)
    # the lifecycle: the rollout system rolled the injected release back to the incumbent and
    # accepted the benign shift, and the ledger shows who did what
    life = {(c["tenant_id"], c["release_id"]): c for c in s["lifecycle"]}
    # the release can have two incidents (latency, corrections); one detected or resolved after
    # the rollout system acted has no actions: the acted-on one is checked
    on_release = [c for c in s["lifecycle"] if (c["tenant_id"], c["release_id"]) == (change["tenant_id"],
                                                                                     change["release_id"])]
    rolled = next((c for c in on_release if c["actions"]), None)
    assert rolled is not None, on_release
    assert [a["action"] for a in rolled["actions"]] == ["acknowledge", "rollback_executed"]
    assert rolled["restore_release_id"] and rolled["rollback_required"] and rolled["time_to_mitigate_s"] > 0
    assert rolled["time_to_detect_s"] >= 0 and "model" in rolled["changed_components"]
    accepted = life[(shift["tenant_id"], "")]
    assert accepted["status"] == "resolved" and accepted["resolution"] == "accepted_new_baseline"
    assert accepted["actions"][-1]["action"] == "accept_new_baseline"
    # the staged rollout gets verdicts for each of its cohorts (decisions: tests/integration/test_canary.py)
    v = s["verdicts"]
    assert v["events"] > 0 and v["rollouts"]
    scored = {(c["tenant_id"], c["cohort"]) for c in v["scorecards"] if c["workflow"] is None}
    assert scored == {(r["tenant_id"], r["cohort"]) for r in v["rollouts"]}
    assert s["clickhouse"]["baseline_snapshots"] > 0
