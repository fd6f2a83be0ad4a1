"""Per-family statistics of the drift detectors: null rates, likelihood-ratio increments,
baseline updates and the intervals incidents report.

Every function here is a pure array computation on a batch sorted by slice (the engine,
:mod:`streams.processors.drift.engine`, does the bookkeeping). Families, as declared in
:mod:`streams.processors.metrics`:

- **Bernoulli** (rates, latency tails): the null rate ``p0`` is the slice's baseline guarded by one
  standard error (:func:`guarded_rate`), the increment the log-likelihood ratio of
  ``p1 = min(rho * p0, 0.99)`` against ``p0`` (:func:`bernoulli_llr`; Reynolds & Stoumbos 1999
  for a proportion inspected one item at a time). Latency tails are the event "latency at or
  above the baseline's p95/p99 bin edge" (:func:`tail_edges`), whose null rate is the exact tail
  mass above the edge (:func:`tail_mass`).
- **Gaussian** (log latency, log1p tokens, log cost, logit confidence): values standardised with
  the baseline and winsorised at ``Z_CLIP`` (:func:`standardise`), increment
  ``delta * z - log E0[exp(delta * z)]`` (:func:`tilted_increment`), the log-likelihood ratio of
  the baseline exponentially tilted by ``delta`` against itself; the baseline tracks that log-MGF
  (:func:`gaussian_update`).
- **Poisson** (feedback counts against trace exposure): Lucas's counted-data CUSUM step
  (:func:`poisson_cusum_step`), with exposure credited through the learned feedback-delay
  distribution (:mod:`streams.processors.drift.delayed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from streams.processors.metrics import BERNOULLI, TAIL_COLUMNS

#: standardised Gaussian values are winsorised at +-Z_CLIP sd: one extreme trace moves a tilted
#: CUSUM by at most ``delta * Z_CLIP`` nats, and the log-MGF stays finite for any data
Z_CLIP = 4.0
#: histogram weight (traces) before a slice's p95/p99 edges are used for tail indicators
MIN_TAIL_WEIGHT = 200.0
#: minimum feedback events in a slice's baseline before its Poisson detectors arm
MIN_POISSON_EVENTS = 30.0
#: baseline tail mass above each tail metric's edge (0.05 for p95, 0.01 for p99), TAIL_COLUMNS order
TAIL_MASSES = tuple(BERNOULLI[c].tail_mass for c in TAIL_COLUMNS)


# ---------------------------------------------------------------------- Bernoulli
def tail_mass(hist: np.ndarray) -> np.ndarray:
    """``tail[i, k] = P(bin >= k)`` for each histogram row, shape like ``hist`` ``(r, bins)``."""
    tot = hist.sum(axis=1, keepdims=True)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1] / np.maximum(tot, 1e-12)


def tail_edges(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges whose tail mass is closest to 5% and 1%: the baseline p95/p99 (bin indexes, ``(r,)`` each)."""
    tail = tail_mass(hist)
    m95, m99 = TAIL_MASSES
    return np.argmin(np.abs(tail - m95), axis=1), np.argmin(np.abs(tail - m99), axis=1)


def guarded_rate(p: np.ndarray, n: np.ndarray, guard_z: float, n_floor: np.ndarray) -> np.ndarray:
    """Null rate guarded by ``guard_z`` standard errors: ``p + guard_z * sqrt(p (1-p) / n)``,
    clipped to ``[1 / (n_floor + 2), 0.95]``.

    The guard keeps the CUSUM increments likelihood ratios whose expectation under the true rate
    is at most 1 while the baseline itself is uncertain (a young slice raises no alarms); the
    floor keeps ``log(p1 / p0)`` finite for a rate estimated at 0. ``n`` is the baseline's weight
    (traces), ``n_floor`` the weight used for the floor.
    """
    return np.clip(p + guard_z * np.sqrt(np.maximum(p * (1 - p), 0.0) / n), 1.0 / (n_floor + 2.0), 0.95)


