"""Does the trace sink's insert release the GIL? (issue 16, BENCHMARKS.md "overlapped sink write")

A probe thread sleeps 1 ms in a loop and records how late it wakes (waiting for the GIL plus the
scheduler). Two rounds of: (a) idle, (b) while another thread of this process runs six ``ROWS``-row
trace inserts, (c) while a child process runs the same inserts (same CPU contention, no shared
GIL). Per case: lateness summed as a share of wall time, p50 / p99 / max in ms. A share in (b)
well above (c) is time the insert held the GIL.

MODE: ``write_traces`` (``ClickHouseSink.write_traces``: arrow table from the columns, then
clickhouse-connect's ``insert_arrow`` into chDB), ``insert_arrow`` (the prebuilt table only: the
chDB part) or ``trace_table`` (the Python part only).

    PYTHONPATH=src .venv/bin/python scripts/sink_gil_probe.py [ROWS=100000] [MODE=write_traces]
"""

import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from streams.config import Settings
from streams.devtools.bench import _manifest, _records, fleet
from streams.devtools.synthetic import synthetic_columns
from streams.processors.columns import trace_columns
from streams.sinks.clickhouse import TRACE_INSERT_SETTINGS, ClickHouseSink, trace_table

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
MODE = sys.argv[2] if len(sys.argv) > 2 else "write_traces"
INSERTS = 6


def make_sink():
    """A fresh chDB sink with one trace batch inserted; returns (sink, one insert of MODE)."""
    d = Path(tempfile.mkdtemp(prefix="gil16-"))
    sink = ClickHouseSink(Settings().model_copy(update={"clickhouse_path": d / "ch", "state_dir": d}))
    sink.migrate()
    cols, _ = synthetic_columns(np.random.default_rng(3), fleet(50), ROWS, 0,
                                int(time.time() * 1000) - 3_600_000, 1.0)
    recs = _records(cols, {"rel-1": _manifest("rel-1")})
    tc = trace_columns(recs, cols.partition.tolist(), cols.offset.tolist())
    table = f"{sink.db}.traces"
    prebuilt = trace_table(tc)
    sink.client.insert_arrow(table, prebuilt, settings=TRACE_INSERT_SETTINGS)

    def once():
        if MODE == "write_traces":
            sink.write_traces(tc)
        elif MODE == "insert_arrow":
            sink.client.insert_arrow(table, prebuilt, settings=TRACE_INSERT_SETTINGS)
        else:
            trace_table(tc)
    return sink, once


def probe_while(alive):
    """Wake-up lateness (s) of 1 ms sleeps while ``alive()``."""
    late = []
    while alive():
        t = time.perf_counter()
        time.sleep(0.001)
        late.append(time.perf_counter() - t - 0.001)
    return late


def child(ready):
    sink, once = make_sink()
    ready.set()
    for _ in range(INSERTS):
        once()
    sink.close()


def summary(late, wall_s):
    a = np.array(late)
    return {"late_share_of_wall": round(float(a.sum()) / wall_s, 3), "late_p50_ms": round(float(np.median(a)) * 1e3, 2),
            "late_p99_ms": round(float(np.quantile(a, 0.99)) * 1e3, 2), "late_max_ms": round(float(a.max()) * 1e3, 1)}


def main():
    out = {"rows": ROWS, "mode": MODE, "rounds": []}
    sink, once = make_sink()
    t = time.perf_counter()
    once()
    out["insert_alone_s"] = round(time.perf_counter() - t, 3)
    for _ in range(2):
        rd = {}
        t_end = time.perf_counter() + 2.0
        rd["idle"] = summary(probe_while(lambda t_end=t_end: time.perf_counter() < t_end), 2.0)
        wall = {}

        def inserts(wall=wall):
            t0 = time.perf_counter()
            for _ in range(INSERTS):
                once()
            wall["s"] = time.perf_counter() - t0

        th = threading.Thread(target=inserts)
        t0 = time.perf_counter()
        th.start()
        late = probe_while(th.is_alive)
        th.join()
        rd["thread"] = summary(late, time.perf_counter() - t0) | {"insert_s_each": round(wall["s"] / INSERTS, 3)}
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        p = ctx.Process(target=child, args=(ready,))
        p.start()
        ready.wait()
        t0 = time.perf_counter()
        late = probe_while(p.is_alive)
        rd["process"] = summary(late, time.perf_counter() - t0)
        out["rounds"].append(rd)
    out["loadavg"] = os.getloadavg()
    sink.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
