"""Incident lifecycle: turn detector alarms into one incident per episode, updated and resolved.

Rules (this docstring is their reference; README "Detection in one paragraph" summarises them):

- **Episode**: an alarm on slice *S* for metric group *G* joins the open incident of group *G*
  whose slices overlap *S* (same tenant; cohort, workflow and release equal or unspecified on
  either side), or, for a release slice, an open incident of the group on the same release (the
  release is the unit of rollback). Otherwise it opens a new incident. So a regression seen on the release slice,
  the tenant×cohort×workflow slice and the tenant slice at once is *one* incident, whose primary
  slice is the most specific one that fired; the others are listed in ``also_seen``. Within a batch,
  alarms that join an open incident are folded first, and the others form one new episode per
  connected set of overlapping slices (two workflows with their tenant slice between them: one).
- **Identity**: ``incident_id = sha1(primary slice key at opening | group | episode number)``;
  the episode counter per (slice, group) is persisted, so a restarted worker neither re-opens an
  episode nor reuses an id.
- **Updates**: further alarms in the episode emit ``updated`` when the kind, primary slice or
  severity changes, otherwise at most once per ``update_interval_s * 2**(revision-1)`` of event
  time (capped at one hour): an ongoing regression reports less and less often.
- **Resolution**: when the tenant has sent ``resolve_after_traces`` traces since the incident's
  last alarm *and* every slice of the incident that still gets traffic has drained the group's
  CUSUM statistics below h/2 (the data look like the baseline again, not merely between two
  refires; a rolled-back release gets no traffic and is not waited for), the incident is
  ``resolved`` and the slices' baselines for the group unfreeze. A label-delayed incident
  (correction or unsafe-feedback rate) resolves on the feedback clock instead
  (:meth:`IncidentManager.sweep_delayed`, after every evaluation tick): its tenant's traces are
  counted up to that clock and only its label-delayed CUSUMs must drain, so the episodes do not
  depend on how the trace and feedback batches interleave.
- **Storm guard**: at most ``max_open_per_tenant`` open incidents per tenant; further alarms of
  that tenant are folded into its most severe open incident as ``also_seen``.

- **Platform-wide changes**: when the same metric group moves in >= max(3, half of the tenants)
  within ``platform_window_s`` (seasonal traffic, a provider-side change), the alarms become one
  incident on the ``platform`` layer (tenant empty, action observe / sample outputs), the tenant
  incidents it explains are resolved as superseded, and none of it is blamed on a release. A
  worker sees only the tenants of its partitions, so the worker decides from signals
  (``platform_signals``, :meth:`IncidentManager.on_signals`): every worker sends its alarms and a
  tenant census to one partition, whose owner applies the rule to all tenants (tenant incidents
  are then not superseded, they are listed in the platform incident's ``also_seen``).
- **Actions** (:meth:`IncidentManager.on_action`, topic ``agent.incident-actions.v1``): what the
  rollout system did, applied once per ``action_id`` and shown in the incident's next revision;
  ``accept_new_baseline`` re-baselines the incident's slices (:meth:`SliceStore.rebaseline`).
  While open, a further worsening (a level beyond the reported interval) is an update at once.

Classification (the drift matrix):

- group ``safety`` → ``safety``;
- the change started with a *new* release (one that appeared after the slice had history): on a
  release slice the CUSUM's change-point estimate lies within the release's first 100 traces or
  first 20% of its traces; on a wider slice the new release carries the traffic since the change
  point; and no other release of the slice (the control) has an open incident of the group
  → ``release_regression`` (safety changes stay ``safety`` with the release named);
- otherwise ``input`` → ``input_drift``; ``latency``/``output`` → ``output_drift``;
  ``quality``/``tools`` → ``workflow_drift``.

Severity grows with effect size, exposure (traces since the change point) and group
(safety +1). Actions: release regression → ``roll_back`` (high/critical) or ``freeze_rollout``;
safety → ``roll_back`` when a release is implicated else ``sample_outputs``; workflow and output
drift → ``sample_outputs``; input drift → ``compare_cohorts``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas import (
    ActionKind,
    ActionTaken,
    Incident,
    IncidentKind,
    IncidentStatus,
    RecommendedAction,
    RolloutVerdict,
    Severity,
    Slice,
)
from schemas.common import from_ms, to_ms
from streams.processors.baselines import SliceInfo, SliceStore, parse_slice_key, slice_key
from streams.processors.drift import Alarm
from streams.processors.matrix import changed_components, matrix_row
from streams.processors.metrics import CANARY_INDEX, CANARY_METRICS, DETECTORS, GROUP_INDEX, POISSON, POISSON_GROUP
from streams.state import StateBackend

SEVERITIES = (Severity.low, Severity.medium, Severity.high, Severity.critical)
PLATFORM = "platform"
PLATFORM_KEY = slice_key("platform", "*", None, None, None)
LAYER_RANK = {"platform": 0, "tenant": 1, "tenant_cohort": 2, "tenant_workflow": 2, "tenant_cohort_workflow": 3,
              "release": 4}


#: metric group -> columns of its Poisson (label-delayed rate) detectors in the slice state
_POISSON_COLS: dict[str, list[int]] = {
    g: [j for j, pg in enumerate(POISSON_GROUP.tolist()) if pg == gi] for g, gi in GROUP_INDEX.items()}

@dataclass(slots=True)
class TraceContext:
    """What the manager needs to know about the traces an alarm points at (by batch position)."""

    trace_id: Callable[[int], str]
    event_time_ms: Callable[[int], int]


@dataclass(slots=True)
class ActionOutcome:
    """What applying one incident action gave: the incident's next revision (``event``), or the
    refusal (``error_class``, ``field``, ``value``, ``message``: a dead letter), or neither for a
    redelivered action already applied (``replay``)."""

    event: Incident | None = None
    error_class: str | None = None
    field: str | None = None
    value: str | None = None
    message: str = ""
    replay: bool = False


ACTION_KINDS = frozenset(a.value for a in ActionKind)
#: actions that mitigate (their first sets ``mitigated_at``)
MITIGATIONS = frozenset(("rollback_executed", "accept_new_baseline", "mark_false_positive"))
#: actions shown in an incident event (the latest); the incident's state keeps all of them
ACTIONS_SHOWN = 32
#: label-delayed metrics: their incidents resolve on the feedback clock (:meth:`IncidentManager.sweep_delayed`)
DELAYED_METRICS = frozenset(m.name for m in POISSON)
#: resolved incidents kept per tenant (state ``done|``) so that later actions still apply to them;
#: an action on an older one is refused as ``unknown_incident``
CLOSED_KEPT = 256


@dataclass
class OpenIncident:
    """Mutable state of one open incident (persisted as JSON under ``inc|<tenant>|<id>``)."""

    incident_id: str
    tenant_id: str
    group: str
    partition: int
    primary: str  # slice key
    slices: list[str]
    revision: int
    kind: str
    metric: str
    best: dict[str, Any]  # the alarm figures reported (strongest evidence so far)
    severity: int
    release_id: str | None
    release: dict[str, Any] | None
    also_seen: list[str]
    evidence: list[str]
    detected_at_trace_id: str
    detected_ms: int
    first_seen_ms: int
    last_seen_ms: int
    last_emit_ms: int
    marks: dict[str, float] = field(default_factory=dict)  # slice key -> its traces at its last alarm
    tenant_mark: float = 0.0  # the tenant's traces at the incident's last alarm
    resolution: str | None = None  # once resolved: recovered, accepted_new_baseline, false_positive, superseded
    acknowledged_by: str | None = None
    suppressed_until_ms: int | None = None
    mitigated_ms: int | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)  # applied actions (ActionTaken fields, ms)
    restore_release_id: str | None = None
    restore_release: dict[str, Any] | None = None
    rows: list[int] = field(default_factory=list)

    def to_json(self) -> bytes:
        """Serialise (rows are process-local and not stored)."""
        d = dict(self.__dict__)
        d.pop("rows", None)
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> OpenIncident:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(data))


def slices_overlap(a: str, b: str) -> bool:
    """Whether two slice keys (:func:`~streams.processors.baselines.slice_key`) can hold the same
    traces: same tenant, and each of cohort, workflow, release equal or ``*`` in either key (the
    layer does not matter). Alarms on overlapping slices join one open incident.

    >>> slices_overlap("tenant_cohort|acme|cardiology|*|*", "release|acme|cardiology|soap_note|rel-2")
    True
    >>> slices_overlap("tenant_cohort|acme|cardiology|*|*", "tenant_cohort|acme|oncology|*|*")
    False

    Raises:
        ValueError: a key does not have five ``|``-separated parts.
    """
    la = parse_slice_key(a)
    lb = parse_slice_key(b)
    if la[1] != lb[1]:
        return False
    return all(x is None or y is None or x == y for x, y in zip(la[2:], lb[2:], strict=True))


class IncidentManager:
    """Turns :class:`Alarm` objects into :class:`schemas.Incident` events.

    Args:
        store: the engine's slice store (to freeze/unfreeze baselines and read quiet counters).
        backend: persistence for open incidents and episode counters.
        resolve_after_traces: quiet traces before resolving.
        update_interval_s: minimum event-time seconds between ``updated`` events of one incident.
        evidence: evidence trace ids kept per incident (bounded).
        max_open_per_tenant: storm guard.
        releases: release_id → manifest dict, to name the implicated manifest.
        platform_window_s: event-time window in which alarms of one metric in many tenants make a
            platform-wide episode (and after which a platform episode without alarms resolves).
        drained_nats: a detector below this statistic counts as recovered (default h/2: on null
            data P(S > x) <= exp(-x) per detector, so 70 detectors stay under 9 nats 99% of the
            time, while a persisting regression keeps its detectors above h/2 half of the time).
        platform_signals: with several workers no one sees every tenant, so each worker sends the
            alarms no release explains as :class:`schemas.PlatformSignal` (``signals_out``) and
            the one worker owning the signals partition decides (:meth:`on_signals`).
        release_onset_fraction, release_onset_traces: the release is blamed when the change
            point lies within its first ``release_onset_traces`` traces or its first
            ``1 - release_onset_fraction`` share of traces.
    """

    def __init__(self, store: SliceStore, backend: StateBackend, *, resolve_after_traces: int = 2000,
                 update_interval_s: float = 60.0, evidence: int = 20, max_open_per_tenant: int = 8,
                 release_onset_fraction: float = 0.8, release_onset_traces: int = 100,
                 drained_nats: float = 9.0, releases: dict[str, dict[str, Any]] | None = None,
                 platform_window_s: float = 1800.0, warmup_traces: int = 300,
                 platform_signals: bool = False) -> None:
        self.store = store
        self.backend = backend
        self.resolve_after = resolve_after_traces
        self.update_interval_ms = int(update_interval_s * 1000)
        self.evidence_max = evidence
        self.max_open = max_open_per_tenant
        self.release_onset_fraction = release_onset_fraction
        self.release_onset_traces = release_onset_traces
        #: CUSUM level (nats) under which a detector counts as drained for resolution
        self.drained = drained_nats
        self.open: dict[str, OpenIncident] = {}
        #: platform-wide correlation: metric group -> {tenant: event time of its last alarm}; open episodes
        self.platform_alarms: dict[str, dict[str, int]] = {}
        self.platform_open: dict[str, str] = {}
        self.platform_window_ms = int(platform_window_s * 1000)
        self.warmup = warmup_traces
        #: release_id -> manifest (filled by the pipeline from the traces it sees)
        self.releases = releases if releases is not None else {}
        self.loaded_partitions: set[int] = set()
        #: decide platform-wide incidents from signals (:meth:`on_signals`) instead of locally
        self.platform_signals = platform_signals
        #: PlatformSignal dicts to publish (alarms no release explains), taken by the pipeline
        self.signals_out: list[dict[str, Any]] = []
        #: the platform detector's state (signals mode; on the worker owning the signals partition)
        self.plat_state: dict[str, Any] | None = None
        #: open incidents changed without an event (an alarm folded in, traffic marks), written at
        #: the next :meth:`flush` (the state checkpoint), by incident id
        self._deferred: dict[str, OpenIncident] = {}

    # ------------------------------------------------------------------ persistence
    def load(self, partitions: set[int]) -> None:
        """(Re)load open incidents of ``partitions`` from the backend (after a rebalance); deferred
        changes are written first (:meth:`flush`)."""
        self.flush()
        self.open = {k: v for k, v in self.open.items() if v.partition in partitions}
        for key, value in self.backend.items():
            if key.startswith("inc|") and value:
                inc = OpenIncident.from_json(value)
                if inc.partition in partitions and inc.incident_id not in self.open:
                    self.open[inc.incident_id] = inc
        self.loaded_partitions = set(partitions)
        self.plat_state = None  # reloaded from the backend by the owner of the signals partition
        self.platform_open = {inc.group: iid for iid, inc in self.open.items() if not inc.tenant_id}
        for inc in self.open.values():
            inc.rows = [r for r in (self.store.index.get(k) for k in inc.slices) if r is not None]
            g = GROUP_INDEX[inc.group]
            for r in inc.rows:
                self.store.f["i_open"][r, g] = 1.0

    def open_incidents(self, tenant: str) -> list[Incident]:
        """The open incidents of ``tenant`` held here (the owned partitions), each as its latest
        event (status ``open`` before any update, else ``updated``), most severe first, then by
        first-seen time (the read API of rollout controllers)."""
        held = [inc for inc in self.open.values() if inc.tenant_id == tenant]
        held.sort(key=lambda inc: (-inc.severity, inc.first_seen_ms, inc.incident_id))
        return [self._build(inc, IncidentStatus.open if inc.revision == 0 else IncidentStatus.updated,
                            inc.last_emit_ms) for inc in held]

    def open_kinds(self) -> list[tuple[str, str]]:
        """``(kind, severity)`` of every open incident held here (Prometheus gauge)."""
        return [(inc.kind, SEVERITIES[min(inc.severity, 3)].value) for inc in self.open.values()]

    def _persist(self, inc: OpenIncident) -> None:
        """Write ``inc`` to the backend now (its changelog record in the worker). Used for changes
        that go out as an event (an opening, a new revision, an action), so a restarted worker
        folds later alarms into the same episode; silent changes go through :meth:`_defer`."""
        self._deferred.pop(inc.incident_id, None)
        self.backend.put(f"inc|{inc.tenant_id or PLATFORM}|{inc.incident_id}", inc.to_json(), inc.partition)

    def _defer(self, inc: OpenIncident) -> None:
        """Hold a change of open ``inc`` that emits no event until :meth:`flush`."""
        self._deferred[inc.incident_id] = inc

    def flush(self) -> int:
        """Write the open incidents changed without an event since the last call, once each, in the
        order first deferred; returns how many. The worker calls it at every state checkpoint
        (``Pipeline.flush_state``), with the slice rows whose traffic the incidents' marks count.

        Why (issue 16): an open incident's slices alarm on every batch while it lasts, and each
        alarm changed its evidence, marks and best figures; written at once, that was one 8.5 KB
        changelog message per open incident per batch (6,428 messages, 54.6 MB in a 30 s
        benchmark run with 28 incidents). A crash takes the deferred changes back to the last
        checkpoint, like the slice rows, and the redelivered batches fold the same alarms in
        again (evidence, also-seen notes and figures are merged, not counted).
        """
        out, self._deferred = self._deferred, {}
        n = 0
        for iid, inc in out.items():
            if self.open.get(iid) is inc:  # resolved meanwhile: _resolve wrote its final state
                self.backend.put(f"inc|{inc.tenant_id or PLATFORM}|{iid}", inc.to_json(), inc.partition)
                n += 1
        return n

    def _next_episode(self, slice_key: str, group: str, partition: int) -> int:
        key = f"ep|{slice_key}|{group}"
        cur = self.backend.get(key)
        n = (int(cur) if cur else 0) + 1
        self.backend.put(key, str(n).encode(), partition)
        return n

    # ------------------------------------------------------------------ alarms
    def on_alarms(self, alarms: list[Alarm], ctx: TraceContext) -> list[Incident]:
        """Fold a batch's alarms into incidents; returns the events to publish (open/updated)."""
        out: dict[str, Incident] = {}
        ordered, episode_of = self._batch_order(alarms)
        opened_for: dict[int, OpenIncident] = {}  # episode of this batch -> the incident it opened
        for alarm in ordered:
            info = self.store.info[alarm.row]
            if self._platform(alarm, info, ctx, out):
                continue
            inc = self._match(info, alarm.metric.group)
            episode = episode_of.get(id(alarm))
            if inc is None and episode in opened_for and opened_for[episode].incident_id in self.open:
                inc = opened_for[episode]
                self._update(inc, alarm, info, ctx, pending=True)
                first = out.get(inc.incident_id)
                out[inc.incident_id] = self._event(inc, first.status if first is not None else IncidentStatus.updated,
                                                   ctx)
                self._mark(inc, alarm.row)
                continue
            if inc is None:
                inc = self._open(alarm, info, ctx)
                if inc is None:
                    continue
                if episode is not None:
                    opened_for[episode] = inc
                out[inc.incident_id] = self._event(inc, IncidentStatus.open, ctx)
            elif self._update(inc, alarm, info, ctx, pending=inc.incident_id in out) or inc.incident_id in out:
                # opened earlier in this batch: one event, still "open", with the latest state
                first = out.get(inc.incident_id)
                status = first.status if first is not None and first.status == IncidentStatus.open \
                    else IncidentStatus.updated
                out[inc.incident_id] = self._event(inc, status, ctx)
            self._mark(inc, alarm.row)
        return list(out.values())

    def _batch_order(self, alarms: list[Alarm]) -> tuple[list[Alarm], dict[int, int]]:
        """The order a batch's alarms are folded in, and which of them form one new episode.

        Alarms that join an open incident go first, so the slices they add to it (a tenant-wide
        slice, say) can take in this batch's other alarms; then the rest, most specific layer
        first, so a new episode's primary slice is the most specific one. Alarms that join no open
        incident are grouped per tenant and metric group into connected components of
        :func:`slices_overlap` (two cohorts of one tenant with the tenant slice between them are
        one component): each component is one new episode, one incident. Before, one tenant's
        input-mix change in all its cohorts opened one incident per workflow (measured through
        the worker, ``selfheal bench-drift-worker --scenario tenant_change``).

        Returns the ordered alarms and ``{id(alarm): episode number}`` for the alarms of new episodes.
        """
        info = self.store.info
        joins = [self._match(info[a.row], a.metric.group) is not None for a in alarms]
        order = sorted(range(len(alarms)), key=lambda i: (not joins[i], -LAYER_RANK[info[alarms[i].row].layer],
                                                          alarms[i].pos))
        fresh = [i for i in order if not joins[i]]
        parent = {i: i for i in fresh}

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for x, i in enumerate(fresh):
            a, ia = alarms[i], info[alarms[i].row]
            for j in fresh[x + 1:]:
                b, ib = alarms[j], info[alarms[j].row]
                if ia.tenant_id == ib.tenant_id and a.metric.group == b.metric.group \
                        and slices_overlap(ia.key, ib.key):
                    parent[root(j)] = root(i)
        return [alarms[i] for i in order], {id(alarms[i]): root(i) for i in fresh}

    # ------------------------------------------------------------------ platform-wide changes
    def _platform(self, alarm: Alarm, info: SliceInfo, ctx: TraceContext, out: dict[str, Incident]) -> bool:
        """Fold an alarm into a platform-wide episode when the same metric moved in many tenants.

        A change of one metric group seen in >= max(3, half of the tenants) distinct tenants within
        ``platform_window_s`` of event time is platform-wide (seasonal traffic, a provider-side
        change): it becomes one incident on the ``platform`` layer, never a release regression,
        and the tenant incidents it explains are resolved as superseded. Alarms that a new
        release explains (release slice, change from the release's start) are never folded.
        Returns True when the alarm was folded.
        """
        if self.platform_signals:  # decided by the owner of the signals partition (on_signals)
            if self._blame(alarm, info, alarm.metric.group) is None:
                self.signals_out.append(_alarm_signal(alarm, info, ctx, self.evidence_max))
            return False
        now = _time(alarm, ctx)
        metric = alarm.metric.name
        group = alarm.metric.group  # one platform episode per metric group
        seen = self.platform_alarms.setdefault(group, {})
        seen[info.tenant_id] = now
        for t in [t for t, ts in seen.items() if now - ts > self.platform_window_ms]:
            del seen[t]
        if self._blame(alarm, info, alarm.metric.group) is not None:
            return False
        inc = self.open.get(self.platform_open.get(group, ""))
        tenants = {si.tenant_id for si in self.store.info}
        if inc is None:
            if len(seen) < max(3, math.ceil(0.5 * len(tenants))):
                return False
            episode = self._next_episode(PLATFORM_KEY, group, 0)
            iid = hashlib.sha1(f"{PLATFORM_KEY}|{group}|{episode}".encode()).hexdigest()[:20]
            inc = OpenIncident(
                incident_id=iid, tenant_id="", group=alarm.metric.group, partition=0, primary=PLATFORM_KEY,
                slices=[PLATFORM_KEY], revision=0, kind="", metric=metric, best=_figures(alarm), severity=0,
                release_id=None, release=None, also_seen=[], evidence=_evidence(alarm, ctx)[-self.evidence_max:],
                detected_at_trace_id=_trace(alarm, ctx), detected_ms=now, first_seen_ms=min(seen.values()),
                last_seen_ms=now,
                last_emit_ms=now)
            self.open[iid] = inc
            self.platform_open[group] = iid
            inc.kind = _group_kind(inc.group)
            inc.severity = _severity(alarm, inc.group)
            # the tenant incidents this change explains: superseded
            for other in list(self.open.values()):
                if other.tenant_id and other.group == inc.group and other.release_id is None \
                        and now - other.first_seen_ms <= self.platform_window_ms:
                    event = self._resolve(other, now, f"superseded by platform-wide incident {iid}", "superseded")
                    out[other.incident_id] = event
                    inc.also_seen.append(f"{other.primary}:{other.metric}")
            out[iid] = self._event(inc, IncidentStatus.open, ctx)
        note = f"{info.key}:{metric}"
        if note not in inc.also_seen and len(inc.also_seen) < 64:
            inc.also_seen.append(note)
        inc.last_seen_ms = max(inc.last_seen_ms, now)
        if alarm.statistic - alarm.threshold > inc.best["statistic"] - inc.best["threshold"]:
            inc.best = _figures(alarm)
        self._persist(inc)
        return True

    def on_signals(self, signals: list[dict[str, Any]], partition: int) -> list[Incident]:
        """The platform-wide detector of a scaled-out worker group (``platform_signals`` mode).

        Every worker sends the alarms no new release explains, and a census of its partitions'
        tenants, as :class:`schemas.PlatformSignal` records keyed ``"platform"``: all land on one
        partition of ``agent.platform-signals.v1``, so the one worker that owns it sees every
        tenant and applies the rule of :meth:`_platform` to all of them: a metric group moving in
        >= max(3, half of the tenants of the census) distinct tenants within
        ``platform_window_s`` is one platform incident. Its episode counter and state are kept in
        the backend on ``partition`` (the signals partition, owned by this worker alone), so with
        N workers there is one counter, one id per episode and one writer of its revisions. The
        census's event times are the clock: an incident no tenant reported for a window resolves.
        Tenant incidents stay with their workers (not superseded as in the single-process mode;
        the platform incident lists their slices in ``also_seen``).

        Args:
            signals: decoded ``PlatformSignal`` dicts in offset order (times in epoch ms).
            partition: the signals partition they came from.

        Returns:
            Platform incident events (open / updated / resolved), one per incident.
        """
        st = self._plat(partition)
        out: dict[str, Incident] = {}
        for rec in signals:
            t = int(rec["event_time"])
            st["clock"] = max(st["clock"], t)
            if rec["kind"] == "census":
                st["census"][str(rec["source_partition"])] = int(rec["tenants"])
                continue
            group, tenant = rec["metric_group"], rec["tenant_id"]
            note = f"{rec['slice_key']}:{rec['metric']}"
            seen = st["alarms"].setdefault(group, {})  # tenant -> [ms of its latest alarm, its note]
            if t >= seen.get(tenant, [0, ""])[0]:
                seen[tenant] = [t, note]
            for k in [k for k, (ts, _) in seen.items() if t - ts > self.platform_window_ms]:
                del seen[k]
            figures = {k: rec[k] for k in ("baseline", "observed", "ci_low", "ci_high", "effect", "samples",
                                           "statistic", "threshold", "detector")}
            inc = self.open.get(self.platform_open.get(group, ""))
            if inc is None:
                tenants = max(sum(st["census"].values()), len(seen))
                if len(seen) < max(3, math.ceil(0.5 * tenants)):
                    continue
                episode = self._next_episode(PLATFORM_KEY, group, partition)
                iid = hashlib.sha1(f"{PLATFORM_KEY}|{group}|{episode}".encode()).hexdigest()[:20]
                inc = OpenIncident(
                    incident_id=iid, tenant_id="", group=group, partition=partition, primary=PLATFORM_KEY,
                    slices=[PLATFORM_KEY], revision=0, kind=_group_kind(group), metric=rec["metric"], best=figures,
                    severity=_severity_of(rec["detector"], rec["effect"], rec["samples"], group), release_id=None,
                    release=None, also_seen=sorted({n for _, n in seen.values()}),
                    evidence=list(rec["evidence_trace_ids"])[-self.evidence_max:],
                    detected_at_trace_id=rec["trace_id"] or "", detected_ms=t,
                    first_seen_ms=min(min(ts for ts, _ in seen.values()), int(rec["first_seen"])), last_seen_ms=t,
                    last_emit_ms=t)
                self.open[iid] = inc
                self.platform_open[group] = iid
                out[iid] = self._build(inc, IncidentStatus.open, t)
            else:
                new_slice = note not in inc.also_seen and len(inc.also_seen) < 64
                if new_slice:
                    inc.also_seen.append(note)
                inc.last_seen_ms = max(inc.last_seen_ms, t)
                if figures["statistic"] - figures["threshold"] > inc.best["statistic"] - inc.best["threshold"]:
                    inc.best, inc.metric = figures, rec["metric"]
                interval = min(self.update_interval_ms * 2 ** max(inc.revision - 1, 0), 3_600_000)
                if new_slice or t - inc.last_emit_ms >= interval:
                    if inc.incident_id not in out:
                        inc.revision += 1
                    inc.last_emit_ms = t
                    status = out[inc.incident_id].status if inc.incident_id in out else IncidentStatus.updated
                    out[inc.incident_id] = self._build(inc, status, t)
            self._persist(inc)
        for inc in list(self.open.values()):
            if not inc.tenant_id and inc.partition == partition and inc.incident_id not in out \
                    and st["clock"] - inc.last_seen_ms >= self.platform_window_ms:
                out[inc.incident_id] = self._resolve(inc, st["clock"], None)
        self.backend.put("plat|state", json.dumps(st, sort_keys=True).encode(), partition)
        return list(out.values())

    def _plat(self, partition: int) -> dict[str, Any]:
        """The platform detector's state (``{"alarms": {group: {tenant: [ms, note]}}, "census":
        {partition: tenants}, "clock": ms}``), loaded once from the backend."""
        if self.plat_state is None:
            raw = self.backend.get("plat|state")
            self.plat_state = json.loads(raw) if raw else {"alarms": {}, "census": {}, "clock": 0}
        return self.plat_state

    def _release_onset(self, alarm: Alarm, info: SliceInfo) -> bool:
        """The alarm is on a release slice and the change started with that release."""
        if info.layer != "release" or not info.release_id:
            return False
        seen = float(alarm.slice_index)
        before_change = max(seen - alarm.samples, 0.0)
        return before_change <= max(self.release_onset_traces, (1 - self.release_onset_fraction) * seen)

    def _mark(self, inc: OpenIncident, row: int) -> None:
        """Remember traffic counts at this alarm (resolution counts traffic after the last one)."""
        f = self.store.f
        inc.marks[self.store.info[row].key] = float(f["own"][row, 0])
        inc.tenant_mark = self._tenant_traffic(inc.tenant_id, admitted=inc.metric in DELAYED_METRICS)
        self._defer(inc)

    def _match(self, info: SliceInfo, group: str) -> OpenIncident | None:
        for inc in self.open.values():
            if inc.group != group or inc.tenant_id != info.tenant_id:
                continue
            if any(slices_overlap(info.key, s) for s in inc.slices):
                return inc
            # the release is the unit of rollback: its slices in other cohorts/workflows join
            if info.release_id and any(parse_slice_key(s)[4] == info.release_id for s in inc.slices):
                return inc
        return None

    def _open(self, alarm: Alarm, info: SliceInfo, ctx: TraceContext) -> OpenIncident | None:
        tenant_open = [i for i in self.open.values() if i.tenant_id == info.tenant_id]
        group = alarm.metric.group
        if len(tenant_open) >= self.max_open:
            worst = max(tenant_open, key=lambda i: i.severity)
            note = f"{info.key}:{alarm.metric.name}"
            if note not in worst.also_seen:
                worst.also_seen.append(note)
                self._persist(worst)
            return None
        episode = self._next_episode(info.key, group, info.partition)
        iid = hashlib.sha1(f"{info.key}|{group}|{episode}".encode()).hexdigest()[:20]
        ev_ids = _evidence(alarm, ctx)[-self.evidence_max :]
        now_ms = _time(alarm, ctx)
        first_ms = _first_ms(alarm, ctx)
        inc = OpenIncident(
            incident_id=iid, tenant_id=info.tenant_id, group=group, partition=info.partition, primary=info.key,
            slices=[info.key], revision=0, kind="", metric=alarm.metric.name, best=_figures(alarm),
            severity=0, release_id=None, release=None, also_seen=[], evidence=ev_ids,
            detected_at_trace_id=_trace(alarm, ctx), detected_ms=now_ms, first_seen_ms=min(first_ms, now_ms),
            last_seen_ms=now_ms, last_emit_ms=now_ms, rows=[alarm.row])
        self._classify(inc, alarm, info, ctx)
        self.open[iid] = inc
        self.store.f["i_open"][alarm.row, GROUP_INDEX[group]] = 1.0
        self.store.dirty.add(alarm.row)
        self._persist(inc)
        return inc

    def _update(self, inc: OpenIncident, alarm: Alarm, info: SliceInfo, ctx: TraceContext,
                pending: bool = False) -> bool:
        """Fold an alarm into an open incident; True when an event is due. ``pending``: the batch
        already emits an event of this incident, which this one replaces (same revision: revisions
        go up by one per event published, with no gaps)."""
        now_ms = _time(alarm, ctx)
        changed = False
        if inc.revision == 0 and now_ms < inc.detected_ms:
            # alarms of the opening batch are folded most-specific first; the detection point is
            # the earliest of them
            inc.detected_ms, inc.detected_at_trace_id = now_ms, _trace(alarm, ctx)
        if inc.revision == 0:  # the change started at the earliest change point of the opening alarms
            inc.first_seen_ms = min(inc.first_seen_ms, _first_ms(alarm, ctx))
        if info.key not in inc.slices:
            inc.slices.append(info.key)
            inc.rows.append(alarm.row)
            self.store.f["i_open"][alarm.row, GROUP_INDEX[inc.group]] = 1.0
            self.store.dirty.add(alarm.row)
            primary = parse_slice_key(inc.primary)
            if LAYER_RANK[info.layer] > LAYER_RANK[primary[0]]:
                inc.primary = info.key
                changed = True
            elif info.layer == "release" and primary[0] == "release" and primary[4] == info.release_id:
                # the same release regressed elsewhere too: widen the primary slice to what they share
                wider = slice_key("release", info.tenant_id, primary[2] if primary[2] == info.cohort else None,
                                  primary[3] if primary[3] == info.workflow else None, info.release_id)
                changed = changed or wider != inc.primary
                inc.primary = wider
        note = f"{info.key}:{alarm.metric.name}"
        if note != f"{inc.primary}:{inc.metric}" and note not in inc.also_seen:
            inc.also_seen.append(note)
        stronger = alarm.statistic - alarm.threshold > inc.best["statistic"] - inc.best["threshold"]
        # an open incident does not blind its slice: the detectors keep running against the
        # frozen baseline, and a level beyond the reported interval is a worsening, reported now
        worse = alarm.metric.name == inc.metric and _worse(alarm, inc.best)
        if worse or ((stronger or changed) and info.key == inc.primary):
            inc.metric = alarm.metric.name
            inc.best = _figures(alarm)
        changed = changed or worse
        for tid in _evidence(alarm, ctx):
            if tid not in inc.evidence:
                inc.evidence.append(tid)
        inc.evidence = inc.evidence[-self.evidence_max :]
        inc.last_seen_ms = max(inc.last_seen_ms, now_ms)
        old_kind, old_sev = inc.kind, inc.severity
        self._classify(inc, alarm, info, ctx)
        changed = changed or inc.kind != old_kind or inc.severity > old_sev
        # routine updates back off exponentially (interval x 2^(revision-1), capped at 1 h)
        interval = min(self.update_interval_ms * 2 ** max(inc.revision - 1, 0), 3_600_000)
        due = now_ms - inc.last_emit_ms >= interval
        if inc.suppressed_until_ms is not None and now_ms < inc.suppressed_until_ms and not worse:
            changed = due = False  # suppressed: routine updates withheld (a worsening still goes out)
        if changed or due:
            if not pending:
                inc.revision += 1
            inc.last_emit_ms = now_ms
            self._persist(inc)
            return True
        self._defer(inc)
        return False

    # ------------------------------------------------------------------ rollout verdicts
    def on_rollback(self, verdict: RolloutVerdict, partition: int) -> Incident | None:
        """Open or update the release-regression incident of a ``rollback`` verdict
        (:mod:`streams.processors.canary`).

        One incident per episode: an open incident of the tenant on the same release (opened by a
        drift detector or an earlier verdict; the release is the unit of rollback) is updated, the
        verdict's cohort and metrics noted in ``also_seen``. Otherwise a ``release_regression``
        incident opens on the release slice (tenant, cohort, workflow scope, release) in the fired
        metric's group, with the same id rule as detector incidents (slice, group, persisted
        episode number), severity ``critical`` for a guardrail and ``high`` otherwise (action
        ``roll_back``). The storm guard applies as in :meth:`on_alarms`.

        Every rollback verdict moves the incident's quiet-traffic mark, so it resolves only
        ``resolve_after_traces`` tenant traces after the last one (the candidate stopped).

        Args:
            verdict: a verdict with ``verdict == rollback``.
            partition: the tenant's source partition (where the incident state is persisted).

        Returns:
            The event to publish: ``open``, ``updated`` (a new cohort/stage/metric, a higher
            severity), or ``None`` for a repeated verdict.

        Raises:
            ValueError: the verdict is not a rollback or names no regressed metric.
        """
        if verdict.verdict.value != "rollback" or not verdict.regressed_metrics:
            raise ValueError(f"verdict {verdict.verdict_id} is {verdict.verdict.value!r} with regressed metrics "
                             f"{verdict.regressed_metrics}; on_rollback needs a rollback")
        fired = verdict.guardrail_fired or verdict.regressed_metrics[0]
        entry = next(e for e in verdict.scorecard if e.metric == fired)
        group = CANARY_METRICS[CANARY_INDEX[fired]].group if fired in CANARY_INDEX else "quality"
        tenant = verdict.tenant_id
        now_ms = to_ms(verdict.emitted_at)
        severity = 3 if verdict.guardrail_fired else 2
        note = (f"rollout:{verdict.cohort}/{verdict.workflow or '*'}/{verdict.arm.value}@{verdict.stage_pct:g}%:"
                + ",".join(verdict.regressed_metrics))
        release = verdict.release.model_dump() if verdict.release is not None else None
        inc = next((i for i in self.open.values() if i.tenant_id == tenant and (
            i.release_id == verdict.release_id or any(parse_slice_key(k)[4] == verdict.release_id for k in i.slices))),
            None)
        if inc is None:
            key = slice_key("release", tenant, verdict.cohort, verdict.workflow, verdict.release_id)
            tenant_open = [i for i in self.open.values() if i.tenant_id == tenant]
            if len(tenant_open) >= self.max_open:  # storm guard, as for detector alarms
                inc = max(tenant_open, key=lambda i: i.severity)
            else:
                episode = self._next_episode(key, group, partition)
                inc = OpenIncident(
                    incident_id=hashlib.sha1(f"{key}|{group}|{episode}".encode()).hexdigest()[:20], tenant_id=tenant,
                    group=group, partition=partition, primary=key, slices=[key], revision=0,
                    kind=IncidentKind.release_regression.value, metric=fired, best=_verdict_figures(verdict, entry),
                    severity=severity, release_id=verdict.release_id, release=release, also_seen=[note],
                    evidence=list(verdict.evidence_trace_ids[-self.evidence_max:]),
                    detected_at_trace_id=verdict.evidence_trace_ids[0] if verdict.evidence_trace_ids else "",
                    detected_ms=now_ms,
                    first_seen_ms=min(to_ms(verdict.first_seen), now_ms), last_seen_ms=now_ms, last_emit_ms=now_ms)
                inc.tenant_mark = self._tenant_traffic(tenant)
                self._set_restore(inc, tenant, verdict.cohort, verdict.workflow, verdict)
                self.open[inc.incident_id] = inc
                self._persist(inc)
                return self._build(inc, IncidentStatus.open, now_ms)
        changed = note not in inc.also_seen or severity > inc.severity
        if note not in inc.also_seen:
            inc.also_seen.append(note)
        if inc.release_id is None:
            inc.release_id, inc.release = verdict.release_id, inc.release or release
            self._set_restore(inc, tenant, verdict.cohort, verdict.workflow, verdict)
            changed = True
        if inc.kind != IncidentKind.safety.value and inc.kind != IncidentKind.release_regression.value:
            inc.kind = IncidentKind.release_regression.value
            changed = True
        inc.severity = max(inc.severity, severity)
        for tid in verdict.evidence_trace_ids:
            if tid not in inc.evidence:
                inc.evidence.append(tid)
        inc.evidence = inc.evidence[-self.evidence_max:]
        inc.last_seen_ms = max(inc.last_seen_ms, now_ms)
        inc.tenant_mark = self._tenant_traffic(tenant)
        if changed:
            inc.revision += 1
            inc.last_emit_ms = now_ms
        self._persist(inc)
        return self._build(inc, IncidentStatus.updated, now_ms) if changed else None

    # ------------------------------------------------------------------ classification
    def _classify(self, inc: OpenIncident, alarm: Alarm, info: SliceInfo, ctx: TraceContext) -> None:
        if inc.release_id is None:
            blamed = self._blame(alarm, info, inc.group)
            if blamed is not None:
                inc.release_id = blamed
                inc.release = self.releases.get(blamed)
                self._set_restore(inc, info.tenant_id, info.cohort, info.workflow)
        if inc.release_id is not None and inc.group != "safety":
            inc.kind = IncidentKind.release_regression.value
        else:
            inc.kind = _group_kind(inc.group)
        inc.severity = max(inc.severity, _severity(alarm, inc.group))

    def _set_restore(self, inc: OpenIncident, tenant: str, cohort: str | None, workflow: str | None,
                     verdict: RolloutVerdict | None = None) -> None:
        """The release to restore for ``inc.release_id``: a rollback verdict's control release
        (``verdict.restore_release_id``), else the busiest other release of the same tenant
        (× cohort × workflow when given) that has its own traffic, i.e. the incumbent the new
        release replaced (``None`` when there is none)."""
        if verdict is not None and verdict.restore_release_id:
            inc.restore_release_id = verdict.restore_release_id
            inc.restore_release = verdict.restore_release.model_dump() if verdict.restore_release else None
            return
        f = self.store.f
        best, traffic = None, 0.0
        for r, si in enumerate(self.store.info):
            if si.layer != "release" or si.tenant_id != tenant or si.release_id in (None, inc.release_id):
                continue
            if (cohort is not None and si.cohort != cohort) or (workflow is not None and si.workflow != workflow):
                continue
            own = float(f["own"][r, 0])
            if own > traffic:
                best, traffic = si.release_id, own
        inc.restore_release_id = best
        inc.restore_release = self.releases.get(best) if best else None

    def _blame(self, alarm: Alarm, info: SliceInfo, group: str) -> str | None:
        """The new release this change started with, if any (see module docstring).

        A release is *new* in a slice when it appeared after the slice had ``warmup_traces`` of
        history (an incumbent present from the start is never blamed). On a release slice the
        CUSUM's change point must lie near the release's first traces; on a wider slice the new
        release must carry the traffic since the change point (between a quarter and all of it).
        The control (other releases of the same tenant × cohort × workflow) must have no open
        incident of the group.
        """
        f = self.store.f
        g = GROUP_INDEX[group]
        if info.layer == "release":
            if not info.release_id or f["born"][alarm.row, 0] < self.warmup:
                return None
            if not self._release_onset(alarm, info):
                return None
            candidates = {info.release_id: 0.0}
        else:
            candidates = {}
            for r, si in enumerate(self.store.info):
                if si.layer == "release" and si.tenant_id == info.tenant_id and f["born"][r, 0] >= self.warmup \
                        and (info.cohort is None or si.cohort == info.cohort) \
                        and (info.workflow is None or si.workflow == info.workflow):
                    candidates[si.release_id] = candidates.get(si.release_id, 0.0) + float(f["own"][r, 0])
            n = float(alarm.samples)
            # the CUSUM's change-point estimate lags the true change when evidence builds slowly,
            # so the release may be up to three times older than the estimated change
            candidates = {rel: t for rel, t in candidates.items() if max(0.25 * n, 30.0) <= t <= 3.0 * n + 300.0}
        for rel in sorted(candidates, key=lambda x: -candidates[x]):
            controls = [
                r for r, si in enumerate(self.store.info)
                if si.layer == "release" and si.tenant_id == info.tenant_id and si.release_id != rel
                and (info.cohort is None or si.cohort == info.cohort)
                and (info.workflow is None or si.workflow == info.workflow)
            ]
            if all(f["i_open"][r, g] == 0 for r in controls):
                return rel
        return None

    def _action(self, inc: OpenIncident) -> RecommendedAction:
        if not inc.tenant_id:  # platform-wide: nothing tenant- or release-specific to roll back
            return RecommendedAction.sample_outputs if inc.group in ("quality", "safety") else RecommendedAction.observe
        if inc.kind == IncidentKind.release_regression.value:
            return RecommendedAction.roll_back if inc.severity >= 2 else RecommendedAction.freeze_rollout
        if inc.kind == IncidentKind.safety.value:
            return RecommendedAction.roll_back if inc.release_id else RecommendedAction.sample_outputs
        if inc.kind == IncidentKind.input_drift.value:
            return RecommendedAction.compare_cohorts
        return RecommendedAction.sample_outputs

    # ------------------------------------------------------------------ resolution
    def sweep(self, ctx_time_ms: int) -> list[Incident]:
        """Resolve incidents whose slices have all been quiet for ``resolve_after_traces``
        (label-delayed incidents are left to :meth:`sweep_delayed`).

        Args:
            ctx_time_ms: event time (ms) stamped on the resolution (latest trace of the batch).
        """
        out = []
        f = self.store.f
        for inc in list(self.open.values()):
            if not inc.tenant_id:  # platform-wide: resolved once no tenant reports it for a window
                if not self.platform_signals and ctx_time_ms - inc.last_seen_ms >= self.platform_window_ms:
                    out.append(self._resolve(inc, ctx_time_ms, None))
                continue
            if inc.metric in DELAYED_METRICS:
                continue
            g = GROUP_INDEX[inc.group]
            if self._tenant_traffic(inc.tenant_id) - inc.tenant_mark < self.resolve_after:
                continue
            # recovered, not just between refires: every slice that still gets traffic has drained
            # its evidence (slices without new traffic, e.g. a rolled-back release, are gone)
            active = [r for r in inc.rows if f["own"][r, 0] > inc.marks.get(self.store.info[r].key, -1.0)]
            if any(self.store.group_statistic(r, g) > self.drained for r in active):
                continue
            out.append(self._resolve(inc, ctx_time_ms, None))
        return out

    def sweep_delayed(self, partition: int, clock_ms: int) -> list[Incident]:
        """Resolve the label-delayed incidents (correction and unsafe-feedback rates) of trace
        partition ``partition`` once their tenant's traces up to the feedback clock number
        ``resolve_after_traces`` more than at the last alarm and their slices' label-delayed
        CUSUMs have drained. Called after every evaluation tick of the feedback clock
        (``DelayedMetrics.tick_hook``), so when such an incident resolves, and so whether a later
        alarm joins it or opens a new episode and when its slices' baselines learn again, depends
        on the feedback and trace event times, not on how the two topics' batches interleave.

        Args:
            partition: the trace partition whose feedback clock ticked.
            clock_ms: that clock, feedback event time (ms), stamped on the resolution.

        Returns:
            the resolution events (status ``resolved``), in the order of :attr:`open`.
        """
        out = []
        f = self.store.f
        for inc in list(self.open.values()):
            if not inc.tenant_id or inc.partition != partition or inc.metric not in DELAYED_METRICS:
                continue
            if self._tenant_traffic(inc.tenant_id, admitted=True) - inc.tenant_mark < self.resolve_after:
                continue
            if any(float(f["p_s"][r, j]) > self.drained for r in inc.rows for j in _POISSON_COLS[inc.group]):
                continue
            out.append(self._resolve(inc, clock_ms, None))
        return out

    def _resolve(self, inc: OpenIncident, now_ms: int, note: str | None, resolution: str = "recovered") -> Incident:
        """Close an incident: unfreeze its slices' baselines, forget it as open, return the event.

        Its final state stays in the backend under ``done|<tenant>|<id>``, so actions that come
        after the resolution (a rollback executed later, a false-positive mark) still apply to it
        and emit its next revision."""
        f = self.store.f
        g = GROUP_INDEX[inc.group]
        for r in inc.rows:
            f["i_open"][r, g] = 0.0
            self.store.dirty.add(r)
        inc.revision += 1
        inc.resolution = resolution
        inc.last_seen_ms = max(inc.last_seen_ms, now_ms)
        event = self._build(inc, IncidentStatus.resolved, now_ms, note)
        self.open.pop(inc.incident_id, None)
        if self.platform_open.get(inc.group) == inc.incident_id:
            del self.platform_open[inc.group]
        owner = inc.tenant_id or PLATFORM
        self.backend.put(f"inc|{owner}|{inc.incident_id}", b"", inc.partition)
        self.backend.put(f"done|{owner}|{inc.incident_id}", inc.to_json(), inc.partition)
        # bounded: the latest CLOSED_KEPT resolved incidents of a tenant still take actions
        index_key = f"done-index|{owner}"
        ids = json.loads(self.backend.get(index_key) or b"[]")
        if inc.incident_id not in ids:
            ids.append(inc.incident_id)
        while len(ids) > CLOSED_KEPT:
            self.backend.put(f"done|{owner}|{ids.pop(0)}", b"", inc.partition)
        self.backend.put(index_key, json.dumps(ids).encode(), inc.partition)
        return event

    # ------------------------------------------------------------------ actions
    def on_action(self, action: dict[str, Any], partition: int) -> ActionOutcome:
        """Apply one incident action (a decoded, validated ``IncidentAction`` dict, times in ms).

        Refused (a dead letter, nothing changes) when the action is unknown (``unknown_action``),
        the incident is not one of the tenant's (``unknown_incident``; ``foreign_incident`` when
        this worker holds it for another tenant or it is platform-wide), or a field the action
        needs is missing (``validation``: ``until`` after ``at`` for suppress, ``release_id`` for
        promotion_executed). An ``action_id`` already applied to the incident is a replay (no
        event: redelivery and resends apply once). Otherwise the effect (:class:`schemas.ActionKind`)
        is applied and the incident's next revision returned, stamped with the action's time:
        ``resolved`` for accept_new_baseline and mark_false_positive (and for any action on an
        incident already resolved), ``updated`` otherwise.

        Args:
            action: ``IncidentAction`` fields; ``at`` and ``until`` in epoch ms.
            partition: the tenant's source partition (where the incident's state is persisted).
        """
        kind, tenant, iid = action["action"], action["tenant_id"], action["incident_id"]
        if kind not in ACTION_KINDS:
            return ActionOutcome(error_class="unknown_action", field="action", value=kind,
                                 message=f"unknown incident action {kind!r}; known: {', '.join(sorted(ACTION_KINDS))}")
        inc = self.open.get(iid)
        closed = False
        if inc is None:
            raw = self.backend.get(f"done|{tenant}|{iid}")
            if raw:
                inc, closed = OpenIncident.from_json(raw), True
        if inc is None or inc.tenant_id != tenant:
            holder = inc.tenant_id if inc is not None else self._closed_owner(iid)
            if holder is not None:
                whose = "a platform-wide incident" if holder == "" else "another tenant's incident"
                return ActionOutcome(error_class="foreign_incident", field="incident_id", value=iid,
                                     message=f"incident {iid} is {whose}, not one of tenant {tenant!r}'s")
            return ActionOutcome(error_class="unknown_incident", field="incident_id", value=iid,
                                 message=f"tenant {tenant!r} has no incident {iid} (never opened, or on a "
                                         "partition this worker does not own)")
        at, until = int(action["at"]), action.get("until")
        if kind == ActionKind.suppress and (until is None or int(until) <= at):
            return ActionOutcome(error_class="validation", field="until", value="null" if until is None else str(until),
                                 message=f"suppress needs until after at={at} ms, got {until}")
        if kind == ActionKind.promotion_executed and not action.get("release_id"):
            return ActionOutcome(error_class="validation", field="release_id", value=None,
                                 message="promotion_executed needs the release_id that was promoted")
        if any(a["action_id"] == action["action_id"] for a in inc.actions):
            return ActionOutcome(replay=True)
        taken = {k: action.get(k) for k in ActionTaken.model_fields}  # what the incident records of it
        if kind == ActionKind.rollback_executed:
            taken["release_id"] = taken["release_id"] or inc.release_id
            taken["restored_release_id"] = taken["restored_release_id"] or inc.restore_release_id
        inc.actions.append(taken)
        if kind == ActionKind.acknowledge:
            inc.acknowledged_by = inc.acknowledged_by or action["actor"]
        elif kind == ActionKind.suppress:
            inc.suppressed_until_ms = int(until)
        if kind in MITIGATIONS and inc.mitigated_ms is None:
            inc.mitigated_ms = at
        resolves = kind in (ActionKind.accept_new_baseline, ActionKind.mark_false_positive)
        resolution = "accepted_new_baseline" if kind == ActionKind.accept_new_baseline else "false_positive"
        note = f"{kind} by {action['actor']}"
        if closed:
            if resolves:
                inc.resolution = resolution
                if kind == ActionKind.accept_new_baseline:
                    self._rebaseline(inc)
            inc.revision += 1
            self.backend.put(f"done|{inc.tenant_id}|{iid}", inc.to_json(), inc.partition)
            return ActionOutcome(event=self._build(inc, IncidentStatus.resolved, at, note))
        if resolves:
            if kind == ActionKind.accept_new_baseline:
                self._rebaseline(inc)
            else:
                for r in inc.rows:
                    self.store.restart_detectors(r, GROUP_INDEX[inc.group])
            return ActionOutcome(event=self._resolve(inc, at, note, resolution))
        inc.revision += 1
        inc.last_emit_ms = max(inc.last_emit_ms, at)
        self._persist(inc)
        return ActionOutcome(event=self._build(inc, IncidentStatus.updated, at, note))

    def knows(self, tenant_id: str, incident_id: str) -> bool:
        """Whether ``incident_id`` is one of ``tenant_id``'s incidents here, open or resolved."""
        inc = self.open.get(incident_id)
        if inc is not None:
            return inc.tenant_id == tenant_id
        return bool(self.backend.get(f"done|{tenant_id}|{incident_id}"))

    def _rebaseline(self, inc: OpenIncident) -> None:
        """accept_new_baseline: every slice of the incident that this worker holds adopts the
        post-change level of the incident's group (:meth:`SliceStore.rebaseline`)."""
        g = GROUP_INDEX[inc.group]
        rows = inc.rows or [r for r in (self.store.index.get(k) for k in inc.slices) if r is not None]
        for r in rows:
            self.store.rebaseline(r, g, retain_traces=max(self.warmup / 10.0, 1.0))

    def _closed_owner(self, incident_id: str) -> str | None:
        """The tenant ("" = platform) holding a resolved incident ``incident_id`` on this worker,
        or ``None`` (a scan: only on the refusal path)."""
        suffix = f"|{incident_id}"
        for key, value in self.backend.items():
            if key.startswith("done|") and key.endswith(suffix) and value:
                owner = key[len("done|"):-len(suffix)]
                return "" if owner == PLATFORM else owner
        return None

    def _tenant_traffic(self, tenant: str, admitted: bool = False) -> float:
        """Traces of ``tenant`` seen so far (its tenant-layer slice, else its busiest slice);
        ``admitted``: only those its label-delay ring holds (up to the feedback clock)."""
        f = self.store.f

        def own(r: int) -> float:
            return float(f["own"][r, 0] - (f["pa_n"][r].sum() if admitted else 0.0))

        row = self.store.index.get(slice_key("tenant", tenant, None, None, None))
        if row is not None:
            return own(row)
        rows = [i for i, si in enumerate(self.store.info) if si.tenant_id == tenant]
        return max((own(r) for r in rows), default=0.0)

    # ------------------------------------------------------------------ events
    def _event(self, inc: OpenIncident, status: IncidentStatus, ctx: TraceContext) -> Incident:
        return self._build(inc, status, inc.last_seen_ms)

    def _build(self, inc: OpenIncident, status: IncidentStatus, emitted_ms: int, note: str | None = None) -> Incident:
        layer, tenant, cohort, workflow, release = parse_slice_key(inc.primary)
        tenant = None if tenant == "*" else tenant
        components = changed_components(inc.release, inc.restore_release)
        b = inc.best
        sev = SEVERITIES[min(inc.severity, 3)]
        action = self._action(inc)
        where = "/".join(p for p in (tenant, cohort, workflow, release) if p) or \
            f"the platform ({len(inc.also_seen)} slices)"
        summary = (f"{_moved(inc.metric, b)} on {where}"
                   + (f" after release {inc.release_id}" if inc.release_id else "")
                   + f": {inc.kind.replace('_', ' ')}, {action.value.replace('_', ' ')}"
                   + (f"; {note}" if note else ""))
        return Incident(
            incident_id=inc.incident_id, status=status, revision=inc.revision, kind=IncidentKind(inc.kind),
            slice=Slice(layer=layer, tenant_id=tenant, cohort=cohort, workflow=workflow, release_id=release),
            metric_group=inc.group, metric=inc.metric, baseline=_finite(b["baseline"]), observed=_finite(b["observed"]),
            observed_ci_low=_finite(b["ci_low"]), observed_ci_high=_finite(b["ci_high"]), effect=_finite(b["effect"]),
            samples=int(b["samples"]), detector=b["detector"], statistic=_finite(b["statistic"]),
            threshold=_finite(b["threshold"]), severity=sev, action=action, release_id=inc.release_id,
            release=inc.release, also_seen=list(inc.also_seen[:32]), summary=summary,
            evidence_trace_ids=list(inc.evidence[-64:]), detected_at_trace_id=inc.detected_at_trace_id,
            first_seen=from_ms(inc.first_seen_ms), last_seen=from_ms(inc.last_seen_ms), emitted_at=from_ms(emitted_ms),
            detected_at=from_ms(inc.detected_ms),
            resolution=inc.resolution if status == IncidentStatus.resolved else None,
            acknowledged_by=inc.acknowledged_by,
            suppressed_until=from_ms(inc.suppressed_until_ms) if inc.suppressed_until_ms is not None else None,
            mitigated_at=from_ms(inc.mitigated_ms) if inc.mitigated_ms is not None else None,
            actions=[{**a, "at": from_ms(a["at"]), "until": from_ms(a["until"]) if a.get("until") is not None
                      else None} for a in inc.actions[-ACTIONS_SHOWN:]],
            restore_release_id=inc.restore_release_id, restore_release=inc.restore_release,
            changed_components=components, drift_matrix=matrix_row(inc.kind, inc.release_id, components))


