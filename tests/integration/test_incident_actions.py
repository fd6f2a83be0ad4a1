"""Incident actions through the real broker and worker (issue 17, items 3-6): every action sent
with the SDK, the incident revisions it causes read back from ``agent.incidents.v1`` (keyed by
tenant_id), the rebaselined slice, dead letters for invalid actions, and the ledger rows in
ClickHouse.

Traffic: two tenants with steady latency for 5,000 traces each; then ``acme``'s cardiology
latency doubles with no new release (an ``output_drift`` incident, accepted as the new baseline)
and ``globex`` ships ``rel-2`` (another model) whose latency doubles (a ``release_regression``
naming ``rel-1`` to restore, rolled back).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import pytest

from schemas import Incident, IncidentKind, IncidentStatus
from streams.sdk import SelfhealProducer
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_topics
from tests.conftest import read_contract_topic, wait_caught_up

pytestmark = pytest.mark.integration

MANIFEST = {"model": "gpt-x-2026-10", "prompt_version": "p-14", "tool_schema_version": "t-3",
            "policy_version": "pol-7", "retrieval_index_version": "idx-22"}


class Traffic:
    """Seeded traces: log-normal latency around ``base_ms`` x factor, event time 100 ms apart."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(17)
        self.n = 0
        self.t0 = int(time.time() * 1000) - 6 * 3_600_000

    def traces(self, tenant: str, cohort: str, count: int, factor: float = 1.0, release: str = "rel-1",
               model: str = "gpt-x-2026-10") -> list[dict[str, Any]]:
        out = []
        for lat in self.rng.lognormal(np.log(2000.0 * factor), 0.3, count):
            self.n += 1
            out.append({
                "trace_id": f"tr-{self.n:08d}", "tenant_id": tenant, "cohort": cohort, "workflow": "soap_note",
                "intent": None, "agent_id": "scribe-1", "session_id": f"s-{self.n}",
                "event_time": self.t0 + self.n * 100,
                "release": dict(MANIFEST, release_id=release, model=model), "rollout": None,
                "latency_ms": float(lat), "input_tokens": 1800, "output_tokens": 420, "cost_usd": 0.01,
                "confidence": None, "outcome": "success", "tool_calls": [], "retrieval_queries": 0,
                "retrieval_hits": 0, "policy_blocked": False, "retries": 0, "fallback_used": False,
                "output_sha256": hashlib.sha256(str(self.n).encode()).hexdigest(), "attributes": {}})
        return out


def interleave(*streams: list[dict]) -> list[dict]:
    out = []
    for group in zip(*streams, strict=True):
        out.extend(group)
    return out


def read_incidents(settings) -> list[tuple[bytes, Incident]]:
    """Every message on the incidents topic: ``(key, incident)``, per partition in offset order."""
    return read_contract_topic(settings, "incidents", Incident)


