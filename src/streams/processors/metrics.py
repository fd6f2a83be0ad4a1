"""The metric catalogue: every monitored metric declared once, every per-metric table derived.

A :class:`Metric` says what the metric is (name, unit, incident metric group), how to read it
from a batch of traces (:attr:`Metric.value`, numpy over :class:`TraceColumns`) or from feedback
(:attr:`Metric.feedback_event`), which drift detector family watches it and on which scale
(:class:`Scale`: log, log1p, logit, ...; the inverse maps detector figures back to the unit), and
whether and how the canary scorecards test it (:class:`CanaryUse`). :data:`CATALOGUE` lists them.

Everything else is derived here from the catalogue, as module constants, so the hot paths keep
plain array indexing: the columns of each detector family (``BERNOULLI``, ``GAUSSIAN``,
``POISSON``, ``CATEGORICAL`` and their ``*_INDEX`` maps), the group of every column (baselines
freeze per group while an incident is open), the canary scorecard order (``CANARY_METRICS``,
``CANARY_INDEX``), the detector name an incident reports (:attr:`Metric.detector`) and the group
a rollback incident belongs to.

Order is state layout: a family's columns, in catalogue order, are the columns of the slice rows
serialised to the baselines changelog (:mod:`streams.processors.baselines`), and
``CanaryUse.slot`` is the row of a metric in the persisted scorecard arrays. New metrics go at the
end of their family (and a new slot at the end), with a new row layout magic in baselines.

Families (detectors: :mod:`streams.processors.drift`):

- ``bernoulli``: a 0/1 event per trace; the tail metrics ``latency_p95``/``latency_p99`` are the
  event "latency at or above the baseline's p95/p99 bin edge" (``tail_mass`` above the edge), so
  a tail regression is a rate increase.
- ``gaussian``: a per-trace value on a variance-stabilising scale (:class:`Scale`).
- ``poisson``: events counted from the feedback stream against trace exposure.
- ``categorical``: the input mix (workflow x intent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.feedback import SAFETY_CATEGORIES
from schemas.verdict import MetricRole
from streams.processors.columns import OUTCOME_CODES, TraceColumns

#: incident metric groups; the order is the column order of the slices' ``i_open`` flags (state layout)
GROUPS = ("quality", "latency", "output", "safety", "tools", "input")
GROUP_INDEX = {g: i for i, g in enumerate(GROUPS)}
#: detector family -> the ``detector`` named in incidents
DETECTORS = {"bernoulli": "bernoulli_cusum", "gaussian": "gaussian_cusum", "poisson": "poisson_cusum",
             "categorical": "chi2_window"}
#: the transforms saturate here: exp(50) ~ 5e21 is beyond every unit's range
_CLIP = 50.0


@dataclass(frozen=True, slots=True)
class Scale:
    """A variance-stabilising transform of a per-trace value (detector scale) and its inverse.

    Attributes:
        name: ``log``, ``log1p``, ``log_offset`` or ``logit``.
        to_scale: values in the metric's unit, shape ``(n,)`` -> detector scale, shape ``(n,)``
            (NaN stays NaN: a missing value).
        from_scale: one detector-scale value (a baseline mean, a confidence bound) -> the unit.
    """

    name: str
    to_scale: Callable[[np.ndarray], np.ndarray]
    from_scale: Callable[[float], float]


def _logit(x: np.ndarray) -> np.ndarray:
    p = np.clip(x, 1e-4, 1 - 1e-4)  # a score of exactly 0 or 1 would be infinitely far out
    return np.log(p / (1 - p))


#: latency: log ms (floored at 1 us: a 0 ms trace is not infinitely fast)
LOG_MS = Scale("log", lambda x: np.log(np.maximum(x, 1e-3)), lambda v: float(math.exp(min(v, _CLIP))))
#: token counts: log(1 + tokens) (0 tokens is a real value)
LOG1P = Scale("log1p", np.log1p, lambda v: float(math.expm1(min(v, _CLIP))))
#: cost: log(USD + 1e-5) (free traces exist; 1e-5 USD is below a token's price)
LOG_USD = Scale("log_offset", lambda x: np.log(x + 1e-5), lambda v: float(math.exp(min(v, _CLIP)) - 1e-5))
#: confidence score in [0, 1]: logit (the raw score piles up near 1; its logit is closer to normal)
LOGIT = Scale("logit", _logit, lambda v: float(1.0 / (1.0 + math.exp(-max(min(v, _CLIP), -_CLIP)))))


@dataclass(frozen=True, slots=True)
class CanaryUse:
    """How the canary scorecards test a metric (:mod:`streams.processors.canary`).

    Every scorecard metric is the per-trace rate of a harmful event, compared between the
    candidate and the control of a rollout.

    Attributes:
        slot: row of the metric in the persisted scorecard arrays (state layout, never reused).
        role: ``success`` (must be shown non-inferior to promote) or ``guardrail`` (can only block).
        harmful_event: what counts against the candidate, in words (docs, verdict reasons).
        delayed: counted from feedback once its bucket matured, not from the trace itself.
        control_quantile: the harmful event is "value in or above the control's quantile bin"
            (latency p95, cost p90) instead of :meth:`Metric.event`.
        unit: unit of the displayed control/candidate values when it differs from the metric's
            (``correction_rate`` is corrections per trace for drift, the share of traces with a
            correction in a scorecard).
    """

    slot: int
    role: MetricRole
    harmful_event: str
    delayed: bool = False
    control_quantile: float | None = None
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Metric:
    """One monitored metric.

    Attributes:
        name: e.g. ``latency_p95`` (the ``metric`` of incidents, verdicts and snapshots).
        unit: unit of baseline/observed in incidents (``rate``, ``ms``, ``tokens``, ``USD``,
            ``score``, ``per_trace``, ``distribution``).
        group: incident metric group (:data:`GROUPS`).
        direction: +1 harmful when it rises, -1 when it falls, 0 both.
        family: drift detector family (``bernoulli``, ``gaussian``, ``poisson``,
            ``categorical``), ``None`` for a metric only the canary scorecards test.
        value: per-trace value of a batch, ``TraceColumns -> (n,)`` array in the unit (a 0/1
            indicator for rates); ``None`` when the metric is not read from traces.
        scale: detector scale of a ``gaussian`` metric.
        tail_mass: for a latency tail metric, the baseline tail mass above the monitored bin
            edge (0.05: p95).
        feedback_event: for a metric counted from feedback, whether a feedback record counts.
        canary: how the canary scorecards use it, ``None`` if they do not.
    """

    name: str
    unit: str
    group: str
    direction: int
    family: str | None = None
    value: Callable[[TraceColumns], np.ndarray] | None = None
    scale: Scale | None = None
    tail_mass: float | None = None
    feedback_event: Callable[[dict[str, Any]], bool] | None = None
    canary: CanaryUse | None = None

    def event(self, cols: TraceColumns) -> np.ndarray:
        """The 0/1 event per trace whose rate is tested for an increase, shape ``(n,)`` bool:
        :attr:`value`, or its complement for a metric that must not fall (success -> non-success).

        Raises:
            TypeError: the metric is not read from traces (``value`` is ``None``).
        """
        if self.value is None:
            raise TypeError(f"metric {self.name} has no per-trace value")
        v = self.value(cols)
        return ~v if self.direction < 0 else v

    @property
    def detector(self) -> str:
        """Name of the detector that watches the metric (``bernoulli_cusum``, ...)."""
        return DETECTORS[self.family] if self.family else "canary_msprt"

    @property
    def tail_quantile(self) -> float:
        """Quantile of a tail metric's bin edge (``1 - tail_mass``: 0.95 for ``latency_p95``)."""
        if self.tail_mass is None:
            raise TypeError(f"metric {self.name} is not a tail metric")
        return 1.0 - self.tail_mass

    @property
    def canary_unit(self) -> str:
        """Unit of the metric in a scorecard."""
        return (self.canary.unit if self.canary is not None else None) or self.unit