def _worse(alarm: Alarm, best: dict[str, Any]) -> bool:
    """The alarm's level, relative to its own slice's baseline, lies beyond the incident's
    reported interval relative to its baseline, in the incident's direction (a rise: the alarm's
    ``ci_low / baseline`` above the incident's ``ci_high / baseline``; a fall: mirrored). Ratios
    make slices of one metric comparable (a workflow's latency differs from its tenant's)."""
    if best.get("detector") == "canary_msprt" or alarm.baseline <= 0 or best["baseline"] <= 0 \
            or alarm.category != best.get("category"):  # shares of two input-mix categories do not compare
        return False
    if best["observed"] >= best["baseline"]:
        return alarm.ci_low / alarm.baseline > best["ci_high"] / best["baseline"]
    return alarm.ci_high / alarm.baseline < best["ci_low"] / best["baseline"]


def _moved(metric: str, b: dict[str, Any]) -> str:
    """What an incident's figures say moved: ``"latency_p95 rose from 0.05 to 0.2 (900 traces)"``;
    for the input mix, the category whose share moved most and the divergence, ``"input_mix:
    workflow/intent 'soap_note/inpatient' share rose from 0.051 to 0.3 (300 traces, Jensen-Shannon
    divergence 0.09 nats)"`` (platform incidents, whose signals carry no category, say "the
    most-moved category")."""
    verb = "rose" if b["observed"] >= b["baseline"] else "fell"
    if b["detector"] != DETECTORS["categorical"]:
        return f"{metric} {verb} from {b['baseline']:.4g} to {b['observed']:.4g} ({b['samples']} traces)"
    return (f"{metric}: {b.get('category', 'the most-moved category')} share {verb} from {b['baseline']:.2g} to "
            f"{b['observed']:.2g} ({b['samples']} traces, Jensen-Shannon divergence {b['effect']:.2g} nats)")


