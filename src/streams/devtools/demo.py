"""``selfheal demo`` (``make demo``): the main job end to end on the configured broker and an
embedded ClickHouse of its own.

:func:`run_demo` starts a worker (:mod:`streams.devtools.launcher`), simulates a multi-tenant
clinical fleet (:class:`~streams.devtools.simulate.FleetSimulator` with one injected release
regression, the staged rollouts ``DEMO_ROLLOUTS`` and clinician feedback delayed in event time by
``DEMO_FEEDBACK_DELAY``, log-normal with median 20 min and p99 3 h), waits until the worker's consumer group
has committed everything, stops the worker, reads ClickHouse and writes a JSON summary
(:func:`summary`), then prints it (:func:`print_summary`).

Where its data goes: topics under the prefix ``demo.`` (unless ``SELFHEAL_TOPIC_PREFIX`` is set)
and the chDB directory ``<SELFHEAL_STATE_DIR>/demo/clickhouse`` (``.local/demo/clickhouse``),
both wiped at the start of each run, so a demo never touches the default store
(``.local/clickhouse``) a real worker writes. The demo ends by printing the commands that read
its store (``SELFHEAL_CLICKHOUSE_PATH=.local/demo/clickhouse selfheal incidents <tenant>``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.config import Settings


def demo_settings(base: Settings) -> Settings:
    """The demo's settings: ``base`` with the topic prefix ``demo.`` (unless one is set) and
    state and chDB under ``<state_dir>/demo``."""
    demo_dir = base.state_dir / "demo"
    return base.model_copy(update={"topic_prefix": base.topic_prefix or "demo.",
                                   "clickhouse_path": demo_dir / "clickhouse", "state_dir": demo_dir})


def run_demo(base: Settings, console: Console, traces: int = 50_000, seed: int = 7,
             out: Path = Path("demo-summary.json"), timeout_s: float = 600.0) -> int:
    """Run the demo (module docstring) and return the exit code: 0 when the injected regression
    was detected and every staged rollout got a verdict, 1 when not, 2 when the worker exited.

    Args:
        base: settings from the environment (broker, prefix, state directory).
        console: where progress, the summary tables and the follow-up commands go.
        traces: traces to simulate. seed: the simulation's seed.
        out: summary JSON path. timeout_s: max wait for the worker to catch up, seconds.

    Raises:
        BrokerUnavailableError: no broker answers at ``SELFHEAL_KAFKA_BOOTSTRAP``.
    """
    from confluent_kafka import Producer

    from schemas import default_codec
    from streams.devtools.launcher import WorkerProcess
    from streams.devtools.simulate import DEMO_BENIGN_SHIFT, DEMO_FEEDBACK_DELAY, DEMO_ROLLOUTS, FleetSimulator
    from streams.sdk import SelfhealProducer
    from streams.sinks.clickhouse import ClickHouseSink
    from streams.topics import check_broker, delete_topics, ensure_topics, group_lag

    settings = demo_settings(base)
    demo_dir = settings.state_dir
    check_broker(settings)
    console.rule("[bold]selfheal demo")
    console.print(f"Kafka {settings.kafka_bootstrap}, topics {settings.topic('traces')} ..., "
                  f"ClickHouse {settings.clickhouse_url or 'chdb://' + str(settings.clickhouse_dir)}")
    # fresh run: previous demo topics and chDB data go
    delete_topics(settings)
    if demo_dir.exists() and not settings.clickhouse_url:
        shutil.rmtree(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(30):
        try:
            ensure_topics(settings)
            break
        except Exception:
            time.sleep(1)
    # the user's own SELFHEAL_SNAPSHOT_INTERVAL_S wins over the demo's 5 s
    snapshots = {} if "SELFHEAL_SNAPSHOT_INTERVAL_S" in os.environ else {"SELFHEAL_SNAPSHOT_INTERVAL_S": "5"}
    if "SELFHEAL_STATS_INTERVAL_S" not in os.environ:  # a stats line soon after the catch-up (detector counters)
        snapshots["SELFHEAL_STATS_INTERVAL_S"] = "1"
    worker = WorkerProcess.for_settings(settings, demo_dir / "worker.log", snapshots, truncate_log=True).start()
    console.print(f"worker started (pid {worker.pid}, log {worker.log})")
    sim = FleetSimulator(traces=traces, seed=seed, rollouts=DEMO_ROLLOUTS, benign_shift=DEMO_BENIGN_SHIFT,
                         feedback_delay_s=DEMO_FEEDBACK_DELAY)
    codec = default_codec()
    t0 = time.perf_counter()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("producing traces", total=traces)
            with SelfhealProducer(settings) as sdk:
                rep = sim.run(sdk, progress=lambda d, n: progress.update(task, completed=d),
                              raw_producer=Producer(settings.kafka_config()), codec=codec)
            progress.update(task, completed=traces)
            group = settings.full_app_id
            topics_ = [settings.topic("traces"), settings.topic("feedback")]
            done, end = group_lag(settings, group, topics_)
            ing = progress.add_task("worker consuming (messages)", total=end)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                done, end = group_lag(settings, group, topics_)
                progress.update(ing, completed=done, total=end)
                if done >= end:
                    break
                if not worker.alive():
                    console.print(f"[red]worker exited with {worker.proc.returncode}; see {worker.log}")
                    return 2
                time.sleep(1.0)
            caught_up = done >= end
            # the rollout system's turn: it reads the incidents and sends back what it did
            sent = send_actions(settings, rollout_actions(read_incidents(settings, codec), rep.benign_shift,
                                                          int(time.time() * 1000)))
            task = progress.add_task("worker applying incident actions", total=max(sent, 1))
            actions_topic = [settings.topic("actions")]
            while sent and time.monotonic() < deadline and worker.alive():
                done_a, end_a = group_lag(settings, group, actions_topic)
                progress.update(task, completed=min(done_a, sent))
                if end_a and done_a >= end_a:
                    break
                time.sleep(0.5)
            progress.update(task, completed=max(sent, 1))
            stats = last_stats(worker.log, timeout_s=15.0)
    finally:
        worker.stop(timeout=60)
    elapsed = time.perf_counter() - t0
    sink = ClickHouseSink(settings)
    try:
        s = summary(sink, rep, elapsed, caught_up, stats)
    finally:
        sink.close()
    out.write_text(json.dumps(s, indent=2))
    print_summary(s, out, console)
    print_next_steps(settings, s, console)
    if not s["injected_detected"]:
        console.print("[bold red]The injected regression was NOT detected.")
        return 1
    if rep.rollouts and not s["verdicts"]["scorecards"]:
        console.print("[bold red]The staged rollout got NO verdict.")
        return 1
    return 0


def last_stats(log: Path, timeout_s: float) -> dict[str, Any]:
    """The worker's counters (its ``stats {...}`` log line, :meth:`streams.worker.app.Worker.stats`)
    from the first stats line logged after the call (``log`` polled for up to
    ``timeout_s`` seconds); the last line logged so far when none comes in time,
    ``{}`` when there is none."""
    def lines() -> list[str]:
        return [ln.split("stats ", 1)[1] for ln in log.read_text(errors="replace").splitlines() if "stats {" in ln]

    seen = len(lines())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(lines()) <= seen:
        time.sleep(0.2)
    got = lines()
    if not got:
        return {}
    try:
        return {k: v for k, v in json.loads(got[-1]).items() if k != "flow"}
    except ValueError:
        return {}


def delay_figures(delays_s: list[float], not_yet_due: int) -> dict[str, Any]:
    """Median, p99 and max (seconds, nearest rank) of the event-time delays of the feedback sent
    after its trace, how many were sent, and how many were still due after the run (not sent)."""
    d = sorted(delays_s)
    if not d:
        return {"sent": 0, "not_yet_due": not_yet_due, "median_s": None, "p99_s": None, "max_s": None}

    def rank(q: float) -> float:
        return round(d[min(len(d) - 1, max(0, math.ceil(q * len(d)) - 1))], 1)

    return {"sent": len(d), "not_yet_due": not_yet_due, "median_s": rank(0.5), "p99_s": rank(0.99),
            "max_s": round(d[-1], 1)}


#: the worker's delayed-label counters shown in the summary (:mod:`streams.processors.drift.delayed`)
DETECTOR_COUNTERS = ("feedback_events", "late_feedback", "unmatched_feedback", "folded_feedback",
                     "folded_buckets", "coarsened_buckets", "admitted_ahead")


def read_incidents(settings: Settings, codec: Any, timeout_s: float = 60.0) -> list[Any]:
    """The latest revision of every incident on the incidents topic (what a rollout system
    subscribed to ``agent.incidents.v1`` knows now), in order of detection."""
    from schemas import Incident
    from streams.devtools.chaos import read_topic

    latest: dict[str, Any] = {}
    for _, _, _, value in read_topic(settings, settings.topic("incidents"), timeout_s):
        inc = Incident.model_validate(codec.decode(value)[1])
        if inc.incident_id not in latest or inc.revision > latest[inc.incident_id].revision:
            latest[inc.incident_id] = inc
    return sorted(latest.values(), key=lambda i: (i.detected_at or i.first_seen, i.incident_id))


def rollout_actions(incidents: list[Any], benign_shift: Any, now_ms: int) -> list[dict[str, Any]]:
    """What a rollout system and its on-call do about ``incidents`` (latest revisions), as
    ``IncidentAction`` dicts (times in epoch ms, on the simulated timeline, never after ``now_ms``):

    - every tenant incident is acknowledged by the tenant's on-call 2 minutes after detection;
    - a release regression is rolled back by the rollout controller 10 minutes after detection,
      to the restore release the incident names;
    - a latency incident on the benign shift's tenant × cohort (``benign_shift``, no release) is
      accepted as the new baseline by the tenant's SRE 30 minutes after detection.

    Action ids are deterministic (``<action>-<incident_id>``): a rerun resends the same actions,
    which the worker applies once.
    """
    from schemas.common import to_ms

    out = []
    for inc in incidents:
        tenant = inc.slice.tenant_id
        if not tenant or inc.status.value == "resolved":
            continue
        t0 = to_ms(inc.detected_at or inc.last_seen)

        def act(kind: str, after_min: float, actor: str, reason: str, _inc: Any = inc, _t0: int = t0,
                **extra: Any) -> dict[str, Any]:
            return {"action_id": f"{kind}-{_inc.incident_id}", "incident_id": _inc.incident_id,
                    "tenant_id": _inc.slice.tenant_id, "action": kind, "actor": actor, "reason": reason,
                    "at": min(_t0 + int(after_min * 60_000), now_ms), **extra}

        out.append(act("acknowledge", 2, f"oncall@{tenant}", "paged; looking"))
        if inc.kind.value == "release_regression" and inc.release_id:
            out.append(act("rollback_executed", 10, "rollout-controller",
                           f"{inc.metric} regression on {inc.release_id}; restored {inc.restore_release_id}",
                           release_id=inc.release_id, restored_release_id=inc.restore_release_id))
        elif (benign_shift is not None and tenant == benign_shift.tenant_id
              and inc.slice.cohort in (benign_shift.cohort, None) and inc.metric_group == "latency"
              and inc.release_id is None):
            out.append(act("accept_new_baseline", 30, f"sre@{tenant}",
                           "EHR gateway move: the new latency level is expected"))
    return out


def send_actions(settings: Settings, actions: list[dict[str, Any]]) -> int:
    """Send ``actions`` with the SDK (``send_action``) and wait for their delivery; returns how many."""
    from streams.sdk import SelfhealProducer

    with SelfhealProducer(settings) as sdk:
        for a in actions:
            sdk.send_action(a)
    return len(actions)


def lifecycle(sink: Any) -> list[dict[str, Any]]:
    """Each incident's lifecycle from the ledger (``v_incident_lifecycle``, ``incident_actions``):
    detection, what to restore, the actions in order with who took them, mitigation, resolution."""
    actions: dict[str, list[dict[str, Any]]] = {}
    for iid, at, action, actor, rev in sink.query(
            "SELECT incident_id, at, action, actor, revision FROM {db}.incident_actions FINAL ORDER BY at, revision"):
        actions.setdefault(iid, []).append({"at": at.isoformat(), "action": action, "actor": actor, "revision": rev})
    out = []
    for r in sink.query_dicts(
            "SELECT l.incident_id AS incident_id, l.tenant_id AS tenant_id, l.kind AS kind, "
            "l.release_id AS release_id, l.restore_release_id AS restore_release_id, l.status AS status, "
            "l.resolution AS resolution, l.time_to_detect_s AS time_to_detect_s, "
            "l.time_to_mitigate_s AS time_to_mitigate_s, i.changed_components AS changed_components, "
            "i.rollback_required AS rollback_required, i.revision AS revision "
            "FROM {db}.v_incident_lifecycle AS l "
            "INNER JOIN (SELECT * FROM {db}.incidents FINAL) AS i "
            "ON i.tenant_id = l.tenant_id AND i.incident_id = l.incident_id ORDER BY l.detected_at"):
        out.append({**r, "changed_components": list(r["changed_components"]),
                    "actions": actions.get(r["incident_id"], [])})
    return out


def summary(sink: Any, rep: Any, elapsed_s: float, caught_up: bool,
            worker_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The demo summary (what ``demo-summary.json`` holds) from ClickHouse and the simulation's
    report ``rep`` (:class:`~streams.devtools.simulate.SimulationReport`): counts in and out,
    incidents with the traces of the injected slice after the change that each needed (for a
    delayed-label alarm, ``detector`` ``poisson_cusum``: the injected release's traces with event
    time up to its detection, a feedback time), rollout verdicts, feedback aggregation figures, the
    feedback delays sent (:func:`delay_figures`) and the worker's delayed-label counters
    (``worker_stats``: :func:`last_stats`; :data:`DETECTOR_COUNTERS`, each ``None`` when the worker
    logged no stats line; ``late_feedback_share``: late / feedback events). ``elapsed_s`` in seconds."""
    worker_stats = worker_stats or {}
    q = sink.query
    change = rep.injected[0]
    incidents = []
    for row in q("SELECT incident_id, kind, tenant_id, cohort, workflow, metric, release_id, action, severity, "
                 "detected_at_trace_id, detector, status, layer, summary, revision, detected_at "
                 "FROM {db}.incidents FINAL ORDER BY first_seen"):
        iid, kind, tenant, cohort, workflow, metric, release, action, sev, at_tid, detector, status, layer, \
            text, rev, detected_at = row
        on_slice = tenant == change.tenant_id and cohort in ("", change.cohort)
        after = None
        if on_slice and detector == "poisson_cusum":
            # a delayed-label alarm comes at a feedback time and its evidence traces may predate the
            # injection: count the injected slice's traces of the new release run by then
            after = q("SELECT count() FROM {db}.traces FINAL WHERE tenant_id = {t:String} AND cohort = {c:String} "
                      "AND release_id = {r:String} AND event_time <= {at:DateTime64(3, 'UTC')}",
                      {"t": change.tenant_id, "c": change.cohort, "r": change.release_id, "at": detected_at})[0][0]
        elif on_slice and at_tid in rep.slice_ordinal:
            after = rep.slice_ordinal[at_tid] - rep.slice_ordinal_at_injection
        incidents.append({
            "incident_id": iid, "kind": kind, "tenant_id": tenant, "cohort": cohort or None,
            "workflow": workflow or None, "layer": layer, "metric": metric, "release_id": release or None,
            "detected_after_traces": after,
            "action": action, "severity": sev, "status": status, "revision": rev, "summary": text,
        })
    injected_hits = [i for i in incidents if i["detected_after_traces"] is not None and i["detected_after_traces"] >= 0]
    counts = {t: q(f"SELECT count() FROM {{db}}.{t} FINAL")[0][0]
              for t in ("traces", "feedback", "incidents", "baseline_snapshots")}
    return {
        "traces_produced": rep.traces_produced,
        "traces_ingested": counts["traces"],
        "deadlettered": q("SELECT count() FROM {db}.dead_letters FINAL")[0][0],
        "bad_input_sent": {"messages": rep.bad_messages, "records": rep.bad_records},
        "feedback_produced": rep.feedback_produced,
        "feedback_unique_expected": rep.feedback_unique_expected,
        "feedback_replays_sent": rep.feedback_replays,
        "feedback_resubmits_sent": rep.feedback_resubmits,
        "feedback_rows_raw": q("SELECT count() FROM {db}.feedback_submissions FINAL")[0][0],
        "feedback_rows_deduped": counts["feedback"],
        "feedback_near_duplicates_sent": rep.feedback_near_duplicates,
        "feedback_conflicts_sent": rep.feedback_conflicts,
        **feedback_summary(q),
        "feedback_delay": delay_figures(getattr(rep, "feedback_delays_s", []), getattr(rep, "feedback_not_yet_due", 0)),
        "detector_counters": {k: worker_stats.get(k) for k in DETECTOR_COUNTERS},
        "late_feedback_share": (round(worker_stats["late_feedback"] / worker_stats["feedback_events"], 4)
                                if worker_stats.get("feedback_events") and "late_feedback" in worker_stats else None),
        "clickhouse": counts,
        "injected_changes": [{"tenant_id": change.tenant_id, "cohort": change.cohort,
                              "workflow": None if change.workflow == "*" else change.workflow,
                              "release_id": change.release_id, "at_trace": change.at_trace,
                              "correction_factor": change.correction_factor, "latency_factor": change.latency_factor}],
        "incidents": incidents,
        "injected_detected": bool(injected_hits),
        "first_detection_after_traces": min((i["detected_after_traces"] for i in injected_hits), default=None),
        "worker_caught_up": caught_up,
        "elapsed_s": round(elapsed_s, 1),
        "verdicts": verdict_summary(sink, rep),
        "benign_shift": None if getattr(rep, "benign_shift", None) is None else {
            "tenant_id": rep.benign_shift.tenant_id, "cohort": rep.benign_shift.cohort,
            "at_fraction": rep.benign_shift.at, "latency_factor": rep.benign_shift.latency_factor},
        "lifecycle": lifecycle(sink),
    }


