"""Faults on the real broker and chDB: ClickHouse refusing writes, SIGTERM mid-stream and during a
ClickHouse outage. Nothing is lost or doubled, consumption pauses while writes fail (bounded
buffering), and a stopping worker exits within its bound.

ClickHouse failures are injected with the worker's test hook ``SELFHEAL_FAULT_SINK_FAIL_FILE``
(every insert fails like a refused connection while the file exists)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from schemas import default_codec
from streams.devtools.chaos import read_topic, rss_mb, state_mismatches
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import GroupLag, ensure_topics
from tests.conftest import kafka_producer, wait_caught_up
from tests.factories import now_ms, trace

pytestmark = pytest.mark.integration

CODEC = default_codec()
TENANTS = ("acme", "globex", "initech", "umbrella", "hooli", "stark")


def burst(settings, first: int, messages: int, per_message: int = 32) -> list[str]:
    """``messages`` batch messages of ``per_message`` traces with fresh ids, spread over tenants
    (so over partitions); returns the trace ids."""
    ids: list[str] = []
    n = first
    with kafka_producer({**settings.kafka_config(), "enable.idempotence": True, "linger.ms": 20}) as p:
        for m in range(messages):
            tenant = TENANTS[m % len(TENANTS)]
            recs = []
            for _ in range(per_message):
                recs.append(trace(n, trace_id=f"tr-{n:09d}", tenant_id=tenant, session_id=f"s-{n}"))
                ids.append(recs[-1]["trace_id"])
                n += 1
            value = CODEC.encode("selfheal.v1.AgentTraceBatch",
                                 {"batch_id": f"b{m}", "producer_id": "burst", "sent_at": now_ms(), "traces": recs})
            p.produce(settings.topic("traces"), value, key=tenant.encode())
            p.poll(0)
        assert p.flush(60) == 0
    return ids


def stats(log_path) -> list[dict]:
    """The worker's JSON stats lines, oldest first."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "selfheal.worker INFO stats {" in line:
            out.append(json.loads(line.split("stats ", 1)[1]))
    return out


