"""The sequential test of the canary scorecards: exactness of the stratified likelihood, validity
under peeking, the false-promotion bound at the margin, coverage of the confidence sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from streams.devtools.bench_canary import false_promotion, null_false_rollback
from streams.processors.canary import GRID, NULL, RHO, CanaryConfig, MixtureTest, stratum_loglik


def test_stratum_loglik_is_the_conditional_binomial_likelihood():
    rng = np.random.default_rng(0)
    e_c, e_t = rng.integers(1, 40, 12).astype(float), rng.integers(1, 15, 12).astype(float)
    k_c, k_t = rng.integers(0, 5, 12).astype(float), rng.integers(0, 5, 12).astype(float)
    got = stratum_loglik(e_c, e_t, k_c, k_t)
    assert got.shape == (GRID,) and got[NULL] == 0.0

    def binom(rho):
        q = rho * e_t / (e_c + rho * e_t)
        return stats.binom.logpmf(k_t, k_c + k_t, q).sum()

    for j in (0, 20, NULL, 70, GRID - 1):
        assert got[j] == pytest.approx(binom(RHO[j]) - binom(1.0), abs=1e-9)


def test_strata_without_information_add_nothing_and_bad_input_is_rejected():
    # a stratum with one arm only, or no events, carries no information about the ratio
    assert not stratum_loglik([10, 0, 10], [0, 5, 3], [2, 0, 0], [0, 1, 0]).any()
    with pytest.raises(ValueError, match="must be >= 0"):
        stratum_loglik([10], [5], [-1], [0])
    with pytest.raises(ValueError, match="margin"):
        MixtureTest.margin_index(1.0)
    with pytest.raises(ValueError, match="alpha"):
        CanaryConfig(alpha=1.5)


def test_null_releases_peeked_after_every_stratum_stay_under_alpha():
    """400 null releases x 150 looks, base rates drifting per stratum: the false rollback rate
    over all seven metrics stays under alpha = 5 %, while a fixed-sample z-test looked at as
    often rolls back far more null releases (what the sequential test prevents)."""
    for stage in (5.0, 25.0):
        res = null_false_rollback(releases=400, strata=150, stratum_traces=60, stage_pct=stage, seed=3)
        assert res["rate"] <= 0.05, res
        assert res["naive_rate"] > 0.15, res


def test_false_promotion_at_the_margin_is_bounded():
    # Poisson counts (corrections): exact; a release exactly 1.5x worse is rarely promoted
    res = false_promotion(releases=400, strata=150, base_rate=0.13, poisson=True, seed=5)
    assert res["rate"] <= 0.05, res


def test_confidence_interval_covers_the_true_ratio():
    rng = np.random.default_rng(9)
    test = MixtureTest(0.5)
    covered = 0
    runs = 200
    for _ in range(runs):
        ll = np.zeros(GRID)
        for _ in range(40):
            n_t = rng.binomial(100, 0.25)
            ll += stratum_loglik([100 - n_t], [n_t], [rng.poisson((100 - n_t) * 0.1)], [rng.poisson(n_t * 0.15)])
        lo, hi = test.interval(ll, 0.05)
        covered += lo <= 1.5 <= hi
    assert covered / runs >= 0.95



def test_mixture_weights_are_probability_distributions():
    test = MixtureTest(0.5)
    for w in (test._above[NULL], test._below[60], test._two[10]):
        assert math.isclose(float(np.exp(w[np.isfinite(w)]).sum()), 1.0, rel_tol=1e-12)
