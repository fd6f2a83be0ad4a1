"""The floor of issue 16's pipeline ratio under the design card: what a faust-streaming agent
that only *consumes and decodes* the trace topic costs per trace, next to the raw limit
(confluent-kafka + fastavro, ``bench.raw_limit``) and the real worker (``bench.pipeline``), all
three over the same topic in one run (BENCHMARKS.md, "The faust floor").

The floor agent has the worker's consumer settings (``streams.worker.app``: fetch size, poll
records, batches of ``take_max_messages`` within ``take_within_s``, the worker's GC thresholds)
and does per message exactly what the raw limit does (``codec.decode``, count the traces), nothing
else: no validation, columns, detectors, sink, state or commits beyond faust's own. Whatever the
pipeline does, it cannot cost less than this per trace while it runs on faust, so
``floor traces per CPU-s / raw traces per CPU-s`` bounds the pipeline ratio from above.

Usage: ``SELFHEAL_KAFKA_BOOTSTRAP=127.0.0.1:9092 PYTHONPATH=src .venv/bin/python
scripts/faust_floor.py [traces] [--no-pipeline]`` (default 200,000 traces of 100 tenants x 2
cohorts, in AgentTraceBatch messages of 256, as ``selfheal bench``). Prints one JSON object:
traces per CPU-s of raw, floor and pipeline, and the ratios. The floor agent runs in a child
process (``--agent TOPIC EXPECTED OUT``) whose CPU is measured from its first batch to its last
trace, as the bench measures the worker.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from streams.config import Settings


def agent(topic: str, expected: int, out: str) -> None:
    """Run a faust worker whose one agent consumes and decodes ``topic`` until ``expected`` traces
    are decoded, then write ``{"traces", "cpu_s", "wall_s"}`` (CPU of this process from the first
    batch) to ``out`` and exit."""
    import faust

    from schemas import default_codec
    from streams.worker.app import GC_THRESHOLDS, MAX_POLL_RECORDS

    s = Settings()
    codec = default_codec()
    brokers = ";".join(f"kafka://{b}" for b in s.kafka_bootstrap.split(","))
    app = faust.App(f"floor-{uuid.uuid4().hex[:8]}", broker=brokers,
                    store="memory://", value_serializer="raw", key_serializer="raw", web_enabled=False,
                    datadir=tempfile.mkdtemp(prefix="faust-floor-"), consumer_auto_offset_reset="earliest",
                    consumer_max_fetch_size=4 * 1024 * 1024, stream_buffer_maxsize=max(4 * s.take_max_messages, 64),
                    broker_max_poll_records=MAX_POLL_RECORDS, stream_wait_empty=False, topic_disable_leader=True)
    source = app.topic(topic, value_type=bytes, key_type=bytes)
    state = {"n": 0, "cpu0": 0.0, "t0": 0.0}

    @app.agent(source)
    async def floor(stream):
        async for batch in stream.take(s.take_max_messages, within=s.take_within_s):
            if not state["n"]:
                state["cpu0"], state["t0"] = time.process_time(), time.perf_counter()
            for value in batch:
                _, rec = codec.decode(value)
                state["n"] += len(rec["traces"])
            if state["n"] >= expected:
                cpu, wall = time.process_time() - state["cpu0"], time.perf_counter() - state["t0"]
                Path(out).write_text(json.dumps({"traces": state["n"], "cpu_s": cpu, "wall_s": wall}))
                os._exit(0)  # the measurement is written; faust's stop is not part of it

    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


def floor_rate(topic: str, expected: int, timeout_s: float = 900.0) -> dict[str, float]:
    """The floor agent over ``topic`` in a child process; its figures with traces per CPU-s."""
    out = Path(tempfile.mkdtemp(prefix="faust-floor-")) / "floor.json"
    proc = subprocess.Popen([sys.executable, __file__, "--agent", topic, str(expected), str(out)])
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    if not out.exists():
        raise RuntimeError(f"the floor agent exited with {proc.returncode} before decoding {expected} traces")
    r = json.loads(out.read_text())
    r["traces_per_cpu_s"] = r["traces"] / r["cpu_s"]
    return r


def main(traces: int = 200_000, with_pipeline: bool = True) -> None:
    """Produce ``traces`` to a fresh topic, then raw limit, faust floor and (optionally) the real
    worker over it; print the JSON report."""
    from streams.devtools.bench import fleet, pipeline, produce, raw_limit
    from streams.topics import delete_topics, ensure_topics

    base = Settings()
    run_id = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix=f"floor-{run_id}-"))
    s = base.model_copy(update={"topic_prefix": f"floor-{run_id}.", "state_dir": root,
                                "clickhouse_path": root / "clickhouse"})
    ensure_topics(s)
    try:
        produce(s, traces, fleet(100))
        report: dict[str, object] = {"traces": traces, "raw": raw_limit(s, traces)}
        report["floor"] = floor_rate(s.topic("traces"), traces)
        raw_rate = report["raw"]["traces_per_cpu_s"]  # type: ignore[index]
        report["floor_ratio"] = report["floor"]["traces_per_cpu_s"] / raw_rate  # type: ignore[index]
        if with_pipeline:
            c = Consumer({**s.kafka_config(), "group.id": "floor-offsets"})
            marks = [c.get_watermark_offsets(TopicPartition(s.topic("traces"), p), timeout=10)
                     for p in range(s.partitions)]
            messages = sum(hi - lo for lo, hi in marks)
            c.close()
            pipe = pipeline(s, messages, root / "worker.log")
            pipe["traces_per_cpu_s"] = traces * pipe["message_share"] / pipe["cpu_s"]
            report["pipeline"] = pipe
            report["pipeline_ratio"] = pipe["traces_per_cpu_s"] / raw_rate
            report["pipeline_to_floor"] = pipe["traces_per_cpu_s"] / report["floor"]["traces_per_cpu_s"]  # type: ignore[index]
        print(json.dumps(report, indent=1))
    finally:
        delete_topics(s)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--agent"]:
        agent(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        args = [a for a in sys.argv[1:] if not a.startswith("--")]
        main(int(args[0]) if args else 200_000, "--no-pipeline" not in sys.argv)
