"""Online drift detection over the layered baselines, vectorised per batch at per-trace resolution.

Modules: :mod:`~streams.processors.drift.base` (:class:`DriftConfig`, :class:`Alarm`),
:mod:`~streams.processors.drift.cusum` (the CUSUM recursion for many slices at once and its
change points), :mod:`~streams.processors.drift.families` (per-family null rates, increments,
baseline updates, intervals), :mod:`~streams.processors.drift.mix` (the input-mix window test),
:mod:`~streams.processors.drift.delayed` (the label-delayed Poisson detectors and the
feedback-delay distribution), :mod:`~streams.processors.drift.engine` (:class:`DriftEngine`: the
per-batch steps over every slice layer).

Detectors, by metric family (metrics: :mod:`streams.processors.metrics`; baselines:
:mod:`streams.processors.baselines`):

- **Bernoulli CUSUM** for rates (failure, escalation, success, policy block, tool failure,
  retrieval miss, fallback) and for latency tails (exceedance of the baseline's p95/p99 bin edge):
  Page's CUSUM of the log-likelihood ratio of ``p1 = rate_shift * p0`` against ``p0``, twice per
  metric: tuned for ``rate_shift`` (1.5x, small effects) and ``rate_shift_large`` (3x: a CUSUM
  tuned for a small shift is slow on a large one, especially for rare events)
  (E. S. Page, "Continuous inspection schemes", Biometrika 41, 1954; for proportions inspected
  one item at a time: M. R. Reynolds & Z. G. Stoumbos, "A CUSUM chart for monitoring a
  proportion when inspecting continuously", J. Quality Technology 31(1), 1999). ``p0`` is the
  slice's baseline guarded by one standard error, so a young baseline does not raise alarms.
- **Exponentially tilted CUSUM** for continuous metrics (log latency, log1p tokens, log cost,
  logit confidence): standardised, winsorised values ``z`` with increment
  ``delta * z - log E0[exp(delta * z)]``, the log-likelihood ratio of the baseline tilted by
  ``delta = mean_shift_sigma`` against the baseline itself. For normal data this is Page's
  Gaussian CUSUM (``delta * z - delta**2 / 2``); for skewed or multi-modal data (confidence,
  tenant-level mixtures of workflows) the estimated log-MGF keeps it calibrated.
- **Poisson CUSUM** for counts arriving on the feedback stream against trace exposure
  (corrections, unsafe-recommendation feedback): J. M. Lucas, "Counted data CUSUM's",
  Technometrics 27(2), 1985, one step per slice and feedback batch with that batch's exact
  log-likelihood ratio ``k * ln(rho) - exposure * r0 * (rho - 1)``.
- **Chi-square test on tumbling windows** for the categorical input mix (Pearson's X² of the
  window's counts against the baseline distribution), with a Jensen-Shannon effect-size floor.
  Never a per-event KS test.

All CUSUMs run on the whole batch at once: events are sorted by slice, and the Lindley recursion
``S_t = max(0, S_{t-1} + x_t)`` is solved per segment as ``S_t = D_t - min(0, min_{k<=t} D_k)``
with ``D`` the running sum started at the carried state
(:func:`~streams.processors.drift.cusum.segmented_cusum`). The first index over the threshold is
the exact trace that tipped the detector, so delays are counted in traces, not batches.

Calibration: every increment is a log-likelihood ratio whose expectation of ``exp`` under the
baseline is at most 1 (Bernoulli and Poisson baselines are guarded by one standard error, the
tilted CUSUM uses the baseline's own log-MGF). By Lorden's bound (G. Lorden, "Procedures for
reacting to a change in distribution", Ann. Math. Statist. 42(6), 1971) each detector then has
an average run length to false alarm of at least ``exp(h)`` samples, whatever the slice's
traffic or the metric's distribution; ``h = cusum_threshold`` nats is one number for all of them.
The measured false-incident rate is in BENCHMARKS.md (``selfheal bench-drift``).
"""

from streams.processors.drift.base import Alarm, DriftConfig
from streams.processors.drift.cusum import ChangePoints, segmented_cusum
from streams.processors.drift.delayed import DelayCDF, DelayedMetrics, DelayModel
from streams.processors.drift.engine import DriftEngine
from streams.processors.drift.families import Z_CLIP
from streams.processors.drift.mix import MixTest, input_mix_code, mix_test

__all__ = ["Z_CLIP", "Alarm", "ChangePoints", "DelayCDF", "DelayModel", "DelayedMetrics", "DriftConfig", "DriftEngine",
           "MixTest", "input_mix_code", "mix_test", "segmented_cusum"]
