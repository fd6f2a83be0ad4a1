"""Shared fixtures: real Kafka broker (started by scripts/kafka.sh), per-test topic namespaces,
per-test chDB directories, and workers as subprocesses (:class:`streams.devtools.launcher.WorkerProcess`)."""

from __future__ import annotations

import gc
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from streams.devtools.launcher import WorkerProcess, worker_env

ROOT = Path(__file__).resolve().parents[1]


# A chDB connection or a librdkafka client still alive when the interpreter exits can crash it
# after the test summary (issue 13; chdb-io/chdb-core #177): whoever opens a client closes it.
# These checks fail the test (or the session) that leaves one open, instead of a rare crash later.

def _unclosed_sinks() -> list[str]:
    """Locations of ClickHouseSinks opened in this process and not closed (none if never imported)."""
    mod = sys.modules.get("streams.sinks.clickhouse")
    return mod.unclosed_sinks() if mod is not None else []


def _sdk_flushers() -> set[threading.Thread]:
    """Background threads of SelfhealProducers not closed (close() joins its thread)."""
    return {t for t in threading.enumerate() if t.name == "selfheal-sdk-linger"}


@contextmanager
def kafka_producer(conf: dict) -> Iterator:
    """A confluent_kafka ``Producer`` closed when the block ends. What it still holds then is
    purged first: its ``close()`` flushes, and with the broker gone would wait forever."""
    from confluent_kafka import Producer

    producer = Producer(conf)
    try:
        yield producer
    finally:
        producer.purge()
        producer.close()


@pytest.fixture(autouse=True)
def _test_closes_its_clients() -> Iterator[None]:
    """Fails a test that leaves a ClickHouseSink or a SelfhealProducer open."""
    sinks, flushers = Counter(_unclosed_sinks()), _sdk_flushers()
    yield
    left = sorted((Counter(_unclosed_sinks()) - sinks).elements())
    producers = len(_sdk_flushers() - flushers)
    if left or producers:
        pytest.fail(f"test left {len(left)} ClickHouseSink(s) open {left} and {producers} SelfhealProducer(s) "
                    "open: close them (with-block or finally)")


@pytest.fixture(scope="session", autouse=True)
def _session_closes_its_clients() -> Iterator[None]:
    """Fails the session if a chDB connection or a librdkafka client (Producer, Consumer,
    AdminClient) is still alive at its end, e.g. held by a session or module fixture."""
    yield
    gc.collect()  # a client only held by a reference cycle is freed (and so closed) here
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    def running(client) -> bool:  # a closed Producer or Consumer is a harmless shell: it raises here
        try:
            client.poll(0) if isinstance(client, Producer) else client.assignment()
        except RuntimeError:
            return False
        return True

    kafka = Counter(type(o).__name__ for o in gc.get_objects()
                    if isinstance(o, AdminClient) or (isinstance(o, (Producer, Consumer)) and running(o)))
    if _unclosed_sinks() or kafka:
        pytest.fail(f"open at the end of the session: ClickHouseSink {_unclosed_sinks()}, Kafka clients {dict(kafka)}")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """A reachable broker: the one `make test` started, or start it now (idempotent)."""
    port = os.environ.get("SELFHEAL_KAFKA_PORT", "9092")
    if subprocess.run([str(ROOT / "scripts/kafka.sh"), "status"], check=False).returncode != 0:
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "start"], check=True)
    return f"127.0.0.1:{port}"


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str):
    """Settings isolated per test: own topic prefix (and so consumer group), own state and chDB dirs."""
    from streams.config import Settings

    prefix = f"t{uuid.uuid4().hex[:10]}."
    yield Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix, state_dir=tmp_path / "state",
                   clickhouse_path=tmp_path / "clickhouse")
    _delete_topics(kafka_bootstrap, prefix)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete every topic under the test's prefix (its workers are stopped by then): a long run
    would otherwise leave thousands of partitions on the one broker (measured: its 512 MB heap ran
    out). Not :func:`streams.topics.delete_topics`: that one keeps to one app id, and some tests
    run a second app (e.g. ``ref``) under the same prefix."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        for fut in admin.delete_topics(names, operation_timeout=30).values() if names else ():
            fut.result(timeout=60)
    except Exception as exc:  # best effort: a leftover topic costs memory, not correctness
        print(f"could not delete topics {prefix}*: {exc!r}")


