"""`selfheal bench`'s latency scenarios on the real broker, small: the one-worker capacity in the
latency configuration is measured on a drained backlog; in the two-worker run both workers join
one group and split the trace topic, every trace sent is processed, incidents are found on the
injected regressions, and the slice state they write to the changelog is in the sparse layout."""

from __future__ import annotations

import pytest

from streams.devtools.bench import capacity, changelog_messages, changelog_value_bytes, latency
from streams.processors.baselines import ROW_BYTES
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_two_workers_in_one_group_process_everything_and_find_incidents(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))  # the workers run this checkout
    out = latency(settings, tmp_path / "lat.log", rate=3_000, seconds=12, workers=2)
    assert out["workers"] == 2 and out["traces"] == 36_000
    assert out["caught_up"], out
    assert 0 <= out["lag_traces_at_end"] <= out["traces"]
    assert out["incidents"] > 0 and out["p99_ms"] >= out["p50_ms"] > 0, out
    assert len(out["worker_cpu_s"]) == 2 and all(c > 0 for c in out["worker_cpu_s"]), out
    assert 0 < out["processed_traces_per_s"] <= out["sent_traces_per_s"], out
    assert out["worker_cpu_share"] == pytest.approx(sum(out["worker_cpu_s"]) / out["send_wall_s"]), out
    for i in range(2):  # each worker logged its own share of the partitions
        assert "owning partitions" in (tmp_path / f"lat-{i}.log").read_text()
    rows = changelog_messages(settings, "baselines")
    assert rows > 0
    assert changelog_value_bytes(settings, "baselines") < rows * ROW_BYTES / 2  # sparse rows, not dense


def test_capacity_drains_the_backlog_and_reports_a_steady_rate(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    out = capacity(settings, tmp_path / "cap.log", traces=40_000, min_warmup_s=0.5, min_steady_s=1.0)
    assert out["traces"] == 40_000
    assert 0 < out["steady_traces"] < 40_000 and out["steady_s"] >= 1.0, out
    assert out["traces_per_wall_s"] == out["steady_traces"] / out["steady_s"]
    rates = out["window_rates_traces_per_s"]
    assert rates["p10"] <= rates["p50"] <= rates["p90"], out
    assert out["worker_cpu_s"] > 0 and out["worker_cpu_s_per_1k_traces"] > 0, out
    assert "owning partitions" in (tmp_path / "cap.log").read_text()  # one worker, all partitions
