"""A table recovery that loses changelog records after the fetch is fetched again, not waited on
forever (the scale-out stall of docs/reliability.md, streams.worker.delivery.RecoveryWatchdog).

A worker builds slice state (baselines changelog), stops; its replacement restores that state from
the changelog while the fault hook loses every changelog record of the recovery's first pass
between the fetch and the recovery, exactly the state seen in the stall (all records fetched, none
received). Without the watchdog the replacement never finishes its recovery and never consumes
again.
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, TopicPartition

from schemas import default_codec
from streams.devtools.simulate import FleetSimulator
from streams.sdk import SelfhealProducer
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_topics
from tests.conftest import kafka_producer, wait_caught_up

pytestmark = pytest.mark.integration


def _changelog_records(settings) -> int:
    """Records held by the app's changelog topics (end minus start offsets, all partitions)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": "watermarks", "enable.auto.commit": False})
    try:
        names = [t for t in consumer.list_topics(timeout=10).topics
                 if t.startswith(settings.topic_prefix) and t.endswith("-changelog")]
        total = 0
        for name in names:
            for p in consumer.list_topics(name, timeout=10).topics[name].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                total += high - low
        return total
    finally:
        consumer.close()


def produce(settings, traces: int, seed: int) -> None:
    with SelfhealProducer(settings) as sdk, kafka_producer(settings.kafka_config()) as raw:
        FleetSimulator(bad_input=False, traces=traces, seed=seed, inject_at=1.0).run(
            sdk, raw_producer=raw, codec=default_codec())


def _last_stats(log) -> dict:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if " stats {" in ln]
    return json.loads(lines[-1].split(" stats ", 1)[1])


def test_recovery_that_lost_its_changelog_records_fetches_them_again(settings, worker_factory):
    ensure_topics(settings)
    first = worker_factory(name="first")
    produce(settings, 4_000, seed=1)
    wait_caught_up(settings, ["traces", "feedback"], worker=first)
    assert first.stop() == 0
    lost = _changelog_records(settings)
    assert lost > 0, "the first worker wrote slice state to the changelog"

    second = worker_factory({"SELFHEAL_FAULT_DROP_RECOVERY_RECORDS": str(lost),
                             "SELFHEAL_RECOVERY_RESEEK_AFTER_S": "2", "SELFHEAL_STATS_INTERVAL_S": "0.5",
                             "SELFHEAL_FAUST_LOGLEVEL": "info"},
                            name="second")
    produce(settings, 2_000, seed=2)
    wait_caught_up(settings, ["traces", "feedback"], worker=second)  # consuming again means the recovery ended
    log = second.log.read_text(errors="replace")
    assert log.count("TEST HOOK: changelog record") == lost, "every record of the first pass was lost"
    assert "seeking them back" in log, second.log
    assert "Done reading from changelog topics" in log
    assert _last_stats(second.log)["recovery_reseeks"] >= 1
    assert second.stop() == 0
    with ClickHouseSink(settings) as sink:
        n, distinct = sink.query("SELECT count(), uniqExact(trace_id) FROM {db}.traces FINAL")[0]
    assert (n, distinct) == (6_000, 6_000)
