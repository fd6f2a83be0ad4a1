"""``selfheal`` command line (typer). The CLI wires components; it does not compute.

Commands: ``topics``, ``migrate``, ``worker``, ``simulate``, ``demo``, ``chaos``, ``incidents``,
``export-evalset``, ``refresh-patterns``, ``scorecard``, ``bench``, ``bench-drift``, ``bench-canary``.
Settings come from ``SELFHEAL_*`` environment variables (README "Settings").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import Producer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.config import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="selfheal: let fleets of LLM agents heal safely.")
console = Console()


@app.command()
def topics() -> None:
    """Create selfheal's Kafka topics (idempotent)."""
    from streams.topics import ensure_topics

    for topic, state in ensure_topics(get_settings()).items():
        console.print(f"{topic}: {state}")


@app.command()
def migrate() -> None:
    """Apply ClickHouse migrations (idempotent)."""
    from streams.sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(get_settings())
    console.print(f"{sink.location}: applied {sink.migrate() or 'nothing (up to date)'}")


@app.command()
def worker() -> None:
    """Run a stream worker (faust) until SIGTERM (log level: SELFHEAL_FAUST_LOGLEVEL)."""
    from streams.app import run_worker

    sys.argv = [sys.argv[0], "worker"]  # faust's Worker reads argv
    settings = get_settings()
    run_worker(settings, loglevel=settings.faust_loglevel)


@app.command()
def simulate(traces: int = 50_000, seed: int = 7) -> None:
    """Send a simulated fleet's traces and feedback to Kafka (see streams.devtools.simulate)."""
    from schemas import default_codec
    from streams.devtools.simulate import DEMO_ROLLOUTS, FleetSimulator
    from streams.sdk import SelfhealProducer

    settings = get_settings()
    with SelfhealProducer(settings) as sdk:
        rep = FleetSimulator(traces=traces, seed=seed, rollouts=DEMO_ROLLOUTS).run(
            sdk, raw_producer=Producer(settings.kafka_config()), codec=default_codec())
    console.print(f"sent {rep.traces_produced} traces and {rep.feedback_produced} feedback in {rep.elapsed_s:.1f} s")


@app.command()
def demo(
    traces: Annotated[int, typer.Option(help="traces to simulate (>= 50,000 for the issue's demo)")] = 50_000,
    seed: int = 7,
    out: Annotated[Path, typer.Option(help="summary JSON path")] = Path("demo-summary.json"),
    timeout_s: Annotated[float, typer.Option(help="max wait for the worker to catch up, s")] = 600.0,
) -> None:
    """The main job: start a worker, simulate a fleet with an injected regression and a staged
    rollout, summarise.

    Exits 1 if the injected regression was not detected or the rollout got no verdict.
    """
    from schemas import default_codec
    from streams.devtools.simulate import DEMO_ROLLOUTS, FleetSimulator
    from streams.sdk import SelfhealProducer
    from streams.sinks.clickhouse import ClickHouseSink
    from streams.topics import delete_topics, ensure_topics, group_lag

    base = get_settings()
    demo_dir = base.state_dir / "demo"
    settings = base.model_copy(update={"topic_prefix": base.topic_prefix or "demo.",
                                       "clickhouse_path": demo_dir / "clickhouse", "state_dir": demo_dir})
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
    env = {"SELFHEAL_SNAPSHOT_INTERVAL_S": "5", **os.environ, "SELFHEAL_TOPIC_PREFIX": settings.topic_prefix,
           "SELFHEAL_CLICKHOUSE_PATH": str(settings.clickhouse_dir), "SELFHEAL_STATE_DIR": str(demo_dir)}
    log_path = demo_dir / "worker.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    console.print(f"worker started (pid {proc.pid}, log {log_path})")
    sim = FleetSimulator(traces=traces, seed=seed, rollouts=DEMO_ROLLOUTS)
    codec = default_codec()
    t0 = time.perf_counter()
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
            if proc.poll() is not None:
                console.print(f"[red]worker exited with {proc.returncode}; see {log_path}")
                raise typer.Exit(2)
            time.sleep(1.0)
    caught_up = done >= end
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    elapsed = time.perf_counter() - t0
    sink = ClickHouseSink(settings)
    summary = _summary(sink, rep, elapsed, caught_up)
    sink.close()
    out.write_text(json.dumps(summary, indent=2))
    _print_summary(summary, out)
    if not summary["injected_detected"]:
        console.print("[bold red]The injected regression was NOT detected.")
        raise typer.Exit(1)
    if rep.rollouts and not summary["verdicts"]["scorecards"]:
        console.print("[bold red]The staged rollout got NO verdict.")
        raise typer.Exit(1)


