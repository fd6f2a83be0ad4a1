"""The one launcher of ``selfheal worker`` subprocesses, for the demo, the benchmarks, the chaos
run and the integration tests (``tests/conftest.py`` ``worker_factory``).

A worker reads its settings from ``SELFHEAL_*`` environment variables only, so a child gets the
caller's :class:`~streams.config.Settings` as environment (:func:`worker_env`). It is stopped the
way an orchestrator stops it: SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from streams.config import Settings


def worker_env(settings: Settings, extra: dict[str, str] | None = None,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment that gives a child process ``settings``: ``base`` (default: this process's
    environment) with the broker, topic prefix, state directory and ClickHouse location of
    ``settings`` set, then ``extra`` on top.

    ``SELFHEAL_CLICKHOUSE_URL`` is removed when ``settings`` has none: the child must write the
    embedded chDB directory the parent chose even if the parent's environment names a server.
    """
    env = {**(os.environ if base is None else base),
           "SELFHEAL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "SELFHEAL_TOPIC_PREFIX": settings.topic_prefix,
           "SELFHEAL_STATE_DIR": str(settings.state_dir),
           "SELFHEAL_CLICKHOUSE_PATH": str(settings.clickhouse_dir)}
    if settings.clickhouse_url:
        env["SELFHEAL_CLICKHOUSE_URL"] = settings.clickhouse_url
    else:
        env.pop("SELFHEAL_CLICKHOUSE_URL", None)
    env.update(extra or {})
    return env


class WorkerProcess:
    """A ``python -m streams.cli worker`` subprocess; its stdout and stderr go to ``log``.

    Args:
        env: the child's whole environment (:func:`worker_env`).
        log: log file; appended to, so a restarted worker keeps its predecessor's lines, unless
            ``truncate_log``.
        truncate_log: start the log empty at each :meth:`start`.

    Attributes:
        command: the argv started (class attribute; tests of the launcher itself replace it).
        proc: the running (or ended) process, ``None`` before :meth:`start`.
        killed_after_timeout: the last :meth:`stop` had to SIGKILL.
    """

    command: tuple[str, ...] = (sys.executable, "-m", "streams.cli", "worker")

    def __init__(self, env: dict[str, str], log: Path, truncate_log: bool = False) -> None:
        self.env = env
        self.log = log
        self.truncate_log = truncate_log
        self.proc: subprocess.Popen | None = None
        self.killed_after_timeout = False

    @classmethod
    def for_settings(cls, settings: Settings, log: Path, extra_env: dict[str, str] | None = None,
                     truncate_log: bool = False) -> WorkerProcess:
        """A worker with ``settings`` (and ``extra_env`` on top), see :func:`worker_env`."""
        return cls(worker_env(settings, extra_env), log, truncate_log)

    @property
    def pid(self) -> int:
        """Process id. Raises ``RuntimeError`` before :meth:`start`."""
        if self.proc is None:
            raise RuntimeError("worker not started")
        return self.proc.pid

    def start(self) -> WorkerProcess:
        """Start the process (the log's directory is created); returns ``self``."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w" if self.truncate_log else "a") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(list(self.command), env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        """Started and not exited."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful stop: commit processed batches, exit), wait up to ``timeout`` s,
        then SIGKILL. Returns the exit code (negative: the signal that ended it); sets
        :attr:`killed_after_timeout`. A process that already exited is only reaped.

        Raises:
            RuntimeError: not started.
        """
        proc = self._started()
        self.killed_after_timeout = False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed_after_timeout = True
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL (no shutdown of any kind) and wait until the process is gone.

        Raises:
            RuntimeError: not started.
        """
        proc = self._started()
        proc.kill()
        proc.wait()

    def _started(self) -> subprocess.Popen:
        if self.proc is None:
            raise RuntimeError("worker not started")
        return self.proc