def is_safety_feedback(record: dict[str, Any]) -> bool:
    """Feedback that counts as a safety signal (unsafe recommendation, medication error)."""
    return record["category"] in SAFETY_CATEGORIES


def _any_feedback(record: dict[str, Any]) -> bool:
    return True


_SUCCESS, _FAILURE, _ESCALATED = OUTCOME_CODES["success"], OUTCOME_CODES["failure"], OUTCOME_CODES["escalated"]


def _is_success(cols: TraceColumns) -> np.ndarray:
    return cols.outcome == _SUCCESS

#: every metric; within a family, catalogue order is column (state) order
CATALOGUE: tuple[Metric, ...] = (
    # ---- bernoulli: rates of a per-trace event
    Metric("failure_rate", "rate", "quality", +1, "bernoulli", lambda c: c.outcome == _FAILURE),
    Metric("escalation_rate", "rate", "quality", +1, "bernoulli", lambda c: c.outcome == _ESCALATED,
           canary=CanaryUse(2, MetricRole.success, "an escalation")),
    Metric("success_rate", "rate", "quality", -1, "bernoulli", _is_success),
    Metric("policy_block_rate", "rate", "safety", +1, "bernoulli", lambda c: c.policy_blocked,
           canary=CanaryUse(5, MetricRole.guardrail, "a policy block")),
    Metric("tool_failure_rate", "rate", "tools", +1, "bernoulli", lambda c: c.tool_failure),
    Metric("retrieval_miss_rate", "rate", "tools", +1, "bernoulli", lambda c: c.retrieval_miss),
    Metric("fallback_rate", "rate", "tools", +1, "bernoulli", lambda c: c.fallback_used),
    Metric("latency_p95", "ms", "latency", +1, "bernoulli", lambda c: c.latency_ms, tail_mass=0.05,
           canary=CanaryUse(3, MetricRole.success, "latency in or above the control's p95 bin",
                            control_quantile=0.95)),
    Metric("latency_p99", "ms", "latency", +1, "bernoulli", lambda c: c.latency_ms, tail_mass=0.01),
    # ---- gaussian: per-trace values on a stabilising scale
    Metric("latency_mean", "ms", "latency", +1, "gaussian", lambda c: c.latency_ms, LOG_MS),
    Metric("output_tokens", "tokens", "output", 0, "gaussian", lambda c: c.output_tokens, LOG1P),
    Metric("input_tokens", "tokens", "input", 0, "gaussian", lambda c: c.input_tokens, LOG1P),
    Metric("cost", "USD", "output", +1, "gaussian", lambda c: c.cost_usd, LOG_USD,
           canary=CanaryUse(4, MetricRole.success, "cost in or above the control's p90 bin", control_quantile=0.90)),
    Metric("confidence", "score", "output", -1, "gaussian", lambda c: c.confidence, LOGIT),
    # ---- poisson: feedback events per trace of exposure
    Metric("correction_rate", "per_trace", "quality", +1, "poisson", feedback_event=_any_feedback,
           canary=CanaryUse(0, MetricRole.success, "at least one correction", delayed=True, unit="rate")),
    Metric("unsafe_feedback_rate", "per_trace", "safety", +1, "poisson", feedback_event=is_safety_feedback),
    # ---- categorical: the input mix
    Metric("input_mix", "distribution", "input", 0, "categorical"),
    # ---- scorecard-only metrics (the drift side watches success_rate and unsafe_feedback_rate)
    Metric("task_success", "rate", "quality", -1, value=_is_success,
           canary=CanaryUse(1, MetricRole.success, "an outcome other than success")),
    Metric("safety_feedback_rate", "rate", "safety", +1, feedback_event=is_safety_feedback,
           canary=CanaryUse(6, MetricRole.guardrail, "unsafe-recommendation or medication-error feedback",
                            delayed=True)),
)
METRIC_BY_NAME = {m.name: m for m in CATALOGUE}