def verdict_summary(sink: Any, rep: Any) -> dict[str, Any]:
    """The rollouts simulated and their scorecards' verdicts (latest revision, first decision)."""
    rows = sink.query(
        "SELECT verdict_id, revision, tenant_id, release_id, cohort, workflow, arm, stage_pct, verdict, "
        "guardrail_fired, regressed_metrics, samples_candidate, exposure, reason "
        "FROM {db}.rollout_verdicts FINAL ORDER BY verdict_id, revision")
    cards: dict[str, dict] = {}
    for (vid, rev, tenant, release, cohort, workflow, arm, stage, verdict, fired, regressed, n_t, exposure,
         reason) in rows:
        card = cards.setdefault(vid, {"first_decision": None})
        if card["first_decision"] is None and verdict != "hold":
            card["first_decision"] = {"verdict": verdict, "revision": rev, "stage_pct": stage,
                                      "samples_candidate": n_t}
        card.update({"verdict_id": vid, "tenant_id": tenant, "release_id": release, "cohort": cohort,
                     "workflow": workflow or None, "arm": arm, "stage_pct": stage, "verdict": verdict,
                     "revision": rev, "guardrail_fired": fired or None, "regressed_metrics": list(regressed),
                     "samples_candidate": n_t, "exposure": exposure, "reason": reason})
    return {
        "rollouts": [{"tenant_id": p.tenant_id, "cohort": p.cohort, "release_id": p.release["release_id"],
                      "stages": [list(x) for x in p.stages], "correction_factor": p.correction_factor,
                      "latency_factor": p.latency_factor,
                      "traces": rep.rollout_traces.get(f"{p.tenant_id}/{p.cohort}", {})} for p in rep.rollouts],
        "events": len(rows),
        "scorecards": sorted(cards.values(), key=lambda c: (c["tenant_id"], c["cohort"], c["workflow"] or "")),
    }