def wait_for(settings, pred, what: str, worker, timeout_s: float = 120.0) -> list[tuple[bytes, Incident]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = read_incidents(settings)
        if pred([i for _, i in got]):
            return got
        assert worker.alive(), worker.log.read_text()[-3000:]
        time.sleep(1.0)
    raise AssertionError(f"no {what} within {timeout_s} s: {[(i.slice, i.metric, i.status) for _, i in got]}")


def latest(incs: list[Incident], iid: str) -> Incident:
    return max((i for i in incs if i.incident_id == iid), key=lambda i: i.revision)


def test_actions_through_the_worker(settings, worker_factory):
    ensure_topics(settings)
    worker = worker_factory({"SELFHEAL_SNAPSHOT_INTERVAL_S": "1"})
    tr = Traffic()
    with SelfhealProducer(settings) as sdk:
        for t in interleave(tr.traces("acme", "cardiology", 5000), tr.traces("globex", "cardiology", 5000)):
            sdk.send_trace(t)
        sdk.flush()
        # the baselines first: a slice is armed per batch (engine), so a first batch holding both a
        # new tenant's warm-up and its change would detect nothing (measured: 1 run in 4 here)
        wait_caught_up(settings, ["traces"], worker=worker)
        for t in interleave(tr.traces("acme", "cardiology", 1500, factor=2.0),
                            tr.traces("globex", "cardiology", 1500, factor=2.0, release="rel-2", model="gpt-y")):
            sdk.send_trace(t)

    def both_open(incs):
        return any(i.slice.tenant_id == "acme" and i.metric_group == "latency" for i in incs) and any(
            i.slice.tenant_id == "globex" and i.kind == IncidentKind.release_regression for i in incs)

    wait_caught_up(settings, ["traces"], worker=worker)  # the revisions before the actions are final
    got = wait_for(settings, both_open, "latency incidents for acme and globex", worker)
    # item 6: the incidents topic is keyed by tenant_id (avro/incident.avsc)
    assert all(key == (inc.slice.tenant_id or "platform").encode() for key, inc in got)
    incs = [i for _, i in got]
    acme = next(i for i in incs if i.slice.tenant_id == "acme" and i.metric_group == "latency")
    glob = next(i for i in incs if i.slice.tenant_id == "globex" and i.kind == IncidentKind.release_regression)
    assert acme.kind == IncidentKind.output_drift and acme.release_id is None
    assert acme.drift_matrix is not None and not acme.drift_matrix.rollback_required
    # item 4: what to restore and what changed
    g_last = latest(incs, glob.incident_id)
    assert g_last.release_id == "rel-2" and g_last.restore_release_id == "rel-1"
    assert g_last.restore_release is not None and g_last.restore_release.model == "gpt-x-2026-10"
    assert g_last.changed_components == ["model"] and g_last.drift_matrix.rollback_required
    assert "model" in g_last.drift_matrix.likely_cause
    a_rev = latest(incs, acme.incident_id).revision
    g_rev = g_last.revision

    now = int(time.time() * 1000)

    def action(n: str, inc: Incident, kind: str, **over: Any) -> dict[str, Any]:
        rec = {"action_id": n, "incident_id": inc.incident_id, "tenant_id": inc.slice.tenant_id, "action": kind,
               "actor": "rollout-controller", "reason": f"{kind} in the test", "at": now}
        rec.update(over)
        return rec

    with SelfhealProducer(settings) as sdk:
        sdk.send_action(action("a-ack", acme, "acknowledge", actor="dr-oncall"))
        sdk.send_action(action("a-ack", acme, "acknowledge", actor="dr-oncall"))  # resent: applies once
        sdk.send_action(action("a-sup", acme, "suppress", at=now + 1, until=now + 3_600_000))
        sdk.send_action(action("a-acc", acme, "accept_new_baseline", at=now + 2))
        sdk.send_action(action("g-rb", glob, "rollback_executed", at=now + 3))
        sdk.send_action(action("g-pr", glob, "promotion_executed", at=now + 4, release_id="rel-1"))
        sdk.send_action(action("g-fp", glob, "mark_false_positive", at=now + 5))
        # invalid: each a dead letter with its reason
        sdk.send_action(action("x-unk", acme, "reboot"))
        sdk.send_action(action("x-none", acme, "acknowledge", incident_id="0123456789abcdef0123"))
        sdk.send_action(action("x-foreign", acme, "acknowledge", tenant_id="globex"))
        sdk.send_action(action("x-until", acme, "suppress"))
        sdk.flush()
        # the agents are independent: the traces below must come after the actions are applied
        wait_caught_up(settings, ["actions"], worker=worker)
        # acme's cardiology stays at the new level: accepted, so no new latency incident on it
        for t in tr.traces("acme", "cardiology", 3000, factor=2.0):
            sdk.send_trace(t)
    wait_caught_up(settings, ["traces", "actions"], worker=worker)
    time.sleep(2.5)  # one more baseline snapshot interval (1 s) after the last batch
    incs = [i for _, i in read_incidents(settings)]
    assert worker.stop() == 0

    def revisions(iid: str) -> list[Incident]:
        return sorted((i for i in incs if i.incident_id == iid and i.actions), key=lambda i: i.revision)

    a = revisions(acme.incident_id)
    for iid in (acme.incident_id, glob.incident_id):  # revisions: 0 on open, +1 per event, no gaps
        assert sorted(i.revision for i in incs if i.incident_id == iid) == list(
            range(max(i.revision for i in incs if i.incident_id == iid) + 1))
    assert [x.revision for x in a] == [a_rev + 1, a_rev + 2, a_rev + 3]
    assert [[t.action for t in x.actions] for x in a] == [
        ["acknowledge"], ["acknowledge", "suppress"], ["acknowledge", "suppress", "accept_new_baseline"]]
    assert a[0].acknowledged_by == "dr-oncall" and a[1].suppressed_until is not None
    assert a[2].status == IncidentStatus.resolved and a[2].resolution == "accepted_new_baseline"
    assert a[2].mitigated_at is not None
    g = revisions(glob.incident_id)
    assert [x.revision for x in g] == [g_rev + 1, g_rev + 2, g_rev + 3]
    rb = g[0].actions[-1]
    assert rb.action == "rollback_executed" and (rb.release_id, rb.restored_release_id) == ("rel-2", "rel-1")
    assert g[1].actions[-1].release_id == "rel-1"
    assert g[2].status == IncidentStatus.resolved and g[2].resolution == "false_positive"
    # the accepted slice raised no new latency incident at its new level
    later = [i for i in incs if i.slice.tenant_id == "acme" and i.metric_group == "latency"
             and i.incident_id != acme.incident_id]
    assert later == [], [(i.slice, i.metric, i.summary) for i in later]

    with ClickHouseSink(settings) as sink:
        rows = sink.query("SELECT action_id, action, actor, release_id, restored_release_id, revision, status "
                          "FROM {db}.incident_actions FINAL ORDER BY at")
        assert [r[0] for r in rows] == ["a-ack", "a-sup", "a-acc", "g-rb", "g-pr", "g-fp"]
        assert rows[3][3:5] == ("rel-2", "rel-1") and rows[2][6] == "resolved"
        dls = dict(sink.query("SELECT value, error_class FROM {db}.dead_letters FINAL "
                              "WHERE source_topic = {t:String}", {"t": settings.topic("actions")}))
        assert dls == {"reboot": "unknown_action", "0123456789abcdef0123": "unknown_incident",
                       acme.incident_id: dls.get(acme.incident_id), "null": "validation"}
        assert dls[acme.incident_id] in ("foreign_incident", "unknown_incident")
        inc_row = sink.query("SELECT resolution, restore_release_id, changed_components, rollback_required "
                             "FROM {db}.incidents FINAL WHERE incident_id = {i:String}", {"i": glob.incident_id})
        assert inc_row == [("false_positive", "rel-1", ["model"], True)]
        ledger = sink.query_dicts("SELECT * FROM {db}.v_release_ledger WHERE tenant_id = 'globex'")
        rel2 = next(r for r in ledger if r["release_id"] == "rel-2")
        assert rel2["incidents"] >= 1 and rel2["rollbacks_executed"] == 1
        # the rebaselined slice: its latency baseline is now the doubled level (about 2x the other tenant's)
        snap = dict(sink.query(
            "SELECT tenant_id, argMax(value, snapshot_at) FROM {db}.baseline_snapshots FINAL "
            "WHERE layer = 'tenant_cohort' AND cohort = 'cardiology' AND metric = 'latency_mean' GROUP BY tenant_id"))
        assert snap["acme"] > 1.6 * 2000.0, snap
