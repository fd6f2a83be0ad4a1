"""The in-process parts of `selfheal bench` run and report sane figures (small sizes)."""

from __future__ import annotations

from streams.config import Settings
from streams.devtools.bench import core, memory, sink_rate


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