def settings_env(settings) -> dict[str, str]:
    """Environment that gives a subprocess the same settings (and this checkout's ``src``)."""
    return worker_env(settings, {"PYTHONPATH": str(ROOT / "src")})


@pytest.fixture
def worker_factory(settings, tmp_path: Path) -> Iterator:
    """Start workers for the test's settings; all are stopped at the end."""
    started: list[WorkerProcess] = []

    def make(extra_env: dict[str, str] | None = None, name: str = "worker") -> WorkerProcess:
        w = WorkerProcess({**settings_env(settings), **(extra_env or {})}, tmp_path / f"{name}-{len(started)}.log")
        w.start()
        started.append(w)
        return w

    yield make
    for w in started:
        if w.alive():
            w.kill()


def free_port_pair() -> int:
    """A port p with p and p + 1 (a KRaft controller) free on loopback, below the kernel's ephemeral
    range: a port inside it can be taken, while a test's own broker is down for a restart, as the
    source port of any outgoing connection (even a client's self-connect to that very port), and the
    restarted broker then fails to bind it (CI run of d871fe2: "broker exited" at the restart)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20_000, min(low, 32_000) - 2)
        free = True
        for p in (port, port + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    free = False
        if free:
            return port
    raise RuntimeError("no free port pair below the ephemeral range")


def wait_caught_up(settings, topics: list[str], timeout_s: float = 180.0, worker: WorkerProcess | None = None) -> None:
    """Block until the worker's consumer group has committed every message of ``topics``."""
    from streams.topics import group_lag

    deadline = time.monotonic() + timeout_s
    done = end = -1
    while time.monotonic() < deadline:
        done, end = group_lag(settings, settings.full_app_id, [settings.topic(t) for t in topics])
        if end > 0 and done >= end:
            return
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker exited with {worker.proc.returncode}; log {worker.log}:\n"
                                 + worker.log.read_text()[-3000:])
        time.sleep(0.5)
    raise AssertionError(f"worker did not catch up within {timeout_s} s ({done}/{end} messages)")


def read_contract_topic(settings, topic: str, model: Any, timeout_s: float = 60.0) -> list[tuple[bytes | None, Any]]:
    """Every message of the test's ``topic`` (a logical name, e.g. ``"incidents"``) from the first
    offset to the high watermarks taken at the call, decoded with the default codec and validated
    as the contract ``model``: ``[(key, record)]``, in offset order within a partition.

    Fails (AssertionError) on a message of another contract, or when the partitions are not read
    to those watermarks within ``timeout_s`` seconds.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from schemas import default_codec

    codec = default_codec()
    name = settings.topic(topic)
    consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.topic_prefix}reader",
                         "enable.auto.commit": False})
    try:
        parts = [TopicPartition(name, p, OFFSET_BEGINNING) for p in range(settings.partitions)]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign(parts)
        out, seen = [], dict.fromkeys(ends, 0)
        deadline = time.monotonic() + timeout_s
        while any(seen[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            seen[msg.partition()] = msg.offset() + 1
            avro_name, rec = codec.decode(msg.value())
            assert avro_name == model.AVRO_NAME, f"{name} offset {msg.offset()}: {avro_name}, not {model.AVRO_NAME}"
            out.append((msg.key(), model.model_validate(rec)))
        assert all(seen[p] >= ends[p] for p in ends), f"{name} not read to its end in {timeout_s} s: {seen} of {ends}"
        return out
    finally:
        consumer.close()