def _figures(alarm: Alarm) -> dict[str, Any]:
    figures = {"baseline": alarm.baseline, "observed": alarm.observed, "ci_low": alarm.ci_low,
               "ci_high": alarm.ci_high, "effect": alarm.effect, "samples": alarm.samples,
               "statistic": alarm.statistic, "threshold": alarm.threshold, "detector": alarm.metric.detector}
    if alarm.category is not None:
        figures["category"] = alarm.category
    return figures


def _verdict_figures(verdict: RolloutVerdict, entry: Any) -> dict[str, Any]:
    """Incident figures from a verdict's scorecard entry: baseline/observed in the metric's unit,
    effect = candidate/control ratio of the harmful-event rate with its always-valid interval
    (mapped onto observed for rates; latency and cost intervals are on the event rate only)."""
    rate_like = entry.unit == "rate"
    effect = 1.0 + entry.delta
    return {"baseline": entry.control, "observed": entry.candidate,
            "ci_low": entry.control * (1.0 + entry.ci_low) if rate_like else entry.candidate,
            "ci_high": entry.control * (1.0 + entry.ci_high) if rate_like else entry.candidate,
            "effect": effect, "samples": entry.samples_candidate,
            "statistic": -math.log(max(entry.p_value, 1e-300)), "threshold": -math.log(verdict.alpha_rollback),
            "detector": "canary_msprt"}