def _summary(sink, rep, elapsed_s: float, caught_up: bool) -> dict:
    q = sink.query
    change = rep.injected[0]
    incidents = []
    for row in q("SELECT incident_id, kind, tenant_id, cohort, workflow, metric, release_id, action, severity, "
                 "detected_at_trace_id, detector, status, layer, summary, revision "
                 "FROM {db}.incidents FINAL ORDER BY first_seen"):
        iid, kind, tenant, cohort, workflow, metric, release, action, sev, at_tid, detector, status, layer, \
            text, rev = row
        on_slice = tenant == change.tenant_id and cohort in ("", change.cohort)
        ordinal = None
        if on_slice:
            ordinal = (rep.feedback_ordinal.get(at_tid) if detector == "poisson_cusum" else None) \
                or rep.slice_ordinal.get(at_tid)
        incidents.append({
            "incident_id": iid, "kind": kind, "tenant_id": tenant, "cohort": cohort or None,
            "workflow": workflow or None, "layer": layer, "metric": metric, "release_id": release or None,
            "detected_after_traces": (ordinal - rep.slice_ordinal_at_injection) if ordinal is not None else None,
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
        **_feedback_summary(q),
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
        "verdicts": _verdict_summary(sink, rep),
    }


def _verdict_summary(sink, rep) -> dict:
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


def _feedback_summary(q) -> dict:
    """Feedback aggregation figures of a run (issue 4): statuses, conflicts, scopes."""
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


def _print_summary(s: dict, out: Path) -> None:
    console.rule("[bold]summary")
    t = Table(show_header=False)
    for k in ("traces_produced", "traces_ingested", "deadlettered", "feedback_produced", "feedback_unique_expected",
              "feedback_rows_raw", "feedback_rows_deduped", "first_detection_after_traces", "elapsed_s"):
        t.add_row(k, str(s[k]))
    console.print(t)
    it = Table("kind", "slice", "metric", "release", "after traces", "action", "severity", "status")
    for i in s["incidents"]:
        where = "/".join(x for x in (i["tenant_id"], i["cohort"], i["workflow"]) if x)
        it.add_row(i["kind"], where, i["metric"], i["release_id"] or "-", str(i["detected_after_traces"]),
                   i["action"], i["severity"], i["status"])
    console.print(it)
    vt = Table("rollout scorecard", "arm", "stage", "verdict", "first decision", "candidate traces", "regressed",
               title=f"rollout verdicts ({s['verdicts']['events']} events; details: selfheal scorecard --release R)")
    for c in s["verdicts"]["scorecards"]:
        f = c["first_decision"]
        vt.add_row("/".join(x for x in (c["tenant_id"], c["cohort"], c["workflow"], c["release_id"]) if x), c["arm"],
                   f"{c['stage_pct']:g}%", f"[{_VERDICT_STYLE.get(c['verdict'], '')}]{c['verdict']}[/]",
                   f"{f['verdict']} at {f['stage_pct']:g}% ({f['samples_candidate']} cand.)" if f else "-",
                   str(c["samples_candidate"]), ", ".join(c["regressed_metrics"]) or "-")
    console.print(vt)
    console.print(f"written {out}")


@app.command("bench")
def bench(
    traces: Annotated[int, typer.Option(help="traces for the throughput runs")] = 300_000,
    latency: Annotated[bool, typer.Option(help="also measure trace-to-incident latency")] = True,
    latency_rate: Annotated[float, typer.Option(help="offered load of the latency run, traces/s")] = 10_000.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
) -> None:
    """Throughput (raw limit vs pipeline per core), incident latency, sink rows/s, memory."""
    from streams.devtools.bench import run

    report = run(traces=traces, skip_latency=not latency, progress=lambda m: console.print(f"[dim]{m}"),
                 latency_rate=latency_rate)
    t = Table("figure", "value", title="bench")
    for k in ("raw_traces_per_s", "pipeline_traces_per_s_per_core", "ratio_to_raw", "core_traces_per_cpu_s",
              "incident_latency_ms_p50",
              "incident_latency_ms_p99", "sink_rows_per_s", "bytes_per_slice_metric", "peak_rss_mb"):
        v = report.get(k)
        t.add_row(k, "n/a" if v is None else f"{v:,.3f}" if isinstance(v, float) and v < 10 else f"{v:,.0f}")
    console.print(t)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"written {json_out}")


