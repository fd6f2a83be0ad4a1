"""``selfheal bench-otlp``: spans per CPU-second of the OTLP ingress, per way in.

1. **receiver**: pre-serialized ``ExportTraceServiceRequest`` bodies (``application/x-protobuf``,
   gzip) are POSTed to a ``selfheal otlp`` subprocess by a few concurrent aiohttp clients;
2. **Kafka source**: the same bodies are produced to the OTLP topic first, then a
   ``selfheal otlp --kafka`` subprocess consumes them.

Either way the figure is spans / (utime + stime of the ``selfheal otlp`` process, from
``/proc/<pid>/stat``) from the first request (or the process start, for Kafka) until its
``/metrics`` shows every run emitted: the whole ingress path, decode, assembly, mapping,
validation, Avro encoding and the produce to the trace topic with acknowledgements, per core.
The pipeline worker is not running (its throughput is ``selfheal bench``'s figure).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from streams.config import Settings
from streams.devtools.launcher import worker_env
from streams.devtools.otlp_spans import agent_run, request, tenant_resource

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` of a receiver as ``{"name{label=value}": value}`` (prometheus_client's parser).

    Raises:
        OSError: the receiver does not answer.
    """
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class OtlpProcess:
    """A ``selfheal otlp [--kafka]`` subprocess for ``settings`` on a free port (log in ``log``)."""

    def __init__(self, settings: Settings, log: Path, *, kafka: bool = False, env: dict[str, str] | None = None):
        self.port = free_port()
        self.log = log
        cmd = [sys.executable, "-c", "from streams.cli import main; main()", "otlp", *(["--kafka"] if kafka else [])]
        child_env = worker_env(settings, {"SELFHEAL_OTLP_PORT": str(self.port), **(env or {})})
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=child_env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/metrics`` answers.

        Raises:
            RuntimeError: the process exited or did not answer within ``timeout_s`` (log tail in the message).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                scrape(self.port)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"selfheal otlp not ready (exit {self.proc.poll()}); log:\n{self.log.read_text()[-3000:]}")

    def metric(self, name: str) -> float:
        """One sample of ``/metrics`` (0 when absent)."""
        return scrape(self.port).get(name, 0.0)

    def wait_metric(self, name: str, at_least: float, timeout_s: float = 120.0) -> float:
        """Poll ``/metrics`` until ``name`` reaches ``at_least``.

        Raises:
            AssertionError: not reached within ``timeout_s`` (value and log tail named).
        """
        deadline = time.monotonic() + timeout_s
        value = 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            value = self.metric(name)
            if value >= at_least:
                return value
            time.sleep(0.2)
        raise AssertionError(f"{name} = {value} < {at_least} after {timeout_s} s (exit {self.proc.poll()}); "
                             f"log:\n{self.log.read_text()[-3000:]}")

    def cpu_s(self) -> float:
        """CPU seconds used so far (user + system)."""
        return cpu_s(self.proc.pid)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout_s``); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def bodies(runs: int, runs_per_request: int, spans_per_run: int, tenants: int = 8) -> list[bytes]:
    """Serialized requests of ``runs`` agent runs (``spans_per_run`` spans each: root, one chat
    span, the rest tool calls), ``runs_per_request`` per request, tenants round robin."""
    out = []
    for start in range(0, runs, runs_per_request):
        n = min(runs_per_request, runs - start)
        spans = []
        for _ in range(n):
            spans += agent_run(tools=spans_per_run - 2, llm_calls=1, agent_name="scribe")
        tenant = f"bench-{start // runs_per_request % tenants}"
        out.append(request(spans, tenant_resource(tenant=tenant)).SerializeToString())
    return out


async def _post_all(port: int, payloads: list[bytes], concurrency: int) -> None:
    import aiohttp

    queue = list(payloads)
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while queue:
                body = gzip.compress(queue.pop(), 1)
                async with session.post(f"http://127.0.0.1:{port}/v1/traces", data=body, headers={
                        "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"receiver answered {resp.status}: {await resp.text()}")
        await asyncio.gather(*(worker() for _ in range(concurrency)))


def run(settings: Settings, workdir: Path, *, runs: int = 20_000, runs_per_request: int = 50,
        spans_per_run: int = 5, concurrency: int = 4) -> dict[str, Any]:
    """Measure both ways in; returns the figures (spans/s per core, wall times)."""
    payloads = bodies(runs, runs_per_request, spans_per_run)
    spans = runs * spans_per_run
    env = {"SELFHEAL_OTLP_SETTLE_S": "0.5"}
    result: dict[str, Any] = {"runs": runs, "spans": spans, "spans_per_run": spans_per_run,
                              "runs_per_request": runs_per_request}

    receiver = OtlpProcess(settings, workdir / "otlp-http.log", env=env)
    try:
        receiver.wait_ready()
        result["receiver"] = _measure(receiver, lambda: asyncio.run(_post_all(receiver.port, payloads, concurrency)),
                                      runs, spans)
    finally:
        receiver.stop()

    topic = settings.topic_prefix + settings.otlp_kafka_topic
    admin = AdminClient(settings.kafka_config())
    for fut in admin.create_topics([NewTopic(topic, settings.partitions, settings.replication)]).values():
        fut.result(30)
    del admin
    source = OtlpProcess(settings, workdir / "otlp-kafka.log", kafka=True, env=env)
    try:
        source.wait_ready()
        time.sleep(2.0)  # let the consumer join its group before the CPU clock starts (not a measurement)
        result["kafka_source"] = _measure(source, lambda: _produce_all(settings, topic, payloads), runs, spans)
    finally:
        source.stop()
    return result


def _measure(proc: OtlpProcess, send: Callable[[], None], runs: int, spans: int) -> dict[str, float]:
    """One way in: run ``send`` (feeds the ready ``proc`` every body) and wait until ``proc``'s
    ``/metrics`` shows ``runs`` traces emitted (at most 600 s). Returns ``cpu_s`` (the process's
    user + system CPU seconds over that span), ``wall_s`` (s), ``spans_per_cpu_s`` and
    ``runs_per_cpu_s``.

    Raises:
        AssertionError: the traces were not emitted within 600 s (:meth:`OtlpProcess.wait_metric`).
    """
    cpu0, t0 = proc.cpu_s(), time.perf_counter()
    send()
    proc.wait_metric("selfheal_otlp_traces_emitted_total", runs, timeout_s=600)
    cpu, wall = proc.cpu_s() - cpu0, time.perf_counter() - t0
    return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "spans_per_cpu_s": round(spans / cpu), "runs_per_cpu_s": round(runs / cpu)}


def _produce_all(settings: Settings, topic: str, payloads: list[bytes]) -> None:
    """Produce every body to ``topic`` (key: its index) and wait for the acknowledgements.

    Raises:
        RuntimeError: messages still undelivered after 60 s.
    """
    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "compression.type": "lz4"})
    try:
        for i, body in enumerate(payloads):
            producer.produce(topic, body, key=str(i).encode())
            producer.poll(0)
        if producer.flush(60):
            raise RuntimeError("OTLP messages not delivered")
    finally:
        producer.close()


def bench_settings(base: Settings) -> Settings:
    """``base`` with its own topic prefix (the run's topics are deleted afterwards by the caller)."""
    return base.model_copy(update={"topic_prefix": f"bench-otlp-{uuid.uuid4().hex[:8]}."})


def cleanup(settings: Settings) -> None:
    """Delete the run's topics."""
    admin = AdminClient(settings.kafka_config())
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    for fut in admin.delete_topics(names).values() if names else ():
        fut.result(60)