def wait_for(predicate, timeout_s: float, what: str, worker=None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker exited with {worker.proc.returncode} while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def stored_trace_ids(settings) -> tuple[list[str], int]:
    sink = ClickHouseSink(settings)
    try:
        ids = [r[0] for r in sink.query("SELECT trace_id FROM {db}.traces FINAL")]
        raw = sink.query("SELECT count() FROM {db}.traces")[0][0]
        return ids, raw
    finally:
        sink.close()


def test_clickhouse_outage_pauses_consumption_and_loses_nothing(settings, worker_factory, tmp_path):
    ensure_topics(settings)
    down = tmp_path / "clickhouse-down"
    worker = worker_factory({"SELFHEAL_FAULT_SINK_FAIL_FILE": str(down), "SELFHEAL_STATS_INTERVAL_S": "1"})
    sent = burst(settings, 0, 60)  # healthy phase
    wait_caught_up(settings, ["traces"], worker=worker)
    wait_for(lambda: len(stats(worker.log)) >= 2, 30, "stats lines", worker)
    received_before = stats(worker.log)[-1]["received"]
    rss_before = rss_mb(worker.proc.pid)
    progress = GroupLag(settings, settings.full_app_id, [settings.topic("traces")], request_timeout_s=5.0)
    try:
        down.touch()
        # a burst far larger than what the worker may hold (256 messages per agent stream plus
        # one fetch of 500) arrives while every ClickHouse insert fails
        n_burst = 1500
        sent += burst(settings, len(sent), n_burst)
        wait_for(lambda: "injected write failure" in worker.log.read_text(errors="replace"), 60,
                 "the first failing write", worker)
        committed_at_failure, _ = progress()
        time.sleep(8)  # the outage goes on; the worker keeps retrying the same batch
        committed, end = progress()
        taken = stats(worker.log)[-1]["received"] - received_before
        rss_during = rss_mb(worker.proc.pid)
        assert worker.alive()
        # offsets are committed only after a durable write: nothing moves while writes fail
        assert committed == committed_at_failure, (committed_at_failure, committed)
        assert end - committed >= n_burst - 64, "the burst must wait in Kafka (consumer lag), not in the worker"
        # backpressure: the consumer stops taking messages once its buffers are full (one agent
        # stream of 256 messages, one fetch of 500, the batch held); the rest stays in Kafka
        assert taken <= 1000, f"the worker took {taken} of {n_burst} messages while its writes failed"
        assert stats(worker.log)[-1]["sink_failed_attempts"] >= 3
        down.unlink()
        wait_caught_up(settings, ["traces"], worker=worker)
    finally:
        progress.close()
    assert worker.stop() == 0
    ids, raw = stored_trace_ids(settings)
    assert len(ids) == len(set(ids)) == len(sent) and set(ids) == set(sent), "lost or doubled traces"
    assert raw >= len(sent)
    print(f"outage: {taken} of {n_burst} burst messages taken, lag {end - committed} messages, "
          f"worker RSS {rss_before:.0f} -> {rss_during:.0f} MiB")


def test_stalled_changelog_holds_the_commit_and_a_kill_loses_no_baseline_state(settings, worker_factory, tmp_path):
    # The changelog producer stalls (test hook: its messages wait in faust's producer buffer, as
    # after a broker restart) while traces keep coming. A batch's offsets may be committed only
    # once its changelog messages are acknowledged; otherwise a SIGKILL loses state updates of
    # committed traces for good (faust's commit-time flush gives up after 0.1 s without progress).
    ensure_topics(settings)
    hold = tmp_path / "changelog-hold"
    worker = worker_factory({"SELFHEAL_FAULT_CHANGELOG_HOLD_FILE": str(hold), "SELFHEAL_STATS_INTERVAL_S": "1",
                             "SELFHEAL_COMMIT_INTERVAL_S": "0.2", "SELFHEAL_CHECKPOINT_INTERVAL_S": "0.2"})
    sent = burst(settings, 0, 12)
    wait_caught_up(settings, ["traces"], worker=worker)
    wait_for(lambda: stats(worker.log) and stats(worker.log)[-1]["traces"] == len(sent), 30, "stats", worker)
    progress = GroupLag(settings, settings.full_app_id, [settings.topic("traces")], request_timeout_s=5.0)
    try:
        committed_before, _ = progress()
        hold.touch()
        healthy = len(sent)
        sent += burst(settings, len(sent), 12)
        wait_for(lambda: stats(worker.log)[-1]["traces"] > healthy, 60, "held traces processed", worker)
        lines = len(stats(worker.log))
        wait_for(lambda: len(stats(worker.log)) >= lines + 2, 30, "two stats intervals (ten commit intervals)", worker)
        committed_held, end = progress()
    finally:
        progress.close()
    worker.kill()
    hold.unlink()
    assert committed_held == committed_before < end, "offsets committed before their changelog was acknowledged"
    worker = worker_factory({"SELFHEAL_STATS_INTERVAL_S": "1"})
    wait_caught_up(settings, ["traces"], worker=worker)
    wait_for(lambda: stats(worker.log), 60, "the restarted worker running", worker)
    assert worker.stop() == 0
    ids, _ = stored_trace_ids(settings)
    assert len(ids) == len(set(ids)) == len(sent) and set(ids) == set(sent), "lost or doubled traces"
    sink = ClickHouseSink(settings)
    try:
        bad, slices = state_mismatches(settings, sink,
                                       read_topic(settings, f"{settings.full_app_id}-baselines-changelog"))
    finally:
        sink.close()
    assert slices > 0 and bad == [], f"{len(bad)} of {slices} slices: state behind ClickHouse, e.g. {bad[:3]}"


def test_sigterm_exits_within_the_bound_and_unfinished_batches_are_redelivered(settings, worker_factory, tmp_path):
    ensure_topics(settings)
    down = tmp_path / "clickhouse-down"
    # checkpoints (and so commits) every 0.2 s: the first commit must come while the backlog lasts
    # (with the default 5 s checkpoint the faster worker processed all 1,500 messages of 32 traces
    # before its first commit: clean-clone run at 474707e)
    env = {"SELFHEAL_FAULT_SINK_FAIL_FILE": str(down), "SELFHEAL_SHUTDOWN_TIMEOUT_S": "20",
           "SELFHEAL_CHECKPOINT_INTERVAL_S": "0.2"}
    progress = GroupLag(settings, settings.full_app_id, [settings.topic("traces")], request_timeout_s=5.0)
    try:
        # 1. SIGTERM while the worker is busy with a backlog
        first = worker_factory(env, name="busy")
        sent = burst(settings, 0, 1500)
        wait_for(lambda: progress()[0] > 0, 120, "the worker to commit its first batches", first)
        done, end = progress()
        assert done < end, "SIGTERM must land mid-stream"
        t0 = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        rc = first.proc.wait(timeout=60)
        busy_s = time.monotonic() - t0
        assert rc == 0 and busy_s < 20, (rc, busy_s)

        # 2. SIGTERM while ClickHouse refuses writes: the held batch is abandoned, not waited for
        down.touch()
        second = worker_factory(env, name="outage")
        sent += burst(settings, len(sent), 100)
        wait_for(lambda: "injected write failure" in second.log.read_text(errors="replace"), 90,
                 "a failing write", second)
        t0 = time.monotonic()
        second.proc.send_signal(signal.SIGTERM)
        rc = second.proc.wait(timeout=60)
        outage_s = time.monotonic() - t0
        assert rc == 0 and outage_s < 20, (rc, outage_s)  # sink_retry_s is 300 s: the retry loop was ended
        down.unlink()
    finally:
        progress.close()

    # 3. the next worker gets everything that was not acknowledged
    third = worker_factory(name="after")
    wait_caught_up(settings, ["traces"], worker=third)
    assert third.stop() == 0
    ids, _ = stored_trace_ids(settings)
    assert len(ids) == len(set(ids)) == len(sent) and set(ids) == set(sent), "lost or doubled traces"
    print(f"SIGTERM exit: busy {busy_s:.1f} s, during ClickHouse outage {outage_s:.1f} s")
