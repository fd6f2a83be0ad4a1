"""``selfheal bench``: throughput, latency and memory of the real pipeline on this machine.

One run measures, with the same data:

1. **raw limit**: consume the trace topic with confluent-kafka and decode every message with
   fastavro (the codec), no processing: traces per CPU-second of the consuming process;
2. **pipeline**: the real ``selfheal worker`` (faust) on the same topic: decode, validate,
   every baseline layer and detector, incidents, ClickHouse (chDB) sink, changelog, acks:
   traces per CPU-second of the worker process (``/proc/<pid>/stat`` utime + stime between the
   first consumed and the last committed message), and its ratio to (1);
3. **trace-to-incident latency** at a paced offered load: one worker at 80 % of its capacity in
   the latency configuration (measured first, :func:`capacity`), two workers at 10,000 traces/s;
   regressions injected on a rotating set of slices; latency = incident message timestamp on
   ``agent.incidents.v1`` minus the wall-clock time the detecting trace was handed to the SDK;
4. **sink rows/s**: ``ClickHouseSink.write_traces`` / ``write_feedback`` (arrow inserts), next
   to the engine's own ``insert_arrow`` rate of the same trace table prebuilt (same run);
5. **memory**: bytes per active slice-metric (slice state + index, measured with tracemalloc)
   and peak RSS of a pipeline holding 10,000 active slices.

Figures are per CPU-second ("per core") so they compare across loaded and idle machines; wall
times are reported too. Record results with the command in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from schemas import default_codec
from streams.config import Settings
from streams.devtools.launcher import WorkerProcess
from streams.devtools.synthetic import Effect, Slice, synthetic_columns
from streams.processors.metrics import DRIFT_METRICS
from streams.topics import group_lag

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its threads) from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fleet(tenants: int, cohorts: int = 2) -> list[Slice]:
    """A fleet of ``tenants`` tenants × ``cohorts`` cohorts with equal traffic, spread over 6 partitions."""
    names = ("cardiology", "primary_care", "oncology", "pediatrics")
    return [Slice(f"tenant-{t:04d}", names[c % len(names)], 1.0, partition=t % 6)
            for t in range(tenants) for c in range(cohorts)]


def _records(cols, rel: dict[str, dict]) -> list[dict[str, Any]]:
    """Avro-shaped trace dicts for synthetic columns (what agents send)."""
    outcome = ("success", "failure", "escalated", "abandoned")
    out = []
    for i in range(cols.n):
        out.append({
            "trace_id": cols.trace_id[i], "tenant_id": cols.tenant_id[i], "cohort": cols.cohort[i],
            "workflow": cols.workflow[i], "intent": cols.intent[i], "agent_id": "scribe-1", "session_id": f"s{i % 997}",
            "event_time": int(cols.event_time_ms[i]), "release": rel[cols.release_id[i]], "rollout": None,
            "latency_ms": float(cols.latency_ms[i]), "input_tokens": int(cols.input_tokens[i]),
            "output_tokens": int(cols.output_tokens[i]), "cost_usd": float(cols.cost_usd[i]),
            "confidence": float(cols.confidence[i]), "outcome": outcome[int(cols.outcome[i])],
            "tool_calls": [{"name": "ehr_lookup", "status": "error" if cols.tool_failure[i] else "ok",
                            "latency_ms": 120.0}],
            "retrieval_queries": 2, "retrieval_hits": 1 if cols.retrieval_miss[i] else 2,
            "policy_blocked": bool(cols.policy_blocked[i]), "retries": 0, "fallback_used": bool(cols.fallback_used[i]),
            "output_sha256": None, "attributes": {"channel": "ambient", "locale": "en-US"}})
    return out


def _tenant_batches(codec: Any, records: list[dict[str, Any]], batch: int
                    ) -> list[tuple[str, list[dict[str, Any]], bytes]]:
    """Records grouped per tenant in chunks of ``batch``, each encoded as the SDK would send it:
    ``[(tenant_id, chunk, AgentTraceBatch payload)]``."""
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_tenant.setdefault(r["tenant_id"], []).append(r)
    out = []
    for tenant, rs in by_tenant.items():
        for i in range(0, len(rs), batch):
            chunk = rs[i:i + batch]
            out.append((tenant, chunk, codec.encode("selfheal.v1.AgentTraceBatch", {
                "batch_id": uuid.uuid4().hex, "producer_id": "bench", "sent_at": int(time.time() * 1000),
                "traces": chunk})))
    return out


def _manifest(rid: str) -> dict[str, str]:
    return {"release_id": rid, "model": "gpt-x-2026-10", "prompt_version": "p-14", "tool_schema_version": "t-3",
            "policy_version": "pol-7", "retrieval_index_version": "idx-22"}


def produce(settings: Settings, traces: int, slices: list[Slice], batch: int = 256, seed: int = 1,
            pace_per_s: float | None = None, on_send: Callable[[list[str], float], None] | None = None,
            effect_for: Callable[[int], dict[int, tuple[Effect, str]]] | None = None) -> float:
    """Send ``traces`` traces as AgentTraceBatch messages (one tenant per message) to the trace topic.

    ``pace_per_s`` paces the offered load; ``effect_for(offset)`` returns ``{slice index: (effect,
    release)}`` to inject regressions; ``on_send(trace_ids, wall_time)`` observes send times.
    Returns the wall seconds spent.
    """
    codec = default_codec()
    topic = settings.topic("traces")
    prod = Producer({**settings.kafka_config(), "linger.ms": 5, "batch.size": 1_000_000, "compression.type": "lz4",
                     "enable.idempotence": True, "queue.buffering.max.kbytes": 512_000})
    rng = np.random.default_rng(seed)
    rel = {"rel-1": _manifest("rel-1")}
    t0 = time.perf_counter()
    step = 20_000
    off = 0
    sent_count = 0
    t_start_ms = int(time.time() * 1000) - 3_600_000
    while off < traces:
        n = min(step, traces - off)
        sl = list(slices)
        if effect_for:
            for i, (eff, rid) in effect_for(off).items():
                sl[i] = replace(sl[i], effect=eff, release=rid)
                rel.setdefault(rid, _manifest(rid))
        cols, _ = synthetic_columns(rng, sl, n, off, t_start_ms + off, 1.0)
        for t, chunk, payload in _tenant_batches(codec, _records(cols, rel), batch):
            if pace_per_s:
                due = t0 + (sent_count + len(chunk)) / pace_per_s
                while (wait := due - time.perf_counter()) > 0:
                    prod.poll(min(wait, 0.01))
            while True:
                try:
                    prod.produce(topic, payload, key=t.encode())
                    break
                except BufferError:
                    prod.poll(0.05)
            if on_send:
                on_send([r["trace_id"] for r in chunk], time.time())
            prod.poll(0)
            sent_count += len(chunk)
        off += n
    prod.flush(60)
    return time.perf_counter() - t0


def raw_limit(settings: Settings, expected: int) -> dict[str, float]:
    """Consume the whole trace topic and decode every message (no processing)."""
    codec = default_codec()
    c = Consumer({**settings.kafka_config(), "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "fetch.max.bytes": 52_428_800})
    c.assign([TopicPartition(settings.topic("traces"), p, 0) for p in range(settings.partitions)])
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    idle = 0
    while n < expected and idle < 20:
        msgs = c.consume(1000, 0.5)
        if not msgs:
            idle += 1
            continue
        for m in msgs:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:  # noqa: SLF001 - confluent-kafka's public name
                    raise RuntimeError(m.error().str())
                continue
            _, rec = codec.decode(m.value())
            n += len(rec["traces"])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    c.close()
    return {"traces": n, "cpu_s": cpu, "wall_s": wall, "traces_per_cpu_s": n / cpu, "traces_per_wall_s": n / wall}


def pipeline(settings: Settings, expected_messages: int, log: Path, timeout_s: float = 900.0) -> dict[str, float]:
    """Run a real worker over the pre-filled topic; CPU of the worker from first consumed to caught up."""
    worker = WorkerProcess.for_settings(settings, log, {"SELFHEAL_TAKE_MAX_MESSAGES": str(settings.take_max_messages)},
                                        truncate_log=True).start()
    try:
        deadline = time.monotonic() + timeout_s
        cpu0 = t0 = None
        done = 0
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(f"worker exited with {worker.proc.returncode}; see {log}")
            done, end = group_lag(settings, settings.full_app_id, [settings.topic("traces")])
            if cpu0 is None and done > 0:
                cpu0, t0, done0 = _cpu_s(worker.pid), time.perf_counter(), done
            if end and done >= end:
                break
            time.sleep(0.2)
        if cpu0 is None:
            raise RuntimeError("the worker never committed anything")
        cpu, wall = _cpu_s(worker.pid) - cpu0, time.perf_counter() - t0
        msgs = done - done0
        return {"messages": msgs, "cpu_s": cpu, "wall_s": wall, "message_share": msgs / max(expected_messages, 1),
                "baselines_changelog_messages": changelog_messages(settings, "baselines"),
                "baselines_changelog_bytes": changelog_value_bytes(settings, "baselines")}
    finally:
        worker.stop(timeout=60)


def changelog_messages(settings: Settings, table: str) -> int:
    """Messages written to a table's changelog topic so far (end minus start offsets, all partitions)."""
    from streams.topics import changelog_topic

    c = Consumer({**settings.kafka_config(), "group.id": f"bench-cl-{uuid.uuid4().hex[:8]}"})
    try:
        return sum(hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition(changelog_topic(settings, table), p),
                                                                  timeout=10) for p in range(settings.partitions)))
    finally:
        c.close()


