"""The sequential test of a canary scorecard: mixture SPRTs on the candidate/control rate ratio.

Method
------
The effect is the candidate/control ratio ``rho`` of a metric's harmful-event rate. Traffic is
cut into *strata*: event-time bucket x workflow. In a stratum with ``E_c`` control and ``E_t``
candidate traces and ``K`` traces with the harmful event (every metric is a 0/1 outcome per
trace; a trace with three corrections counts once), the candidate's share ``k_t`` given ``K``
under ``rho = 1`` is hypergeometric when the rollout assigns arms at random: the ``E_t`` candidate traces are a
random subset of the stratum, whatever the outcomes and however they drift inside it. The test
uses the binomial Binomial(``K``, ``rho E_t / (E_c + rho E_t)``) instead (exact for Poisson counts,
the rare-event limit), and the hypergeometric is smaller in convex order than that binomial
(W. Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 58, 1963,
Thm. 4), so the likelihood ratios below stay supermartingales under ``rho <= 1``. Conditioning on
every stratum's totals removes the unknown base rate and its drift over the day, the workflow
mix and the allocation (5 % or 25 %, uneven or changing) from the test; a stratum of ``n``
traces keeps about ``(n-1)/n`` of the information.

Stratum log-likelihoods ``l(rho) = k_t log rho - K log(E_c + rho E_t)`` are summed on a fixed
grid (``LOG_RHO``: steps of 0.04 in ``log rho``, ``rho`` in about [0.12, 8.3]). The tests are
*mixture* sequential probability ratio tests over the grid (H. Robbins, "Statistical methods
related to the law of the iterated logarithm", Ann. Math. Statist. 41, 1970; the mSPRT of
R. Johari, P. Koomen, L. Pekelis, D. Walsh, "Always valid inference: continuous monitoring of
A/B tests", Operations Research 70(3), 2022), mixing over a normal distribution of sd
``mixture_scale`` on ``log rho`` restricted to the alternative. With the exact conditional
likelihood instead of the mSPRT's normal approximation they are valid at every sample size, for
rare events and uneven allocation:

- **harm** (rollback): ``H0: rho <= 1`` against ``rho > 1``. The mixture likelihood ratio
  ``M_t`` is a non-negative supermartingale under ``H0``, so by Ville's inequality
  ``P(sup_t M_t >= 1/a) <= a`` however often it is looked at; the always-valid p-value is
  ``p_t = min(1, 1 / max_{s<=t} M_s)`` (Johari et al. 2022). Every metric is tested at
  ``alpha / 7`` (Bonferroni), so a release that changes nothing is rolled back with probability
  at most ``alpha`` over all metrics and all looks (measured: docs/canary.md).
- **non-inferiority** (promotion): ``H0: rho >= margin`` against ``rho < margin`` at level
  ``alpha_promote`` (``margin`` rounded down to the grid: conservative). A promotion needs every
  success metric shown non-inferior (an intersection-union test: no multiplicity correction)
  and ``min_samples`` candidate samples in the current stage on every metric, guardrails
  included (their feedback must have matured). Guardrails are never required to be shown
  non-inferior (rare events would take too long): they can only block, by their harm test
  (rollback) or, short of that, while their estimated ratio exceeds ``margin`` (hold), so that a
  rare-event regression is not promoted on the strength of the success metrics before its own
  test has enough events (measured: docs/canary.md).
- **confidence sequence**: the grid points ``rho0`` whose two-sided mixture test at level
  ``alpha / 7`` does not reject (S. R. Howard, A. Ramdas, J. McAuliffe, J. Sekhon,
  "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2), 2021,
  method of mixtures); ``ci_low``/``ci_high`` are its ends minus one, simultaneous over the
  scorecard's seven metrics.

Who uses it: :mod:`streams.processors.canary.scorecard` sums :func:`stratum_loglik` over the
folded strata into a scorecard's grid log-likelihoods and decides with :class:`MixtureTest`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: grid of log rate ratios: step 0.04 (4 % resolution), rho in [exp(-2.12), exp(2.12)] ~ [0.12, 8.3]
STEP = 0.04
HALF = 53
LOG_RHO = np.arange(-HALF, HALF + 1) * STEP
RHO = np.exp(LOG_RHO)
GRID = LOG_RHO.size
#: index of rho = 1 on the grid
NULL = HALF


def stratum_loglik(e_ctrl: Any, e_cand: Any, k_ctrl: Any, k_cand: Any) -> np.ndarray:
    """Summed conditional log-likelihood of the rate ratio over strata, on the grid.

    For each stratum, ``k_cand | K ~ Binomial(K, rho e_cand / (e_ctrl + rho e_cand))`` with
    ``K = k_ctrl + k_cand``; its log-likelihood in ``rho`` is ``k_cand log rho - K log(e_ctrl +
    rho e_cand)`` up to a constant. Strata without control, candidate or events carry no
    information and add 0.

    Args:
        e_ctrl, e_cand: exposures (traces) of the control and the candidate, shape ``(..., s)``.
        k_ctrl, k_cand: harmful events (counts), shape ``(..., s)``.

    Returns:
        Shape ``(..., GRID)``: the log-likelihood ratio of every grid ``rho`` against ``rho = 1``
        (so the entry at ``NULL`` is 0).

    Raises:
        ValueError: a negative exposure or count.

    Examples
    --------
    Two strata of 100 control and 100 candidate traces with 5 and 4 control events against 11 and
    9 candidate events: the likelihood peaks near ``rho = 2.2``:

    >>> ll = stratum_loglik([100, 100], [100, 100], [5, 4], [11, 9])
    >>> ll.shape, float(ll[NULL]), round(MixtureTest.estimate(ll), 2)
    ((107,), 0.0, 2.23)
    """
    e_c, e_t, k_c, k_t = (np.asarray(x, dtype=np.float64) for x in (e_ctrl, e_cand, k_ctrl, k_cand))
    if (e_c < 0).any() or (e_t < 0).any() or (k_c < 0).any() or (k_t < 0).any():
        raise ValueError(f"exposures and counts must be >= 0, got e_ctrl={e_c}, e_cand={e_t}, "
                         f"k_ctrl={k_c}, k_cand={k_t}")
    total = k_c + k_t
    use = (e_c > 0) & (e_t > 0) & (total > 0)
    e_c = np.where(use, e_c, 1.0)
    e_t = np.where(use, e_t, 1.0)
    ll = k_t[..., None] * LOG_RHO - total[..., None] * np.log(e_c[..., None] + RHO * e_t[..., None])
    ll = np.where(use[..., None], ll, 0.0).sum(axis=-2)
    return ll - ll[..., NULL, None]


def logsumexp(x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """``log(sum(exp(x)))`` along ``axis``, stable, ``-inf`` where every term is ``-inf``
    (scipy's version costs ~0.2 ms of overhead per call, this one ~10 us on a row)."""
    m = np.max(x, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m_safe), axis=axis, keepdims=True)) + m_safe
    return out if keepdims else np.squeeze(out, axis=axis)


