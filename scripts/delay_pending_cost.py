"""Cost and accuracy of the delay distribution's pending aggregate (issue 17, BENCHMARKS.md):
a busy tenant's traces (``rate`` per second from the start, each with one feedback after a
log-normal delay, median 2 h and p99 48 h, seen once it has happened) are learned by

- ``aggregate``: :class:`streams.processors.drift.DelayCDF` (pending delays counted per
  partition x trace time rounded up x bin x edge learned);
- ``per_event``: the queue this replaced, one entry per delay, with its cap of 50,000 and
  without (``cap=0``) for the cost comparison.

Feedback arrives in batches of one second; every ``LEARN_EVERY_MS`` of feedback time each model
learns (``release``), as ``DelayedMetrics`` does. Prints per model: seconds spent in observe and
in release (median and max ms per release), pending entries at the end, the serialised size
(``DelayModel.encode``), and the largest gap between its CDF and the exact one and the true one.

Usage: ``PYTHONPATH=src .venv/bin/python scripts/delay_pending_cost.py [hours] [rate_per_s]``
(defaults 6 and 100). ``|F - per event|`` is the largest gap to the uncapped per-event estimate
(the reference), ``|F - true|`` to the log-normal, over ages 10 s to 6 days *within the
estimate's support* (beyond it nothing is identifiable yet).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from streams.devtools.bench_drift import LOGNORMAL_MEDIAN_MS, LOGNORMAL_SIGMA
from streams.processors.drift import DelayCDF, DelayModel
from streams.processors.drift.delayed import LEARN_EVERY_MS


class PerEventQueue(DelayCDF):
    """The replaced per-event queue (``delayed.py`` before this change): one entry per delay,
    at most ``max_pending`` (0: no cap), released with the same vectorised update."""

    def __init__(self, half_life: float, max_pending: int) -> None:
        super().__init__(half_life, grid_share=0.0, grid_floor_ms=1)
        self.max_pending = max_pending
        self.skipped = 0

    def observe(self, trace_ms: np.ndarray, partitions: np.ndarray, delays_ms: np.ndarray) -> None:
        keep = delays_ms < self.EDGES_MS[-1]
        idx = np.flatnonzero(keep)
        if self.max_pending:
            room = max(self.max_pending - len(self.t), 0)
            if len(idx) > room:
                self.skipped += len(idx) - room
                idx = idx[:room]
        b = np.searchsorted(self.EDGES_MS, np.maximum(delays_ms[idx], 0.0), side="right") - 1
        self.partitions.update(np.unique(partitions[idx]).tolist())
        self.t = np.concatenate([self.t, trace_ms[idx].astype(np.int64)])
        self.part = np.concatenate([self.part, partitions[idx].astype(np.int64)])
        self.bin = np.concatenate([self.bin, b.astype(np.int64)])
        self.done = np.concatenate([self.done, b.astype(np.int64) - 1])
        self.n = np.concatenate([self.n, np.ones(len(idx), dtype=np.int64)])

    def _merge(self) -> None:  # per event: never merged
        return


def true_cdf(age_ms: np.ndarray) -> np.ndarray:
    """The log-normal delay CDF the feedback is drawn from."""
    z = np.log(np.maximum(age_ms, 1e-9) / LOGNORMAL_MEDIAN_MS) / (LOGNORMAL_SIGMA * math.sqrt(2))
    return 0.5 * (1 + np.vectorize(math.erf)(z))


def main(hours: float = 6.0, rate: float = 100.0) -> None:
    """Run the four models on the same feedback stream and print their figures."""
    rng = np.random.default_rng(17)
    t0 = 1_790_000_000_000
    models = {"aggregate": DelayCDF(20_000.0), "per_event_cap50k": PerEventQueue(20_000.0, 50_000),
              "per_event": PerEventQueue(20_000.0, 0)}
    spent = {k: [0.0, []] for k in models}
    h_ms = int(hours * 3_600_000)
    tr = np.sort(rng.integers(0, h_ms, rng.poisson(rate * hours * 3600))) + t0
    d = LOGNORMAL_MEDIAN_MS * np.exp(rng.normal(0, LOGNORMAL_SIGMA, tr.size))
    fb = tr + d
    seen = fb < t0 + h_ms
    order = np.argsort(fb[seen], kind="stable")
    tr, d, fb = tr[seen][order], d[seen][order], fb[seen][order]
    sec = ((fb - t0) // 1000).astype(np.int64)
    cuts = np.flatnonzero(np.diff(sec)) + 1
    learned_at = -1
    for idx in np.split(np.arange(len(fb)), cuts):
        part = np.zeros(len(idx), dtype=np.int64)
        for name, m in models.items():
            c = time.perf_counter()
            m.observe(tr[idx], part, d[idx])
            spent[name][0] += time.perf_counter() - c
        grid = (int(fb[idx[-1]]) // LEARN_EVERY_MS) * LEARN_EVERY_MS
        if grid > learned_at:
            learned_at = grid
            for name, m in models.items():
                c = time.perf_counter()
                m.release({0: float(grid)})
                spent[name][1].append(time.perf_counter() - c)
    ages = CDF_AGES_MS
    ref = models["per_event"]
    ages = ages[ages <= ref.support_ms()]
    exact = ref.cdf(ages)
    truth = true_cdf(ages)
    print(f"{hours:g} h of traces at {rate:g}/s: {len(fb):,} delays seen, ages compared up to "
          f"{ref.support_ms() / 3_600_000:.2f} h")
    for name, m in models.items():
        rel = np.array(spent[name][1]) * 1000
        model = DelayModel()
        model.cdfs[("t", None)] = m
        size = len(model.encode("t")) if name != "per_event" else len(m.t) * 22
        print(f"{name:17s} observe {spent[name][0]:6.2f} s  release median {np.median(rel):7.2f} ms"
              f" max {rel.max():8.2f} ms"
              f"  entries {len(m.t):9,}  pending {int(m.n.sum()):10,}  state {size / 1024:9.1f} KiB"
              f"  |F - per event| {np.abs(m.cdf(ages) - exact).max():.4f}"
              f"  |F - true| {np.abs(m.cdf(ages) - truth).max():.4f}"
              f"  support {m.support_ms() / 3_600_000:.1f} h  seen {m.seen:,.0f}"
              + (f"  skipped {m.skipped:,}" if isinstance(m, PerEventQueue) else ""))


#: ages (ms) at which the CDFs are compared: 10 s to 6 days, log-spaced
CDF_AGES_MS = np.exp(np.linspace(np.log(10_000.0), np.log(6 * 86_400_000.0), 200))

if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:3]))
