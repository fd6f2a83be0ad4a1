"""Incident actions applied by the incident manager: each effect in the next revision, refusals
with their reason, redelivery applied once, the accepted slice adopting the new level, and an
open incident that still reports a further worsening."""

from __future__ import annotations

from schemas import IncidentStatus, default_codec
from streams.devtools.synthetic import Effect, Slice
from streams.processors.matrix import MATRIX, changed_components, matrix_row
from tests.unit.processors.test_incidents import T0, Run, base


def act(inc, action, n, **over):
    rec = {"action_id": f"a-{n}", "incident_id": inc.incident_id, "tenant_id": inc.slice.tenant_id, "action": action,
           "actor": "oncall@acme", "reason": "r", "at": T0 + 10_000_000 + n, "until": None, "release_id": None,
           "restored_release_id": None}
    rec.update(over)
    return rec


def drifted(latency):
    return [Slice("acme", "cardiology", 0.5, effect=Effect(latency=latency)), Slice("acme", "oncology", 0.2),
            Slice("globex", "cardiology", 0.3, partition=1)]


def opened_latency(r):
    incs = [e for e in r.events if e.status == IncidentStatus.open and e.metric_group == "latency"]
    assert incs, [(e.metric, e.status) for e in r.events]
    return incs[0]


def test_each_action_shows_in_the_next_revision_and_redelivery_applies_once():
    r = Run()
    r.feed(base(), 30_000)
    r.feed(drifted(1.6), 10_000)
    inc = opened_latency(r)
    last = max(e.revision for e in r.events if e.incident_id == inc.incident_id)
    out = r.mgr.on_action(act(inc, "acknowledge", 1), 0)
    assert out.event.revision == last + 1 and out.event.acknowledged_by == "oncall@acme"
    assert out.event.status == IncidentStatus.updated and [a.action for a in out.event.actions] == ["acknowledge"]
    assert r.mgr.on_action(act(inc, "acknowledge", 1), 0).replay  # same action_id: once
    out = r.mgr.on_action(act(inc, "suppress", 2, until=T0 + 99_000_000_000), 0)
    assert out.event.suppressed_until is not None and out.event.revision == last + 2
    # refusals: unknown action, unknown incident, another tenant's incident, missing fields
    assert r.mgr.on_action(act(inc, "reboot", 3), 0).error_class == "unknown_action"
    assert r.mgr.on_action(act(inc, "acknowledge", 4, incident_id="nope"), 0).error_class == "unknown_incident"
    assert r.mgr.on_action(act(inc, "acknowledge", 5, tenant_id="globex"), 1).error_class == "foreign_incident"
    assert r.mgr.on_action(act(inc, "suppress", 6, until=None), 0).field == "until"
    assert r.mgr.on_action(act(inc, "promotion_executed", 7), 0).field == "release_id"
    out = r.mgr.on_action(act(inc, "accept_new_baseline", 8), 0)
    assert out.event.status == IncidentStatus.resolved and out.event.resolution == "accepted_new_baseline"
    assert out.event.mitigated_at is not None
    # after resolution an action still applies to the incident (its next revision, still resolved)
    out2 = r.mgr.on_action(act(inc, "mark_false_positive", 9), 0)
    assert out2.event.revision == out.event.revision + 1 and out2.event.resolution == "false_positive"
    assert [a.action for a in out2.event.actions][-2:] == ["accept_new_baseline", "mark_false_positive"]
    # the revision encodes and decodes with the contract
    codec = default_codec()
    _, rec = codec.decode(codec.encode_model(out2.event))
    assert rec["resolution"] == "false_positive" and len(rec["actions"]) == 4


def test_accepted_slice_adopts_the_new_level_and_raises_no_new_incident():
    r = Run()
    r.feed(base(), 30_000)
    r.feed(drifted(1.6), 10_000)
    inc = opened_latency(r)
    r.mgr.on_action(act(inc, "accept_new_baseline", 1), 0)
    n_before = len(r.events)
    r.feed(drifted(1.6), 30_000)
    new = [e for e in r.events[n_before:] if e.status == IncidentStatus.open and e.metric_group == "latency"]
    assert new == []
    row = r.engine.store.index["tenant_cohort|acme|cardiology|*|*"]
    snap = r.engine.store.snapshot(row)
    ref = r.engine.store.snapshot(r.engine.store.index["tenant_cohort|acme|oncology|*|*"])
    # the accepted slice's latency baseline moved up with the traffic (x1.6), the other did not
    assert snap["latency_q95_ms"] > 1.3 * ref["latency_q95_ms"], (snap["latency_q95_ms"], ref["latency_q95_ms"])


def test_without_an_action_the_frozen_slice_still_reports_a_further_worsening():
    r = Run()
    r.feed(base(), 30_000)
    r.feed(drifted(1.6), 6_000)
    inc = opened_latency(r)
    first_observed = inc.observed
    r.mgr.on_action(act(inc, "suppress", 1, until=T0 + 99_000_000_000), 0)
    n_before = len(r.events)
    r.feed(drifted(3.0), 6_000)
    later = [e for e in r.events[n_before:] if e.incident_id == inc.incident_id]
    assert later, "the worsening was not reported"
    assert later[0].status == IncidentStatus.updated and later[-1].observed > 1.5 * first_observed


def test_drift_matrix_rows_and_changed_components():
    a = {"model": "m1", "prompt_version": "p1", "tool_schema_version": "t", "policy_version": "x",
         "retrieval_index_version": "i"}
    b = dict(a, model="m2", prompt_version="p2")
    assert changed_components(b, a) == ["model", "prompt"]
    row = matrix_row("release_regression", "rel-2", ["model", "prompt"])
    assert row["rollback_required"] and "model" in row["likely_cause"] and "prompt" in row["likely_cause"]
    assert not matrix_row("input_drift", None, [])["rollback_required"]
    assert all(k[0] != "release_regression" or v[3] for k, v in MATRIX.items())


def test_the_documented_drift_matrix_is_the_one_in_the_code():
    from pathlib import Path

    from streams.processors.matrix import markdown_table

    doc = (Path(__file__).resolve().parents[3] / "docs" / "drift-matrix.md").read_text()
    assert markdown_table() in doc


def test_resolved_incidents_kept_for_actions_are_bounded_per_tenant():
    from streams.processors import incidents as mod

    r = Run()
    r.feed(base(), 30_000)
    r.feed(drifted(1.6), 10_000)
    inc = opened_latency(r)
    r.mgr.on_action(act(inc, "mark_false_positive", 1), 0)
    assert r.mgr.knows("acme", inc.incident_id)
    state = r.mgr.open  # resolve more incidents of the tenant than are kept: the oldest is forgotten
    for n in range(mod.CLOSED_KEPT):
        fake = mod.OpenIncident.from_json(r.backend.get(f"done|acme|{inc.incident_id}"))
        fake.incident_id = f"f{n:04d}"
        state[fake.incident_id] = fake
        r.mgr._resolve(fake, T0, None)
    assert not r.mgr.knows("acme", inc.incident_id) and r.mgr.knows("acme", f"f{mod.CLOSED_KEPT - 1:04d}")
    assert r.mgr.on_action(act(inc, "acknowledge", 2), 0).error_class == "unknown_incident"
