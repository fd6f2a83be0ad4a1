"""``selfheal bench`` with only its raw-limit, real-worker pipeline and latency parts (issue 16 A/B).

``bench.run`` as is, with ``core``, ``sink_rate`` and the memory subprocess stubbed out (their
keys are NaN / None in the report). The code measured is whatever ``PYTHONPATH`` puts first (the
worker subprocesses inherit it), so main and a branch alternate on one broker:

    SELFHEAL_KAFKA_BOOTSTRAP=127.0.0.1:PORT PYTHONPATH=/work/main/src \\
        .venv/bin/python scripts/bench_pipeline_latency.py LABEL OUT.json [LATENCY_RATE]

Without LATENCY_RATE the one-worker latency rate is 80 % of the measured capacity (as ``make
bench``); with it, that fixed rate in traces/s (no capacity runs). Two workers run at 10,000/s.
"""

import json
import sys
import time

import streams
from streams.devtools import bench

NAN = float("nan")
_subprocess_run = bench.subprocess.run


def _no_memory_run(cmd, *args, **kwargs):
    if isinstance(cmd, list) and "memory()" in str(cmd[-1]):
        return type("Done", (), {"stdout": json.dumps({"bytes_per_slice_metric": None, "peak_rss_mb": None})})()
    return _subprocess_run(cmd, *args, **kwargs)


def main():
    bench.core = lambda *a, **k: {"traces_per_cpu_s": NAN, "stub": True}
    bench.sink_rate = lambda *a, **k: {"traces_rows_per_s": NAN, "traces_engine_rows_per_s": NAN,
                                       "traces_share_of_engine": NAN, "stub": True}
    bench.subprocess.run = _no_memory_run
    print("streams from", streams.__file__, flush=True)
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else None
    t0 = time.time()
    rep = bench.run(progress=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True), latency_rate=rate)
    rep.update(label=sys.argv[1], streams_file=streams.__file__, wall_s=time.time() - t0)
    with open(sys.argv[2], "w") as fh:
        json.dump(rep, fh, indent=1, default=str)
    keys = ["ratio_to_raw", "incident_latency_ms_p50", "incident_latency_ms_p99",
            "incident_latency_offered_traces_per_s", "two_workers_incident_latency_ms_p99"]
    print(sys.argv[1], {k: rep.get(k) for k in keys})


if __name__ == "__main__":
    main()