def feedback_summary(q: Any) -> dict[str, Any]:
    """Feedback aggregation figures of a run (issue 4): statuses, conflicts, scopes. ``q`` is
    :meth:`~streams.sinks.clickhouse.ClickHouseSink.query`."""
    status = dict(q("SELECT dedup_status, count() FROM {db}.feedback_submissions FINAL GROUP BY dedup_status"))
    scopes = dict(q("SELECT scope, count() FROM {db}.feedback_patterns FINAL GROUP BY scope"))
    return {
        "feedback_submissions_by_status": {k: status.get(k, 0) for k in ("new", "resubmit", "near_duplicate",
                                                                          "replay")},
        "feedback_conflict_rows": q("SELECT count() FROM {db}.feedback FINAL WHERE conflict")[0][0],
        "feedback_conflicts_lost": q("SELECT count() FROM {db}.feedback FINAL WHERE resolution = 'lost'")[0][0],
        "feedback_patterns_by_scope": {k: scopes.get(k, 0) for k in ("session", "tenant", "segment",
                                                                      "global_candidate")},
    }


def _lines(*parts: Any) -> str:
    """Non-empty parts, one per line (multi-line cells keep the tables 80 columns wide)."""
    return "\n".join(str(p) for p in parts if p not in (None, ""))