def bernoulli_llr(p0: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood ratio increments of ``p1 = min(rho * p0, 0.99)`` against ``p0``:
    ``(for an event, for a non-event)``, each shaped like ``p0``."""
    p1 = np.minimum(p0 * rho, 0.99)
    return np.log(p1 / p0), np.log((1 - p1) / (1 - p0))


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (E. B. Wilson, JASA 22, 1927);
    ``(0, 1)`` when ``n <= 0``."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def quantile_interval(values: np.ndarray, q: float) -> tuple[float, float, float]:
    """Quantile ``q`` of ``values`` (ms) with a distribution-free 95% interval from binomial
    ranks of the order statistics: ``(estimate, low, high)``. ``values`` must not be empty."""
    lat = np.sort(values)
    k = len(lat)
    obs = float(np.quantile(lat, q))
    half = 1.96 * math.sqrt(k * q * (1 - q))
    lo = float(lat[max(math.floor(k * q - half), 0)])
    hi = float(lat[min(math.ceil(k * q + half), k - 1)])
    return obs, lo, hi


def ew_rate_update(rate: np.ndarray, w_decayed: np.ndarray, sums: np.ndarray, cnt: np.ndarray, per: np.ndarray,
                   scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge a batch into exponentially weighted rates: ``(new rate, new weight)``.

    Args:
        rate: baseline rates, shape ``(u, k)``.
        w_decayed: their weights already decayed over the batch (``w * lam**m``), ``(u, k)``.
        sums, cnt: the batch's events and valid samples per slice, ``(u, k)``.
        per: EW weight of one of the batch's samples, ``(u, 1)``.
        scale: learning weight (1, or ``HOLD_WEIGHT`` while a detector holds evidence), ``(u, k)``.
    """
    w_new = w_decayed + cnt * per * scale
    return (rate * w_decayed + sums * per * scale) / np.maximum(w_new, 1e-12), w_new


# ---------------------------------------------------------------------- Gaussian
def standardise(values: np.ndarray, valid: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Values standardised with the baseline and winsorised at ``+-Z_CLIP``; missing values
    (``valid`` false) become 0. All arrays ``(n, k)`` (``mu``, ``sd`` already per row)."""
    return np.clip((np.where(valid, values, mu) - mu) / sd, -Z_CLIP, Z_CLIP)


def tilted_increment(z: np.ndarray, valid: np.ndarray, delta: float, log_mgf: np.ndarray,
                     guard: np.ndarray) -> np.ndarray:
    """Exponentially tilted CUSUM increment ``delta * z - log E0[exp(delta * z)] - guard``
    (0 where a value is missing), shape of ``z`` ``(n, k)``.

    ``delta`` is the tilt in sd (``+mean_shift_sigma`` for the upward detector, minus it for the
    downward one); ``log_mgf`` the baseline's log-MGF of ``delta * z`` per row; ``guard`` charges
    the uncertainty of the baseline mean (``delta * guard_z / sqrt(weight)``). For normal data this
    is Page's Gaussian CUSUM ``delta * z - delta**2 / 2``.
    """
    return np.where(valid, delta * z - log_mgf - guard, 0.0)


@dataclass(slots=True)
class GaussianUpdate:
    """A Gaussian baseline after merging one batch (every array ``(u, k)``, one row per slice;
    ``count``: the batch's valid values)."""

    count: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    weight: np.ndarray
    mgf_up: np.ndarray
    mgf_down: np.ndarray


def gaussian_update(values: np.ndarray, valid: np.ndarray, raw: np.ndarray, seg: np.ndarray, starts: np.ndarray,
                    mean_old: np.ndarray, var_old: np.ndarray, w_decayed: np.ndarray, mgf_up: np.ndarray,
                    mgf_down: np.ndarray, per: np.ndarray, scale: np.ndarray, delta: float) -> GaussianUpdate:
    """Weighted merge of the EW (mean, variance, log-MGF) with a batch's values.

    Args:
        values: the batch's transformed values sorted by slice, ``(n, k)`` (NaN = missing).
        valid: ``~isnan(values)``; raw: ``values`` with missing ones set to 0.
        seg, starts: slice of each row, first row of each slice.
        mean_old, var_old, mgf_up, mgf_down: the baseline at batch start, ``(u, k)``.
        w_decayed: its weight decayed over the batch; per, scale: as for :func:`ew_rate_update`.
        delta: the tilt (``mean_shift_sigma``).

    The MGFs are those of the values standardised with the *updated* baseline (the one the next
    batch's increments use), not the batch-start one: a large batch on a young slice standardised
    with a few traces' mean and variance gave a biased MGF (0.36 instead of 0.49 nats measured)
    that then drifted every CUSUM by the difference per trace until it fired on stationary data;
    which batch sizes a worker sees depends on lag, so the estimate must not. The history is
    re-centred on the new mean (exact for a shift, up to the clip).
    """
    cnt = np.add.reduceat(valid.astype(np.float64), starts, axis=0)
    sx = np.add.reduceat(raw, starts, axis=0)
    sxx = np.add.reduceat(raw * raw, starts, axis=0)
    bmean = sx / np.maximum(cnt, 1.0)
    bvar = np.maximum(sxx / np.maximum(cnt, 1.0) - bmean * bmean, 0.0)
    gw_b = cnt * per * scale
    gw_new = w_decayed + gw_b
    frac = np.where(gw_new > 0, gw_b / np.maximum(gw_new, 1e-12), 0.0)
    delta_mean = bmean - mean_old
    first_time = w_decayed <= 1e-12
    mean_new = np.where(first_time, bmean, mean_old + frac * delta_mean)
    var_new = np.where(first_time, bvar,
                       (1 - frac) * var_old + frac * bvar + frac * (1 - frac) * delta_mean * delta_mean)
    sd_new = np.sqrt(np.maximum(var_new, 1e-4))
    z_mgf = np.clip((np.where(valid, values, 0.0) - mean_new[seg]) / sd_new[seg], -Z_CLIP, Z_CLIP)
    shift = np.where(first_time, 0.0, (mean_new - mean_old) / sd_new)
    mgfs = []
    for old, sign in ((mgf_up, 1.0), (mgf_down, -1.0)):
        bm = np.add.reduceat(np.where(valid, np.exp(sign * delta * z_mgf), 0.0), starts, axis=0) / np.maximum(cnt, 1.0)
        recentred = old * np.exp(-sign * delta * shift)
        mgfs.append(np.where(first_time, bm, recentred + frac * (bm - recentred)))
    return GaussianUpdate(cnt, mean_new, var_new, gw_new, mgfs[0], mgfs[1])


# ---------------------------------------------------------------------- Poisson
def guarded_poisson_rate(num: np.ndarray, den: np.ndarray, guard_z: float) -> tuple[np.ndarray, np.ndarray]:
    """``(r0, r0 guarded)``: the baseline rate ``num / max(den, 1)`` (events per trace of
    exposure) and the rate plus ``guard_z`` standard errors, floored at one event per exposure."""
    den = np.maximum(den, 1.0)
    r0 = num / den
    return r0, np.maximum(r0 + guard_z * np.sqrt(r0 / den), 1.0 / den)


def poisson_cusum_step(s: np.ndarray, k: np.ndarray, exposure: np.ndarray, r0: np.ndarray, rho: float,
                       ln_rho: float) -> np.ndarray:
    """One Poisson CUSUM step before the ``max(0, .)``: ``s + k ln(rho) - exposure r0 (rho - 1)``,
    the exact log-likelihood ratio of ``k`` events in ``exposure`` at rate ``rho r0`` against
    ``r0`` (J. M. Lucas, "Counted data CUSUM's", Technometrics 27(2), 1985)."""
    return s + k * ln_rho - exposure * r0 * (rho - 1.0)


def poisson_rate_interval(k: float, exposure: float) -> tuple[float, float]:
    """Exact (Garwood) 95% interval of a Poisson rate from ``k`` events in ``exposure``."""
    lo = float(stats.chi2.ppf(0.025, 2 * k) / 2 / exposure) if k > 0 else 0.0
    hi = float(stats.chi2.ppf(0.975, 2 * (k + 1)) / 2 / exposure)
    return lo, hi
