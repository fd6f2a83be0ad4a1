"""The worker's Prometheus metrics (streams.telemetry): every stats counter is exported, names
follow the Prometheus conventions, and the exposition parsed by prometheus_client's own parser
carries the counts, labels and gauges fed in."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from schemas import DeadLetter, Incident, IncidentKind, IncidentStatus, RolloutVerdict, Severity, Verdict, default_codec
from streams.config import Settings
from streams.pipeline import Pipeline
from streams.telemetry import COUNTED_ELSEWHERE, STATS_COUNTERS, WorkerTelemetry

#: the counters the worker adds to the pipeline's (streams.worker.app.Worker.counters)
WORKER_KEYS = ("traces_written", "received", "sink_failed_attempts")


def samples(t: WorkerTelemetry) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(t.render().decode()) for s in fam.samples}


def test_every_stats_counter_is_exported_or_counted_by_a_labelled_metric():
    keys = set(Pipeline(Settings(), default_codec()).counters()) | set(WORKER_KEYS)
    missing = keys - set(STATS_COUNTERS) - set(COUNTED_ELSEWHERE)
    assert not missing, f"stats counters without a metric: add them to STATS_COUNTERS: {sorted(missing)}"


def test_names_follow_prometheus_conventions():
    names = [name for name, *_ in STATS_COUNTERS.values()]
    labelled = {name for name, *rest in STATS_COUNTERS.values() if rest[1:]}
    assert len([n for n in names if n not in labelled]) == len(set(names) - labelled), "a name used twice"
    assert all(re.fullmatch(r"selfheal_[a-z0-9_]+_total", n) for n in names), names
    t = WorkerTelemetry(counters=lambda: dict.fromkeys(STATS_COUNTERS, 0))
    for fam in text_string_to_metric_families(t.render().decode()):
        assert fam.name.startswith("selfheal_"), fam.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name
        if fam.type == "gauge" and not fam.name.endswith("_created"):
            assert fam.name in {"selfheal_consumer_lag_messages", "selfheal_open_incidents"}, fam.name


def test_counters_sharing_a_name_form_one_labelled_family():
    t = WorkerTelemetry(counters=lambda: {"feedback_new": 5, "feedback_replay": 2})
    got = samples(t)
    assert got[("selfheal_feedback_submissions_total", (("status", "new"),))] == 5
    assert got[("selfheal_feedback_submissions_total", (("status", "replay"),))] == 2
    assert ("selfheal_feedback_submissions_total", (("status", "resubmit"),)) not in got  # not in the stats


def test_a_counter_added_to_the_stats_is_exported_by_one_mapping_line(monkeypatch):
    monkeypatch.setitem(STATS_COUNTERS, "quarantined", ("selfheal_quarantined_records_total", "Quarantined."))
    t = WorkerTelemetry(counters=lambda: {"traces": 5, "quarantined": 7})
    got = samples(t)
    assert got[("selfheal_quarantined_records_total", ())] == 7
    assert got[("selfheal_traces_total", ())] == 5


def test_counts_labels_and_gauges_reach_the_exposition():
    lag = {("agent.traces.v1", 0): 12, ("agent.traces.v1", 3): 0}
    t = WorkerTelemetry(counters=lambda: {"traces": 40, "feedback": 3, "sink_failed_attempts": 2}, lag=lambda: lag,
                        open_incidents=lambda: [("safety", "critical"), ("safety", "critical"), ("input_drift", "low")],
                        rebalances=lambda: 4)
    dls = [DeadLetter.model_construct(error_class=c) for c in ("validation", "validation", "empty")]
    inc = Incident.model_construct(kind=IncidentKind.safety, severity=Severity.high, status=IncidentStatus.open)
    ver = [RolloutVerdict.model_construct(verdict=v) for v in (Verdict.rollback, Verdict.hold, Verdict.hold)]
    t.on_batch("traces", 6, dls, [inc], ver)
    t.on_batch("feedback", 2, [], [], [])
    t.observe_sink_write("write_traces", 0.02)
    t.observe_sink_write("write_traces", 40.0)
    with t.changelog_ack_wait("traces"):
        pass
    got = samples(t)
    assert got[("selfheal_traces_total", ())] == 40
    assert got[("selfheal_sink_write_retries_total", ())] == 2
    assert got[("selfheal_messages_processed_total", (("source", "traces"),))] == 6
    assert got[("selfheal_messages_processed_total", (("source", "feedback"),))] == 2
    assert got[("selfheal_dead_letters_total", (("reason", "validation"), ("source", "traces")))] == 2
    assert got[("selfheal_dead_letters_total", (("reason", "empty"), ("source", "traces")))] == 1
    assert got[("selfheal_incident_events_total", (("kind", "safety"), ("severity", "high"), ("status", "open")))] == 1
    assert got[("selfheal_verdicts_total", (("verdict", "hold"),))] == 2
    assert got[("selfheal_verdicts_total", (("verdict", "promote"),))] == 0  # present before the first event
    assert got[("selfheal_consumer_lag_messages", (("partition", "0"), ("topic", "agent.traces.v1")))] == 12
    assert got[("selfheal_open_incidents", (("kind", "safety"), ("severity", "critical")))] == 2
    assert got[("selfheal_open_incidents", (("kind", "output_drift"), ("severity", "high")))] == 0
    assert got[("selfheal_rebalances_total", ())] == 4
    write = (("operation", "write_traces"),)
    assert got[("selfheal_sink_write_duration_seconds_count", write)] == 2
    assert got[("selfheal_sink_write_duration_seconds_bucket", (("le", "0.025"), *write))] == 1
    assert got[("selfheal_sink_write_duration_seconds_bucket", (("le", "60.0"), *write))] == 2
    assert got[("selfheal_changelog_ack_wait_seconds_count", (("source", "traces"),))] == 1


def test_each_worker_has_its_own_registry():
    a, b = WorkerTelemetry(counters=dict), WorkerTelemetry(counters=dict)
    a.on_batch("traces", 5, [], [], [])
    assert samples(b)[("selfheal_messages_processed_total", (("source", "traces"),))] == 0
    assert REGISTRY.get_sample_value("selfheal_messages_processed_total", {"source": "traces"}) is None


@pytest.mark.parametrize("key", sorted(COUNTED_ELSEWHERE))
def test_counted_elsewhere_names_a_metric_of_the_catalogue(key):
    t = WorkerTelemetry(counters=dict)
    assert any(fam.name + "_total" == COUNTED_ELSEWHERE[key] or fam.name == COUNTED_ELSEWHERE[key]
               for fam in text_string_to_metric_families(t.render().decode()))
