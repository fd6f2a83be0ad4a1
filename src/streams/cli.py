"""``selfheal`` command line (typer). The CLI wires components; it does not compute.

Product commands: ``topics``, ``migrate``, ``worker``, ``otlp``, ``incidents``, ``scorecard``,
``export-evalset``, ``refresh-patterns``, ``replay``, ``report``. The dev commands (``demo``, ``simulate``, ``bench``,
``bench-drift``, ``bench-canary``, ``chaos``) are defined in :mod:`streams.devtools.cli` and
mounted here when :mod:`streams.devtools` is installed.
Settings come from ``SELFHEAL_*`` environment variables (README "Settings").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from streams.config import Settings, get_settings

if TYPE_CHECKING:
    from streams.sinks.clickhouse import ClickHouseSink

app = typer.Typer(add_completion=False, no_args_is_help=True, help="selfheal: let fleets of LLM agents heal safely.")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``message`` as one line on stderr (no traceback, however narrow the
    terminal) and exit code ``code`` (2: a setting or argument to change, 1: nothing found)."""
    err_console.print(f"selfheal: {message}", soft_wrap=True, highlight=False, markup=False)
    raise typer.Exit(code)


def narrow_table(*headers: str, **kwargs: Any) -> Table:
    """A table for an 80-column terminal: no vertical rules, a rule between rows, and cells that
    fold instead of being cut with an ellipsis (callers put long values on lines of their own)."""
    t = Table(box=box.SIMPLE_HEAVY, show_lines=True, show_edge=False, pad_edge=False, **kwargs)
    for h in headers:
        t.add_column(h, overflow="fold")
    return t


def open_store(settings: Settings) -> ClickHouseSink:
    """The ClickHouse store a worker wrote, opened for reading (the caller closes it).

    Unlike ``ClickHouseSink(settings)``, creates nothing: an embedded store must exist.

    Raises:
        StoreUnavailableError: no chDB directory at ``SELFHEAL_CLICKHOUSE_PATH``, no selfheal
            database in the store, or the store cannot be opened (e.g. a running worker owns the
            chDB directory); the message names the setting to change.
    """
    from streams.errors import SinkError, StoreUnavailableError
    from streams.sinks.clickhouse import ClickHouseSink, safe_url

    if settings.clickhouse_url:
        where, setting = safe_url(settings.clickhouse_url), "SELFHEAL_CLICKHOUSE_URL"
    else:
        where, setting = str(settings.clickhouse_dir), "SELFHEAL_CLICKHOUSE_PATH"
        if not settings.clickhouse_dir.is_dir():
            raise StoreUnavailableError(
                f"no ClickHouse store at {where}; set {setting} to the directory a worker wrote "
                "(`selfheal demo` prints the command with its own), or SELFHEAL_CLICKHOUSE_URL to a server")
    try:
        sink = ClickHouseSink(settings)
    except SinkError as exc:
        hint = "set SELFHEAL_CLICKHOUSE_URL to a reachable server" if settings.clickhouse_url else \
            "a running worker owns its chDB directory until it stops; SELFHEAL_CLICKHOUSE_PATH names the store"
        raise StoreUnavailableError(f"{exc} ({hint})") from None
    try:
        exists = sink.query("EXISTS DATABASE {db}")[0][0]
    except BaseException:
        sink.close()
        raise
    if not exists:
        sink.close()
        raise StoreUnavailableError(
            f"the ClickHouse store at {where} has no database {settings.clickhouse_database!r} (nothing was written "
            f"there); set {setting} to the store a worker wrote, or SELFHEAL_CLICKHOUSE_DATABASE")
    return sink


@app.command()
def topics() -> None:
    """Create selfheal's Kafka topics (idempotent)."""
    from streams.topics import check_broker, ensure_topics

    settings = get_settings()
    check_broker(settings)
    for topic, state in ensure_topics(settings).items():
        console.print(f"{topic}: {state}")


@app.command()
def migrate() -> None:
    """Apply ClickHouse migrations (idempotent)."""
    from streams.sinks.clickhouse import ClickHouseSink

    with ClickHouseSink(get_settings()) as sink:
        console.print(f"{sink.location}: applied {sink.migrate() or 'nothing (up to date)'}")