@app.command("bench-drift")
def bench_drift(
    seeds: Annotated[int, typer.Option(help="runs per regression scenario")] = 5,
    river: Annotated[bool, typer.Option(help="also score river ADWIN / PageHinkley")] = True,
    quick: Annotated[bool, typer.Option(help="shorter stationary runs (smoke)")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report here")] = None,
    calibrate: Annotated[str, typer.Option(help="instead: false incidents per million on the stationary "
                                                "scenarios for these thresholds, e.g. 12,14,16,18")] = "",
) -> None:
    """Detection quality on the scenario suite (recall, delay, false incidents, attribution)."""
    from streams.devtools.bench_drift import calibrate as run_calibration
    from streams.devtools.bench_drift import dumps, headline, run_suite

    if calibrate:
        rows = run_calibration([float(x) for x in calibrate.split(",")],
                               progress=lambda d, i, n: console.print(f"[dim]{d}"))
        t = Table("cusum_threshold h", "stationary traces", "false incidents", "per million", title="calibration")
        for r in rows:
            t.add_row(f"{r['cusum_threshold']:g}", f"{r['traces']:,}", str(r["false_incidents"]),
                      f"{r['false_incidents_per_million']:.2f}")
        console.print(t)
        if json_out:
            json_out.write_text(dumps({"calibration": rows}))
        return

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("scenarios", total=None)
        report = run_suite(seeds=seeds, river=river, quick=quick,
                           progress=lambda d, i, n: progress.update(task, description=d, completed=i, total=n))
    t = Table("score", "selfheal", "river ADWIN", "river PageHinkley", title="bench-drift")
    for row in headline(report):
        t.add_row(*row)
    console.print(t)
    s = Table("scenario", "runs", "detected", "median delay", "false incidents", "kinds", "releases")
    for name, v in report["selfheal"]["per_scenario"].items():
        s.add_row(name, str(v["runs"]), str(v["detected"]), str(v["median_delay_traces"]), str(v["false_incidents"]),
                  ",".join(v.get("kinds", [])), ",".join(v.get("releases", [])))
    console.print(s)
    if json_out:
        json_out.write_text(dumps(report))
        console.print(f"written {json_out}")


@app.command("export-evalset")
def export_evalset(
    tenant: Annotated[str, typer.Option(help="tenant to export (one tenant per file)")],
    since: Annotated[str, typer.Option(help="start of the traces' event time, ISO 8601 (UTC if no offset)")],
    until: Annotated[str, typer.Option(help="end (exclusive), ISO 8601")],
    out: Annotated[Path, typer.Option(help="output JSON Lines file")],
    cohort: Annotated[str, typer.Option(help="only this cohort")] = "",
    release: Annotated[str, typer.Option(help="only this release_id")] = "",
    include_lost: Annotated[bool, typer.Option(help="also corrections that lost a conflict")] = False,
) -> None:
    """Write a reproducible regression/golden set (JSONL) of a tenant's corrections (streams.evalset)."""
    import hashlib
    from datetime import datetime

    from streams.errors import TenantScopeError
    from streams.evalset import build_evalset
    from streams.sinks.clickhouse import ClickHouseSink

    try:
        t0, t1 = datetime.fromisoformat(since), datetime.fromisoformat(until)
    except ValueError as exc:
        raise typer.BadParameter(f"--since/--until must be ISO 8601 ({since!r}, {until!r}): {exc}") from None
    sink = ClickHouseSink(get_settings())
    try:
        data, n = build_evalset(sink, tenant, t0, t1, cohort=cohort or None, release_id=release or None,
                                include_lost=include_lost)
    except (TenantScopeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        sink.close()
    out.write_bytes(data)
    console.print(f"wrote {n} records to {out} (sha256 {hashlib.sha256(data).hexdigest()})")


@app.command("refresh-patterns")
def refresh_patterns() -> None:
    """Recompute every feedback pattern and its scope from the feedback table (e.g. after changing k)."""
    from streams.sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(get_settings())
    sink.refresh_patterns(None)
    rows = sink.query("SELECT scope, count() FROM {db}.feedback_patterns FINAL GROUP BY scope ORDER BY scope")
    sink.close()
    console.print(", ".join(f"{scope}: {n}" for scope, n in rows) or "no patterns")


@app.command()
def chaos(
    traces: Annotated[int, typer.Option(help="traces to simulate")] = 30_000,
    rate: Annotated[float, typer.Option(help="traces produced per second (run length ~ traces / rate)")] = 250.0,
    kills: Annotated[int, typer.Option(help="SIGKILLs of the worker (each followed by a restart)")] = 3,
    broker_restart: Annotated[bool, typer.Option(help="stop and start the (own) broker mid-run")] = True,
    sink_outage_s: Annotated[float, typer.Option(help="seconds during which every ClickHouse write fails")] = 20.0,
    sigterm: Annotated[bool, typer.Option(help="one SIGTERM mid-run (exit time measured)")] = True,
    kafka_port: Annotated[int, typer.Option(help="port of the chaos run's own broker (never the shared one)")] = 29092,
    seed: int = 11,
    out: Annotated[Path, typer.Option(help="report JSON path")] = Path("chaos-report.json"),
) -> None:
    """Fault injection: SIGKILLs, a broker restart, a ClickHouse outage and SIGTERM during a long
    simulated run; prints faults, records in, rows out, lost, duplicated (streams.devtools.chaos).

    Exits 1 unless 0 lost, 0 duplicated, no re-opened incident episode and state recovered.
    """
    from streams.devtools.chaos import ChaosConfig, print_report, run_chaos, write_report

    base = get_settings()
    cfg = ChaosConfig(traces=traces, rate=rate, seed=seed, kills=kills, broker_restart=broker_restart,
                      sink_outage_s=sink_outage_s, sigterm=sigterm, kafka_port=kafka_port,
                      shutdown_timeout_s=base.shutdown_timeout_s, work_dir=base.state_dir / "chaos")
    console.rule("[bold]selfheal chaos")
    report = run_chaos(cfg, base, log=console.print)
    write_report(report, out)
    print_report(report, console)
    console.print(f"written {out}")
    if not report["passed"]:
        raise typer.Exit(1)


@app.command()
def incidents(tenant: str, status: str = "") -> None:
    """Show a tenant's incidents (latest revision) from ClickHouse."""
    from streams.sinks.clickhouse import ClickHouseSink

    rows = ClickHouseSink(get_settings()).for_tenant(tenant).incidents(status or None)
    t = Table("id", "status", "kind", "layer", "cohort", "workflow", "metric", "baseline", "observed", "severity",
              "action", "release")
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r[:12]])
    console.print(t)