def _group_kind(group: str) -> str:
    """Kind of a change in a metric group when no release explains it (the drift matrix)."""
    return {"safety": IncidentKind.safety, "input": IncidentKind.input_drift, "latency": IncidentKind.output_drift,
            "output": IncidentKind.output_drift}.get(group, IncidentKind.workflow_drift).value


def _evidence(alarm: Alarm, ctx: TraceContext) -> list[str]:
    return list(alarm.evidence_ids) if alarm.pos < 0 else [ctx.trace_id(p) for p in alarm.evidence]


def _first_ms(alarm: Alarm, ctx: TraceContext) -> int:
    """Event time of the alarm's estimated change point, ms: ``Alarm.cp_event_time_ms`` when the
    detector set it (the delayed-label detectors: the change point in trace time; the CUSUMs and
    input-mix windows: the change point's trace, whatever batch it was in), else the change point
    or first evidence trace within the batch, else the alarm's own time."""
    now_ms = _time(alarm, ctx)
    if alarm.pos < 0:
        return alarm.cp_event_time_ms or now_ms
    if alarm.cp_event_time_ms is not None and alarm.cp_event_time_ms >= 0:
        return min(now_ms, int(alarm.cp_event_time_ms))
    return min(now_ms, ctx.event_time_ms(alarm.cp_pos if alarm.cp_pos is not None else alarm.evidence[0]))


