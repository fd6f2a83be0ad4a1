"""Fault injection over a long simulated run: ``selfheal chaos`` (``make chaos``).

What it does (:func:`run_chaos`):

1. Starts its **own** Kafka broker (``scripts/kafka.sh`` with ``SELFHEAL_KAFKA_PORT``, default
   29092, and a state directory under the run's work dir), because the run stops and restarts
   it; the shared broker on 9092 is never touched. ``--no-broker-restart`` uses the configured
   broker instead and skips that fault.
2. Starts a worker (``selfheal worker`` subprocess, own chDB directory) under a small
   supervisor that restarts it whenever it exits, as systemd or Kubernetes would.
3. Produces a fleet simulation (:class:`streams.devtools.simulate.FleetSimulator`: many tenants, feedback
   with replays and resubmits, malformed messages, one injected release regression) at a
   throttled rate, so the faults land in the middle of the stream, and records every trace and
   feedback id it sends.
4. Injects, at fixed fractions of the produced traces: ``kills`` x SIGKILL of the worker (each
   followed by a restart), one broker stop/start, one ClickHouse write outage of
   ``sink_outage_s`` (the worker's test hook ``SELFHEAL_FAULT_SINK_FAIL_FILE``: while the file
   exists every insert fails like a refused connection), sampling consumer lag and the worker's
   RSS every second, and one SIGTERM (exit time measured, then a restart).
5. Waits until the consumer group has committed everything, stops the worker with SIGTERM and
   checks ClickHouse and the topics:

   - traces: every id sent is stored, none twice after ``FINAL`` (lost / duplicated);
   - feedback submissions (per feedback id, replays included) and unique corrections;
   - dead letters: one per malformed message or invalid record sent;
   - incidents: the injected regression is detected, no incident on another tenant that the
     same batches without faults do not give (:func:`reproduced_without_faults`), and no
     episode was re-opened: on ``agent.incidents.v1`` no incident opens while an earlier one of
     the same tenant, metric group and overlapping slice is still open;
   - state: each slice's trace count in the ``baselines`` changelog equals its traces in
     ClickHouse (baselines neither lost nor double-counted across the kills).

It prints a table (faults injected, records in, rows out, lost, duplicated) and writes JSON.
Pass criteria: 0 lost, 0 duplicated, no re-opened episode, state counts equal, the injected
regression detected, every SIGTERM exit within ``shutdown_timeout_s``; otherwise exit code 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.config import ROOT, Settings
from streams.devtools.launcher import WorkerProcess, worker_env
from streams.replay import load_recorded, recorded_range
from streams.replay import run as replay_run
from streams.topics import GroupLag

SCRIPTS = ROOT / "scripts"
#: seconds a consumer-group progress read is retried: through a broker restart and the load of the
#: group coordinator after it (about as long as the earlier bound of 60 tries, each up to 6 s)
PROGRESS_RETRY_S = 300.0


@dataclass
class ChaosConfig:
    """One chaos run. Durations in seconds, rate in traces/s."""

    traces: int = 30_000
    rate: float = 250.0  # produced traces per second (the run lasts about traces / rate)
    seed: int = 11
    kills: int = 3
    broker_restart: bool = True
    broker_down_s: float = 8.0
    sink_outage_s: float = 20.0
    sigterm: bool = True
    kafka_port: int = 29092
    shutdown_timeout_s: float = 30.0
    catch_up_timeout_s: float = 600.0
    work_dir: Path = field(default_factory=lambda: ROOT / ".local" / "chaos")


@dataclass
class FaultEvent:
    """One injected fault (or a worker exit we did not cause)."""

    kind: str  # sigkill | broker_restart | sink_outage | sigterm | unexpected_exit
    at_traces: int  # traces produced when it happened
    t_s: float  # seconds since the run started
    detail: dict[str, Any] = field(default_factory=dict)


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (Linux ``/proc``), ``None`` when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class WorkerSupervisor:
    """Runs ``selfheal worker`` as a subprocess (:class:`~streams.devtools.launcher.WorkerProcess`)
    and restarts it when it exits.

    Args:
        env: environment of the worker (settings as ``SELFHEAL_*``, :func:`~streams.devtools.launcher.worker_env`).
        log_dir: one log file per worker start (``worker-<n>.log``).
    """

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.worker: WorkerProcess | None = None
        self.starts = 0
        self.peak_rss_mb = 0.0
        self.unexpected: list[int] = []  # exit codes of exits we did not cause

    def start(self) -> None:
        """Start a new worker process."""
        self.starts += 1
        self.worker = WorkerProcess(self.env, self.log_dir / f"worker-{self.starts}.log", truncate_log=True).start()

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Until the current worker has opened ClickHouse (its log says so), or ``timeout_s``."""
        log = self.log_dir / f"worker-{self.starts}.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            if log.exists() and "ready (migrations" in log.read_text(errors="replace"):
                return True
            time.sleep(0.2)
        return False

    def alive(self) -> bool:
        """The current worker process is running."""
        return self.worker is not None and self.worker.alive()

    def pid(self) -> int | None:
        """Process id of the current worker (``None`` before the first start)."""
        return self.worker.pid if self.worker is not None else None

    def sample(self) -> float | None:
        """RSS of the current worker, MiB (also tracked as the peak)."""
        if not self.alive():
            return None
        rss = rss_mb(self.worker.pid)
        if rss is not None:
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    def watch(self) -> int | None:
        """Restart the worker if it exited on its own; returns that exit code (else ``None``)."""
        if self.worker is not None and not self.worker.alive():
            rc = self.worker.stop()  # only reaps: the process has exited
            self.unexpected.append(rc)
            self.start()
            return rc
        return None

    def kill(self) -> None:
        """SIGKILL (no shutdown of any kind) and wait for the process to be gone."""
        assert self.worker is not None
        self.worker.kill()

    def terminate(self, timeout_s: float) -> tuple[int | None, float]:
        """SIGTERM; returns ``(exit code, seconds until exit)``; SIGKILL after ``timeout_s + 30`` s
        (then the exit code is ``None``)."""
        assert self.worker is not None
        t0 = time.monotonic()
        rc = self.worker.stop(timeout=timeout_s + 30)
        return (None if self.worker.killed_after_timeout else rc), time.monotonic() - t0


class RecordingSDK:
    """Wraps :class:`streams.sdk.SelfhealProducer`: remembers the ids it sends (the expected output)."""

    def __init__(self, sdk: Any, on_trace: Callable[[int], None] | None = None) -> None:
        self.sdk = sdk
        self.settings = sdk.settings
        self.trace_ids: list[str] = []
        self.feedback_ids: Counter[str] = Counter()
        self.on_trace = on_trace

    def send_trace(self, trace: dict[str, Any]) -> None:
        """Send and record one trace."""
        self.sdk.send_trace(trace)
        self.trace_ids.append(trace["trace_id"])

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        """Send and record one feedback submission (replays count twice)."""
        self.sdk.send_feedback(feedback)
        self.feedback_ids[feedback["feedback_id"]] += 1

    def flush(self, timeout_s: float = 300.0) -> None:
        """Flush the SDK (waits through a broker restart)."""
        self.sdk.flush(timeout_s)


def _kafka(cmd: str, port: int, state_dir: Path) -> None:
    env = {**os.environ, "SELFHEAL_KAFKA_PORT": str(port), "SELFHEAL_KAFKA_CONTROLLER_PORT": str(port + 1),
           "SELFHEAL_STATE_DIR": str(state_dir)}
    done = subprocess.run([str(SCRIPTS / "kafka.sh"), cmd], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"kafka.sh {cmd} on port {port} failed (exit {done.returncode}): {done.stderr.strip()}")


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_topic(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every message of ``topic`` from the beginning: ``[(partition, offset, key, value)]`` in offset
    order per partition."""
    c = Consumer({**settings.kafka_config(), "group.id": f"{settings.topic_prefix}chaos-reader-{time.time_ns()}",
                  "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        parts = sorted(meta.partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        pos = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in parts}
        c.assign([TopicPartition(topic, p, pos[p]) for p in parts])
        out = []
        deadline = time.monotonic() + timeout_s
        while any(pos[p] < ends[p] for p in parts) and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            pos[m.partition()] = m.offset() + 1
            out.append((m.partition(), m.offset(), m.key(), m.value()))
        return sorted(out, key=lambda x: (x[0], x[1]))
    finally:
        c.close()


def reopened_episodes(events: list[tuple[int, int, dict[str, Any]]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Incidents opened while an earlier one of the same tenant, metric group and overlapping
    slice was still open, from the incident topic's events ``[(partition, offset, incident dict)]``.

    Redelivered events (same incident id and revision) count once. Returns the violations and
    counts (``events``, ``redelivered_events``, ``incidents``).
    """
    from streams.processors.incidents import slices_overlap

    def key(inc: dict[str, Any]) -> str:
        s = inc["slice"]
        return "|".join([s["layer"], s["tenant_id"] or "", s["cohort"] or "*", s["workflow"] or "*",
                         s["release_id"] or "*"])

    seen: set[tuple[str, int]] = set()
    open_: dict[str, dict[str, Any]] = {}  # incident id -> latest event
    all_ids: set[str] = set()
    bad: list[dict[str, Any]] = []
    redelivered = 0
    for _, _, inc in sorted(events, key=lambda e: (e[0], e[1])):
        rid = (inc["incident_id"], inc["revision"])
        if rid in seen:
            redelivered += 1
            continue
        seen.add(rid)
        iid = inc["incident_id"]
        if inc["status"] == "resolved":
            open_.pop(iid, None)
            continue
        if iid not in all_ids:
            clash = [o for o in open_.values() if o["metric_group"] == inc["metric_group"]
                     and o["slice"]["tenant_id"] == inc["slice"]["tenant_id"] and slices_overlap(key(o), key(inc))]
            if clash:
                bad.append({"incident_id": iid, "slice": key(inc), "metric_group": inc["metric_group"],
                            "while_open": [o["incident_id"] for o in clash]})
        all_ids.add(iid)
        open_[iid] = inc
    return bad, {"events": len(events), "redelivered_events": redelivered, "incidents": len(all_ids)}


#: traces per slice of each baseline layer, keyed like :func:`streams.processors.baselines.slice_key`
SLICE_COUNT_SQL = {
    "tenant": "SELECT tenant_id, '*', '*', '*', count() FROM {db}.traces FINAL GROUP BY 1, 2, 3, 4",
    "tenant_cohort": "SELECT tenant_id, cohort, '*', '*', count() FROM {db}.traces FINAL GROUP BY 1, 2, 3, 4",
    "tenant_workflow": "SELECT tenant_id, '*', workflow, '*', count() FROM {db}.traces FINAL GROUP BY 1, 2, 3, 4",
    "tenant_cohort_workflow":
        "SELECT tenant_id, cohort, workflow, '*', count() FROM {db}.traces FINAL GROUP BY 1, 2, 3, 4",
    "release": "SELECT tenant_id, cohort, workflow, release_id, count() FROM {db}.traces FINAL GROUP BY 1, 2, 3, 4",
}


def state_mismatches(settings: Settings, sink: Any, messages: list[tuple[int, int, bytes | None, bytes]]
                     ) -> tuple[list[dict[str, Any]], int]:
    """Slices whose trace count (``own``) in the baselines changelog differs from their traces in
    ClickHouse. Returns the mismatches and the number of slices compared."""
    from streams.processors.baselines import FIELD_COLUMN, decode_row, parse_slice_key

    own_at = FIELD_COLUMN["own"]
    latest: dict[str, float] = {}
    for _, _, k, v in messages:
        if k is None:
            continue
        key = k.decode()
        try:  # either row layout (an older worker's dense rows too)
            latest[key] = float(decode_row(v)[own_at]) if v is not None else None
        except ValueError:  # not a slice row
            latest[key] = None
        if latest[key] is None:  # a tombstone or not a row: the key holds no state
            latest.pop(key)
    counts: dict[str, int] = {}
    for layer, sql in SLICE_COUNT_SQL.items():
        for t, c, w, r, n in sink.query(sql):
            counts["|".join([layer, t, c, w, r])] = int(n)
    bad = []
    for k in set(latest) | set(counts):
        if parse_slice_key(k)[0] not in SLICE_COUNT_SQL:
            continue
        if round(latest.get(k, 0.0)) != counts.get(k, 0):
            bad.append({"slice": k, "state_traces": latest.get(k), "clickhouse_traces": counts.get(k, 0)})
    return bad, len(set(latest) | set(counts))


def run_chaos(cfg: ChaosConfig, base: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole scenario (module docstring) and return the report (also what ``--out`` writes).

    Raises:
        RuntimeError: the chaos broker port is taken, set-up fails, or the producer failed.
    """
    run = ChaosRun(cfg, base, log)
    try:
        return run.execute()
    finally:
        run.cleanup()


class ChaosRun:
    """State of one chaos run (see :func:`run_chaos`)."""

    def __init__(self, cfg: ChaosConfig, base: Settings, log: Callable[[str], None]) -> None:
        from streams.topics import delete_topics, ensure_topics

        self.cfg, self.log = cfg, log
        self.work = work = cfg.work_dir
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        update: dict[str, Any] = {"topic_prefix": "chaos.", "state_dir": work / "state",
                                  "clickhouse_path": work / "clickhouse", "clickhouse_url": None}
        self.own_broker = False
        if cfg.broker_restart:
            if _port_in_use(cfg.kafka_port) or _port_in_use(cfg.kafka_port + 1):
                raise RuntimeError(f"port {cfg.kafka_port} or {cfg.kafka_port + 1} is in use; pick another "
                                   "with --kafka-port")
            update["kafka_bootstrap"] = f"127.0.0.1:{cfg.kafka_port}"
        self.settings = settings = base.model_copy(update=update)
        if cfg.broker_restart:
            log(f"starting the chaos broker on 127.0.0.1:{cfg.kafka_port} (state {work})")
            _kafka("start", cfg.kafka_port, work)
            self.own_broker = True
        else:
            delete_topics(settings)
        for attempt in range(30):
            try:
                ensure_topics(settings)
                break
            except Exception:
                if attempt == 29:
                    raise
                time.sleep(1)
        self.fail_file = work / "sink-outage"
        env = worker_env(settings, {"SELFHEAL_FAULT_SINK_FAIL_FILE": str(self.fail_file),
                                    "SELFHEAL_SHUTDOWN_TIMEOUT_S": str(cfg.shutdown_timeout_s)})
        self.sup = WorkerSupervisor(env, work)
        self.lag = GroupLag(settings, settings.full_app_id, [settings.topic(t) for t in ("traces", "feedback")],
                            request_timeout_s=5.0)
        self.t0 = time.monotonic()
        self.produced = 0
        self.faults: list[FaultEvent] = []
        self.outage: dict[str, Any] = {}
        self.sigterms: list[dict[str, Any]] = []
        self.rss: list[float] = []
        self.result: dict[str, Any] = {}
        self.producer: threading.Thread | None = None

    # ------------------------------------------------------------------ helpers
    def progress(self) -> tuple[int, int]:
        """``(committed, end)`` messages of the worker's group over both source topics; asked
        again for up to ``PROGRESS_RETRY_S`` while the broker restarts or loads its coordinator."""
        return self.lag(retry_s=PROGRESS_RETRY_S)

    def now(self) -> float:
        """Seconds since the run started."""
        return round(time.monotonic() - self.t0, 1)

    def say(self, text: str) -> None:
        """Log ``text`` with the run's elapsed seconds."""
        self.log(f"[{self.now():6.1f}s] {text}")

    def tick(self) -> None:
        """Supervise: restart a worker that exited by itself, sample its RSS."""
        rc = self.sup.watch()
        if rc is not None:
            self.faults.append(FaultEvent("unexpected_exit", self.produced, self.now(), {"exit_code": rc}))
            self.say(f"worker exited by itself with {rc}; restarted")
        rss = self.sup.sample()
        if rss is not None:
            self.rss.append(rss)

    def wait_until(self, fraction: float) -> None:
        """Supervise until ``fraction`` (0..1) of the configured traces are produced, or the producer ends."""
        while self.produced < fraction * self.cfg.traces and self.producer is not None and self.producer.is_alive():
            self.tick()
            time.sleep(0.5)

    def wait_active(self, timeout_s: float = 40.0) -> None:
        """Until the (re)started worker has committed something new, so a fault hits a working worker."""
        start, _ = self.progress()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.tick()
            done, end = self.progress()
            if done > start or done >= end:
                return
            time.sleep(0.5)

    # ------------------------------------------------------------------ the run
    def produce(self) -> None:
        """Producer thread: the simulated fleet at ``cfg.rate`` traces/s, ids recorded."""
        from schemas import default_codec
        from streams.devtools.simulate import FleetSimulator
        from streams.sdk import SelfhealProducer

        t0 = time.monotonic()

        def pace(done: int, total: int) -> None:
            self.produced = done
            ahead = t0 + done / self.cfg.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

        try:
            with SelfhealProducer(self.settings) as sdk:
                rec = RecordingSDK(sdk)
                raw = Producer({**self.settings.kafka_config(), "enable.idempotence": True})
                sim = FleetSimulator(traces=self.cfg.traces, seed=self.cfg.seed, bad_input=True)
                self.result["report"] = sim.run(rec, progress=pace, raw_producer=raw, codec=default_codec())
                self.result["sdk"] = rec
            self.produced = self.cfg.traces
        except BaseException as exc:  # reported, fails the run
            self.result["error"] = repr(exc)

    def schedule(self) -> list[tuple[float, str]]:
        """Faults at fractions of the produced traces, in order (each waits for the previous one)."""
        cfg = self.cfg
        kinds = ["sigkill"] * min(cfg.kills, 2) + (["sink_outage"] if cfg.sink_outage_s > 0 else [])
        kinds += ["sigkill"] * max(cfg.kills - 2, 0) + (["broker_restart"] if cfg.broker_restart else [])
        kinds += ["sigterm"] if cfg.sigterm else []
        return [(0.1 + 0.65 * i / max(len(kinds) - 1, 1), kind) for i, kind in enumerate(kinds)]

    def execute(self) -> dict[str, Any]:
        """Produce, inject the faults, catch up, stop, verify."""
        cfg, sup = self.cfg, self.sup
        sup.start()
        self.producer = threading.Thread(target=self.produce, name="chaos-producer", daemon=True)
        self.producer.start()
        for fraction, kind in self.schedule():
            self.wait_until(fraction)
            self.wait_active()
            getattr(self, f"fault_{kind}")(self.produced)
        while self.producer.is_alive():
            self.tick()
            time.sleep(0.5)
        if "error" in self.result:
            raise RuntimeError(f"producer failed: {self.result['error']}")
        self.say(f"all {cfg.traces} traces produced; waiting for the worker to catch up")
        deadline = time.monotonic() + cfg.catch_up_timeout_s
        caught_up = False
        while time.monotonic() < deadline:
            self.tick()
            done, end = self.progress()
            if done >= end:
                caught_up = True
                break
            time.sleep(1.0)
        sup.wait_ready()
        rc, secs = sup.terminate(cfg.shutdown_timeout_s)
        self.sigterms.append({"exit_code": rc, "seconds": round(secs, 2), "during": "final stop"})
        self.say(f"final SIGTERM: exit {rc} after {secs:.1f} s")
        report = verify(self.settings, self.result["report"], self.result["sdk"])
        report.update({
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "caught_up": caught_up, "elapsed_s": self.now(), "worker_starts": sup.starts,
            "faults": [asdict(f) for f in self.faults], "sink_outage": self.outage, "sigterm": self.sigterms,
            "worker_rss_mb_peak": round(max(self.rss), 1) if self.rss else None,
        })
        counts = Counter(f.kind for f in self.faults)
        report["faults_injected"] = {k: counts.get(k, 0) for k in ("sigkill", "broker_restart", "sink_outage",
                                                                    "sigterm")}
        report["unexpected_worker_exits"] = counts.get("unexpected_exit", 0)
        problems = list(report["problems"])
        if not caught_up:
            problems.append("worker did not catch up")
        slow = [s for s in self.sigterms if s["exit_code"] != 0 or s["seconds"] > cfg.shutdown_timeout_s]
        if slow:
            problems.append(f"SIGTERM did not end in exit 0 within {cfg.shutdown_timeout_s} s: {slow}")
        if self.outage and self.outage.get("resumed_after_s") is None:  # 0.0 s is a resume
            problems.append("the worker did not resume after the ClickHouse outage")
        report["problems"] = problems
        report["passed"] = not problems
        return report

    def cleanup(self) -> None:
        """Stop what the run started (worker, progress client, own broker)."""
        if self.sup.alive():
            self.sup.kill()
        self.lag.close()
        if self.own_broker:
            _kafka("stop", self.cfg.kafka_port, self.work)

    # ------------------------------------------------------------------ faults
    def fault_sigkill(self, at: int) -> None:
        """SIGKILL the worker (``at``: traces produced so far) and start a new one at once."""
        self.sup.kill()
        self.sup.start()
        self.faults.append(FaultEvent("sigkill", at, self.now()))
        self.say(f"SIGKILL worker at {at} traces produced; restarted")

    def fault_broker_restart(self, at: int) -> None:
        """Stop the run's own broker and start it again (``at``: traces produced so far)."""
        t = time.monotonic()
        _kafka("stop", self.cfg.kafka_port, self.work)
        self.say(f"broker stopped at {at} traces produced")
        time.sleep(self.cfg.broker_down_s)
        _kafka("start", self.cfg.kafka_port, self.work)
        self.faults.append(FaultEvent("broker_restart", at, self.now(),
                                      {"down_s": round(time.monotonic() - t, 1)}))
        self.say("broker started again")

    def fault_sink_outage(self, at: int) -> None:
        """Every ClickHouse write fails for ``sink_outage_s``: lag and RSS sampled each second."""
        before, _ = self.progress()
        pid = self.sup.pid()
        self.fail_file.touch()
        lag, rss, committed = [], [], []
        t_end = time.monotonic() + self.cfg.sink_outage_s
        while time.monotonic() < t_end:
            self.tick()
            done, end = self.progress()
            committed.append(done)
            lag.append(end - done)
            r = self.sup.sample()
            if r is not None:
                rss.append(r)
            time.sleep(1.0)
        self.fail_file.unlink()
        t_rec = time.monotonic()
        resumed = None
        while time.monotonic() - t_rec < 120:
            self.tick()
            done, end = self.progress()
            # committed beyond the outage, or nothing left to commit (the worker checkpoints its
            # state every checkpoint_interval_s, so batches done before the outage may commit during it)
            if done > committed[-1] or done >= end:
                resumed = round(time.monotonic() - t_rec, 1)
                break
            time.sleep(0.5)
        settle = min(3, len(committed) - 1)  # batches acknowledged just before the first failing write
        self.outage.update({
            "seconds": self.cfg.sink_outage_s, "committed_before": before,
            "committed_advance_during_outage": committed[-1] - committed[settle],
            "lag_start": lag[0], "lag_end": lag[-1], "lag_max": max(lag),
            "worker_rss_mb_min": round(min(rss), 1) if rss else None,
            "worker_rss_mb_max": round(max(rss), 1) if rss else None,
            "same_worker_process": self.sup.worker is not None and self.sup.pid() == pid,
            "resumed_after_s": resumed})
        self.faults.append(FaultEvent("sink_outage", at, self.now(), dict(self.outage)))
        self.say(f"ClickHouse writes failed for {self.cfg.sink_outage_s:.0f} s: lag {lag[0]} -> {lag[-1]} messages, "
                 f"committed +{self.outage['committed_advance_during_outage']}, worker RSS "
                 f"{self.outage['worker_rss_mb_min']}-{self.outage['worker_rss_mb_max']} MiB; "
                 f"resumed after {resumed} s")

    def fault_sigterm(self, at: int) -> None:
        """SIGTERM the worker mid-processing, record its exit code and stop time (s), restart it."""
        self.sup.wait_ready()
        rc, secs = self.sup.terminate(self.cfg.shutdown_timeout_s)
        self.sigterms.append({"exit_code": rc, "seconds": round(secs, 2), "during": "processing"})
        self.sup.start()
        self.faults.append(FaultEvent("sigterm", at, self.now(), dict(self.sigterms[-1])))
        self.say(f"SIGTERM at {at} traces produced: worker exited with {rc} after {secs:.1f} s; restarted")


def _where_lost(settings: Settings, codec: Any, topic: str, id_field: str, missing: dict[str, int],
                limit: int = 20) -> list[dict[str, Any]]:
    """For up to ``limit`` ids sent but not stored (``{id: copies missing}``): how many copies reached
    the topic, at which partition/offset, so a report tells producer-side loss (0 on the topic) from
    pipeline-side loss (on the topic, not in ClickHouse)."""
    wanted = dict(sorted(missing.items())[:limit])
    found: dict[str, list[str]] = {k: [] for k in wanted}
    for p, o, _, v in read_topic(settings, settings.topic(topic)):
        try:
            _, rec = codec.decode(v)
        except Exception:
            continue
        if rec.get(id_field) in found:
            found[rec[id_field]].append(f"{p}@{o}")
    return [{"id": k, "missing": n, "on_topic": found[k]} for k, n in wanted.items()]


def verify(settings: Settings, rep: Any, sdk: RecordingSDK) -> dict[str, Any]:
    """Compare what was sent with ClickHouse and the topics (worker stopped: it owned the chDB dir)."""
    from schemas import default_codec
    from streams.sinks.clickhouse import ClickHouseSink

    codec = default_codec()
    sink = ClickHouseSink(settings)
    try:
        q = sink.query
        sent = set(sdk.trace_ids)
        got_ids = [r[0] for r in q("SELECT trace_id FROM {db}.traces FINAL")]
        got = set(got_ids)
        raw_rows = q("SELECT count() FROM {db}.traces")[0][0]
        traces = {"in": len(sdk.trace_ids), "out": len(got_ids), "lost": len(sent - got),
                  "duplicated": (len(got_ids) - len(got)) + len(got - sent) + (len(sdk.trace_ids) - len(sent)),
                  "rows_before_final": raw_rows}
        sub = Counter(r[0] for r in q("SELECT feedback_id FROM {db}.feedback_submissions FINAL"))
        fb_lost = sum(max(0, n - sub.get(k, 0)) for k, n in sdk.feedback_ids.items())
        fb_dup = sum(max(0, n - sdk.feedback_ids.get(k, 0)) for k, n in sub.items())
        submissions = {"in": sum(sdk.feedback_ids.values()), "out": sum(sub.values()), "lost": fb_lost,
                       "duplicated": fb_dup,
                       "rows_before_final": q("SELECT count() FROM {db}.feedback_submissions")[0][0]}
        if fb_lost:
            submissions["lost_ids"] = _where_lost(
                settings, codec, "feedback", "feedback_id",
                {k: n - sub.get(k, 0) for k, n in sdk.feedback_ids.items() if n > sub.get(k, 0)})
        if traces["lost"]:
            traces["lost_ids"] = _where_lost(settings, codec, "traces", "trace_id", {k: 1 for k in sent - got})
        statuses = dict(q("SELECT dedup_status, count() FROM {db}.feedback_submissions FINAL GROUP BY 1"))
        status_expected = {"new": rep.feedback_unique_expected, "replay": rep.feedback_replays,
                           "resubmit": rep.feedback_resubmits}
        submissions["dedup_status"] = statuses
        unique = q("SELECT count() FROM {db}.feedback FINAL")[0][0]
        corrections = {"in": rep.feedback_unique_expected, "out": unique,
                       "lost": max(0, rep.feedback_unique_expected - unique),
                       "duplicated": max(0, unique - rep.feedback_unique_expected),
                       "rows_before_final": q("SELECT count() FROM {db}.feedback")[0][0]}
        bad_sent = rep.bad_messages + rep.bad_records
        dl = q("SELECT count() FROM {db}.dead_letters FINAL")[0][0]
        dead = {"in": bad_sent, "out": dl, "lost": max(0, bad_sent - dl), "duplicated": max(0, dl - bad_sent),
                "rows_before_final": q("SELECT count() FROM {db}.dead_letters")[0][0],
                "by_reason": dict(q("SELECT error_class, count() FROM {db}.dead_letters FINAL GROUP BY 1"))}
        change = rep.injected[0]
        incidents = q("SELECT incident_id, tenant_id, kind, release_id, metric_group, status, summary "
                      "FROM {db}.incidents FINAL")
        detected = any(r[1] == change.tenant_id and r[2] == "release_regression" and r[3] == change.release_id
                       for r in incidents)
        # what each one was (id, tenant, kind, metric group, summary): the id alone says nothing
        elsewhere = [(r[0], r[1], r[2], r[4], r[6]) for r in incidents if r[1] != change.tenant_id]
        # one is the faults' doing only if the same batches without them do not give it
        without_faults = reproduced_without_faults(sink, settings, sorted({e[1] for e in elsewhere}))
        caused = [e for e in elsewhere if e[0] not in without_faults]
        events = []
        for p, o, _, v in read_topic(settings, settings.topic("incidents")):
            _, inc = codec.decode(v)
            events.append((p, o, inc))
        reopened, ev_counts = reopened_episodes(events)
        topic_ids = {e[2]["incident_id"] for e in events}
        state_bad, slices = state_mismatches(
            settings, sink, read_topic(settings, f"{settings.full_app_id}-baselines-changelog"))
    finally:
        sink.close()
    streams = {"traces": traces, "feedback_submissions": submissions, "feedback_unique": corrections,
               "dead_letters": dead}
    problems = []
    for name, s in streams.items():
        if s["lost"] or s["duplicated"]:
            problems.append(f"{name}: {s['lost']} lost, {s['duplicated']} duplicated")
    if {k: statuses.get(k, 0) for k in status_expected} != status_expected:
        problems.append(f"feedback dedup status {statuses} differs from what was sent {status_expected}")
    if not detected:
        problems.append("injected regression not detected")
    if caused:
        problems.append(f"incidents on tenants without an injected change that the same batches give "
                        f"without faults do not: {caused}")
    if reopened:
        problems.append(f"re-opened episodes: {reopened}")
    if topic_ids != {r[0] for r in incidents}:
        problems.append("incident ids on the topic and in ClickHouse differ")
    if state_bad:
        problems.append(f"{len(state_bad)} slices whose state count differs from ClickHouse: {state_bad[:5]}")
    return {
        "streams": streams,
        "lost": sum(s["lost"] for s in streams.values()),
        "duplicated": sum(s["duplicated"] for s in streams.values()),
        "incidents": {"in_clickhouse": len(incidents), "injected_detected": detected,
                      "on_other_tenants": len(elsewhere), "on_other_tenants_by_faults": len(caused),
                      "other_tenants": elsewhere, "reopened_episodes": len(reopened), **ev_counts},
        "state": {"slices_compared": slices, "mismatches": len(state_bad)},
        "problems": problems,
    }


def reproduced_without_faults(sink: Any, settings: Settings, tenants: list[str]) -> set[str]:
    """Incident ids that ``tenants``' recorded traffic gives in a run without faults: the worker's
    own batches, in its order, rebuilt from ClickHouse (``batch_seq``) and replayed through a fresh
    in-process pipeline with the same settings (:mod:`streams.replay`); empty for no tenants.

    Why: an incident on a tenant with no injected change is a fault's doing (a lost or doubled
    count across a crash) only if this replay does not give it. One it does give comes from the
    detector on that batch schedule: after a restart the worker catches up in larger batches and
    the trace-side CUSUMs step once per batch (measured: ``summit-medical`` retrieval_miss_rate,
    whose realised rate rises from 0.054 to 0.10 in this traffic, peaks at 15-16 nats in
    64-message batches and passes 18 in the worker's post-restart ones; the replay gives it too).
    Detector false alarms are measured by ``make bench-drift``, not here.

    Raises:
        SinkError, clickhouse errors: the store cannot be read (:func:`streams.replay.load_recorded`).
    """
    if not tenants:
        return set()
    span = recorded_range(sink, tenants)
    if span is None:
        return set()
    recorded = load_recorded(sink, settings, tenants, span[0], span[1])
    return {i.incident_id for i in replay_run(recorded, settings, sink).incidents}


def print_report(report: dict[str, Any], console: Any) -> None:
    """The run's tables (rich): faults injected; records in, rows out, lost, duplicated."""
    from rich.table import Table

    f = Table(title="faults injected")
    f.add_column("fault")
    f.add_column("count", justify="right")
    f.add_column("detail")
    o = report.get("sink_outage") or {}
    details = {
        "sigkill": "worker killed with SIGKILL mid-stream, restarted",
        "broker_restart": f"Kafka broker stopped for {report['config']['broker_down_s']:.0f} s, started again",
        "sink_outage": (f"every ClickHouse insert failed for {o.get('seconds', 0):.0f} s; lag {o.get('lag_start')} -> "
                        f"{o.get('lag_end')} msgs, worker RSS {o.get('worker_rss_mb_min')}-"
                        f"{o.get('worker_rss_mb_max')} MiB, resumed {o.get('resumed_after_s')} s after") if o else "",
        "sigterm": ", ".join(f"exit {s['exit_code']} in {s['seconds']:.1f} s ({s['during']})"
                             for s in report["sigterm"]),
    }
    for k, n in report["faults_injected"].items():
        f.add_row(k, str(n), details.get(k, ""))
    f.add_row("unexpected worker exits", str(report["unexpected_worker_exits"]), "restarted by the supervisor")
    console.print(f)
    t = Table(title="delivery (ClickHouse, after FINAL)")
    for col in ("stream", "records in", "rows out", "lost", "duplicated", "rows before FINAL"):
        t.add_column(col, justify="left" if col == "stream" else "right")
    for name, s in report["streams"].items():
        t.add_row(name, str(s["in"]), str(s["out"]), str(s["lost"]), str(s["duplicated"]), str(s["rows_before_final"]))
    t.add_row("total", str(sum(s["in"] for s in report["streams"].values())),
              str(sum(s["out"] for s in report["streams"].values())), str(report["lost"]), str(report["duplicated"]),
              "")
    console.print(t)
    inc, st = report["incidents"], report["state"]
    console.print(f"incidents: {inc['incidents']} ({inc['events']} events, {inc['redelivered_events']} redelivered), "
                  f"injected regression detected: {inc['injected_detected']}, re-opened episodes: "
                  f"{inc['reopened_episodes']}, on other tenants: {inc['on_other_tenants']} "
                  f"({inc['on_other_tenants_by_faults']} not given by the same batches without faults)")
    console.print(f"state: {st['slices_compared']} slices, {st['mismatches']} with a trace count different from "
                  "ClickHouse")
    console.print(("[bold green]PASSED" if report["passed"] else "[bold red]FAILED: " + "; ".join(report["problems"]))
                  + f"  ({report['elapsed_s']:.0f} s, {report['worker_starts']} worker starts)")


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write the report as JSON."""
    out.write_text(json.dumps(report, indent=2, default=str))
