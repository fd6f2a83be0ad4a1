"""Synthetic traffic straight into :class:`~streams.processors.columns.TraceColumns` (no Kafka, no
Avro): the fast path for detector tests and ``selfheal bench-drift``, where millions of traces are
needed. Distributions follow :mod:`streams.devtools.simulate`'s fleet (log-normal latency and tokens, Beta
confidence, categorical outcomes), with per-slice effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streams.processors.columns import TraceColumns
from streams.processors.feedback import TraceRef

WORKFLOWS = ("soap_note", "discharge_summary", "prior_auth", "patient_message_reply", "billing_coding")
WORKFLOW_P = np.array([0.50, 0.15, 0.15, 0.12, 0.08])
LATENCY_MS = np.array([4200.0, 6800.0, 5200.0, 2100.0, 3000.0])
INPUT_TOKENS = np.array([5200.0, 9000.0, 3800.0, 1400.0, 4200.0])
OUTPUT_TOKENS = np.array([650.0, 900.0, 520.0, 180.0, 120.0])
INTENTS = ("new_visit", "follow_up", "telehealth", "inpatient")
CORRECTION_RATE = np.array([0.14, 0.16, 0.10, 0.08, 0.11])  # per workflow, per trace
UNSAFE_RATE = 0.004


@dataclass
class Effect:
    """Multiplicative effects on a slice (1.0 = none). Rates multiply the probability."""

    latency: float = 1.0
    latency_tail_share: float = 0.0  # share of runs that get ``latency_tail_factor`` (tail-only regressions)
    latency_tail_factor: float = 1.0
    output_tokens: float = 1.0
    failure: float = 1.0
    escalation: float = 1.0
    policy_block: float = 1.0
    tool_failure: float = 1.0
    intent_p: tuple[float, ...] | None = None  # input-mix shift
    workflow_p: tuple[float, ...] | None = None
    correction: float = 1.0  # corrections per trace (clinician edits)
    unsafe: float = 1.0  # unsafe-recommendation feedback per trace


@dataclass
class Slice:
    """One tenant × cohort stream with its share of traffic, release and effect."""

    tenant: str
    cohort: str
    share: float
    release: str = "rel-1"
    partition: int = 0
    effect: Effect = field(default_factory=Effect)


def synthetic_columns(rng: np.random.Generator, slices: list[Slice], n: int, offset0: int, t0_ms: int,
                      step_ms: float = 100.0) -> tuple[TraceColumns, np.ndarray]:
    """``n`` traces drawn across ``slices`` by share. Returns the columns and each trace's slice index.

    ``offset0`` numbers the traces (one Kafka offset per trace), ``t0_ms``/``step_ms`` set event time.
    """
    share = np.array([s.share for s in slices], dtype=float)
    which = rng.choice(len(slices), size=n, p=share / share.sum())
    wf = np.empty(n, dtype=np.intp)
    intent = np.empty(n, dtype=np.intp)
    lat_f = np.ones(n)
    tail_share = np.zeros(n)
    tail_f = np.ones(n)
    out_f = np.ones(n)
    fail_f = np.ones(n)
    esc_f = np.ones(n)
    pb_f = np.ones(n)
    tool_f = np.ones(n)
    for i, s in enumerate(slices):
        sel = which == i
        k = int(sel.sum())
        e = s.effect
        wp = np.asarray(e.workflow_p or WORKFLOW_P, dtype=float)
        wf[sel] = rng.choice(len(WORKFLOWS), size=k, p=wp / wp.sum())
        ip = np.asarray(e.intent_p or (0.4, 0.4, 0.15, 0.05), dtype=float)
        intent[sel] = rng.choice(len(INTENTS), size=k, p=ip / ip.sum())
        lat_f[sel], tail_share[sel], tail_f[sel] = e.latency, e.latency_tail_share, e.latency_tail_factor
        out_f[sel], fail_f[sel], esc_f[sel] = e.output_tokens, e.failure, e.escalation
        pb_f[sel], tool_f[sel] = e.policy_block, e.tool_failure
    tail = rng.random(n) < tail_share
    lat = LATENCY_MS[wf] * np.exp(rng.normal(0, 0.35, n)) * lat_f * np.where(tail, tail_f, 1.0)
    inp = np.maximum(1, np.round(INPUT_TOKENS[wf] * np.exp(rng.normal(0, 0.25, n))))
    out = np.maximum(1, np.round(OUTPUT_TOKENS[wf] * np.exp(rng.normal(0, 0.3, n)) * out_f))
    u = rng.random(n)
    p_fail = 0.02 * fail_f
    p_esc = 0.04 * esc_f
    outcome = np.where(u < p_fail, 1, np.where(u < p_fail + p_esc, 2, np.where(u < p_fail + p_esc + 0.01, 3, 0)))
    offsets = np.arange(offset0, offset0 + n, dtype=np.int64)
    ids = [f"x{o}" for o in offsets.tolist()]
    tenants = [slices[i].tenant for i in which.tolist()]
    cols = TraceColumns(
        records=[], trace_id=ids, tenant_id=tenants, cohort=[slices[i].cohort for i in which.tolist()],
        workflow=[WORKFLOWS[w] for w in wf.tolist()], intent=[INTENTS[i] for i in intent.tolist()],
        release_id=[slices[i].release for i in which.tolist()],
        partition=np.array([slices[i].partition for i in which.tolist()], dtype=np.int32), offset=offsets,
        event_time_ms=(t0_ms + np.arange(n) * step_ms).astype(np.int64), latency_ms=lat, input_tokens=inp,
        output_tokens=out, cost_usd=inp * 2.5e-6 + out * 1e-5, confidence=rng.beta(8, 2, n),
        outcome=outcome.astype(np.int8), policy_blocked=rng.random(n) < 0.005 * pb_f,
        tool_failure=rng.random(n) < 0.035 * tool_f, retrieval_miss=rng.random(n) < 0.1,
        fallback_used=rng.random(n) < 0.01, rollout_arm=np.full(n, -1, np.int8), candidate_release_id=[None] * n,
        stage_pct=np.full(n, np.nan))
    return cols, which


def synthetic_feedback(rng: np.random.Generator, cols: TraceColumns, which: np.ndarray, slices: list[Slice],
                       lag_ms: tuple[float, float] = (30_000.0, 240_000.0)) -> list[tuple[int, dict, TraceRef]]:
    """Corrections (and unsafe-recommendation reports) for ``cols``: ``(arrival ms, record, trace)``.

    A trace is corrected with its workflow's rate times the slice's ``correction`` effect; the
    feedback arrives ``lag_ms`` (uniform) after the trace, as a delayed label.
    """
    wf_idx = {w: i for i, w in enumerate(WORKFLOWS)}
    wf = np.fromiter((wf_idx[w] for w in cols.workflow), dtype=np.intp, count=cols.n)
    corr_f = np.array([slices[i].effect.correction for i in range(len(slices))])[which]
    unsafe_f = np.array([slices[i].effect.unsafe for i in range(len(slices))])[which]
    corrected = rng.random(cols.n) < CORRECTION_RATE[wf] * corr_f
    unsafe = rng.random(cols.n) < UNSAFE_RATE * unsafe_f
    out = []
    for i in np.flatnonzero(corrected | unsafe).tolist():
        t = int(cols.event_time_ms[i])
        ref = TraceRef(tenant_id=cols.tenant_id[i], cohort=cols.cohort[i], workflow=cols.workflow[i],
                       release_id=cols.release_id[i], partition=int(cols.partition[i]), event_time_ms=t)
        category = "unsafe_recommendation" if unsafe[i] else "omission"
        at = t + int(rng.uniform(*lag_ms))
        out.append((at, {"trace_id": cols.trace_id[i], "category": category, "event_time": at}, ref))
    return out
