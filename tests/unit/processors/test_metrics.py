"""The metric catalogue: the layouts derived from it are the persisted ones, the scales invert,
and each consumer's table comes from the catalogue."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.verdict import MetricRole
from streams.devtools.synthetic import synthetic_columns
from streams.processors import metrics as M
from streams.processors.baselines import FIELDS, ROW_BYTES
from streams.processors.canary.scorecard import (
    DELAYED,
    EVENT_SLOT,
    GUARDRAILS,
    IMMEDIATE,
    SLOT_FEEDBACK_TRACES,
    STRATUM_LEN,
    SUCCESS,
    THRESHOLD_INDEX,
)
from streams.processors.columns import OUTCOME_CODES
from streams.processors.drift.engine import ALARM_COLS, N_DETECTOR_COLS
from tests.unit.processors.drift.test_engine import fleet


def test_family_columns_and_groups_are_the_persisted_layout():
    # slice rows in the baselines changelog and canary scorecards in canary-state hold one column
    # per metric in this order: a reordered catalogue must fail here, not corrupt restored state
    assert [m.name for m in M.BERNOULLI] == [
        "failure_rate", "escalation_rate", "success_rate", "policy_block_rate", "tool_failure_rate",
        "retrieval_miss_rate", "fallback_rate", "latency_p95", "latency_p99"]
    assert [m.name for m in M.GAUSSIAN] == ["latency_mean", "output_tokens", "input_tokens", "cost", "confidence"]
    assert [m.name for m in M.POISSON] == ["correction_rate", "unsafe_feedback_rate"]
    assert [m.name for m in M.CATEGORICAL] == ["input_mix"]
    assert M.GROUPS == ("quality", "latency", "output", "safety", "tools", "input")
    assert [m.name for m in M.CANARY_METRICS] == [
        "correction_rate", "task_success", "escalation_rate", "latency_p95", "cost", "policy_block_rate",
        "safety_feedback_rate"]
    # 4016 before issue 17 (delayed labels: bucket spans and trace-time ranges, fold and reset times)
    # 4064 before the change-point times (cp_ms per detector column, c_win_ms), appended at the end
    # 4296 before the held ticks of the label-delay ring (pa_tick, pa_n per N_AHEAD), appended
    assert ROW_BYTES == 5840 and FIELDS["b_s"][0] == 2 * M.N_BERNOULLI
    # Gaussian sides that may alarm: up for latency, both token counts, cost; down for both token counts, confidence
    assert N_DETECTOR_COLS == 2 * M.N_BERNOULLI + 2 * M.N_GAUSSIAN and ALARM_COLS.sum() == 2 * M.N_BERNOULLI + 7


def test_canary_tables_are_derived_from_the_catalogue():
    roles = {m.name: m.canary.role for m in M.CANARY_METRICS}
    assert [M.CANARY_METRICS[i].name for i in GUARDRAILS] == [n for n, r in roles.items() if r == MetricRole.guardrail]
    assert len(SUCCESS) + len(GUARDRAILS) == M.N_CANARY_METRICS
    assert {M.CANARY_METRICS[i].name for i in DELAYED} == {"correction_rate", "safety_feedback_rate"}
    # the persisted stratum vector: [traces, task, escalation, latency, cost, policy, feedback traces, corrections,
    # safety]
    assert STRATUM_LEN == 9 and SLOT_FEEDBACK_TRACES == 6
    assert [EVENT_SLOT[i] for i in IMMEDIATE] == [1, 2, 3, 4, 5] and [EVENT_SLOT[i] for i in DELAYED] == [7, 8]
    assert {M.CANARY_METRICS[i].name: t for i, t in THRESHOLD_INDEX.items()} == {"latency_p95": 0, "cost": 1}
    assert M.CANARY_METRICS[M.CANARY_INDEX["correction_rate"]].canary_unit == "rate"
    assert M.METRIC_BY_NAME["correction_rate"].unit == "per_trace"


@pytest.mark.parametrize("metric", M.GAUSSIAN, ids=lambda m: m.name)
def test_every_scale_inverts_to_the_unit(metric):
    values = {"latency_mean": [0.5, 12.0, 1234.5, 3.6e6], "output_tokens": [0, 1, 420, 120_000],
              "input_tokens": [0, 7, 1800], "cost": [0.0, 1e-4, 0.0123, 40.0], "confidence": [0.01, 0.5, 0.83, 0.99]}
    x = np.array(values[metric.name], dtype=np.float64)
    back = [metric.scale.from_scale(float(v)) for v in metric.scale.to_scale(x)]
    low = 1e-3 if metric.name == "latency_mean" else 0.0  # latency is floored at 1 us on the log scale
    assert back == pytest.approx(np.maximum(x, low), rel=1e-9, abs=1e-12)
    assert math.isnan(metric.scale.to_scale(np.array([math.nan]))[0])  # missing stays missing


def test_event_is_the_harmful_direction_and_detectors_are_named_by_family():
    cols, _ = synthetic_columns(np.random.default_rng(0), fleet(), 500, 0, 1_790_000_000_000)
    success = M.METRIC_BY_NAME["success_rate"]
    assert (success.value(cols) == (cols.outcome == OUTCOME_CODES["success"])).all()
    assert (success.event(cols) == (cols.outcome != OUTCOME_CODES["success"])).all()
    assert (M.METRIC_BY_NAME["task_success"].event(cols) == success.event(cols)).all()
    assert [M.METRIC_BY_NAME[n].detector for n in ("failure_rate", "cost", "correction_rate", "input_mix")] == [
        "bernoulli_cusum", "gaussian_cusum", "poisson_cusum", "chi2_window"]
    with pytest.raises(TypeError, match="correction_rate"):
        M.METRIC_BY_NAME["correction_rate"].event(cols)
    assert M.METRIC_BY_NAME["latency_p95"].tail_quantile == 0.95 and M.BERNOULLI[M.TAIL_P99].tail_quantile == 0.99
