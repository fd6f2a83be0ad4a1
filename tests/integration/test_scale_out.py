"""Scale-out: two workers in one consumer group split the partitions; when one stops, the other
takes its partitions over and nothing is lost.

Each worker here has its own embedded chDB directory (one process owns a chDB directory); in
production both write to one ClickHouse server, where ReplacingMergeTree folds a redelivered
partition's rows. So the test checks the union of trace ids over both directories.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from streams.devtools.bench import fleet, produce
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_topics
from tests.conftest import wait_caught_up

pytestmark = pytest.mark.integration

TRACES = 24_000


def _owned(log) -> set[int]:
    """Partitions of the trace topic a worker last said it owns (``owning partitions [..]``)."""
    found = re.findall(r"owning partitions \[([0-9, ]*)\]", log.read_text())
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


def _stat(log, key: str) -> int:
    """``key`` of a worker's latest stats line (0 before the first one)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if " stats {" in ln]
    return json.loads(lines[-1].split(" stats ", 1)[1])[key] if lines else 0


def _wait(cond, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _trace_ids(settings, path) -> tuple[set[str], int]:
    sink = ClickHouseSink(settings.model_copy(update={"clickhouse_path": path}))
    try:
        ids = {r[0] for r in sink.query("SELECT trace_id FROM {db}.traces FINAL")}
        return ids, sink.query("SELECT count() FROM {db}.traces FINAL")[0][0]
    finally:
        sink.close()


def test_two_workers_split_partitions_and_survive_one_stopping(settings, worker_factory, tmp_path):
    ensure_topics(settings)
    dirs = {n: tmp_path / n for n in ("a", "b")}
    env = {n: {"SELFHEAL_STATE_DIR": str(d / "state"), "SELFHEAL_CLICKHOUSE_PATH": str(d / "clickhouse"),
               "SELFHEAL_FAUST_LOGLEVEL": "info", "SELFHEAL_STATS_INTERVAL_S": "0.2"} for n, d in dirs.items()}
    a = worker_factory(env["a"], name="a")
    b = worker_factory(env["b"], name="b")
    sender = threading.Thread(target=produce, args=(settings, TRACES, fleet(24)), kwargs={"pace_per_s": 1_500},
                              daemon=True)
    sender.start()
    _wait(lambda: _owned(a.log) and _owned(b.log) and not _owned(a.log) & _owned(b.log)
          and _owned(a.log) | _owned(b.log) == set(range(settings.partitions)), "both workers to own partitions")
    split = (sorted(_owned(a.log)), sorted(_owned(b.log)))
    _wait(lambda: _stat(b.log, "traces_written") > 0, "b to write traces")
    assert b.stop() == 0  # graceful: b commits and leaves the group; a takes its partitions over
    sender.join()
    wait_caught_up(settings, ["traces"], worker=a)
    # the rebalance after b left may still be settling when a has committed everything
    _wait(lambda: _owned(a.log) == set(range(settings.partitions)), f"a to take b's partitions over ({a.log})")
    assert a.stop() == 0
    ids_a, rows_a = _trace_ids(settings, dirs["a"] / "clickhouse")
    ids_b, rows_b = _trace_ids(settings, dirs["b"] / "clickhouse")
    assert split[0] and split[1], split
    assert ids_a and ids_b, "both workers wrote traces"
    assert (rows_a, rows_b) == (len(ids_a), len(ids_b)), "no duplicate rows inside one store"
    assert len(ids_a | ids_b) == TRACES, f"{TRACES - len(ids_a | ids_b)} traces lost"