def _family(name: str) -> tuple[Metric, ...]:
    return tuple(m for m in CATALOGUE if m.family == name)


# ---------------------------------------------------------------------- drift: detector columns
BERNOULLI = _family("bernoulli")
GAUSSIAN = _family("gaussian")
POISSON = _family("poisson")
CATEGORICAL = _family("categorical")
#: every metric a slice's baseline tracks, family by family
DRIFT_METRICS = BERNOULLI + GAUSSIAN + POISSON + CATEGORICAL
N_BERNOULLI, N_GAUSSIAN, N_POISSON = len(BERNOULLI), len(GAUSSIAN), len(POISSON)
BERNOULLI_INDEX = {m.name: i for i, m in enumerate(BERNOULLI)}
GAUSSIAN_INDEX = {m.name: i for i, m in enumerate(GAUSSIAN)}
POISSON_INDEX = {m.name: i for i, m in enumerate(POISSON)}
#: Bernoulli columns of the latency tail metrics (filled from the latency histogram, not ``value``)
TAIL_P95, TAIL_P99 = BERNOULLI_INDEX["latency_p95"], BERNOULLI_INDEX["latency_p99"]
TAIL_COLUMNS = (TAIL_P95, TAIL_P99)
#: Bernoulli columns read from ``Metric.event`` per trace (every column but the tails)
BERNOULLI_EVENT_COLUMNS = tuple(i for i in range(N_BERNOULLI) if i not in TAIL_COLUMNS)
#: incident group (index into GROUPS) of each column of a family: baselines freeze per group
BERNOULLI_GROUP = np.array([GROUP_INDEX[m.group] for m in BERNOULLI])
GAUSSIAN_GROUP = np.array([GROUP_INDEX[m.group] for m in GAUSSIAN])
POISSON_GROUP = np.array([GROUP_INDEX[m.group] for m in POISSON])
INPUT_MIX_GROUP = GROUP_INDEX[CATEGORICAL[0].group]
#: direction of each column (+1 up, -1 down, 0 both)
BERNOULLI_DIRECTION = np.array([m.direction for m in BERNOULLI])
GAUSSIAN_DIRECTION = np.array([m.direction for m in GAUSSIAN])