def _normalised(logw: np.ndarray) -> np.ndarray:
    """Rows of log-weights normalised to sum 1 (rows that are all ``-inf`` stay so)."""
    norm = logsumexp(logw, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        out = logw - np.where(np.isfinite(norm), norm, 0.0)
    return np.where(np.isfinite(logw), out, -np.inf)


class MixtureTest:
    """Mixture SPRTs and confidence sequences for a rate ratio on the ``LOG_RHO`` grid.

    The mixing distribution for a null ``rho0`` is a normal of sd ``scale`` on
    ``log rho - log rho0``, discretised on the grid and restricted to the alternative
    (Johari et al. 2022, mSPRT; Howard et al. 2021, method of mixtures). Inputs ``ll`` are
    grid log-likelihoods from :func:`stratum_loglik` (summed over time), shape ``(..., GRID)``.

    Args:
        scale: sd of the mixing distribution, in log rate ratio (0.5: tuned to effects of
            1.3x-3x; the power is not sensitive to it within a factor of two).

    Raises:
        ValueError: ``scale`` not positive.

    Examples
    --------
    Forty strata in which the candidate doubles a 5 % event rate: the harm test rejects at the
    Bonferroni level of a seven-metric scorecard (``log(7 / 0.05)`` nats), and the confidence
    sequence at the same level covers the ratio 2:

    >>> import math
    >>> import numpy as np
    >>> test = MixtureTest(scale=0.5)
    >>> ll = stratum_loglik(np.full(40, 100), np.full(40, 100), np.full(40, 5), np.full(40, 10))
    >>> bool(test.log_harm(ll) >= math.log(7 / 0.05)), round(test.estimate(ll), 2)
    (True, 1.97)
    >>> [round(x, 2) for x in test.interval(ll, 0.05 / 7)]
    [1.49, 2.72]

    References
    ----------
    R. Johari, P. Koomen, L. Pekelis, D. Walsh, "Always valid inference: continuous monitoring of
    A/B tests", Operations Research 70(3), 2022. S. R. Howard, A. Ramdas, J. McAuliffe, J. Sekhon,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2), 2021.
    """

    def __init__(self, scale: float = 0.5) -> None:
        if not scale > 0:
            raise ValueError(f"mixture scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        d = LOG_RHO[None, :] - LOG_RHO[:, None]  # [null j, alternative i] = log rho_i - log rho_j
        logw = -0.5 * (d / scale) ** 2
        self._two = _normalised(np.where(d != 0, logw, -np.inf))
        self._below = _normalised(np.where(d < 0, logw, -np.inf))
        self._above = _normalised(np.where(d > 0, logw, -np.inf))

    def log_harm(self, ll: np.ndarray) -> np.ndarray:
        """log mixture likelihood ratio of ``rho > 1`` against ``H0: rho <= 1``, shape ``(...)``."""
        return logsumexp(ll + self._above[NULL], axis=-1) - ll[..., NULL]

    def log_noninferior(self, ll: np.ndarray, j: int) -> np.ndarray:
        """log mixture likelihood ratio of ``rho < RHO[j]`` against ``H0: rho >= RHO[j]``."""
        return logsumexp(ll + self._below[j], axis=-1) - ll[..., j]

    def log_two_sided(self, ll: np.ndarray) -> np.ndarray:
        """log mixture likelihood ratio against every grid null ``rho0``, shape ``(..., GRID)``."""
        return logsumexp(ll[..., None, :] + self._two, axis=-1) - ll

    def interval(self, ll: np.ndarray, level: float) -> tuple[float, float]:
        """Always-valid confidence interval of ``rho`` at ``1 - level`` for one 1-D ``ll``:
        the grid points not rejected by the two-sided mixture test (ends of that set).

        Raises:
            ValueError: ``level`` outside (0, 1) or ``ll`` not of shape ``(GRID,)``.
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        ll = np.asarray(ll, dtype=np.float64)
        if ll.shape != (GRID,):
            raise ValueError(f"ll must have shape ({GRID},), got {ll.shape}")
        keep = np.flatnonzero(self.log_two_sided(ll) < math.log(1.0 / level))
        if keep.size == 0:  # every point rejected (possible only at the grid's edge): the estimate
            rho = self.estimate(ll)
            return rho, rho
        return float(RHO[keep[0]]), float(RHO[keep[-1]])

    @staticmethod
    def estimate(ll: np.ndarray) -> float:
        """Maximum-likelihood ``rho`` on the grid; 1.0 when ``ll`` is flat (no information)."""
        ll = np.asarray(ll, dtype=np.float64)
        if float(ll.max() - ll.min()) < 1e-12:
            return 1.0
        return float(RHO[int(np.argmax(ll))])

    @staticmethod
    def margin_index(margin: float) -> int:
        """Grid index of the largest ``rho <= margin`` (non-inferiority null, conservative).

        Raises:
            ValueError: ``margin`` not in (1, max grid rho].
        """
        if not 1.0 < margin <= RHO[-1]:
            raise ValueError(f"margin must be in (1, {RHO[-1]:.3g}], got {margin!r}")
        return int(np.searchsorted(RHO, margin * (1 + 1e-12), side="right") - 1)