def changelog_value_bytes(settings: Settings, table: str, timeout_s: float = 120.0) -> int:
    """Bytes of the message values in a table's changelog topic (all partitions, log start to end):
    the serialised state the worker wrote (before the producer's compression).

    Raises:
        RuntimeError: the topic could not be read to its end within ``timeout_s``.
    """
    from streams.topics import changelog_topic

    topic = changelog_topic(settings, table)
    c = Consumer({**settings.kafka_config(), "group.id": f"bench-cl-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(settings.partitions)}
        todo = {p for p, (lo, hi) in ends.items() if hi > lo}
        c.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        total = 0
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise RuntimeError(f"changelog {topic} not read to its end in {timeout_s} s")
            for m in c.consume(1000, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - confluent-kafka's public name
                        todo.discard(m.partition())
                    continue
                total += len(m.value() or b"")
                if m.offset() + 1 >= ends[m.partition()][1]:
                    todo.discard(m.partition())
        return total
    finally:
        c.close()


def core(traces: int = 60_000, batch_messages: int = 64) -> dict[str, float]:
    """The processing core alone, in-process: ``Pipeline.on_traces`` over AgentTraceBatch messages
    (decode, validation, every layer and detector, incidents, trace index), no Kafka, no sink.
    Returns traces per CPU-second of this process (the figure to profile with pyinstrument)."""
    from streams.pipeline import Pipeline
    from streams.processors.columns import RawMessage

    codec = default_codec()
    rng = np.random.default_rng(1)
    rel = {"rel-1": _manifest("rel-1")}
    t0_ms = int(time.time() * 1000) - 3_600_000
    msgs: list[RawMessage] = []
    offsets = dict.fromkeys(range(6), 0)
    for start in range(0, traces, 20_000):
        cols, _ = synthetic_columns(rng, fleet(100), min(20_000, traces - start), start, t0_ms + start, 1.0)
        for tenant, _, payload in _tenant_batches(codec, _records(cols, rel), 256):
            part = int(tenant.split("-")[1]) % 6  # fleet() spreads tenants over 6 partitions this way
            msgs.append(RawMessage("traces", part, offsets[part], tenant.encode(), payload))
            offsets[part] += 1
    pipe = Pipeline(Settings(), codec)
    pipe.on_assigned(set(range(6)))
    cpu0 = time.process_time()
    for i in range(0, len(msgs), batch_messages):
        pipe.on_traces(msgs[i:i + batch_messages])
        pipe.flush_state()
    cpu = time.process_time() - cpu0
    return {"traces": traces, "cpu_s": cpu, "traces_per_cpu_s": traces / cpu}


def sink_rate(settings: Settings, rows: int = 100_000, rounds: int = 5) -> dict[str, float]:
    """Arrow-insert throughput of the traces and feedback tables (in-process chDB).

    Traces: after one warm-up of each call, ``rounds`` alternating pairs of (a)
    ``ClickHouseSink.write_traces`` of ``rows`` trace columns (the worker's call: arrow table built
    from the columns, then one insert), and (b) the engine's own rate, ``insert_arrow`` of the
    same table prebuilt (same insert settings); medians. ``traces_python_s`` / ``traces_chdb_s``
    split (a) into building the table and the insert. Why the warm-up of (a) itself: a process's
    first ``write_traces`` took 0.44-0.82 s against 0.28-0.34 s for the next nine (10 calls of
    100,000 rows, twice, BENCHMARKS.md), and with three rounds that first call was one of the
    three the median was taken from.
    """
    from streams.processors.columns import trace_columns
    from streams.sinks.clickhouse import TRACE_INSERT_SETTINGS, ClickHouseSink, trace_table

    sink = ClickHouseSink(settings.model_copy(update={"clickhouse_path": settings.state_dir / "sink-bench"}))
    sink.migrate()
    rng = np.random.default_rng(3)
    cols, _ = synthetic_columns(rng, fleet(50), rows, 0, int(time.time() * 1000) - 3_600_000, 1.0)
    recs = _records(cols, {"rel-1": _manifest("rel-1")})
    tc = trace_columns(recs, cols.partition.tolist(), cols.offset.tolist())
    table = f"{sink.db}.traces"
    sink.client.insert_arrow(table, trace_table(tc), settings=TRACE_INSERT_SETTINGS)  # first part of the table
    sink.write_traces(tc)  # warm-up of the measured call
    total, python, engine = [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        sink.write_traces(tc)
        total.append(time.perf_counter() - t)
        t = time.perf_counter()
        prebuilt = trace_table(tc)
        python.append(time.perf_counter() - t)
        t = time.perf_counter()
        sink.client.insert_arrow(table, prebuilt, settings=TRACE_INSERT_SETTINGS)
        engine.append(time.perf_counter() - t)
    traces_s = rows / float(np.median(total))
    engine_s = rows / float(np.median(engine))
    fb = [{"tenant_id": r["tenant_id"], "dedup_key": f"k{i}", "feedback_id": f"f{i}", "trace_id": r["trace_id"],
           "session_id": "", "cohort": r["cohort"], "workflow": r["workflow"], "release_id": "rel-1",
           "source": "clinician_edit", "category": "omission", "regulatory_tags": [], "severity": "low",
           "original_output_hash": "0" * 64, "corrected_text": "Added the missing allergy list.", "edit_diff": "",
           "normalised_correction": "added the missing allergy list", "reviewer_id_hash": "x" * 32,
           "reviewer_role": "physician", "event_time": r["event_time"], "dedup_status": "new", "version": i}
          for i, r in enumerate(recs)]
    t = time.perf_counter()
    sink.write_feedback(fb)
    fb_s = rows / (time.perf_counter() - t)
    sink.close()
    return {"traces_rows_per_s": traces_s, "traces_engine_rows_per_s": engine_s,
            "traces_share_of_engine": traces_s / engine_s, "traces_python_s": float(np.median(python)),
            "traces_chdb_s": float(np.median(engine)), "rows": rows, "feedback_rows_per_s": fb_s}


def memory(slices_target: int = 10_000) -> dict[str, float]:
    """Bytes per active slice-metric and peak RSS of a pipeline core with ``slices_target`` slices."""
    from schemas import default_codec as codec
    from streams.pipeline import Pipeline

    # 1) per slice-metric: tracemalloc around creating the slices through real traffic
    tenants = max(slices_target // (2 * 5 * 2), 1)  # 2 cohorts x (5 workflows x 2 layers + ...) per tenant
    pipe = Pipeline(Settings(), codec())
    rng = np.random.default_rng(5)
    fl = fleet(tenants)
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    off = 0
    while pipe.engine.store.n < slices_target:
        cols, _ = synthetic_columns(rng, fl, 20_000, off, 1_790_000_000_000 + off, 50.0)
        pipe.process_columns(cols)
        off += 20_000
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in snap.compare_to(base, "filename"))
    store = pipe.engine.store
    # the numpy state is allocated with spare capacity: count the rows in use
    per_slice_state = sum(a[: store.n].nbytes for a in store.f.values()) / store.n
    per_slice_total = grown / store.n
    metrics = len(DRIFT_METRICS)
    return {"slices": store.n, "metrics_per_slice": metrics, "bytes_per_slice_state": per_slice_state,
            "bytes_per_slice_measured": per_slice_total, "bytes_per_slice_metric": per_slice_total / metrics,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "traces": off}


def _owned_partitions(log: Path) -> set[int]:
    """Partitions of the trace topic a worker last said it owns (its ``owning partitions [..]`` line)."""
    found = re.findall(r"owning partitions \[([0-9, ]*)\]", log.read_text(errors="replace")) if log.exists() else []
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


def _processed_traces(log: Path) -> int:
    """Traces a worker has processed (``traces`` of its latest stats line; 0 before the first)."""
    last = None
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if " stats {" in line:
            last = line
    return int(json.loads(last.split(" stats ", 1)[1])["traces"]) if last else 0


def _machine_busy_s() -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of the whole machine since boot, all cores (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals) - idle) / CLK_TCK, sum(vals) / CLK_TCK


#: the worker settings of both latency scenarios and of their capacity measurement: batches cut
#: after 0.1 s (``take_within_s``; ``take_max_messages`` stays at its default, 64 messages),
#: slices trusted after 100 traces, a stats line every 0.2 s (how the bench follows progress)
LATENCY_WORKER_ENV = {"SELFHEAL_TAKE_WITHIN_S": "0.1", "SELFHEAL_WARMUP_TRACES": "100",
                      "SELFHEAL_FAUST_LOGLEVEL": "info", "SELFHEAL_STATS_INTERVAL_S": "0.2"}
#: traces per AgentTraceBatch message in the latency scenarios (the throughput step sends 256)
LATENCY_MESSAGE_TRACES = 64


def _regressions(total: int, regressions: int, slices: int) -> Callable[[int], dict[int, tuple[Effect, str]]]:
    """The latency scenarios' injected regressions, as ``produce``'s ``effect_for``: none in the
    first third of ``total`` traces (baselines warm up), then one more slice of ``slices`` regresses
    (latency × 3, failures × 5, its own release) every ``(total - total // 3) // regressions`` traces."""
    warm = total // 3
    every = max((total - warm) // regressions, 1)

    def effect_for(off: int) -> dict[int, tuple[Effect, str]]:
        k = (off - warm) // every if off >= warm else -1
        return {i: (Effect(latency=3.0, failure=5.0), f"rel-bad-{i}") for i in range(min(k + 1, slices))}

    return effect_for


def capacity(settings: Settings, log: Path, traces: int = 150_000, warmup_share: float = 0.15,
             min_warmup_s: float = 2.0, end_share: float = 0.95, min_steady_s: float = 3.0,
             timeout_s: float = 600.0) -> dict[str, Any]:
    """One worker's capacity in the latency configuration: traces per wall-second it processes
    from a backlog.

    What is measured: ``traces`` traces in the latency scenarios' messages (AgentTraceBatch of 64
    traces over the same 80 slices, the same regressions, the same seed) are written to the trace
    topic unpaced, then one ``selfheal worker`` with the latency settings
    (:data:`LATENCY_WORKER_ENV`) drains them; its cumulative ``traces`` count is read from its
    stats lines (every 0.2 s) and sampled here every 0.1 s with this process's clock. Warm-up is
    excluded: the steady window starts at the first sample with at least ``warmup_share`` of the
    backlog processed and ``min_warmup_s`` s after the first processed trace (start-up, first
    batches, slice creation), and ends at the first sample with ``end_share`` processed (before
    the backlog runs dry and batches shrink). Capacity = traces processed in the window / its wall
    seconds.

    Why: the offered rate of the one-worker latency run is a share of this capacity. The
    throughput step's rate does not serve: its messages of 256 traces cost less CPU per trace than
    these of 64 (an earlier bench offered 80 % of that rate, which was 100 % of the worker's
    capacity in this configuration, and measured queueing). A backlog keeps every batch full
    (64 messages), so this is the most the worker sustains with these settings on the CPU it gets
    now; a paced load at a share of it cuts batches by time (0.1 s), with fewer messages each.

    Returns: ``traces_per_wall_s`` (the capacity), ``steady_s`` and ``steady_traces`` (the window),
    ``window_rates_traces_per_s`` (p10 / p50 / p90 of the rate over 1 s sub-windows: its spread on
    a shared machine), ``worker_cpu_s`` and ``worker_cpu_share`` (CPU-s of the worker in the
    window, and per wall-second: the share of a core it got), ``worker_cpu_s_per_1k_traces``,
    ``drain_s`` (first to last trace), ``traces``.

    Raises:
        RuntimeError: the worker exited, did not drain the backlog within ``timeout_s`` s, or the
            steady window is shorter than ``min_steady_s`` s (give it a larger backlog).
    """
    from streams.topics import ensure_topics

    ensure_topics(settings)
    slices = fleet(40)  # 80 slices, as in latency()
    produce(settings, traces, slices, batch=LATENCY_MESSAGE_TRACES, effect_for=_regressions(traces, 30, len(slices)),
            seed=9)
    worker = WorkerProcess.for_settings(settings, log, dict(LATENCY_WORKER_ENV), truncate_log=True).start()
    samples: list[tuple[float, int, float]] = []  # (monotonic s, traces processed, worker CPU-s) at each change
    try:
        deadline = time.monotonic() + timeout_s
        last = 0
        while last < traces:
            if not worker.alive():
                raise RuntimeError(f"the capacity worker exited with {worker.proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the capacity worker processed {last} of {traces} traces in {timeout_s} s; "
                                   f"see {log}")
            n = _processed_traces(log)
            if n != last:
                samples.append((time.monotonic(), n, _cpu_s(worker.pid)))
                last = n
            time.sleep(0.1)
    finally:
        worker.stop(timeout=60)
    return {"traces": traces, **steady_rate(samples, traces, warmup_share=warmup_share, min_warmup_s=min_warmup_s,
                                            end_share=end_share, min_steady_s=min_steady_s)}


def steady_rate(samples: list[tuple[float, int, float]], traces: int, warmup_share: float = 0.15,
                min_warmup_s: float = 2.0, end_share: float = 0.95, min_steady_s: float = 3.0) -> dict[str, Any]:
    """The steady-state drain rate of a backlog of ``traces`` traces from progress samples.

    ``samples``: ``(wall s, traces processed so far, worker CPU-s)``, in time order, one at each
    change of the count (the first is the first processed batch). The window starts at the first
    sample with at least ``warmup_share`` of the backlog processed and at least ``min_warmup_s``
    s after the first sample, and ends at the first with ``end_share`` processed; see
    :func:`capacity` for why. Returns ``traces_per_wall_s`` (processed in the window / its wall
    s), ``steady_s``, ``steady_traces``, ``window_rates_traces_per_s`` (p10 / p50 / p90 over 1 s
    sub-windows, the count interpolated linearly between samples), ``worker_cpu_s``,
    ``worker_cpu_share`` (CPU-s per wall-s in the window), ``worker_cpu_s_per_1k_traces``,
    ``drain_s`` (first to last sample).

    Raises:
        RuntimeError: no samples, the backlog never reached ``end_share``, or the window is
            shorter than ``min_steady_s`` s.
    """
    if not samples:
        raise RuntimeError("capacity: no progress samples")
    t_first = samples[0][0]
    lo = next((s for s in samples if s[1] >= warmup_share * traces and s[0] >= t_first + min_warmup_s), None)
    hi = next((s for s in samples if s[1] >= end_share * traces), None)
    if lo is None or hi is None or hi[0] - lo[0] < min_steady_s:
        got = 0.0 if lo is None or hi is None else hi[0] - lo[0]
        raise RuntimeError(f"capacity: steady window {got:.1f} s < {min_steady_s} s (warm-up {min_warmup_s} s or "
                           f"{warmup_share:.0%} of {traces} traces excluded, ends at {end_share:.0%}); "
                           f"use a larger backlog")
    steady_s = hi[0] - lo[0]
    window = [s for s in samples if lo[0] <= s[0] <= hi[0]]
    ts, ns = np.array([s[0] for s in window]), np.array([s[1] for s in window], dtype=float)
    counts = np.interp(np.arange(lo[0], hi[0] + 1e-9, 1.0), ts, ns)  # processed at whole seconds into the window
    sub = np.diff(counts) if len(counts) > 1 else np.array([(hi[1] - lo[1]) / steady_s])
    cpu = hi[2] - lo[2]
    steady_traces = hi[1] - lo[1]
    return {"traces_per_wall_s": steady_traces / steady_s, "steady_s": steady_s, "steady_traces": steady_traces,
            "window_rates_traces_per_s": {q: float(np.percentile(sub, int(q[1:]))) for q in ("p10", "p50", "p90")},
            "worker_cpu_s": cpu, "worker_cpu_share": cpu / steady_s,
            "worker_cpu_s_per_1k_traces": 1000 * cpu / max(steady_traces, 1), "drain_s": samples[-1][0] - t_first}


def latency(settings: Settings, log: Path, rate: float = 10_000.0, seconds: float = 30.0,
            regressions: int = 30, workers: int = 1, catch_up_s: float = 180.0,
            worker_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Trace-to-incident latency at a paced offered load with injected regressions.

    ``workers`` ``selfheal worker`` processes in one consumer group (each with its own state
    directory and embedded chDB, as one process owns a chDB directory) split the trace topic's
    partitions; the clock starts once their assignments cover every partition. ``rate`` traces/s
    are offered for ``seconds`` s in AgentTraceBatch messages of 64 traces over 80 slices. The
    workers run with :data:`LATENCY_WORKER_ENV`, updated with ``worker_env`` (to compare settings,
    e.g. ``{"SELFHEAL_TAKE_WITHIN_S": "0.5"}``).

    Returns (besides ``p50_ms`` / ``p99_ms`` over the incidents opened on injected regressions):
    ``offered_traces_per_s`` (asked), ``sent_traces_per_s`` (what the paced producer achieved),
    ``lag_traces_at_end`` (traces sent but not yet processed by the workers when the producer
    finished, from their stats lines every 0.2 s: a few batches when they hold the rate),
    ``catch_up_s`` (from then until they processed every trace sent; incidents are read only after
    it, so late detections count), ``committed_lag_traces_at_end`` (not yet committed: offsets
    commit after the state checkpoint, ``checkpoint_interval_s``), ``worker_cpu_s`` and
    ``producer_cpu_s`` (CPU seconds over the paced send, per worker process and of this process:
    the producer), ``machine_busy_share`` (busy share of all cores over the send, /proc/stat),
    ``processed_traces_per_s`` (traces the workers processed during the send per wall-second:
    below the offered rate when they queue), ``worker_cpu_share`` (the workers' CPU-s per
    wall-second of the send: the share of a core they got).

    Raises:
        RuntimeError: a worker exited, or the group never covered every partition (60 s).
    """
    from streams.topics import GroupLag, ensure_topics

    ensure_topics(settings)
    slices = fleet(40)  # 80 slices
    total = int(rate * seconds)
    sent: dict[str, float] = {}
    effect_for = _regressions(total, regressions, len(slices))
    fast = {**LATENCY_WORKER_ENV, **(worker_env or {})}
    logs = [log] if workers == 1 else [log.with_name(f"{log.stem}-{i}{log.suffix}") for i in range(workers)]
    procs = []
    for i, wlog in enumerate(logs):
        own = {} if workers == 1 else {"SELFHEAL_STATE_DIR": str(settings.state_dir / f"w{i}"),
                                       "SELFHEAL_CLICKHOUSE_PATH": str(settings.state_dir / f"w{i}" / "clickhouse")}
        procs.append(WorkerProcess.for_settings(settings, wlog, {**fast, **own}, truncate_log=True).start())
    lag = GroupLag(settings, settings.full_app_id, [settings.topic("traces")])
    try:
        deadline = time.monotonic() + 60.0
        while True:  # every worker owns partitions, disjoint, covering the topic
            if not all(p.alive() for p in procs):
                raise RuntimeError(f"a latency worker exited; see {logs}")
            owned = [_owned_partitions(wlog) for wlog in logs]
            if all(owned) and sum(map(len, owned)) == settings.partitions and \
                    set().union(*owned) == set(range(settings.partitions)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the latency workers never split the partitions: {owned}; see {logs}")
            time.sleep(0.5)
        time.sleep(1.0)
        cpu0 = [_cpu_s(p.pid) for p in procs]
        busy0, all0 = _machine_busy_s()
        pcpu0 = time.process_time()
        wall = produce(settings, total, slices, batch=LATENCY_MESSAGE_TRACES, pace_per_s=rate, effect_for=effect_for,
                       on_send=lambda ids, t: sent.update(dict.fromkeys(ids, t)), seed=9)
        producer_cpu = time.process_time() - pcpu0
        busy1, all1 = _machine_busy_s()
        worker_cpu = [_cpu_s(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        t_end = time.monotonic()
        lag_traces = total - sum(_processed_traces(wlog) for wlog in logs)
        done, end = lag()
        committed_lag = max(end - done, 0) * total / max(end, 1)
        while (pending := total - sum(_processed_traces(wlog) for wlog in logs)) > 0 and \
                time.monotonic() < t_end + catch_up_s:
            time.sleep(0.1)
        caught_up = pending <= 0
        catch_up = time.monotonic() - t_end
        time.sleep(2.0)
        c = Consumer({**settings.kafka_config(), "group.id": f"bench-lat-{uuid.uuid4().hex[:8]}",
                      "auto.offset.reset": "earliest"})
        c.subscribe([settings.topic("incidents")])
        codec = default_codec()
        lat = []
        idle = 0
        while idle < 6:
            msgs = c.consume(500, 0.5)
            if not msgs:
                idle += 1
                continue
            for m in msgs:
                if m.error():
                    continue
                _, inc = codec.decode(m.value())
                if inc["status"] == "open" and inc["detected_at_trace_id"] in sent:
                    lat.append(m.timestamp()[1] / 1000.0 - sent[inc["detected_at_trace_id"]])
        c.close()
    finally:
        lag.close()
        for p in procs:
            p.stop(timeout=60)
    arr = np.asarray(lat) * 1000.0
    return {"workers": workers, "offered_traces_per_s": rate, "sent_traces_per_s": total / wall, "traces": total,
            "incidents": len(lat),
            "p50_ms": float(np.percentile(arr, 50)) if len(arr) else None,
            "p99_ms": float(np.percentile(arr, 99)) if len(arr) else None,
            "lag_traces_at_end": lag_traces, "committed_lag_traces_at_end": committed_lag, "caught_up": caught_up,
            "catch_up_s": catch_up,
            "send_wall_s": wall, "worker_cpu_s": worker_cpu, "producer_cpu_s": producer_cpu,
            "machine_busy_share": (busy1 - busy0) / max(all1 - all0, 1e-9),
            "processed_traces_per_s": (total - lag_traces) / wall, "worker_cpu_share": sum(worker_cpu) / wall,
            # CPU per trace the workers processed during the send (all sent minus the lag) and per
            # trace sent; with them, the rate this machine's cores could carry for both at most
            "worker_cpu_s_per_1k_traces": 1000 * sum(worker_cpu) / max(total - lag_traces, 1),
            "producer_cpu_s_per_1k_traces": 1000 * producer_cpu / total}


def run(traces: int = 300_000, settings: Settings | None = None, skip_latency: bool = False,
        progress: Callable[[str], None] | None = None, latency_rate: float | None = None,
        latency_capacity_share: float = 0.8, two_workers_rate: float | None = 10_000.0,
        capacity_traces: int = 150_000) -> dict[str, Any]:
    """The whole benchmark; returns the JSON report (keys of issue 6 at the top level).

    Latency runs (unless ``skip_latency``): one worker at ``latency_capacity_share`` (0.8) of its
    capacity in the latency configuration, measured just before: :func:`capacity` drains a
    backlog of ``capacity_traces`` traces, then one worker is offered that drained rate paced for
    20 s, and the capacity is the smaller of the drained rate and the rate the paced worker
    processed (``paced_traces_per_s``): a paced worker shares the cores with its producer and the
    broker's produce path, so it carries less than it drains (report key ``latency_capacity``,
    with ``capacity_traces_per_s``; ``latency`` gets ``capacity_traces_per_s`` and
    ``capacity_share``), or at ``latency_rate`` traces/s when given
    (no capacity run); then two workers in one group at ``two_workers_rate`` traces/s
    (``latency_two_workers``; ``None`` or 0 skips it)."""
    from streams.topics import delete_topics, ensure_topics

    base = settings or Settings()
    run_id = uuid.uuid4().hex[:8]
    root = base.state_dir / f"bench-{run_id}"
    s = base.model_copy(update={"topic_prefix": f"bench-{run_id}.", "state_dir": root,
                                "clickhouse_path": root / "clickhouse"})
    root.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda m: None)
    report: dict[str, Any] = {"traces": traces}
    try:
        ensure_topics(s)
        say(f"producing {traces} traces")
        slices = fleet(100)
        produce(s, traces, slices)
        say("raw limit: consume + decode")
        raw = raw_limit(s, traces)
        report["raw"] = raw
        say("pipeline: real worker")
        messages = sum(hi - lo for lo, hi in (
            Consumer({**s.kafka_config(), "group.id": "x"}).get_watermark_offsets(
                TopicPartition(s.topic("traces"), p), timeout=10) for p in range(s.partitions)))
        pipe = pipeline(s, messages, root / "worker.log")
        pipe_traces = traces * pipe["message_share"]
        pipe["traces_per_cpu_s"] = pipe_traces / pipe["cpu_s"]
        pipe["traces_per_wall_s"] = pipe_traces / pipe["wall_s"]
        # slice rows written to the changelog for the whole topic (value bytes, before compression)
        pipe["changelog_bytes_per_trace"] = pipe["baselines_changelog_bytes"] / traces
        pipe["changelog_bytes_per_row"] = (pipe["baselines_changelog_bytes"]
                                           / max(pipe["baselines_changelog_messages"], 1))
        report["pipeline"] = pipe
        say("processing core in-process")
        report["core"] = core()
        say("sink")
        report["sink"] = sink_rate(s)
        say("memory")
        # a fresh process, so the peak RSS is the pipeline's own (not this process's chDB and Kafka)
        out = subprocess.run([sys.executable, "-c", "import json; from streams.devtools.bench import memory; "
                              "print(json.dumps(memory()))"], capture_output=True, text=True, check=True)
        report["memory"] = json.loads(out.stdout.strip().splitlines()[-1])
        if not skip_latency:
            def scenario(name: str) -> Settings:
                (root / name).mkdir(parents=True, exist_ok=True)
                return s.model_copy(update={"topic_prefix": f"bench-{name}-{run_id}.", "state_dir": root / name,
                                            "clickhouse_path": root / name / "clickhouse"})

            rate = latency_rate
            if not rate:
                say(f"latency: one worker's capacity, a backlog of {capacity_traces:,} traces")
                cs = scenario("cap")
                try:
                    report["latency_capacity"] = capacity(cs, root / "cap-worker.log", traces=capacity_traces)
                finally:
                    delete_topics(cs)
                cap = report["latency_capacity"]
                # the drain runs alone; a paced run shares the cores with its producer and the broker's
                # produce path (measured: 0.080 CPU-ms per trace drained, 0.106 paced, 0.95 of a core):
                # offer the drained rate paced and take what the worker carries as the capacity
                say(f"latency: one worker paced at its drained capacity, {cap['traces_per_wall_s']:,.0f} traces/s")
                ps = scenario("cap-paced")
                try:
                    paced = latency(ps, root / "cap-paced-worker.log", rate=cap["traces_per_wall_s"], seconds=20.0)
                finally:
                    delete_topics(ps)
                cap["paced_traces_per_s"] = paced["processed_traces_per_s"]
                cap["paced_worker_cpu_s_per_1k_traces"] = paced["worker_cpu_s_per_1k_traces"]
                cap["paced_worker_cpu_share"] = paced["worker_cpu_share"]
                cap["capacity_traces_per_s"] = min(cap["traces_per_wall_s"], paced["processed_traces_per_s"])
                rate = latency_capacity_share * cap["capacity_traces_per_s"]
            runs = [("latency", "lat", 1, rate)] + ([("latency_two_workers", "lat2", 2, two_workers_rate)]
                                                   if two_workers_rate else [])
            for key, name, n_workers, r in runs:
                say(f"latency: {n_workers} worker(s) at {r:,.0f} traces/s")
                ls = scenario(name)
                try:
                    report[key] = latency(ls, root / f"{name}-worker.log", rate=r, workers=n_workers)
                finally:
                    delete_topics(ls)
            if "latency" in report and not latency_rate:
                report["latency"]["capacity_share"] = latency_capacity_share
                report["latency"]["capacity_traces_per_s"] = report["latency_capacity"]["capacity_traces_per_s"]
            if "latency_two_workers" in report:
                two = report["latency_two_workers"]
                # what the cores could carry if the workers and the producer had them to themselves
                # (the broker and other processes on the machine come on top)
                two["cpu_bound_traces_per_s"] = 1000 * (os.cpu_count() or 1) / (
                    two["worker_cpu_s_per_1k_traces"] + two["producer_cpu_s_per_1k_traces"])
    finally:
        delete_topics(s)
    report.update({
        "raw_traces_per_s": report["raw"]["traces_per_cpu_s"],
        "pipeline_traces_per_s_per_core": report["pipeline"]["traces_per_cpu_s"],
        "ratio_to_raw": report["pipeline"]["traces_per_cpu_s"] / report["raw"]["traces_per_cpu_s"],
        "core_traces_per_cpu_s": report["core"]["traces_per_cpu_s"],
        "incident_latency_ms_p50": (report.get("latency") or {}).get("p50_ms"),
        "incident_latency_ms_p99": (report.get("latency") or {}).get("p99_ms"),
        "incident_latency_offered_traces_per_s": (report.get("latency") or {}).get("offered_traces_per_s"),
        "incident_latency_capacity_traces_per_s": (report.get("latency") or {}).get("capacity_traces_per_s"),
        "incident_latency_lag_traces_at_end": (report.get("latency") or {}).get("lag_traces_at_end"),
        "incident_latency_worker_cpu_s_per_1k_traces":
            (report.get("latency") or {}).get("worker_cpu_s_per_1k_traces"),
        "two_workers_incident_latency_ms_p99": (report.get("latency_two_workers") or {}).get("p99_ms"),
        "two_workers_offered_traces_per_s": (report.get("latency_two_workers") or {}).get("offered_traces_per_s"),
        "two_workers_lag_traces_at_end": (report.get("latency_two_workers") or {}).get("lag_traces_at_end"),
        "two_workers_cpu_bound_traces_per_s": (report.get("latency_two_workers") or {}).get("cpu_bound_traces_per_s"),
        "changelog_bytes_per_trace": report["pipeline"]["changelog_bytes_per_trace"],
        "sink_rows_per_s": report["sink"]["traces_rows_per_s"],
        "sink_engine_rows_per_s": report["sink"]["traces_engine_rows_per_s"],
        "sink_share_of_engine": report["sink"]["traces_share_of_engine"],
        "bytes_per_slice_metric": report["memory"]["bytes_per_slice_metric"],
        "peak_rss_mb": report["memory"]["peak_rss_mb"],
        "cpus": os.cpu_count(),
    })
    shutil.rmtree(root, ignore_errors=True)
    return report
