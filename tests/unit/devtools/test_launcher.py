"""The one worker launcher: settings travel as environment, stop is SIGTERM then SIGKILL."""

from __future__ import annotations

import sys
import time

import pytest

from streams.config import Settings
from streams.devtools.launcher import WorkerProcess, worker_env

#: a stand-in worker: says hello, then waits; with "ignore" it shrugs SIGTERM off
FAKE = ("import signal, sys, time\n"
        "if 'ignore' in sys.argv: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('hello', flush=True)\n"
        "time.sleep(60)\n")


class FakeWorker(WorkerProcess):
    command = (sys.executable, "-c", FAKE)


class StubbornWorker(WorkerProcess):
    command = (sys.executable, "-c", FAKE, "ignore")


def _wait_for_hello(w: WorkerProcess, times: int = 1) -> None:
    deadline = time.monotonic() + 30
    while w.log.read_text().count("hello") < times and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.log.read_text().count("hello") == times


def test_worker_env_carries_the_settings_and_extra_wins(tmp_path):
    s = Settings(kafka_bootstrap="h:1", topic_prefix="p.", state_dir=tmp_path, clickhouse_path=tmp_path / "ch",
                 clickhouse_url=None)
    env = worker_env(s, {"SELFHEAL_TOPIC_PREFIX": "q.", "X": "1"},
                     base={"SELFHEAL_CLICKHOUSE_URL": "http://server:8123", "PATH": "/bin"})
    assert env == {"SELFHEAL_KAFKA_BOOTSTRAP": "h:1", "SELFHEAL_TOPIC_PREFIX": "q.",
                   "SELFHEAL_STATE_DIR": str(tmp_path), "SELFHEAL_CLICKHOUSE_PATH": str(tmp_path / "ch"), "X": "1",
                   "PATH": "/bin"}
    # no server in the settings: the child writes the chosen chDB directory, not the parent's server
    assert "SELFHEAL_CLICKHOUSE_URL" not in env
    served = s.model_copy(update={"clickhouse_url": "http://other:8123"})
    assert worker_env(served, base={})["SELFHEAL_CLICKHOUSE_URL"] == "http://other:8123"


def test_stop_sends_sigterm_and_returns_the_exit_code(tmp_path):
    w = FakeWorker({}, tmp_path / "logs" / "w.log").start()
    _wait_for_hello(w)
    assert w.alive()
    assert w.stop(timeout=30) == -15 and not w.killed_after_timeout and not w.alive()
    assert w.stop() == -15  # stopping an ended worker only reaps it


def test_stop_kills_a_worker_that_ignores_sigterm_after_the_timeout(tmp_path):
    w = StubbornWorker({}, tmp_path / "w.log").start()
    _wait_for_hello(w)
    t0 = time.monotonic()
    assert w.stop(timeout=0.5) == -9 and w.killed_after_timeout
    assert 0.5 <= time.monotonic() - t0 < 10


def test_log_is_appended_across_restarts_unless_truncated(tmp_path):
    log = tmp_path / "w.log"
    w = FakeWorker({}, log).start()
    _wait_for_hello(w)
    w.kill()
    w.start()
    _wait_for_hello(w, times=2)
    w.kill()
    t = FakeWorker({}, log, truncate_log=True).start()
    _wait_for_hello(t)
    t.kill()
    assert log.read_text().count("hello") == 1 and t.proc.returncode == -9


def test_a_worker_not_started_says_so(tmp_path):
    w = FakeWorker({}, tmp_path / "w.log")
    assert not w.alive()
    for call in (w.stop, w.kill, lambda: w.pid):
        with pytest.raises(RuntimeError, match="not started"):
            call()
