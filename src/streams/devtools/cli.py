"""The dev commands of ``selfheal``: ``simulate``, ``demo``, ``bench``, ``bench-drift``,
``bench-drift-worker``, ``bench-canary``, ``bench-otlp``, ``bench-phi``, ``chaos``. :func:`register` adds
them to the product CLI's app (``streams.cli`` calls it when :mod:`streams.devtools` is importable); names
and options are those the Makefile and README use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import Producer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.config import Settings, get_settings

console = Console()


def register(app: typer.Typer) -> None:
    """Add the dev commands to ``app`` (the ``selfheal`` typer app). A command that needs a broker
    checks it first: :class:`~streams.errors.BrokerUnavailableError` becomes one line in
    :func:`streams.cli.main`."""
    app.command("simulate")(simulate)
    app.command("demo")(demo)
    app.command("bench")(bench)
    app.command("bench-drift")(bench_drift)
    app.command("bench-drift-worker")(bench_drift_worker)
    app.command("bench-canary")(bench_canary)
    app.command("bench-otlp")(bench_otlp)
    app.command("bench-phi")(bench_phi)
    app.command("chaos")(chaos)


def _require_topics(settings: Settings, names: tuple[str, ...]) -> None:
    """Return when the source topics ``names`` exist (the broker does not create them on a send).

    Raises:
        ConfigError: some are missing (named, with the command that creates them).
    """
    from confluent_kafka.admin import AdminClient

    from streams.errors import ConfigError

    existing = AdminClient(settings.kafka_config()).list_topics(timeout=10).topics
    missing = [settings.topic(n) for n in names if settings.topic(n) not in existing]
    if missing:
        raise ConfigError(f"topics {', '.join(missing)} do not exist at {settings.kafka_bootstrap}; create them with "
                          f"`selfheal topics` (same SELFHEAL_TOPIC_PREFIX={settings.topic_prefix!r})")


def simulate(traces: int = 50_000, seed: int = 7) -> None:
    """Send a simulated fleet's traces and feedback to Kafka (see streams.devtools.simulate)."""
    from schemas import default_codec
    from streams.devtools.simulate import DEMO_ROLLOUTS, FleetSimulator
    from streams.sdk import SelfhealProducer
    from streams.topics import check_broker

    settings = get_settings()
    check_broker(settings)
    _require_topics(settings, ("traces", "feedback"))
    with SelfhealProducer(settings) as sdk:
        rep = FleetSimulator(traces=traces, seed=seed, rollouts=DEMO_ROLLOUTS).run(
            sdk, raw_producer=Producer(settings.kafka_config()), codec=default_codec())
    console.print(f"sent {rep.traces_produced} traces and {rep.feedback_produced} feedback in {rep.elapsed_s:.1f} s")


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
    from streams.devtools.demo import run_demo

    code = run_demo(get_settings(), console, traces=traces, seed=seed, out=out, timeout_s=timeout_s)
    if code:
        raise typer.Exit(code)


def bench(
    traces: Annotated[int, typer.Option(help="traces for the throughput runs")] = 300_000,
    latency: Annotated[bool, typer.Option(help="also measure trace-to-incident latency")] = True,
    latency_rate: Annotated[float | None, typer.Option(
        help="offered load of the one-worker latency run, traces/s (default: --latency-capacity)")] = None,
    latency_capacity: Annotated[float, typer.Option(
        help="one-worker latency run at this share of the worker's capacity in the latency configuration, "
             "measured in the run (a drained backlog of --capacity-traces traces)")] = 0.8,
    capacity_traces: Annotated[int, typer.Option(
        help="backlog the one-worker capacity is measured on, traces (messages of 64)")] = 150_000,
    two_workers_rate: Annotated[float, typer.Option(
        help="offered load of the two-worker latency run (two workers, one group), traces/s; 0 skips it")] = 10_000.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
) -> None:
    """Throughput (raw limit vs pipeline per core), incident latency, sink rows/s, memory."""
    from streams.devtools.bench import run
    from streams.topics import check_broker

    check_broker(get_settings())
    report = run(traces=traces, skip_latency=not latency, progress=lambda m: console.print(f"[dim]{m}"),
                 latency_rate=latency_rate, latency_capacity_share=latency_capacity,
                 two_workers_rate=two_workers_rate or None, capacity_traces=capacity_traces)
    t = Table("figure", "value", title="bench")
    for k in ("raw_traces_per_s", "pipeline_traces_per_s_per_core", "ratio_to_raw", "core_traces_per_cpu_s",
              "incident_latency_capacity_traces_per_s", "incident_latency_offered_traces_per_s",
              "incident_latency_ms_p50", "incident_latency_ms_p99", "incident_latency_lag_traces_at_end",
              "incident_latency_worker_cpu_s_per_1k_traces",
              "two_workers_offered_traces_per_s", "two_workers_incident_latency_ms_p99",
              "two_workers_lag_traces_at_end", "two_workers_cpu_bound_traces_per_s",
              "changelog_bytes_per_trace", "sink_rows_per_s", "sink_engine_rows_per_s",
              "sink_share_of_engine",
              "bytes_per_slice_metric", "peak_rss_mb"):
        v = report.get(k)
        t.add_row(k, "n/a" if v is None else f"{v:,.3f}" if isinstance(v, float) and v < 10 else f"{v:,.0f}")
    console.print(t)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"written {json_out}")