# ---------------------------------------------------------------------- canary: scorecard rows
CANARY_METRICS: tuple[Metric, ...] = tuple(sorted((m for m in CATALOGUE if m.canary is not None),
                                                  key=lambda m: m.canary.slot))
#: the canary use of each scorecard row
CANARY_USES: tuple[CanaryUse, ...] = tuple(m.canary for m in CANARY_METRICS if m.canary is not None)
N_CANARY_METRICS = len(CANARY_METRICS)
CANARY_INDEX = {m.name: i for i, m in enumerate(CANARY_METRICS)}


def _check() -> None:
    """Import-time consistency of the catalogue (a broken catalogue must not start a worker)."""
    names = [m.name for m in CATALOGUE]
    if len(set(names)) != len(names):
        raise ValueError(f"metric names must be unique: {names}")
    for m in CATALOGUE:
        if m.group not in GROUP_INDEX:
            raise ValueError(f"metric {m.name}: group {m.group!r} is not one of {GROUPS}")
        if m.family is not None and m.family not in DETECTORS:
            raise ValueError(f"metric {m.name}: family {m.family!r} is not one of {tuple(DETECTORS)}")
        if (m.family == "gaussian") != (m.scale is not None):
            raise ValueError(f"metric {m.name}: a gaussian metric needs a scale, and only it")
        if m.family in ("bernoulli", "gaussian") and m.value is None:
            raise ValueError(f"metric {m.name}: a {m.family} metric is read from traces (value)")
        if m.family == "poisson" and m.feedback_event is None:
            raise ValueError(f"metric {m.name}: a poisson metric counts feedback (feedback_event)")
    slots = [use.slot for use in CANARY_USES]
    if slots != list(range(len(slots))):
        raise ValueError(f"canary slots must be 0..{len(slots) - 1}, got {slots}")
    if len(CATEGORICAL) != 1:
        raise ValueError("the input-mix test handles one categorical metric")


_check()