def _time(alarm: Alarm, ctx: TraceContext) -> int:
    return int(alarm.event_time_ms or 0) if alarm.pos < 0 else ctx.event_time_ms(alarm.pos)


def _trace(alarm: Alarm, ctx: TraceContext) -> str:
    return alarm.trace_id or "" if alarm.pos < 0 else ctx.trace_id(alarm.pos)


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0


def _severity(alarm: Alarm, group: str) -> int:
    """0..3 = low..critical from effect size, exposure and group."""
    return _severity_family(alarm.metric.family, alarm.effect, alarm.samples, group)


def _severity_of(detector: str, effect: float, samples: int, group: str) -> int:
    """:func:`_severity` from a signal's figures (the family from the detector's name)."""
    family = next((f for f, d in DETECTORS.items() if d == detector), "categorical")
    return _severity_family(family, effect, samples, group)


def _alarm_signal(alarm: Alarm, info: SliceInfo, ctx: TraceContext, evidence: int) -> dict[str, Any]:
    """The ``PlatformSignal`` (kind alarm) of a tenant slice's alarm, times in ms."""
    return {"kind": "alarm", "source_partition": info.partition, "tenants": 0, "tenant_id": info.tenant_id,
            "slice_key": info.key, "metric_group": alarm.metric.group, "metric": alarm.metric.name,
            "detector": alarm.metric.detector, "trace_id": _trace(alarm, ctx), "event_time": _time(alarm, ctx),
            "first_seen": _first_ms(alarm, ctx), **{k: _finite(v) for k, v in _figures(alarm).items()
                                                  if k not in ("samples", "detector", "category")},
            "samples": int(alarm.samples), "evidence_trace_ids": _evidence(alarm, ctx)[-evidence:]}


def _severity_family(family: str, effect: float, samples: int, group: str) -> int:
    fam = family
    e = abs(effect)
    if fam in ("bernoulli", "poisson"):
        level = 2 if e >= 3 else 1 if e >= 1.8 else 0
    elif fam == "gaussian":
        level = 2 if e >= 2 else 1 if e >= 0.8 else 0
    else:
        level = 1 if e >= 0.05 else 0
    if samples >= 1000:
        level += 1
    if group == "safety":
        level += 1
    return min(level, 3)
