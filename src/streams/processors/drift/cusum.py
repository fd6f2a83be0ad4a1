"""Page's CUSUM for many independent slices at once, and its change-point bookkeeping.

Every drift detector is a CUSUM of log-likelihood ratio increments (E. S. Page, "Continuous
inspection schemes", Biometrika 41, 1954): ``S_t = max(0, S_{t-1} + x_t)``, alarm when ``S_t``
exceeds ``h``. The engine sorts a batch's traces by slice and runs the recursion for every slice
and detector column in one vectorised pass (:func:`segmented_cusum`); the first row over ``h`` is
the exact trace that tipped the detector, so delays are counted in traces, not batches.
:class:`ChangePoints` answers, for any row, how many samples and how much raw signal arrived
since the statistic was last at zero: Page's change-point estimate, which incidents report
(``samples``, the observed value since the change, the evidence window).
"""

from __future__ import annotations

import numpy as np


def segmented_cusum(x: np.ndarray, seg: np.ndarray, starts: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """Page's CUSUM ``S_t = max(0, S_{t-1} + x_t)`` for many independent segments at once.

    Args:
        x: increments, shape ``(n, m)``, rows grouped by segment (segment ids non-decreasing).
        seg: segment id of each row, shape ``(n,)``, values ``0..u-1``.
        starts: first row of each segment, shape ``(u,)``.
        s0: statistic carried into each segment, shape ``(u, m)``, ``>= 0``.

    Returns:
        ``S`` of shape ``(n, m)``.

    Method: Lindley's recursion has the closed form ``S_t = D_t - min(0, min_{k<=t} D_k)`` with
    ``D_t = s0 + sum_{k<=t} x_k``. Segments are made independent in one
    ``np.minimum.accumulate`` by shifting segment ``j`` down by ``j * 2 * span`` (``span`` bounds
    ``|D|``), so no earlier segment's minimum can reach below a later segment's values.

    Examples
    --------
    Two segments (slices) of one detector column; the second starts from a carried statistic of 2:

    >>> import numpy as np
    >>> x = np.array([[1.0], [-3.0], [2.0], [-1.0], [0.5]])
    >>> seg = np.array([0, 0, 0, 1, 1])
    >>> segmented_cusum(x, seg, starts=np.array([0, 3]), s0=np.array([[0.0], [2.0]])).ravel().tolist()
    [1.0, 0.0, 2.0, 1.0, 1.5]

    References
    ----------
    E. S. Page, "Continuous inspection schemes", Biometrika 41(1/2), 1954.
    """
    if x.shape[0] == 0:
        return x.copy()
    c = np.cumsum(x, axis=0)
    base = c[starts] - x[starts]
    d = s0[seg] + c - base[seg]
    span = float(np.abs(d).max()) + 1.0
    off = (seg.astype(np.float64) * (2.0 * span))[:, None]
    dz = d - off
    m = np.minimum.accumulate(dz, axis=0)
    np.minimum(m, -off, out=m)
    s = dz - m
    np.maximum(s, 0.0, out=s)
    return s


class ChangePoints:
    """Change-point bookkeeping for one layer's CUSUM matrix.

    For each (row, column) it answers: how many samples and how much raw signal since the
    statistic was last at zero (the CUSUM change-point estimate, Page 1954), carrying the counts
    of earlier batches for segments that have not touched zero in this one.

    Args:
        s: the statistics of :func:`segmented_cusum`, shape ``(n, m)``.
        raw: the raw signal per row (an event indicator, a transformed value), shape ``(n, m)``.
        cnt: 1 where a row is a sample of the column (0: missing), shape ``(n, m)``.
        seg, starts: as for :func:`segmented_cusum`.
        carry_n, carry_k: samples and raw sum since the last zero carried from earlier batches,
            shape ``(u, m)``.
    """

    def __init__(self, s: np.ndarray, raw: np.ndarray, cnt: np.ndarray, seg: np.ndarray,
                 starts: np.ndarray, carry_n: np.ndarray, carry_k: np.ndarray) -> None:
        n, m = s.shape
        pos = np.broadcast_to(np.arange(n)[:, None], (n, m))
        self.lz = np.maximum.accumulate(np.where(s <= 0.0, pos, -1), axis=0)
        self.r = np.cumsum(raw, axis=0)
        self.q = np.cumsum(cnt, axis=0)
        self.seg, self.starts = seg, starts
        self.carry_n, self.carry_k = carry_n, carry_k

    def at(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(n_since, k_since, cp_row)`` at sorted rows ``rows`` of columns ``cols`` (same shape).

        ``cp_row`` is the first sorted row after the last zero, or ``-1`` if that lies in an
        earlier batch.
        """
        sg = self.seg[rows]
        st = self.starts[sg]
        lz = self.lz[rows, cols]
        in_seg = lz >= st
        ref = np.where(in_seg, lz, st - 1)
        has_ref = ref >= 0
        ref_safe = np.maximum(ref, 0)
        r0 = np.where(has_ref, self.r[ref_safe, cols], 0.0)
        q0 = np.where(has_ref, self.q[ref_safe, cols], 0.0)
        n_since = self.q[rows, cols] - q0 + np.where(in_seg, 0.0, self.carry_n[sg, cols])
        k_since = self.r[rows, cols] - r0 + np.where(in_seg, 0.0, self.carry_k[sg, cols])
        cp = np.where(in_seg, np.minimum(lz + 1, rows), -1)
        return n_since, k_since, cp