def print_summary(s: dict[str, Any], out: Path, console: Console) -> None:
    """Print the summary ``s`` (:func:`summary`) as tables that fit an 80-column terminal."""
    # imported at call time: streams.cli mounts this package's commands
    from streams.cli import VERDICT_STYLE, narrow_table
    console.rule("[bold]summary")
    t = Table(show_header=False)
    for k in ("traces_produced", "traces_ingested", "deadlettered", "feedback_produced", "feedback_unique_expected",
              "feedback_rows_raw", "feedback_rows_deduped", "first_detection_after_traces", "elapsed_s"):
        t.add_row(k, str(s[k]))
    d = s.get("feedback_delay") or {}
    if d.get("sent"):
        t.add_row("feedback delay (event time)",
                  f"median {d['median_s'] / 60:.0f} min, p99 {d['p99_s'] / 3600:.1f} h, max {d['max_s'] / 3600:.1f} h"
                  f"\n{d['sent']} sent, {d['not_yet_due']} due after the run")
    c = s.get("detector_counters") or {}
    if c.get("feedback_events") is not None:
        share = s.get("late_feedback_share")
        t.add_row("delayed-label detector", _lines(*(f"{k} {c[k]}" for k in DETECTOR_COUNTERS if c.get(k) is not None),
                                                   *([f"late share {share:.2%}"] if share is not None else [])))
    console.print(t)
    it = narrow_table("incident", "slice", "metric", title="incidents")
    for i in s["incidents"]:
        after = i["detected_after_traces"]
        it.add_row(_lines(i["kind"], f"{i['status']} · {i['severity']}"),
                   _lines(i["tenant_id"], i["cohort"], i["workflow"], i["release_id"]),
                   _lines(i["metric"], f"after {after} traces" if after is not None else "", i["action"]))
    console.print(it)
    vt = narrow_table("rollout scorecard", "verdict", "first decision", "regressed",
                title=f"rollout verdicts ({s['verdicts']['events']} events; details: selfheal scorecard --release R)")
    for c in s["verdicts"]["scorecards"]:
        f = c["first_decision"]
        vt.add_row(_lines(c["tenant_id"], c["cohort"], c["workflow"], c["release_id"]),
                   _lines(f"[{VERDICT_STYLE.get(c['verdict'], '')}]{c['verdict']}[/]",
                          f"{c['arm']} @ {c['stage_pct']:g}%", f"{c['samples_candidate']} cand."),
                   _lines(f"{f['verdict']} at {f['stage_pct']:g}%", f"({f['samples_candidate']} cand.)") if f else "-",
                   "\n".join(c["regressed_metrics"]) or "-")
    console.print(vt)
    lt = narrow_table("incident · restore to", "actions · by", "outcome",
                      title="incident lifecycle (ledger: docs/queries.md)")
    for c in s.get("lifecycle", []):
        lt.add_row(_lines(c["tenant_id"], c["kind"], c["release_id"] or None,
                          f"→ {c['restore_release_id']}" if c["restore_release_id"] else None,
                          ", ".join(c["changed_components"]) or None,
                          "rollback required" if c["rollback_required"] else None),
                   "\n".join(f"{a['action']}\n  {a['actor']}" for a in c["actions"]) or "-",
                   _lines(c["status"], c["resolution"] or None, f"detect {c['time_to_detect_s']:g} s",
                          f"mitigate {c['time_to_mitigate_s']:g} s" if c["time_to_mitigate_s"] is not None else None))
    console.print(lt)
    console.print(f"written {out}")


def print_next_steps(settings: Settings, s: dict[str, Any], console: Console) -> None:
    """The commands that read the demo's store, ready to copy (the store is not the default one,
    so they name it with ``SELFHEAL_CLICKHOUSE_PATH``; each stays on one line however narrow
    the terminal, so a copied command keeps its variable)."""
    if settings.clickhouse_url:
        env = ""
    else:
        path = settings.clickhouse_dir.resolve()
        with contextlib.suppress(ValueError):  # outside the working directory: the absolute path
            path = path.relative_to(Path.cwd())
        env = f"SELFHEAL_CLICKHOUSE_PATH={path} "
    console.print("Next: the demo's incidents and scorecards (its store is not the default one):")
    commands = [f"{env}selfheal incidents {s['injected_changes'][0]['tenant_id']}"]
    scorecards = sorted({(c["release_id"], c["tenant_id"]) for c in s["verdicts"]["scorecards"]})
    commands += [f"{env}selfheal scorecard --release {r} --tenant {t}" for r, t in scorecards]
    for c in commands:
        console.print(f"  {c}", soft_wrap=True, highlight=False, markup=False)
