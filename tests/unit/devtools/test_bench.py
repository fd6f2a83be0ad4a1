"""The in-process parts of `selfheal bench` run and report sane figures (small sizes)."""

from __future__ import annotations

import pytest

from streams.config import Settings
from streams.devtools.bench import core, memory, sink_rate, steady_rate


def test_sink_rate_writes_and_reports(tmp_path):
    out = sink_rate(Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch"), rows=2_000)
    assert out["traces_rows_per_s"] > 0 and out["feedback_rows_per_s"] > 0


def test_memory_counts_slices_and_bytes():
    out = memory(slices_target=300)
    assert out["slices"] >= 300
    assert 0 < out["bytes_per_slice_state"] <= out["bytes_per_slice_measured"]
    assert out["bytes_per_slice_metric"] == out["bytes_per_slice_measured"] / out["metrics_per_slice"]


def test_core_processes_every_trace():
    out = core(traces=3_000)
    assert out["traces"] == 3_000 and out["traces_per_cpu_s"] > 0


def _drain(warmup_s: float, warm_rate: float, steady_rate_per_s: float, tail_rate: float, traces: int,
           cpu_per_trace_s: float = 1e-4) -> list[tuple[float, int, float]]:
    """Progress samples every 0.2 s of a backlog drained slowly for ``warmup_s``, then steadily,
    then slowly again for the last 5 % (the backlog running dry)."""
    out, t, n = [], 100.0, 0.0
    while n < traces:
        rate = warm_rate if t < 100.0 + warmup_s else steady_rate_per_s if n < 0.95 * traces else tail_rate
        n = min(n + rate * 0.2, traces)
        t += 0.2
        out.append((t, int(n), n * cpu_per_trace_s))
    return out


def test_steady_rate_excludes_warm_up_and_the_dry_tail():
    out = steady_rate(_drain(warmup_s=3.0, warm_rate=1_000, steady_rate_per_s=8_000, tail_rate=500, traces=60_000),
                      60_000)
    assert out["traces_per_wall_s"] == pytest.approx(8_000, rel=0.03)
    assert out["window_rates_traces_per_s"]["p50"] == pytest.approx(8_000, rel=0.03)
    assert out["steady_s"] >= 3.0
    assert out["worker_cpu_s_per_1k_traces"] == pytest.approx(0.1, rel=0.01)
    assert out["worker_cpu_share"] == pytest.approx(0.8, rel=0.03)


def test_steady_rate_refuses_a_backlog_too_small_for_a_steady_window():
    with pytest.raises(RuntimeError, match="steady window"):
        steady_rate(_drain(warmup_s=2.5, warm_rate=1_000, steady_rate_per_s=8_000, tail_rate=500, traces=12_000),
                    12_000)