@app.command()
def acls(
    worker_principal: str = typer.Option("User:selfheal", help="principal of the worker and the CLI"),
    agent_principal: str = typer.Option("User:agent", help="principal of SDK producers (write traces/feedback)"),
) -> None:
    """Create selfheal's Kafka ACLs (run with an admin's SELFHEAL_KAFKA_SASL_* credentials; docs/security.md)."""
    from confluent_kafka import KafkaException

    from streams.topics import ensure_acls

    try:
        count = ensure_acls(get_settings(), worker_principal, agent_principal)
    except KafkaException as exc:
        fail(f"creating ACLs at {get_settings().kafka_bootstrap} failed: {exc.args[0].str() if exc.args else exc}")
    console.print(f"{count} ACLs present for {worker_principal} (worker) and {agent_principal} (agent)")


@app.command("row-policies")
def row_policies(database: str = "selfheal") -> None:
    """Print the ClickHouse row-policy template generated from the migrations (tenant isolation on a
    server; committed as deploy/clickhouse/row_policies.sql, docs/security.md)."""
    from streams.sinks.row_policies import RowPolicyError, render

    try:
        sys.stdout.write(render(database))
    except RowPolicyError as exc:
        fail(str(exc))


@app.command()
def worker() -> None:
    """Run a stream worker (faust) until SIGTERM (log level: SELFHEAL_FAUST_LOGLEVEL)."""
    from streams.worker.app import run_worker

    sys.argv = [sys.argv[0], "worker"]  # faust's Worker reads argv
    settings = get_settings()
    run_worker(settings, loglevel=settings.faust_loglevel)