_UNIT_FORMAT = {"rate": "{:.2%}", "ms": "{:,.0f} ms", "USD": "${:.4f}"}
_VERDICT_STYLE = {"promote": "bold green", "hold": "bold yellow", "rollback": "bold red"}


@app.command()
def scorecard(
    release: Annotated[str, typer.Option(help="candidate release id (Rollout.candidate_release_id)")],
    tenant: Annotated[str, typer.Option(help="one tenant; default: every tenant (operator view)")] = "",
) -> None:
    """Print the current scorecards of a release under rollout, one table per tenant x cohort x
    workflow scope x arm (latest verdict revision, from ClickHouse)."""
    from streams.errors import TenantScopeError
    from streams.processors.canary import METRIC_INDEX
    from streams.sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(get_settings())
    try:
        verdicts, metrics = sink.for_tenant(tenant).scorecards(release) if tenant else sink.scorecards(release)
    except TenantScopeError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(2) from None
    finally:
        sink.close()
    if not verdicts:
        console.print(f"no verdicts for release {release!r}" + (f" and tenant {tenant!r}" if tenant else ""))
        raise typer.Exit(1)
    by_id: dict[str, list[tuple]] = {}
    for m in metrics:
        by_id.setdefault(m[0], []).append(m)
    for (vid, rev, tenant_id, cohort, workflow, arm, stage, verdict, risk, fired, reason, n_c, n_t, exposure,
         emitted_at) in verdicts:
        where = "/".join(x for x in (tenant_id, cohort, workflow) if x)
        title = (f"{release} · {where} · {arm} @ {stage:g}% · [{_VERDICT_STYLE.get(verdict, '')}]{verdict.upper()}[/]"
                 f" (rev {rev}, {risk} risk" + (f", guardrail {fired}" if fired else "") + ")")
        caption = (f"{reason}\n{n_c:,} control / {n_t:,} candidate traces compared, exposure {exposure:,}; "
                   f"Δ harm = candidate/control - 1 of the harmful-event rate, always-valid CI; "
                   f"as of {emitted_at:%Y-%m-%d %H:%M:%S} UTC")
        t = Table("metric", "role", "control", "candidate", "Δ harm", "CI", "p", "n ctrl", "n cand", "status",
                  title=title, caption=caption)
        for (_, metric, role, status, unit, control, candidate, delta, lo, hi, p, s_c, s_t) in sorted(
                by_id.get(vid, []), key=lambda r: METRIC_INDEX.get(r[1], 99)):
            fmt = _UNIT_FORMAT.get(unit, "{:.4g}")
            style = {"harm": "red", "non_inferior": "green"}.get(status, "")
            t.add_row(metric, role, fmt.format(control), fmt.format(candidate), f"{delta:+.0%}",
                      f"{lo:+.0%} .. {hi:+.0%}", f"{p:.2g}", f"{s_c:,}", f"{s_t:,}",
                      f"[{style}]{status}[/]" if style else status)
        console.print(t)


