"""The vectorised segmented CUSUM equals Page's recursion run segment by segment."""

import numpy as np
import pytest

from streams.processors.drift.cusum import ChangePoints, segmented_cusum


def naive(x, seg, s0):
    out = np.empty_like(x)
    state = {}
    for i in range(x.shape[0]):
        j = seg[i]
        prev = state.get(j, s0[j])
        cur = np.maximum(0.0, prev + x[i])
        out[i] = cur
        state[j] = cur
    return out


@pytest.mark.parametrize("seed", range(5))
def test_segmented_cusum_matches_recursion(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, size=rng.integers(1, 40))
    seg = np.repeat(np.arange(len(sizes)), sizes)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    x = rng.normal(-0.2, 1.0, size=(len(seg), 3)) * rng.choice([1, 50], size=(1, 3))
    s0 = np.abs(rng.normal(0, 5, size=(len(sizes), 3)))
    got = segmented_cusum(x, seg, starts, s0)
    np.testing.assert_allclose(got, naive(x, seg, s0), rtol=1e-9, atol=1e-7)


def test_change_points_count_since_last_zero():
    # one segment: statistic hits zero at row 2, so at row 5 three samples (rows 3..5) are counted
    x = np.array([[-1.0], [-1.0], [-5.0], [1.0], [1.0], [1.0]])
    seg = np.zeros(6, dtype=int)
    starts = np.array([0])
    s = segmented_cusum(x, seg, starts, np.array([[3.0]]))
    raw = np.array([[0.0], [0.0], [0.0], [1.0], [0.0], [1.0]])
    cp = ChangePoints(s, raw, np.ones_like(raw), seg, starts, np.array([[7.0]]), np.array([[2.0]]))
    n, k, cpos = cp.at(np.array([5]), np.array([0]))
    assert (n[0], k[0], cpos[0]) == (3.0, 2.0, 3)
    # before the zero, the carried counts from earlier batches are added
    n, k, cpos = cp.at(np.array([1]), np.array([0]))
    assert (n[0], k[0], cpos[0]) == (9.0, 2.0, -1)
