"""Replay's pure parts: candidate settings from an env file and --set, and incident matching."""

from __future__ import annotations

import pytest

from streams.config import Settings
from streams.errors import ConfigError
from streams.replay import IncidentView, candidate_settings, changed_settings, compare


def view(iid: str, **kw) -> IncidentView:
    base = dict(incident_id=iid, tenant_id="acme", metric_group="latency", kind="output_drift", layer="tenant_cohort",
                cohort="cardiology", workflow="", slice_release_id="", release_id="", metric="latency_mean",
                severity="medium", status="open", detected_at_trace_id="t10", first_seen_ms=1_000)
    return IncidentView(**(base | kw))


def test_candidate_settings_take_the_env_file_then_set_over_the_current(tmp_path):
    env = tmp_path / "candidate.env"
    env.write_text("SELFHEAL_CUSUM_THRESHOLD=12\nSELFHEAL_WARMUP_TRACES=200\nSELFHEAL_LAYERS=tenant,release\n")
    base = Settings(state_dir=tmp_path)
    cand = candidate_settings(base, str(env), ["warmup_traces=150", "SELFHEAL_RATE_SHIFT = 1.3"])
    assert (cand.cusum_threshold, cand.warmup_traces, cand.rate_shift) == (12.0, 150, 1.3)
    assert cand.layers == ("tenant", "release")
    assert cand.state_dir == base.state_dir
    assert changed_settings(base, cand) == {
        "cusum_threshold": [18.0, 12.0], "layers": [list(base.layers), ["tenant", "release"]],
        "rate_shift": [1.5, 1.3], "warmup_traces": [300, 150]}
    assert candidate_settings(base, None, []) is base


@pytest.mark.parametrize(("assignment", "needle"), [
    ("CUSUM_THRESHOLD", "expected NAME=VALUE"),
    ("NO_SUCH_SETTING=1", "unknown setting 'NO_SUCH_SETTING'"),
    ("CUSUM_THRESHOLD=-3", "SELFHEAL_CUSUM_THRESHOLD='-3'"),
    ("LAYERS=tenant,galaxy", "SELFHEAL_LAYERS"),
])
def test_bad_candidate_settings_name_the_setting(tmp_path, assignment, needle):
    with pytest.raises(ConfigError, match=None) as exc:
        candidate_settings(Settings(state_dir=tmp_path), None, [assignment])
    assert needle in str(exc.value)


def test_plumbing_settings_are_not_listed_as_changed(tmp_path):
    a = Settings(state_dir=tmp_path)
    b = a.model_copy(update={"kafka_bootstrap": "elsewhere:9092", "clickhouse_path": tmp_path / "x"})
    assert changed_settings(a, b) == {}


def test_compare_same_moved_appeared_disappeared():
    ordinal = {f"t{i}": i for i in range(100)}
    ref = [view("a"), view("b", metric_group="quality", kind="workflow_drift"), view("c", tenant_id="other")]
    new = [view("a", detected_at_trace_id="t4"),  # same id, detected 6 traces earlier
           view("b", metric_group="quality", kind="workflow_drift"),  # unchanged
           view("d", metric_group="input", kind="input_drift")]  # new
    d = compare(ref, new, ordinal)
    assert [x.incident_id for x in d.same] == ["b"]
    assert [(m["before"].incident_id, m["changed"], m["delay_traces"]) for m in d.moved] == [
        ("a", ["detected_at_trace_id"], -6)]
    assert [x.incident_id for x in d.appeared] == ["d"]
    assert [x.incident_id for x in d.disappeared] == ["c"]
    assert not d.identical
    assert compare(ref, list(reversed(ref)), ordinal).identical


def test_compare_pairs_an_incident_that_opened_on_another_overlapping_slice():
    # the same change opened on the release slice instead of the cohort slice: a new id, one move
    ref = [view("a", detected_at_trace_id="t50", first_seen_ms=5_000)]
    new = [view("x", layer="release", workflow="soap_note", slice_release_id="r2", kind="release_regression",
                release_id="r2", detected_at_trace_id="t40", first_seen_ms=4_000),
           view("y", cohort="oncology")]  # another cohort: no overlap, appears
    d = compare(ref, new, {"t40": 40, "t50": 50})
    assert [(m["before"].incident_id, m["after"].incident_id, m["delay_traces"]) for m in d.moved] == [("a", "x", -10)]
    assert "kind" in d.moved[0]["changed"] and "layer" in d.moved[0]["changed"]
    assert [x.incident_id for x in d.appeared] == ["y"] and not d.disappeared