@app.command("bench-canary")
def bench_canary(
    releases: Annotated[int, typer.Option(help="simulated null releases per stage")] = 2000,
    runs: Annotated[int, typer.Option(help="simulated rollouts per effect and stage")] = 20,
    seed: int = 1,
    out: Annotated[Path | None, typer.Option(help="write the figures as JSON")] = None,
) -> None:
    """Count-based canary figures (no broker, no wall clock): null false-rollback rate when
    peeking after every stratum, false promotion at the margin, traces until a verdict."""
    from streams.devtools.bench_canary import report

    settings = get_settings()
    res = report(releases=releases, runs=runs, seed=seed, alpha=settings.canary_alpha,
                 progress=lambda text: console.print(f"[dim]{text}"))
    t = Table("stage", "null releases", "looks", "rolled back", "rate (95% CI)", "fixed z-test peeked",
              title=f"False rollback of null releases, peeking after every stratum (alpha {res['alpha']:g})")
    for r in res["null_false_rollback"]:
        t.add_row(f"{r['stage_pct']:g} %", str(r["releases"]), str(r["looks"]), str(r["rolled_back"]),
                  f"{r['rate']:.2%} ({r['rate_ci95'][0]:.2%}-{r['rate_ci95'][1]:.2%})", f"{r['naive_rate']:.1%}")
    console.print(t)
    t = Table("counts", "base rate", "releases at the margin", "promoted", "rate (95% CI)",
              title="False promotion of one success metric exactly at the margin (1.5x)")
    for r in res["false_promotion"]:
        t.add_row(r["counts"], f"{r['base_rate']:g}", str(r["releases"]), str(r["promoted"]),
                  f"{r['rate']:.2%} ({r['rate_ci95'][0]:.2%}-{r['rate_ci95'][1]:.2%})")
    console.print(t)
    t = Table("effect", "stage", "promote", "rollback", "undecided", "traces median", "traces p90",
              "candidate median", "candidate p90", title="Traces until the first promote/rollback verdict")
    for r in res["decision_times"]:
        def num(x):
            return "-" if x is None else f"{x:,.0f}"
        t.add_row(r["scenario"], f"{r['stage_pct']:g} %", str(r["promote"]), str(r["rollback"]), str(r["undecided"]),
                  num(r["traces_median"]), num(r["traces_p90"]), num(r["candidate_traces_median"]),
                  num(r["candidate_traces_p90"]))
    console.print(t)
    if out is not None:
        out.write_text(json.dumps(res, indent=2))
        console.print(f"written {out}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
