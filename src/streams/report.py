"""The analyst's and on-call's view of a tenant and its incidents: one self-contained HTML page
(``selfheal report --tenant T [--incident ID]``).

The page holds plotly figures with plotly.js inlined (no server, no CDN: it opens from a file or
an e-mail attachment) and plain HTML tables, laid out for 1280 px screens and for phones:

- **tenant overview**: open incidents, every incident's latest revision, the correction rate
  (corrected traces / traces) by cohort and release, the rollout verdicts and, when the store
  has them, the actions taken on incidents (``incident_actions``);
- **per incident** (the one asked for, or the three most recent): over event time, the slice's
  observed metric per time bucket against its baseline and band (baseline ± 2 standard errors
  of a bucket's mean: binomial for rates, the baseline variance on the detector scale for
  continuous metrics, Poisson for feedback counts; latency tails plot the bucket's p95/p99
  against the baseline's bin edge), the change point (``first_seen``) and the detection (the
  ``detected_at`` trace), the detector statistic against its threshold ``h``, the release
  timeline of the slice's traffic, the evidence traces, and the incident's revisions.

Where the figures come from: baseline, band and statistic are the detector's own, sampled after
every batch of a replay of the tenant's recorded traffic with the current settings
(:func:`streams.replay.run`, which reproduces the production incidents; see that module);
observed values are computed from the stored traces and feedback. Nothing is estimated twice.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from streams.config import Settings
from streams.errors import TenantScopeError
from streams.processors.baselines import slice_key
from streams.processors.metrics import METRIC_BY_NAME
from streams.replay import load_recorded, recorded_range, run
from streams.sinks.clickhouse import ClickHouseSink

#: time buckets of the observed series over the slice's traffic
N_BUCKETS = 60
#: incidents detailed when none is asked for
DEFAULT_INCIDENTS = 3
_INCIDENT_COLS = ("incident_id, revision, status, kind, layer, cohort, workflow, slice_release_id, metric_group, "
                  "metric, baseline, observed, effect, samples, detector, statistic, threshold, severity, action, "
                  "release_id, summary, evidence_trace_ids, detected_at_trace_id, first_seen, last_seen, emitted_at")
PLOT_CONFIG = {"responsive": True, "displaylogo": False}


@dataclass
class Probe:
    """Detector state of one slice and metric, sampled after every replay step.

    Attributes:
        key: slice key (:func:`~streams.processors.baselines.slice_key`); metric: metric name.
        t_ms, value, variance, cusum, p95_ms, p99_ms, traces: parallel lists, one entry per
            sample (epoch ms of the batch's latest event; the baseline in the metric's unit,
            its variance on the detector scale, the detector statistic in nats, the baseline's
            latency bin edges, traces in the baseline).
        obs_t_ms, obs_value: the slice's traces as processed: event time and per-trace value
            (``NaN`` when the metric is not read from traces).
    """

    key: str
    metric: str
    t_ms: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    variance: list[float] = field(default_factory=list)
    cusum: list[float] = field(default_factory=list)
    p95_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    traces: list[int] = field(default_factory=list)
    obs_t_ms: list[np.ndarray] = field(default_factory=list)
    obs_value: list[np.ndarray] = field(default_factory=list)


def _probe_step(probes: list[Probe], clock: list[int], kind: str, pipe: Any, msgs: list[Any], out: Any) -> None:
    """Sample every probe's slice after a replay step (:func:`streams.replay.run` ``observe``).
    The time of a sample is the latest trace event time processed so far (``clock[0]``): the
    worker's feedback agent may run behind its trace agent, so a feedback batch's own times are
    not the detectors' clock."""
    store = pipe.engine.store
    cols = out.cols if kind == "traces" else None
    if cols is not None and cols.n:
        clock[0] = max(clock[0], int(cols.event_time_ms.max()))
    t = clock[0]
    if t < 0:
        return
    for pr in probes:
        row = store.index.get(pr.key)
        if row is None:
            continue
        snap = next((s for s in store.snapshot_rows([row], t) if s["metric"] == pr.metric), None)
        if snap is None:
            continue
        pr.t_ms.append(t)
        pr.value.append(snap["value"])
        pr.variance.append(snap["variance"])
        pr.cusum.append(snap["cusum"])
        pr.p95_ms.append(snap["p95_ms"])
        pr.p99_ms.append(snap["p99_ms"])
        pr.traces.append(snap["traces"])
        if cols is not None and cols.n:
            _, tenant, cohort, workflow, release = pr.key.split("|")
            mask = np.array([x == tenant for x in cols.tenant_id])
            for want, have in ((cohort, cols.cohort), (workflow, cols.workflow), (release, cols.release_id)):
                if want != "*":
                    mask &= np.array([x == want for x in have])
            if mask.any():
                m = METRIC_BY_NAME[pr.metric]
                v = (m.value(cols).astype(np.float64) if m.value is not None
                     else np.full(cols.n, np.nan))
                pr.obs_t_ms.append(cols.event_time_ms[mask])
                pr.obs_value.append(v[mask])