@app.command()
def otlp(
    kafka: Annotated[bool, typer.Option("--kafka", help=(
        "also consume the OpenTelemetry Collector's Kafka exporter topic (SELFHEAL_OTLP_KAFKA_TOPIC, otlp_proto)"))
    ] = False,
) -> None:
    """Run the OTLP ingress: OTLP/HTTP on SELFHEAL_OTLP_HOST:SELFHEAL_OTLP_PORT (/v1/traces, /metrics),
    spans mapped to AgentTrace records on the trace topic (docs/otlp.md), until SIGTERM."""
    from streams.errors import ContractViolation
    from streams.otlp.receiver import run_receiver
    from streams.otlp.service import OtlpService
    from streams.topics import check_broker

    settings = get_settings()
    check_broker(settings)
    try:
        service = OtlpService(settings, kafka=kafka)
    except ContractViolation as exc:  # SELFHEAL_OTLP_ATTRIBUTE_MAP
        fail(str(exc))
    try:
        run_receiver(service, settings.otlp_host, settings.otlp_port)
    except OSError as exc:  # the address is taken or not ours
        fail(f"cannot serve OTLP/HTTP on {settings.otlp_host}:{settings.otlp_port}: {exc.strerror or exc}; "
             "set SELFHEAL_OTLP_HOST / SELFHEAL_OTLP_PORT")


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
    """Write a reproducible, versioned regression/golden set (JSONL) of a tenant's corrections with
    input and original-output references, and record the export in ClickHouse (streams.evalset)."""
    import hashlib
    from datetime import datetime

    from streams.errors import TenantScopeError
    from streams.evalset import export_evalset

    try:
        t0, t1 = datetime.fromisoformat(since), datetime.fromisoformat(until)
    except ValueError as exc:
        raise typer.BadParameter(f"--since/--until must be ISO 8601 ({since!r}, {until!r}): {exc}") from None
    sink = open_store(get_settings())
    try:
        sink.migrate()  # the export table (0042) on a store written before it
        exp = export_evalset(sink, tenant, t0, t1, cohort=cohort or None, release_id=release or None,
                             include_lost=include_lost)
    except (TenantScopeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        sink.close()
    out.write_bytes(exp.data)
    console.print(f"wrote {exp.records} records to {out}: {tenant} set version {exp.version}, records sha256 "
                  f"{exp.records_sha256} (file sha256 {hashlib.sha256(exp.data).hexdigest()})")


@app.command("refresh-patterns")
def refresh_patterns() -> None:
    """Recompute every feedback pattern and its scope from the feedback table (e.g. after changing k)."""
    sink = open_store(get_settings())
    try:
        sink.refresh_patterns(None)
        rows = sink.query("SELECT scope, count() FROM {db}.feedback_patterns FINAL GROUP BY scope ORDER BY scope")
    finally:
        sink.close()
    console.print(", ".join(f"{scope}: {n}" for scope, n in rows) or "no patterns")


@app.command()
def incidents(
    tenant: Annotated[str, typer.Argument(help="tenant id, e.g. northwind-health")],
    status: Annotated[str, typer.Option(help="only this status: open, updated, resolved")] = "",
) -> None:
    """Show a tenant's incidents (latest revision) from ClickHouse.

    Exits 1 when the store holds no trace and no incident of the tenant (a mistyped id, or the
    wrong store: SELFHEAL_CLICKHOUSE_PATH).
    """
    sink = open_store(get_settings())
    try:
        scoped = sink.for_tenant(tenant)
        rows = scoped.incidents(status or None)
        known = bool(rows) or scoped.trace_count() > 0 or bool(scoped.incidents())
        location = sink.location
    finally:
        sink.close()
    if not known:
        fail(f"no traces and no incidents of tenant {tenant!r} in {location}; check the tenant id, or set "
             "SELFHEAL_CLICKHOUSE_PATH to the store that holds it", code=1)
    if not rows:
        console.print(f"no {status + ' ' if status else ''}incidents of tenant {tenant!r}")
        return
    t = narrow_table("incident", "slice", "metric", title=f"incidents of {tenant} (latest revision, newest first)")
    for (iid, st, kind, layer, cohort, workflow, metric, baseline, observed, severity, action, release,
         _summary) in rows:
        t.add_row("\n".join((iid, kind, f"{st} · {severity}")),
                  "\n".join(x for x in (layer, cohort, workflow, release) if x),
                  "\n".join((metric, f"{_g(baseline)} → {_g(observed)}", action)))
    console.print(t)


def _g(value: Any) -> str:
    """A number with 4 significant digits (anything else as text)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_UNIT_FORMAT = {"rate": "{:.2%}", "ms": "{:,.0f} ms", "USD": "${:.4f}"}
#: rich style of each rollout verdict (scorecards here, the demo summary in streams.devtools.demo)
VERDICT_STYLE = {"promote": "bold green", "hold": "bold yellow", "rollback": "bold red"}


@app.command()
def scorecard(
    release: Annotated[str, typer.Option(help="candidate release id (Rollout.candidate_release_id)")],
    tenant: Annotated[str, typer.Option(help="one tenant; default: every tenant (operator view)")] = "",
) -> None:
    """Print the current scorecards of a release under rollout, one table per tenant x cohort x
    workflow scope x arm (latest verdict revision, from ClickHouse)."""
    from streams.errors import TenantScopeError
    from streams.processors.metrics import CANARY_INDEX

    sink = open_store(get_settings())
    try:
        verdicts, metrics = sink.for_tenant(tenant).scorecards(release) if tenant else sink.scorecards(release)
    except TenantScopeError as exc:
        fail(str(exc))
    finally:
        sink.close()
    if not verdicts:
        fail(f"no verdicts for release {release!r}" + (f" and tenant {tenant!r}" if tenant else ""), code=1)
    by_id: dict[str, list[tuple]] = {}
    for m in metrics:
        by_id.setdefault(m[0], []).append(m)
    for (vid, rev, tenant_id, cohort, workflow, arm, stage, verdict, risk, fired, reason, n_c, n_t, exposure,
         emitted_at) in verdicts:
        where = "/".join(x for x in (tenant_id, cohort, workflow) if x)
        title = (f"{release} · {where} · {arm} @ {stage:g}% · [{VERDICT_STYLE.get(verdict, '')}]{verdict.upper()}[/]"
                 f" (rev {rev}, {risk} risk" + (f", guardrail {fired}" if fired else "") + ")")
        caption = (f"{reason}\n{n_c:,} control / {n_t:,} candidate traces compared, exposure {exposure:,}; "
                   f"Δ harm = candidate/control - 1 of the harmful-event rate, always-valid CI; "
                   f"as of {emitted_at:%Y-%m-%d %H:%M:%S} UTC")
        # several values per cell (control over candidate; estimate, CI, p) keep 10 figures in 80 columns
        t = narrow_table("metric\nrole", "control\ncandidate", "Δ harm\nCI\np", "n ctrl\nn cand", "status",
                         title=title, caption=caption)
        for (_, metric, role, status, unit, control, candidate, delta, lo, hi, p, s_c, s_t) in sorted(
                by_id.get(vid, []), key=lambda r: CANARY_INDEX.get(r[1], 99)):
            fmt = _UNIT_FORMAT.get(unit, "{:.4g}")
            style = {"harm": "red", "non_inferior": "green"}.get(status, "")
            t.add_row(f"{metric}\n{role}", f"{fmt.format(control)}\n{fmt.format(candidate)}",
                      f"{delta:+.0%}\n{lo:+.0%}..{hi:+.0%}\np={p:.2g}", f"{s_c:,}\n{s_t:,}",
                      f"[{style}]{status}[/]" if style else status)
        console.print(t)


def _epoch_ms(value: str, option: str) -> int:
    """ISO 8601 (UTC if no offset) as epoch ms; a bad value is a one-line usage error."""
    from datetime import UTC, datetime

    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{option} must be ISO 8601 ({value!r}): {exc}") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


@app.command()
def replay(
    tenant: Annotated[list[str] | None, typer.Option(help="tenant to replay (repeat; default: every tenant)")] = None,
    since: Annotated[str, typer.Option(help="start of event time, ISO 8601 (default: the recording's start)")] = "",
    until: Annotated[str, typer.Option(help="end of event time (exclusive), ISO 8601 (default: its end)")] = "",
    env_file: Annotated[Path | None, typer.Option(help="candidate settings: SELFHEAL_* lines over the current")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="candidate setting NAME=VALUE (repeat)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the scorecard as JSON")] = False,
) -> None:
    """Replay recorded traces and feedback from ClickHouse through the pipeline with the current
    and with candidate settings, and print what changes against the production incidents
    (streams.replay): incidents that appear, disappear or move, false positives avoided, state size."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.errors import TenantScopeError
    from streams.replay import candidate_settings, recorded_range
    from streams.replay import replay as run_replay

    current = get_settings()
    candidate = candidate_settings(current, str(env_file) if env_file else None, set_ or ())
    tenants = sorted(set(tenant or ()))
    sink = open_store(current)
    try:
        sink.migrate()  # the columns replay reads (0040, 0041) on a store written before them
        full = recorded_range(sink, tenants)
        if full is None:
            fail(f"no recorded traces{' of ' + ', '.join(tenants) if tenants else ''} in {sink.location}", code=1)
        t0 = _epoch_ms(since, "--since") if since else full[0]
        t1 = _epoch_ms(until, "--until") if until else full[1]
        with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("messages"),
                      TimeElapsedColumn(), console=err_console, transient=True, disable=as_json) as bar:
            task = bar.add_task("replay", total=None)
            result = run_replay(sink, current, candidate, tenants, t0, t1,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (TenantScopeError, ValueError) as exc:
        fail(str(exc))
    finally:
        sink.close()
    if as_json:
        print(json.dumps(result.to_json(), sort_keys=True, indent=1))
        return
    print_replay(result.to_json())


def print_replay(r: dict[str, Any]) -> None:
    """The replay scorecard (:meth:`streams.replay.ReplayResult.to_json`) as tables for an 80-column terminal."""
    inp = r["input"]
    console.print(f"replayed {inp['traces']:,} traces ({inp['trace_messages']:,} messages) and {inp['feedback']:,} "
                  f"feedback submissions; reference: {len(r['reference']['incidents'])} production incidents")
    changed = r["changed_settings"]
    console.print("candidate settings: " + (", ".join(f"{k.upper()} {a} → {b}" for k, (a, b) in changed.items())
                                              or "unchanged"), highlight=False)
    t = narrow_table("run", "incidents", "vs production", "state", title="runs")
    for name, run in r["runs"].items():
        v = run["vs_reference"]
        st = run["state"]
        t.add_row(name, f"{run['incidents']}\n{run['incident_events']} events",
                  ("identical" if v["identical"] else "differs") + f"\n{v['same']} same · {len(v['moved'])} moved\n"
                  f"+{len(v['appeared'])} / -{len(v['disappeared'])}",
                  f"{st['slices']} slices\n{sum(b for k, b in st.items() if k.endswith('_bytes')) / 1024:,.0f} KiB")
    console.print(t)
    d = r["runs"]["candidate"]["vs_reference"]
    rows = [("appears", x, None) for x in d["appeared"]] + [("disappears", x, None) for x in d["disappeared"]] + \
        [("moves", m["after"], m) for m in d["moved"]]
    if rows:
        t = narrow_table("change", "incident", "slice", title="candidate vs production incidents")
        for change, x, m in rows:
            where = "\n".join(p for p in (x["layer"], x["tenant_id"], x["cohort"], x["workflow"],
                                           x["slice_release_id"]) if p)
            note = ""
            if m is not None:
                note = "\n" + ", ".join(m["changed"]) + (f"\n{m['delay_traces']:+d} traces" if m["delay_traces"]
                                                          is not None else "")
            t.add_row(change + note, f"{x['incident_id']}\n{x['kind']}\n{x['metric']}"
                      + (f"\nrelease {x['release_id']}" if x["release_id"] else ""), where)
        console.print(t)
    else:
        console.print("candidate: the same incidents as production")
    fp = r["false_positives"]
    if fp is None:
        console.print("false positives: no incident_actions table in the store (no labels to score)")
    else:
        console.print(f"false-positive-labelled incidents: {len(fp['labelled'])}, avoided {len(fp['avoided'])}, "
                      f"kept {len(fp['kept'])}")


@app.command()
def report(
    tenant: Annotated[str, typer.Option(help="tenant id, e.g. northwind-health")],
    incident: Annotated[str, typer.Option(help="incident id to detail (default: the 3 most recent)")] = "",
    out: Annotated[Path | None, typer.Option(help="HTML file (default: report-<tenant>[-<incident>].html)")] = None,
) -> None:
    """Write one self-contained HTML page (plotly inline, no server) of a tenant and its incidents:
    baseline band vs observed values, change point, detector statistic vs threshold, releases,
    evidence traces, verdicts and actions, correction rate by cohort and release (streams.report)."""
    from streams.errors import TenantScopeError
    from streams.report import build_report
    from streams.sinks.queries import TENANT_RE

    settings = get_settings()
    sink = open_store(settings)
    try:
        sink.migrate()  # the columns its replay reads (0040, 0041) on a store written before them
        page = build_report(sink, settings, tenant, incident or None)
    except TenantScopeError as exc:
        fail(str(exc), code=1 if TENANT_RE.fullmatch(tenant) else 2)
    except LookupError as exc:
        fail(str(exc.args[0]), code=1)
    finally:
        sink.close()
    path = out or Path(f"report-{tenant}{'-' + incident if incident else ''}.html")
    path.write_text(page.html, encoding="utf-8")
    console.print(f"wrote {path} ({len(page.html.encode()) / 1e6:.1f} MB, {page.figures} figures, incidents: "
                  f"{', '.join(page.incident_ids) or 'none'})", highlight=False)


#: entry-point group of command plugins: ``register(app)`` adds commands to this typer app. The dev
#: commands (demo, simulate, bench, bench-drift, bench-canary, chaos) come from streams.devtools this
#: way (pyproject.toml), so the product never imports dev tooling and an install without it still starts.
COMMAND_PLUGINS = "selfheal.commands"


def _mount_plugins() -> None:
    """Add the commands of every installed :data:`COMMAND_PLUGINS` entry point (importlib.metadata).
    An import error inside a plugin surfaces: it is a bug, not a missing plugin."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=COMMAND_PLUGINS):
        ep.load()(app)


_mount_plugins()


def main() -> None:
    """Console-script entry point. Errors a user can cause (a setting pointing nowhere: no broker,
    no store; an invalid tenant id) end as one line naming what to change, exit code 2."""
    from streams.errors import ConfigError, TenantScopeError

    try:
        app()
    except (ConfigError, TenantScopeError) as exc:
        err_console.print(f"selfheal: {exc}", soft_wrap=True, highlight=False, markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
