"""The input-mix test: a tumbling window's workflow x intent counts against the baseline mix.

Each trace's (workflow, intent) is hashed into one of ``N_CAT`` buckets (:func:`input_mix_code`).
Every ``cat_window`` traces of a slice, Pearson's X² of the window's counts against the baseline
distribution (add-half smoothed, so a bucket never seen does not divide by zero) is tested at
``cat_alpha``; an alarm also needs a Jensen-Shannon divergence of at least ``cat_min_js`` nats,
so a statistically certain but negligible shift in a high-traffic slice is not an incident.
A chi-square test on whole windows, never a per-event KS test: the input mix is categorical, and
one test per window keeps the false-alarm rate per window at ``cat_alpha``
(K. Pearson, "On the criterion that a given system of deviations...", Phil. Mag. 50, 1900;
J. Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory 37(1), 1991).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import stats

from streams.processors.baselines import N_CAT


def input_mix_code(workflow: str, intent: str | None) -> int:
    """Bucket ``0..N_CAT-1`` of a trace's workflow and intent (CRC-32, stable across processes)."""
    return zlib.crc32(f"{workflow}/{intent or ''}".encode()) % N_CAT


@dataclass(frozen=True, slots=True)
class MixTest:
    """Outcome of one window's test: Pearson's ``x2`` (``N_CAT - 1`` degrees of freedom), its
    ``p_value``, the Jensen-Shannon divergence ``js`` (nats) of the window from the baseline,
    and what moved most: ``bucket`` (``0..N_CAT-1``), the bucket whose share changed most in
    absolute terms, with its baseline share ``share_baseline`` (add-half smoothed, as tested) and
    its share of the window ``share_window`` (fractions of traces, 0..1)."""

    x2: float
    p_value: float
    js: float
    bucket: int = 0
    share_baseline: float = 0.0
    share_window: float = 0.0

    def rejects(self, alpha: float, min_js: float) -> bool:
        """Whether the window's mix differs: ``p_value < alpha`` and ``js >= min_js``."""
        return self.p_value < alpha and self.js >= min_js


def chi2_threshold(alpha: float) -> float:
    """The X² value a window must exceed to reject at ``alpha`` (reported as the incident threshold)."""
    return float(stats.chi2.isf(alpha, N_CAT - 1))


def mix_test(window: np.ndarray, total: float, baseline: np.ndarray, two_sample: bool = False) -> MixTest:
    """Test one window's counts against the baseline mix.

    Args:
        window: counts per bucket, shape ``(N_CAT,)``; ``total`` their sum (> 0).
        baseline: EW baseline weights per bucket, shape ``(N_CAT,)`` (not all zero).
        two_sample: the baseline is itself a sample of ``W = baseline.sum()`` traces disjoint from
            the window: X² is scaled by ``W / (W + total)``, the ratio of the variance of a
            window share against a known mix (``p(1-p)/n``) to that of a difference of two
            estimated shares (``p(1-p)(1/n + 1/W)``), so a young baseline of a few hundred traces
            does not make chance differences significant.

    Examples
    --------
    A window of 400 traces against a uniform baseline mix: half of one bucket's share moved to
    another is noise at this size; two buckets emptied into two others is a change:

    >>> import numpy as np
    >>> base = np.full(16, 100.0)
    >>> window = np.full(16, 25.0)
    >>> window[0], window[1] = 12.0, 38.0
    >>> t = mix_test(window, window.sum(), base)
    >>> round(t.x2, 2), t.rejects(alpha=1e-7, min_js=0.01)
    (13.52, False)
    >>> window[:4] = 0.0, 50.0, 0.0, 50.0
    >>> t = mix_test(window, window.sum(), base)
    >>> round(t.x2, 1), round(t.js, 3), t.rejects(alpha=1e-7, min_js=0.01)
    (100.0, 0.054, True)

    The bucket that moved most (the first of equal moves), from its baseline share to the window's:

    >>> t.bucket, round(t.share_baseline, 4), round(t.share_window, 4)
    (0, 0.0625, 0.0)
    """
    p = (baseline + 0.5) / (baseline.sum() + 0.5 * N_CAT)
    exp = p * total
    x2 = float(((window - exp) ** 2 / exp).sum())
    if two_sample:
        w = float(baseline.sum())
        x2 *= w / (w + total)
    pval = float(stats.chi2.sf(x2, N_CAT - 1))
    q = window / total
    mid = 0.5 * (p + q)
    js = float(0.5 * np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / mid), 0))
               + 0.5 * np.sum(p * np.log(p / mid)))
    moved = int(np.argmax(np.abs(q - p)))
    return MixTest(x2, pval, js, moved, float(p[moved]), float(q[moved]))