# ---------------------------------------------------------------------------------------- data
def _incidents(sink: ClickHouseSink, tenant: str) -> list[dict[str, Any]]:
    return sink.query_dicts(f"SELECT {_INCIDENT_COLS} FROM {{db}}.incidents FINAL WHERE tenant_id = {{t:String}} "
                            "ORDER BY last_seen DESC, incident_id", {"t": tenant})


def _revisions(sink: ClickHouseSink, tenant: str, incident_id: str) -> list[dict[str, Any]]:
    return sink.query_dicts(
        "SELECT revision, any(status) AS status, any(severity) AS severity, any(kind) AS kind, "
        "any(statistic) AS statistic, any(observed) AS observed, any(action) AS action, any(emitted_at) AS emitted_at "
        "FROM {db}.incidents WHERE tenant_id = {t:String} AND incident_id = {i:String} "
        "GROUP BY revision ORDER BY revision", {"t": tenant, "i": incident_id})


def _correction_rates(sink: ClickHouseSink, tenant: str) -> list[dict[str, Any]]:
    return sink.query_dicts(
        "SELECT cohort, release_id, count() AS traces, countIf(c.trace_id != '') AS corrected "
        "FROM (SELECT trace_id, cohort, release_id FROM {db}.traces FINAL WHERE tenant_id = {t:String}) AS tr "
        "LEFT JOIN (SELECT DISTINCT trace_id FROM {db}.feedback FINAL WHERE tenant_id = {t:String}) AS c "
        "ON tr.trace_id = c.trace_id GROUP BY cohort, release_id ORDER BY cohort, release_id", {"t": tenant})


def _releases(sink: ClickHouseSink, tenant: str, inc: dict[str, Any] | None) -> list[dict[str, Any]]:
    cond, params = "tenant_id = {t:String}", {"t": tenant, "c": "", "w": ""}
    if inc is not None:
        cond += " AND ({c:String} = '' OR cohort = {c:String}) AND ({w:String} = '' OR workflow = {w:String})"
        params |= {"c": inc["cohort"], "w": inc["workflow"]}
    return sink.query_dicts(
        "SELECT release_id, any(model) AS model, any(prompt_version) AS prompt_version, count() AS traces, "
        f"min(event_time) AS first, max(event_time) AS last FROM {{db}}.traces WHERE {cond} "
        "GROUP BY release_id ORDER BY first", params)


def _verdicts(sink: ClickHouseSink, tenant: str) -> list[dict[str, Any]]:
    return sink.query_dicts(
        "SELECT release_id, cohort, workflow, arm, stage_pct, verdict, reason, samples_candidate, emitted_at "
        "FROM {db}.rollout_verdicts FINAL WHERE tenant_id = {t:String} "
        "ORDER BY emitted_at DESC, release_id, cohort LIMIT 1 BY release_id, cohort, workflow, arm", {"t": tenant})


def _actions(sink: ClickHouseSink, tenant: str) -> list[dict[str, Any]] | None:
    """Rows of ``incident_actions`` for the tenant (every column), or ``None`` without the table."""
    if not sink.query("EXISTS TABLE {db}.incident_actions")[0][0]:
        return None
    cols = {r[0] for r in sink.query("SELECT name FROM system.columns WHERE database = {d:String} "
                                     "AND table = 'incident_actions'", {"d": sink.db})}
    where = " WHERE tenant_id = {t:String}" if "tenant_id" in cols else ""
    return sink.query_dicts(f"SELECT * FROM {{db}}.incident_actions{where} LIMIT 500", {"t": tenant})


def _evidence(sink: ClickHouseSink, tenant: str, ids: list[str]) -> list[dict[str, Any]]:
    if not ids:
        return []
    return sink.query_dicts(
        "SELECT trace_id, event_time, cohort, workflow, release_id, outcome, latency_ms, output_tokens, cost_usd, "
        "confidence FROM {db}.traces FINAL WHERE tenant_id = {t:String} AND trace_id IN {ids:Array(String)} "
        "ORDER BY event_time, trace_id", {"t": tenant, "ids": ids})


