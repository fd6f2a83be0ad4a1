"""The independent producer of ``selfheal bench-drift-worker`` (streams.devtools.bench_worker):
its fastavro encoding is what the worker's codec reads, its traffic is reproducible, and feedback
follows its trace in the send order."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas import default_codec
from streams.devtools.bench_worker import (
    CHANGED_TENANT,
    Sent,
    WireEncoder,
    WorkerBenchConfig,
    opened,
    repo_avro_dir,
    score,
    traffic,
)

CFG = WorkerBenchConfig(scenario="tenant_change", traces=4000, seed=3, t0_ms=1_790_000_000_000, change_at=0.5)


def test_wire_encoder_headers_are_the_codecs_fingerprints():
    enc, codec = WireEncoder(repo_avro_dir()), default_codec()
    for name in enc.header:
        assert enc.header[name] == codec.header(name), name


def test_traffic_is_decoded_by_the_worker_codec_and_feedback_follows_its_trace():
    codec = default_codec()
    sent = Sent()
    trace_time: dict[str, int] = {}
    feedback_ids: Counter[str] = Counter()
    intents: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    for what, msgs in traffic(CFG, sent, chunk=1000):
        for key, payload in msgs:
            name, rec = codec.decode(payload)
            if what == "traces":
                assert name == "selfheal.v1.AgentTraceBatch"
                for t in rec["traces"]:
                    assert t["tenant_id"] == key
                    trace_time[t["trace_id"]] = t["event_time"]
                    if t["tenant_id"] == CHANGED_TENANT:
                        change_ms = CFG.t0_ms + int(CFG.traces * CFG.change_at * CFG.step_ms)
                        intents[t["event_time"] >= change_ms][t["intent"]] += 1
            else:
                assert name == "selfheal.v1.FeedbackBatch"
                for f in rec["items"]:
                    assert f["tenant_id"] == key
                    assert f["trace_id"] in trace_time, "feedback sent before its trace"
                    assert f["event_time"] > trace_time[f["trace_id"]]
                    feedback_ids[f["feedback_id"]] += 1
    assert len(trace_time) == sent.traces == CFG.traces
    assert sum(feedback_ids.values()) == sent.feedback == sent.corrections + sent.unsafe + sent.replays + sent.resubmits
    assert sum(n - 1 for n in feedback_ids.values()) == sent.replays > 0
    assert sent.change_ms == CFG.t0_ms + int(CFG.traces * CFG.change_at * CFG.step_ms)
    # the changed tenant's intent mix moved (inpatient: 5% before, 30% after)
    share = {k: v["inpatient"] / sum(v.values()) for k, v in intents.items()}
    assert share[False] < 0.12 < 0.2 < share[True]


def test_traffic_is_the_same_bytes_for_the_same_config():
    def payloads() -> list[bytes]:
        return [p for _, msgs in traffic(CFG, Sent(), chunk=1000) for _, p in msgs]

    assert payloads() == payloads()


def test_config_refuses_an_unknown_scenario():
    with pytest.raises(ValueError, match="scenario 'nope'"):
        WorkerBenchConfig(scenario="nope")


def _event(iid: str, status: str, revision: int, tenant: str, t_ms: int, kind: str = "input_drift") -> dict:
    return {"incident_id": iid, "status": status, "revision": revision, "kind": kind, "metric": "input_mix",
            "detector": "chi2_window", "summary": "s", "first_seen": t_ms, "detected_at": t_ms,
            "detected_at_trace_id": "w1-1", "also_seen": [], "resolution": None, "evidence_trace_ids": [],
            "slice": {"layer": "tenant", "tenant_id": tenant, "cohort": None, "workflow": None, "release_id": None}}


def test_score_counts_episodes_once_and_separates_false_incidents():
    sent = Sent(traces=1_000_000, change_ms=5_000)
    events = [_event("a", "open", 0, CHANGED_TENANT, 6_000), _event("a", "updated", 1, CHANGED_TENANT, 7_000,
                                                                     kind="output_drift"),
              _event("b", "open", 0, CHANGED_TENANT, 4_000), _event("c", "open", 0, "tenant-001", 6_000)]
    rows = opened(events)
    assert [r["incident_id"] for r in rows] == ["a", "b", "c"] and rows[0]["kind"] == "output_drift"
    sc = score(CFG, sent, rows)
    assert sc["change_incidents"] == 1 and sc["one_episode"]
    assert sc["false_incidents"] == 2 and sc["false_incidents_per_million"] == 2.0