def bench_otlp(
    runs: Annotated[int, typer.Option(help="agent runs per way in")] = 20_000,
    spans_per_run: Annotated[int, typer.Option(help="spans per run (root, one chat span, tool calls)")] = 5,
    runs_per_request: Annotated[int, typer.Option(help="runs per OTLP request / Kafka message")] = 50,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
) -> None:
    """OTLP ingress spans per CPU-second: the OTLP/HTTP receiver and the Kafka source (streams.devtools.bench_otlp)."""
    import tempfile

    from streams.devtools.bench_otlp import bench_settings, cleanup, run
    from streams.topics import check_broker, ensure_topics

    settings = bench_settings(get_settings())
    check_broker(settings)
    ensure_topics(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-otlp-") as tmp:
            report = run(settings, Path(tmp), runs=runs, runs_per_request=runs_per_request,
                         spans_per_run=spans_per_run)
    finally:
        cleanup(settings)
    t = Table("way in", "spans/s per core", "runs/s per core", "CPU s", "wall s", title="bench-otlp")
    for name in ("receiver", "kafka_source"):
        r = report[name]
        t.add_row(name, f"{r['spans_per_cpu_s']:,}", f"{r['runs_per_cpu_s']:,}", f"{r['cpu_s']}", f"{r['wall_s']}")
    console.print(t)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"written {json_out}")