def _corrections_by_bucket(sink: ClickHouseSink, tenant: str, inc: dict[str, Any], edges_ms: np.ndarray,
                           metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per time bucket of the slice's traces: ``(traces, feedback events)`` of a Poisson metric
    (every unique correction for ``correction_rate``, the safety categories for ``unsafe_feedback_rate``)."""
    cats = ("unsafe_recommendation", "medication_error")
    params = {"t": tenant, "c": inc["cohort"], "w": inc["workflow"], "r": inc["slice_release_id"],
              "cats": list(cats), "all": metric == "correction_rate"}
    rows = sink.query(
        "SELECT toUnixTimestamp64Milli(tr.event_time), countIf(f.trace_id != '' AND ({all:Bool} OR "
        "f.category IN {cats:Array(String)})) FROM (SELECT trace_id, event_time FROM {db}.traces FINAL "
        "WHERE tenant_id = {t:String} AND ({c:String} = '' OR cohort = {c:String}) "
        "AND ({w:String} = '' OR workflow = {w:String}) AND ({r:String} = '' OR release_id = {r:String})) AS tr "
        "LEFT JOIN (SELECT trace_id, category FROM {db}.feedback FINAL WHERE tenant_id = {t:String}) AS f "
        "ON tr.trace_id = f.trace_id GROUP BY tr.trace_id, tr.event_time", params)
    if not rows:
        return np.zeros(len(edges_ms) - 1), np.zeros(len(edges_ms) - 1)
    t = np.array([r[0] for r in rows], dtype=np.int64)
    k = np.array([r[1] for r in rows], dtype=np.float64)
    n, _ = np.histogram(t, edges_ms)
    e, _ = np.histogram(t, edges_ms, weights=k)
    return n.astype(np.float64), e


# ---------------------------------------------------------------------------------------- figures
def _dt(ms: Any) -> Any:
    return np.asarray(ms, dtype="datetime64[ms]")


def _vline(fig: go.Figure, t_ms: int | None, label: str, color: str, rows: int, side: str) -> None:
    if t_ms is None:
        return
    x = _dt([t_ms])[0]
    for r in range(1, rows + 1):
        fig.add_vline(x=x, line_dash="dash", line_color=color, row=r, col=1)  # type: ignore[arg-type]
    fig.add_annotation(x=x, y=0.97, yref="paper", text=label, showarrow=False, xanchor=side,
                       font={"color": color, "size": 11}, bgcolor="rgba(255,255,255,0.8)")


def _bucket_series(pr: Probe, inc: dict[str, Any], sink: ClickHouseSink, tenant: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """``(bucket centres ms, observed, baseline, band low, band high, y title)`` of a probe."""
    m = METRIC_BY_NAME[pr.metric]
    t_obs = np.concatenate(pr.obs_t_ms) if pr.obs_t_ms else np.array([], dtype=np.int64)
    v_obs = np.concatenate(pr.obs_value) if pr.obs_value else np.array([])
    lo_t = int(t_obs.min()) if t_obs.size else min(pr.t_ms)
    hi_t = int(t_obs.max()) + 1 if t_obs.size else max(pr.t_ms) + 1
    edges = np.linspace(lo_t, hi_t, N_BUCKETS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    idx = np.clip(np.searchsorted(edges, t_obs, side="right") - 1, 0, N_BUCKETS - 1)
    n = np.bincount(idx, minlength=N_BUCKETS).astype(np.float64)
    # the baseline as of each bucket's end: the last sample taken at or before it
    at = np.clip(np.searchsorted(np.asarray(pr.t_ms), edges[1:], side="right") - 1, 0, len(pr.t_ms) - 1)
    base = np.asarray(pr.value)[at]
    var = np.asarray(pr.variance)[at]
    with np.errstate(invalid="ignore", divide="ignore"):
        if m.family == "poisson":
            n, events = _corrections_by_bucket(sink, tenant, inc, edges.astype(np.int64), m.name)
            obs = events / n
            se = np.sqrt(np.maximum(base, 0) / n)
            lo, hi, title = np.maximum(base - 2 * se, 0), base + 2 * se, f"{m.name} (events per trace)"
        elif m.tail_mass is not None:
            q = m.tail_quantile
            obs = np.array([np.quantile(v_obs[idx == b], q) if (idx == b).any() else np.nan for b in range(N_BUCKETS)])
            base = np.asarray(pr.p95_ms if q < 0.99 else pr.p99_ms)[at]
            lo, hi, title = base, base, f"latency p{round(q * 100)} (ms)"
        elif m.family == "bernoulli":
            ev = (v_obs > 0) if m.direction >= 0 else ~(v_obs > 0)
            obs = np.bincount(idx, weights=ev.astype(np.float64), minlength=N_BUCKETS) / n
            se = np.sqrt(base * (1 - base) / n)
            lo, hi = np.maximum(base - 2 * se, 0), np.minimum(base + 2 * se, 1)
            title = f"{m.name}" + (" (non-success events)" if m.direction < 0 else "") + " (rate)"
        elif m.family == "gaussian" and m.scale is not None:
            z = m.scale.to_scale(v_obs)
            mean_z = np.bincount(idx, weights=z, minlength=N_BUCKETS) / n
            obs = np.array([m.scale.from_scale(float(x)) if np.isfinite(x) else np.nan for x in mean_z])
            bz = m.scale.to_scale(np.maximum(base, 1e-12)) if m.scale.name != "logit" else m.scale.to_scale(base)
            se = np.sqrt(var / n)
            lo = np.array([m.scale.from_scale(float(a)) if np.isfinite(a) else np.nan for a in bz - 2 * se])
            hi = np.array([m.scale.from_scale(float(a)) if np.isfinite(a) else np.nan for a in bz + 2 * se])
            title = f"{m.name} ({m.unit}, bucket mean on the detector's {m.scale.name} scale)"
        else:
            obs = np.full(N_BUCKETS, np.nan)
            lo = hi = base
            title = m.name
    return centres, obs, base, lo, hi, title


def incident_figure(pr: Probe, inc: dict[str, Any], releases: list[dict[str, Any]], detected_ms: int | None,
                    sink: ClickHouseSink, tenant: str, threshold: float,
                    revisions: list[dict[str, Any]] | None = None) -> go.Figure:
    """Three rows over event time: observed vs baseline band, detector statistic vs threshold
    (sampled after each batch: a crossing inside a batch fires and restarts the CUSUM before the
    sample, so each incident revision is marked with the statistic it reported), release
    timeline; dashed lines at the change point and the detection."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07, row_heights=[0.5, 0.3, 0.2],
                        subplot_titles=("observed vs baseline", "detector statistic vs threshold h",
                                        "releases in the slice"))
    if pr.t_ms:
        x, obs, base, lo, hi, title = _bucket_series(pr, inc, sink, tenant)
        xd = _dt(x.astype(np.int64))
        fig.add_trace(go.Scatter(x=xd, y=hi, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=xd, y=lo, mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor="rgba(99,110,250,0.18)", name="baseline band (±2 SE)"), row=1, col=1)
        fig.add_trace(go.Scatter(x=xd, y=base, mode="lines", line={"color": "#636efa"}, name="baseline"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=xd, y=obs, mode="markers+lines", line={"color": "#ef553b", "width": 1},
                                 marker={"size": 5}, name="observed"), row=1, col=1)
        fig.update_yaxes(title_text=title, title_font={"size": 11}, row=1, col=1)
        fig.add_trace(go.Scatter(x=_dt(pr.t_ms), y=pr.cusum, mode="lines", line={"color": "#00a08b"},
                                 name="CUSUM statistic (nats)"), row=2, col=1)
        fig.add_hline(y=threshold, line_color="#b00", line_dash="dot", row=2, col=1)  # type: ignore[arg-type]
        if revisions:
            fig.add_trace(go.Scatter(x=_dt([_ms(r["emitted_at"]) for r in revisions]),
                                     y=[r["statistic"] for r in revisions], mode="markers",
                                     marker={"symbol": "x", "size": 10, "color": "#b00"},
                                     hovertext=[f"revision {r['revision']}: {r['status']}" for r in revisions],
                                     name="incident events (reported statistic)"), row=2, col=1)
        fig.update_yaxes(title_text="nats", row=2, col=1)
    for i, rel in enumerate(releases):
        first, last = _ms(rel["first"]), _ms(rel["last"])
        fig.add_trace(go.Bar(y=[rel["release_id"]], x=[max(last - first, 1)], base=[_dt([first])[0]],
                             orientation="h", name=rel["release_id"], showlegend=False,
                             marker={"color": ["#636efa", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692"][i % 5]},
                             hovertext=f"{rel['release_id']}: {rel['traces']:,} traces"), row=3, col=1)
    fig.update_xaxes(type="date", row=3, col=1)
    _vline(fig, _ms(inc["first_seen"]), "change point ", "#555", 3, "right")
    _vline(fig, detected_ms, " detected", "#b00", 3, "left")
    fig.update_layout(height=720, margin={"l": 60, "r": 20, "t": 60, "b": 40}, autosize=True,
                      legend={"orientation": "h", "y": -0.08}, template="plotly_white")
    return fig


def correction_figure(rates: list[dict[str, Any]]) -> go.Figure:
    """Correction rate (corrected traces / traces) by cohort, one bar per release."""
    fig = go.Figure()
    for rel in sorted({r["release_id"] for r in rates}):
        rs = [r for r in rates if r["release_id"] == rel]
        fig.add_trace(go.Bar(x=[r["cohort"] for r in rs], y=[r["corrected"] / max(r["traces"], 1) for r in rs],
                             name=rel, hovertext=[f"{r['corrected']:,} / {r['traces']:,} traces" for r in rs]))
    fig.update_layout(barmode="group", height=380, template="plotly_white", yaxis={"tickformat": ".0%"},
                      margin={"l": 50, "r": 20, "t": 30, "b": 40}, legend={"orientation": "h", "y": -0.2},
                      title={"text": "correction rate by cohort and release", "font": {"size": 14}})
    return fig


# ---------------------------------------------------------------------------------------- html
def _ms(v: Any) -> int:
    if isinstance(v, datetime):
        return int((v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp() * 1000)
    return int(v)


def _fmt(v: Any) -> str:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[str] | None = None, cls: str = "") -> str:
    if not rows:
        return "<p class='none'>none</p>"
    cols = cols or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<div class='scroll'><table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1240px;margin:0 auto;padding:16px}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem}.meta{color:#666;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:10px 14px;min-width:140px;flex:1}
.card b{display:block;font-size:1.4rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.85rem;background:#fff;width:100%}
th,td{border:1px solid #e3e3e3;padding:4px 6px;text-align:left;white-space:nowrap}
th{background:#f1f1f1}.sev-critical,.sev-high{color:#b00;font-weight:600}
.plot{background:#fff;border:1px solid #e3e3e3;border-radius:8px;margin:12px 0;min-height:300px}
.summary{background:#fff;border-left:4px solid #ef553b;padding:8px 12px}
@media (max-width:700px){main{padding:8px}h1{font-size:1.2rem}.card{min-width:40%}table{font-size:.75rem}}
"""


@dataclass
class Report:
    """The rendered page and what it shows: ``html`` (UTF-8 text), ``incident_ids`` detailed, ``figures``."""

    html: str
    incident_ids: list[str]
    figures: int


def build_report(sink: ClickHouseSink, settings: Settings, tenant: str, incident_id: str | None = None) -> Report:
    """The HTML page of ``tenant`` (module docstring); ``incident_id`` details that incident,
    otherwise the :data:`DEFAULT_INCIDENTS` most recent.

    Raises:
        TenantScopeError: an invalid tenant id, or no trace and no incident of the tenant in the store.
        LookupError: ``incident_id`` is not an incident of the tenant.
    """
    sink.for_tenant(tenant)  # slug check
    incidents = _incidents(sink, tenant)
    span = recorded_range(sink, [tenant])
    if span is None and not incidents:
        raise TenantScopeError(f"no traces and no incidents of tenant {tenant!r} in {sink.location}")
    if incident_id:
        chosen = [i for i in incidents if i["incident_id"] == incident_id]
        if not chosen:
            raise LookupError(f"incident {incident_id!r} is not an incident of tenant {tenant!r}")
    else:
        chosen = incidents[:DEFAULT_INCIDENTS]
    probes = [Probe(slice_key(i["layer"], tenant, i["cohort"] or None, i["workflow"] or None,
                              i["slice_release_id"] or None), i["metric"]) for i in chosen]
    if probes and span is not None:
        rec = load_recorded(sink, settings, [tenant], span[0], span[1])
        clock = [-1]
        run(rec, settings, sink,
            observe=lambda kind, pipe, msgs, out: _probe_step(probes, clock, kind, pipe, msgs, out))
    figs: list[tuple[str, go.Figure]] = []
    parts: list[str] = []
    open_inc = [i for i in incidents if i["status"] != "resolved"]
    rates = _correction_rates(sink, tenant)
    n_traces = sum(r["traces"] for r in rates)
    n_corr = sum(r["corrected"] for r in rates)
    parts.append(
        f"<h1>selfheal report · {html.escape(tenant)}</h1><p class='meta'>store {html.escape(sink.location)} · "
        f"threshold h = {settings.cusum_threshold:g} nats · event time "
        + (f"{_fmt(datetime.fromtimestamp(span[0] / 1000, UTC))} – {_fmt(datetime.fromtimestamp(span[1] / 1000, UTC))}"
           " UTC" if span else "none") + "</p>"
        f"<div class='cards'><div class='card'><b id='open-count'>{len(open_inc)}</b>open incidents</div>"
        f"<div class='card'><b>{len(incidents)}</b>incidents</div><div class='card'><b>{n_traces:,}</b>traces</div>"
        f"<div class='card'><b>{n_corr / max(n_traces, 1):.1%}</b>traces corrected</div></div>")
    parts.append("<h2>Open incidents</h2>" + _table(
        open_inc, ["incident_id", "status", "severity", "kind", "layer", "cohort", "workflow", "metric", "action",
                   "release_id", "last_seen"], "incidents-open"))
    figs.append(("fig-corrections", correction_figure(rates)))
    parts.append("<h2>Correction rate by cohort and release</h2>" + _plot(*figs[-1])
                 + _table(rates, ["cohort", "release_id", "traces", "corrected"]))
    parts.append("<h2>Rollout verdicts</h2>" + _table(_verdicts(sink, tenant)))
    actions = _actions(sink, tenant)
    parts.append("<h2>Actions on incidents</h2>" + (
        "<p class='none'>no incident_actions table in this store</p>" if actions is None else _table(actions)))
    parts.append("<h2>All incidents</h2>" + _table(
        incidents, ["incident_id", "status", "severity", "kind", "layer", "cohort", "workflow", "metric", "first_seen",
                    "last_seen"]))
    for n, (inc, pr) in enumerate(zip(chosen, probes, strict=True)):
        det = _evidence(sink, tenant, [inc["detected_at_trace_id"]])
        detected_ms = _ms(det[0]["event_time"]) if det else None
        fid = f"fig-incident-{n}"
        revisions = _revisions(sink, tenant, inc["incident_id"])
        figs.append((fid, incident_figure(pr, inc, _releases(sink, tenant, inc), detected_ms, sink, tenant,
                                          settings.cusum_threshold, revisions)))
        where = " / ".join(x for x in (inc["layer"], inc["cohort"], inc["workflow"], inc["slice_release_id"]) if x)
        parts.append(
            f"<h2 id='incident-{html.escape(inc['incident_id'])}'>Incident {html.escape(inc['incident_id'])}</h2>"
            f"<p class='meta'>{html.escape(inc['kind'])} · {html.escape(where)} · {html.escape(inc['metric'])} · "
            f"<span class='sev-{html.escape(inc['severity'])}'>{html.escape(inc['severity'])}</span> · action "
            f"{html.escape(inc['action'])} · {html.escape(inc['status'])}</p>"
            f"<p class='summary'>{html.escape(inc['summary'])}</p>"
            + _plot(*figs[-1]) +
            "<p class='meta'>Baseline, band and statistic as the detector held them after each processed batch "
            "(a replay of the recording with the current settings); a crossing inside a batch fires and restarts "
            "the CUSUM before the next sample, so × marks the statistic each incident event reported.</p>"
            "<h3>Evidence traces</h3>" + _table(_evidence(sink, tenant, list(inc["evidence_trace_ids"])))
            + "<h3>Revisions</h3>" + _table(revisions))
    page = _page(tenant, parts, figs)
    return Report(page, [i["incident_id"] for i in chosen], len(figs))


def _plot(fid: str, fig: go.Figure) -> str:
    """A figure's div and script (plotly.js itself is inlined once in the head)."""
    return (f"<div class='plot' id='{fid}'>"
            + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"{fid}-plot", config=PLOT_CONFIG)
            + "</div>")


def _page(tenant: str, parts: list[str], figs: list[tuple[str, go.Figure]]) -> str:
    """The HTML document: CSS and plotly.js inline in the head, then the sections."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>selfheal report · {html.escape(tenant)}</title><style>{_CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body><main>{''.join(parts)}</main></body></html>")
