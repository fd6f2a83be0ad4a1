"""Incident lifecycle: one incident per episode across layers, deterministic ids, bounded updates,
resolution only after recovery, state that survives a restart."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from schemas import IncidentKind, IncidentStatus
from streams.devtools.synthetic import Effect, Slice, synthetic_columns
from streams.processors.drift import Alarm, DriftConfig, DriftEngine
from streams.processors.incidents import IncidentManager, TraceContext
from streams.processors.metrics import CATEGORICAL, POISSON
from streams.state import DictBackend

T0 = 1_790_000_000_000


class Run:
    def __init__(self, backend=None, loader=None):
        self.engine = DriftEngine(DriftConfig(), loader=loader)
        self.backend = backend or DictBackend()
        self.mgr = IncidentManager(self.engine.store, self.backend, resolve_after_traces=2000, update_interval_s=60,
                                   drained_nats=9.0, releases={"rel-2": {
                                       "release_id": "rel-2", "model": "m", "prompt_version": "p",
                                       "tool_schema_version": "t", "policy_version": "x",
                                       "retrieval_index_version": "i"}})
        self.events = []
        self.rng = np.random.default_rng(0)
        self.off = 0

    def feed(self, slices, n, batch=2000):
        for _ in range(n // batch):
            cols, _ = synthetic_columns(self.rng, slices, batch, self.off, T0 + self.off * 100)
            self.off += batch
            ctx = TraceContext(trace_id=lambda p, c=cols: c.trace_id[p],
                               event_time_ms=lambda p, c=cols: int(c.event_time_ms[p]))
            alarms = self.engine.process_traces(cols)
            self.events += self.mgr.on_alarms(alarms, ctx)
            self.events += self.mgr.sweep(int(cols.event_time_ms.max()))


def base():
    return [Slice("acme", "cardiology", 0.5), Slice("acme", "oncology", 0.2),
            Slice("globex", "cardiology", 0.3, partition=1)]


def regressed(release="rel-1", latency=1.6):
    return [Slice("acme", "cardiology", 0.5, release=release, effect=Effect(latency=latency)),
            Slice("acme", "oncology", 0.2), Slice("globex", "cardiology", 0.3, partition=1)]


def test_one_incident_per_episode_across_layers_and_release_attribution():
    r = Run()
    r.feed(base(), 30_000)
    r.feed(regressed(release="rel-2"), 20_000)
    opened = [e for e in r.events if e.status == IncidentStatus.open]
    latency = [e for e in opened if e.metric_group == "latency"]
    assert len(latency) == 1, [(e.slice, e.metric) for e in opened]
    inc = latency[0]
    assert inc.slice.tenant_id == "acme" and inc.slice.cohort in ("cardiology", None)
    final = [e for e in r.events if e.incident_id == inc.incident_id][-1]
    assert final.kind == IncidentKind.release_regression and final.release_id == "rel-2"
    assert final.release is not None and final.release.release_id == "rel-2"
    assert final.evidence_trace_ids and len(final.evidence_trace_ids) <= 64
    assert final.observed > final.baseline
    # updates are bounded: exponential back-off, not one per refire
    assert len([e for e in r.events if e.incident_id == inc.incident_id]) < 15
    assert not any(e.slice.tenant_id == "globex" for e in r.events)


def test_drift_without_a_new_release_is_not_a_release_regression():
    r = Run()
    r.feed(base(), 30_000)
    r.feed(regressed(release="rel-1"), 20_000)
    kinds = {e.kind for e in r.events if e.metric_group == "latency"}
    assert kinds == {IncidentKind.output_drift}


def test_resolves_after_recovery_and_ids_are_deterministic():
    r = Run()
    r.feed(base(), 30_000)
    r.feed(regressed(release="rel-2"), 6_000)
    r.feed(base(), 40_000)  # rolled back
    ids = {e.incident_id for e in r.events if e.metric_group == "latency"}
    assert len(ids) == 1
    last = [e for e in r.events if e.incident_id in ids][-1]
    assert last.status == IncidentStatus.resolved
    # same input, same ids
    r2 = Run()
    r2.feed(base(), 30_000)
    r2.feed(regressed(release="rel-2"), 6_000)
    assert {e.incident_id for e in r2.events if e.metric_group == "latency"} == ids


def test_restart_resumes_open_incident_instead_of_opening_a_new_one():
    r = Run()
    r.feed(base(), 30_000)
    r.feed(regressed(release="rel-2"), 6_000)
    open_ids = set(r.mgr.open)
    assert open_ids
    saved_rows = {info.key: r.engine.store.row_bytes(i) for i, info in enumerate(r.engine.store.info)}
    # a new process: baselines and incident state come back from the changelog
    r2 = Run(backend=r.backend, loader=saved_rows.get)
    r2.rng, r2.off = r.rng, r.off
    for info in r.engine.store.info:
        r2.engine.row_for(info.layer, info.tenant_id, info.cohort, info.workflow, info.release_id, info.partition)
    r2.mgr.load({0, 1})
    assert set(r2.mgr.open) == open_ids
    r2.feed(regressed(release="rel-2"), 10_000)
    assert not [e for e in r2.events if e.status == IncidentStatus.open and e.metric_group == "latency"]


def test_uniform_change_across_tenants_is_one_platform_incident_never_a_release_regression():
    fleet = [Slice(f"t{i}", "cardiology", 0.25, partition=i) for i in range(4)]
    slower = [Slice(f"t{i}", "cardiology", 0.25, partition=i, effect=Effect(latency=1.6)) for i in range(4)]
    r = Run()
    r.feed(fleet, 30_000)
    r.feed(slower, 12_000)
    latency = [e for e in r.events if e.metric_group == "latency"]
    platform = {e.incident_id for e in latency if e.slice.layer == "platform"}
    assert len(platform) == 1
    assert not any(e.kind == IncidentKind.release_regression for e in r.events)
    # tenant incidents opened before the episode was recognised are resolved as superseded
    open_tenant = {e.incident_id for e in latency if e.slice.tenant_id and e.status == IncidentStatus.open}
    resolved = {e.incident_id for e in latency if e.status == IncidentStatus.resolved and "superseded" in e.summary}
    assert open_tenant <= resolved


def test_platform_incidents_with_two_workers_are_decided_once_from_both_workers_signals():
    """Each worker sees half the tenants; in signals mode they send their alarms and censuses and
    the owner of the signals partition opens one platform incident, with an id no other worker
    can reuse for another episode."""
    from streams.processors.incidents import PLATFORM

    def worker(tenants):
        r = Run()
        r.mgr.platform_signals = True
        fleet = [Slice(f"t{i}", "cardiology", 1 / len(tenants), partition=i) for i in tenants]
        slower = [Slice(f"t{i}", "cardiology", 1 / len(tenants), partition=i, effect=Effect(latency=1.6))
                  for i in tenants]
        return r, fleet, slower

    (a, fa, sa), (b, fb, sb) = worker([0, 1, 2]), worker([3, 4, 5])
    for r, fleet, slower in ((a, fa, sa), (b, fb, sb)):
        r.feed(fleet, 18_000)
        r.feed(slower, 9_000)
    # no worker decides alone: no platform incident among their events
    assert not any(e.slice.layer == PLATFORM for e in a.events + b.events)
    signals = a.mgr.signals_out + b.mgr.signals_out
    census = [{"kind": "census", "source_partition": p, "tenants": 1, "event_time": T0, "first_seen": T0,
               "evidence_trace_ids": []} for p in range(6)]
    alarms = sorted((s for s in signals if s["metric_group"] == "latency"), key=lambda s: s["event_time"])
    assert len({s["tenant_id"] for s in alarms}) >= 4, "both workers' tenants alarmed"
    owner = Run()
    owner.mgr.platform_signals = True
    events = owner.mgr.on_signals(census + alarms, partition=2)
    opened = [e for e in events if e.slice.layer == PLATFORM and e.metric_group == "latency"]
    assert len(opened) == 1 and opened[0].status == IncidentStatus.open
    assert len({x.split("|")[1] for x in opened[0].also_seen}) >= 3  # tenants of both workers
    # a second episode after the first resolved gets another id (one counter, on the owner's partition)
    quiet = census[0] | {"event_time": alarms[-1]["event_time"] + 2 * owner.mgr.platform_window_ms}
    resolved = owner.mgr.on_signals([quiet], partition=2)
    assert [e.status for e in resolved] == [IncidentStatus.resolved]
    later = [dict(s, event_time=s["event_time"] + 3 * owner.mgr.platform_window_ms,
                  first_seen=s["first_seen"] + 3 * owner.mgr.platform_window_ms) for s in alarms]
    second = [e for e in owner.mgr.on_signals(later, partition=2) if e.status == IncidentStatus.open]
    assert len(second) == 1 and second[0].incident_id != opened[0].incident_id


def _mix_alarm(r: Run, layer: str, workflow: str | None, pos: int) -> Alarm:
    row = r.engine.row_for(layer, "acme", None, workflow, None, 0)
    return Alarm(row=row, metric=CATEGORICAL[0], pos=pos, statistic=90.0, threshold=60.0, baseline=0.0,
                 observed=0.05, ci_low=0.05, ci_high=0.05, effect=0.05, samples=300, direction=0,
                 evidence=[pos], slice_index=3000)


def test_a_batchs_alarms_bridged_by_a_wider_slice_are_one_incident():
    """One tenant's input mix moved: in one batch, the windows of two workflows and of the tenant
    slice alarm. The workflows do not overlap each other, the tenant slice overlaps both: one
    episode, one incident (before: one per workflow, the tenant alarm folded last joined only
    the first; through the worker one tenant's change opened 4). A workflow that alarms in a
    later batch joins it too (it overlaps the tenant slice now in the incident)."""
    r = Run()
    ctx = TraceContext(trace_id=lambda p: f"t{p}", event_time_ms=lambda p: T0 + p * 100)
    events = r.mgr.on_alarms([_mix_alarm(r, "tenant_workflow", "soap_note", 10),
                              _mix_alarm(r, "tenant_workflow", "prior_auth", 12),
                              _mix_alarm(r, "tenant", None, 15)], ctx)
    assert [e.status for e in events] == [IncidentStatus.open]
    assert events[0].slice.workflow == "soap_note" and len(events[0].also_seen) == 2
    later = r.mgr.on_alarms([_mix_alarm(r, "tenant_workflow", "discharge_summary", 400)], ctx)
    assert all(e.incident_id == events[0].incident_id for e in later)


def test_without_a_bridge_two_workflows_are_two_incidents():
    """The episode rule still separates what does not overlap: two workflows, no tenant alarm."""
    r = Run()
    ctx = TraceContext(trace_id=lambda p: f"t{p}", event_time_ms=lambda p: T0 + p * 100)
    events = r.mgr.on_alarms([_mix_alarm(r, "tenant_workflow", "soap_note", 10),
                              _mix_alarm(r, "tenant_workflow", "prior_auth", 12)], ctx)
    assert len({e.incident_id for e in events}) == 2


def test_an_input_mix_incident_says_which_category_moved():
    """The incident of an input-mix change says what moved, from what share to what share: the
    'inpatient' intent goes from 5 % to 30 % of one tenant's traffic. Before, its summary read
    "input_mix rose from 0 to 0.0139" (baseline 0.0, the divergence as observed)."""
    r = Run()
    r.feed(base(), 20_000)
    shifted = [Slice("acme", "cardiology", 0.5, effect=Effect(intent_p=(0.15, 0.25, 0.30, 0.30))),
               Slice("acme", "oncology", 0.2), Slice("globex", "cardiology", 0.3, partition=1)]
    r.feed(shifted, 10_000)
    opened = [e for e in r.events if e.status == IncidentStatus.open and e.metric == "input_mix"]
    assert opened, [(e.metric, e.summary) for e in r.events]
    for e in opened:
        assert e.summary.startswith("input_mix: workflow/intent '"), e.summary
        assert " share rose from " in e.summary or " share fell from " in e.summary, e.summary
        assert "Jensen-Shannon divergence" in e.summary and e.kind == IncidentKind.input_drift
        assert 0.0 < e.baseline < 1.0 and e.observed_ci_low <= e.observed <= e.observed_ci_high
    assert any("inpatient'" in e.summary and e.observed > e.baseline for e in opened), \
        [e.summary for e in opened]


def test_an_input_mix_alarm_of_another_category_is_not_a_worsening():
    """Shares of two input-mix categories do not compare: an alarm on a second category with a
    larger share ratio (30x against 4x) does not replace the incident's figures as a worsening
    (only a stronger statistic on its primary slice does)."""
    r = Run()
    ctx = TraceContext(trace_id=lambda p: f"t{p}", event_time_ms=lambda p: T0 + p * 100)
    first = replace(_mix_alarm(r, "tenant", None, 10), baseline=0.05, observed=0.2, ci_low=0.17, ci_high=0.23,
                    category="workflow/intent 'a/x'")
    r.mgr.on_alarms([first], ctx)
    other = replace(_mix_alarm(r, "tenant", None, 20), statistic=61.0,  # weaker than the incident's
                    baseline=0.01, observed=0.3, ci_low=0.27, ci_high=0.33, category="workflow/intent 'b/y'")
    r.mgr.on_alarms([other], ctx)
    (inc,) = r.mgr.open.values()
    assert inc.best["category"] == "workflow/intent 'a/x'" and inc.best["observed"] == 0.2


def test_a_label_delayed_incident_resolves_on_the_feedback_clock_not_at_trace_batches():
    """A correction-rate incident: the trace sweep leaves it open however many traces pass (whether
    a later correction alarm joins it must not depend on how far the trace consumer ran ahead);
    it resolves at a feedback tick once the tenant's traces up to the feedback clock number
    ``resolve_after_traces`` more than at its alarm and its correction CUSUMs have drained."""
    r = Run()
    r.feed(base(), 6_000)
    row = r.engine.row_for("tenant", "acme", None, None, None, 0)
    alarm = Alarm(row=row, metric=POISSON[0], pos=-1, statistic=20.0, threshold=18.0, baseline=0.1, observed=0.2,
                  ci_low=0.15, ci_high=0.25, effect=2.0, samples=500, direction=+1, slice_index=4_000,
                  trace_id="t-1", event_time_ms=T0 + 500_000, evidence_ids=["t-1"], cp_event_time_ms=T0 + 100_000)
    opened = r.mgr.on_alarms([alarm], TraceContext(trace_id=lambda p: "", event_time_ms=lambda p: 0))
    assert [e.status for e in opened] == [IncidentStatus.open]
    iid = opened[0].incident_id
    f = r.engine.store.f
    r.events = []
    r.feed(base(), 10_000)  # far more than resolve_after_traces, no feedback clock moving
    assert iid in r.mgr.open and not [e for e in r.events if e.incident_id == iid]
    # the ring holds none of those traces yet: a feedback tick before them does not resolve it
    held = float(f["pa_n"][row].sum())
    assert held > 2_000
    assert r.mgr.sweep_delayed(0, T0 + 600_000) == [] and iid in r.mgr.open
    f["pa_n"][row] = 0.0  # the clock has reached them (admitted to the ring)
    f["p_s"][row] = 10.0  # but the correction CUSUM still holds evidence
    assert r.mgr.sweep_delayed(0, T0 + 700_000) == []
    f["p_s"][row] = 0.0
    assert r.mgr.sweep_delayed(1, T0 + 800_000) == []  # another partition's clock
    done = r.mgr.sweep_delayed(0, T0 + 900_000)
    assert [(e.incident_id, e.status) for e in done] == [(iid, IncidentStatus.resolved)]


class CountingBackend(DictBackend):
    """The in-memory backend, recording every key written (a changelog message each in the worker)."""

    def __init__(self):
        super().__init__()
        self.written = []

    def put(self, key, value, partition):
        self.written.append(key)
        super().put(key, value, partition)


def test_an_open_incident_changed_without_an_event_is_written_once_at_the_checkpoint():
    r = Run(backend=CountingBackend())
    r.feed(base(), 30_000)
    r.feed(regressed(release="rel-2"), 6_000)
    iid = next(e.incident_id for e in r.events if e.metric_group == "latency")
    key = f"inc|acme|{iid}"
    r.mgr.flush()
    written, events = len(r.backend.written), len(r.events)
    r.feed(regressed(release="rel-2"), 20_000, batch=1000)  # its slices alarm on every batch
    emitted = [e for e in r.events[events:] if e.incident_id == iid]
    assert r.mgr._deferred, "alarms folded in without an event are held for the checkpoint"
    # written when an event goes out (a new revision), not at each silent fold
    assert r.backend.written[written:].count(key) == len(emitted) < 20
    assert r.backend.get(key) != r.mgr.open[iid].to_json()  # the latest marks and evidence are not out yet
    assert r.mgr.flush() == 1
    assert r.backend.get(key) == r.mgr.open[iid].to_json()
    assert r.mgr.flush() == 0


def test_a_deferred_change_of_an_incident_resolved_before_the_checkpoint_is_not_written_back():
    r = Run()
    r.feed(base(), 30_000)
    r.feed(regressed(release="rel-2"), 6_000)
    iid = next(e.incident_id for e in r.events if e.metric_group == "latency")
    r.mgr._defer(r.mgr.open[iid])  # a silent fold, then the recovery resolves it in the same interval
    r.feed(base(), 40_000)
    assert iid not in r.mgr.open
    r.mgr.flush()
    assert r.backend.get(f"inc|acme|{iid}") == b""
    r2 = Run(backend=r.backend)
    r2.mgr.load({0, 1})
    assert iid not in r2.mgr.open