def bench_drift(
    seeds: Annotated[int, typer.Option(help="runs per regression scenario")] = 5,
    river: Annotated[bool, typer.Option(help="also score river ADWIN / PageHinkley")] = True,
    quick: Annotated[bool, typer.Option(help="shorter stationary runs (smoke)")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report here")] = None,
    calibrate: Annotated[str, typer.Option(help="instead: false incidents per million on the stationary "
                                                "scenarios for these thresholds, e.g. 12,14,16,18")] = "",
    timed: Annotated[bool, typer.Option(help="instead: the delayed-label scenarios with real feedback timing "
                                             "(log-normal delays, reviewers, a lagging feedback consumer)")] = False,
    stationary_traces: Annotated[int, typer.Option(help="--timed: stationary traces per timing")] = 1_000_000,
    trace_batch_max: Annotated[int, typer.Option(help="--timed: most traces per trace batch (batches are 50 to "
                                                      "this; 3,000 = 8.3 h of event time)")] = 3000,
) -> None:
    """Detection quality on the scenario suite (recall, delay, false incidents, attribution)."""
    from streams.cli import narrow_table  # at call time: streams.cli mounts this module
    from streams.devtools.bench_drift import calibrate as run_calibration
    from streams.devtools.bench_drift import dumps, headline, run_suite, run_timed_suite

    if timed:
        report = run_timed_suite(seeds=seeds, stationary_traces=stationary_traces, trace_batch_max=trace_batch_max,
                                 progress=lambda d, i, n: console.print(f"[dim]{i}/{n} {d}"))
        cols = ("timing", "scenario", "recall", "release_attribution", "median_delay_slice_traces",
                "median_delay_h_after_first_correction", "false_incidents_per_million", "uncounted",
                "same_incidents_other_schedule")
        t = narrow_table(*cols)
        for row in report["timed"]:
            t.add_row(*(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols))
        console.print(t)
        if json_out:
            json_out.write_text(dumps(report))
        return

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
    s = narrow_table("scenario\nkinds · releases", "runs", "detected", "median delay", "false incidents")
    for name, v in report["selfheal"]["per_scenario"].items():
        found = " · ".join(x for x in (",".join(v.get("kinds", [])), ",".join(v.get("releases", []))) if x)
        s.add_row(f"{name}\n{found}" if found else name, str(v["runs"]), str(v["detected"]),
                  str(v["median_delay_traces"]), str(v["false_incidents"]))
    console.print(s)
    if json_out:
        json_out.write_text(dumps(report))
        console.print(f"written {json_out}")


def bench_drift_worker(
    scenario: Annotated[str, typer.Option(help="stationary (false incidents) or tenant_change (one tenant's "
                                               "intent mix moves in all its cohorts: one incident expected)")
                        ] = "stationary",
    traces: Annotated[int, typer.Option(help="fleet traces produced (>= 1,000,000 for the issue's figure)")
                      ] = 1_000_000,
    seed: int = 1,
    change_at: Annotated[float, typer.Option(help="tenant_change: share of the traces before the change")] = 0.5,
    delay_median_s: Annotated[float, typer.Option(help="feedback delay after its trace, median s (log-normal)")
                              ] = 60.0,
    repeat: Annotated[int, typer.Option(help="passes of the identical input through fresh workers (2: "
                                             "determinism: same incidents?)")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report here")] = None,
) -> None:
    """Detection measured through the real worker: an independent producer (confluent-kafka +
    fastavro from avro/*.avsc) sends traces and delayed feedback, a `selfheal worker` subprocess
    processes them, the incidents read back from the topic are scored (streams.devtools.bench_worker).

    Exits 1 if a pass raised a dead letter (the producer's records must all be valid).
    """
    from streams.cli import narrow_table  # at call time: streams.cli mounts this module
    from streams.devtools.bench_worker import WorkerBenchConfig, run
    from streams.topics import check_broker

    try:
        cfg = WorkerBenchConfig(scenario=scenario, traces=traces, seed=seed, change_at=change_at,
                                delay_median_s=delay_median_s)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    settings = get_settings()
    check_broker(settings)
    report = run(settings, cfg, repeat=repeat, say=lambda m: console.print(f"[dim]{m}"))
    t = narrow_table("pass", "traces", "incidents", "false", "per million", "change incidents", "kinds",
                     "worker s", title=f"bench-drift-worker {scenario}")
    for k, r in enumerate(report["runs"]):
        sc = r["scores"]
        t.add_row(str(k + 1), f"{r['traces']:,}", str(sc["incidents"]), str(sc["false_incidents"]),
                  f"{sc['false_incidents_per_million']:.2f}", str(sc.get("change_incidents", "—")),
                  ",".join(sc.get("change_kinds", [])), f"{r['worker_s']:.0f}")
    console.print(t)
    for k, r in enumerate(report["runs"]):
        for i in r["incidents"]:
            console.print(f"pass {k + 1}: {i['incident_id']} {i['kind']} {i['slice']}: {i['summary']}")
    if report["same_incidents"] is not None:
        console.print(f"same incidents on every pass: {report['same_incidents']}")
    if json_out:
        json_out.write_text(json.dumps(report, indent=1, default=str))
        console.print(f"written {json_out}")
    if any(r["dead_letters"] for r in report["runs"]):
        console.print(f"[red]dead letters: {[r['dead_letters'] for r in report['runs']]}")
        raise typer.Exit(1)


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
    from streams.topics import check_broker

    base = get_settings()
    if not broker_restart:  # otherwise the run starts a broker of its own
        check_broker(base)
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


def bench_canary(
    releases: Annotated[int, typer.Option(help="simulated null releases per stage")] = 2000,
    runs: Annotated[int, typer.Option(help="simulated rollouts per effect and stage")] = 20,
    seed: int = 1,
    out: Annotated[Path | None, typer.Option(help="write the figures as JSON")] = None,
) -> None:
    """Count-based canary figures (no broker, no wall clock): null false-rollback rate when
    peeking after every stratum, false promotion at the margin, traces until a verdict."""
    from streams.cli import narrow_table  # at call time: streams.cli mounts this module
    from streams.devtools.bench_canary import report

    settings = get_settings()
    res = report(releases=releases, runs=runs, seed=seed, alpha=settings.canary_alpha,
                 progress=lambda text: console.print(f"[dim]{text}"))
    t = narrow_table("stage", "null releases", "looks", "rolled back", "rate (95% CI)", "fixed z-test peeked",
                     title=f"False rollback of null releases, peeking after every stratum (alpha {res['alpha']:g})")
    for r in res["null_false_rollback"]:
        t.add_row(f"{r['stage_pct']:g} %", str(r["releases"]), str(r["looks"]), str(r["rolled_back"]),
                  f"{r['rate']:.2%} ({r['rate_ci95'][0]:.2%}-{r['rate_ci95'][1]:.2%})", f"{r['naive_rate']:.1%}")
    console.print(t)
    t = narrow_table("counts", "base rate", "releases at the margin", "promoted", "rate (95% CI)",
                     title="False promotion of one success metric exactly at the margin (1.5x)")
    for r in res["false_promotion"]:
        t.add_row(r["counts"], f"{r['base_rate']:g}", str(r["releases"]), str(r["promoted"]),
                  f"{r['rate']:.2%} ({r['rate_ci95'][0]:.2%}-{r['rate_ci95'][1]:.2%})")
    console.print(t)
    # pairs in one cell (median / p90) keep the 9 figures of a row in 80 columns
    t = narrow_table("effect", "stage", "promote /\nrollback /\nundecided", "traces\nmedian / p90",
                     "candidate traces\nmedian / p90", title="Traces until the first promote/rollback verdict")
    for r in res["decision_times"]:
        def num(x):
            return "-" if x is None else f"{x:,.0f}"
        t.add_row(r["scenario"], f"{r['stage_pct']:g} %", f"{r['promote']} / {r['rollback']} / {r['undecided']}",
                  f"{num(r['traces_median'])} / {num(r['traces_p90'])}",
                  f"{num(r['candidate_traces_median'])} / {num(r['candidate_traces_p90'])}")
    console.print(t)
    if out is not None:
        out.write_text(json.dumps(res, indent=2))
        console.print(f"written {out}")


def bench_phi(
    phi_notes: Annotated[int, typer.Option(help="notes with planted identifiers")] = 1000,
    clean_notes: Annotated[int, typer.Option(help="notes without PHI (drugs, doses, codes, eponyms)")] = 1000,
    corrections: Annotated[int, typer.Option(help="simulator feedback corrections timed")] = 1000,
    seed: int = 18,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report here")] = None,
) -> None:
    """PHI redaction on the generated corpus: recall per identifier type, over-redaction on clean
    notes, cost per text (µs) and feedback records/s per core (streams.devtools.bench_phi)."""
    from streams.cli import narrow_table  # at call time: streams.cli mounts this module
    from streams.devtools.bench_phi import TARGET_OVER_REDACTION, TARGET_RECALL, run

    with console.status("redacting the corpus (loads spaCy once)"):
        report = run(phi_notes, clean_notes, corrections, seed)
    t = narrow_table("identifier", "planted", "caught", "recall", title="bench-phi: recall")
    for kind, v in report["recall"].items():
        t.add_row(kind, str(v["planted"]), str(v["caught"]), f"{v['recall']:.3f}")
    console.print(t)
    o = report["over_redaction"]
    s = Table("score", "value", "target", title="bench-phi")
    s.add_row("names recall", f"{report['names_recall']:.3f}", f">= {TARGET_RECALL}")
    s.add_row("identifiers recall", f"{report['identifiers_recall']:.3f}", f">= {TARGET_RECALL}")
    s.add_row("over-redaction (clean tokens)", f"{o['share']:.2%} ({o['redacted']}/{o['tokens']})",
              f"<= {TARGET_OVER_REDACTION:.0%}")
    for name, c in report["cost"].items():
        s.add_row(f"cost {name}: CPU µs mean / p95", f"{c['cpu_us_mean']:,.0f} / {c['cpu_us_p95']:,.0f}",
                  f"NER on {c['ner_share']:.0%}")
    s.add_row("feedback records/s per core", f"{report['feedback_records_per_s_per_core']:,.0f}", "")
    s.add_row("NER load (once per process)", f"{report['ner_load_s']:.1f} s", "")
    console.print(s)
    for m in report["misses"][:10]:
        console.print(f"[dim]missed {m['type']} {m['value']!r}")
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"written {json_out}")
