"""Shared fixtures: real Kafka broker (started by scripts/kafka.sh), per-test topic namespaces,
per-test chDB directories, and workers as subprocesses (:class:`streams.devtools.launcher.WorkerProcess`)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.devtools.launcher import WorkerProcess, worker_env

ROOT = Path(__file__).resolve().parents[1]


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
