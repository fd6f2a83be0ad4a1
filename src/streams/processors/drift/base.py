"""What the drift detectors are configured with (:class:`DriftConfig`) and what they report
(:class:`Alarm`), shared by the engine and the label-delayed detectors."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.processors.baselines import LAYER_PARTS
from streams.processors.metrics import Metric

#: learning weight of a baseline while its metric's CUSUM holds evidence of a change (S > HOLD_AT * h):
#: a young slice does not absorb a regression before it is detected; a rate without an inherited prior whose
#: samples since the change point n reach its baseline's weight w0 is held only while
#: S * w0 / (w0 + n) > HOLD_AT * h (see the engine's _learn_baselines)
HOLD_WEIGHT = 0.1
HOLD_AT = 0.25
#: a Bernoulli baseline is held only once it rests on this many events (rate x weight), or is a release's
#: inherited prior; below, its relative error (~1/sqrt(events)) is the likelier cause of the evidence
HOLD_MIN_EVENTS = 20.0


@dataclass(slots=True)
class DriftConfig:
    """Detector settings (see ``Settings`` for units and defaults)."""

    layers: tuple[str, ...] = tuple(LAYER_PARTS)
    warmup_traces: int = 300
    half_life_traces: float = 20_000.0
    threshold: float = 18.0
    rate_shift: float = 1.5
    rate_shift_large: float = 3.0
    mean_shift_sigma: float = 1.0
    guard_z: float = 1.0
    cat_window: int = 300
    cat_alpha: float = 1e-7
    cat_min_js: float = 0.01
    evidence: int = 20
    release_prior_traces: float = 2000.0
    feedback_maturity_ms: int = 300_000

    @property
    def bucket_ms(self) -> int:
        """Width of a label-delay bucket: maturity / 8, so the ring of 32 holds 4 x maturity
        (maturity + a batch's span + the lag between the two topics)."""
        return max(self.feedback_maturity_ms // 8, 1)

    @property
    def lam(self) -> float:
        """Per-trace decay factor of the EW baselines: ``0.5 ** (1 / half_life)``."""
        return 0.5 ** (1.0 / self.half_life_traces)


@dataclass(slots=True)
class Alarm:
    """A detector crossed its threshold at one trace.

    ``pos`` indexes the batch (``TraceColumns`` order, or feedback order for Poisson metrics);
    ``baseline``/``observed`` are in the metric's unit (the input mix: one category's share, see
    ``category``); ``samples`` counts slice traces since the estimated change point (last time
    the CUSUM was at zero).
    """

    row: int
    metric: Metric
    pos: int
    statistic: float
    threshold: float
    baseline: float
    observed: float
    ci_low: float
    ci_high: float
    effect: float
    samples: int
    direction: int
    evidence: list[int] = field(default_factory=list)
    cp_pos: int | None = None
    #: 1-based index of the alarming trace in the slice's own traffic (traces before the change
    #: point = slice_index - samples)
    slice_index: int = 0
    #: set instead of positions when the alarm comes from matured feedback buckets
    trace_id: str | None = None
    event_time_ms: int | None = None
    evidence_ids: list[str] = field(default_factory=list)
    #: trace event time (ms) of the change point (label-delayed alarms: of the first traces after it;
    #: CUSUM alarms: the change point's trace; input mix: the first of the window's last ``evidence``
    #: traces), whatever batch it lay in
    cp_event_time_ms: int | None = None
    #: input-mix alarms: the category whose share moved most (``baseline``/``observed`` are its
    #: shares of the baseline and of the window, 0..1; ``effect`` the Jensen-Shannon divergence, nats)
    category: str | None = None
