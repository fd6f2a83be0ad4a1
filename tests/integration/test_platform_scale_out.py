"""Platform-wide incidents with two workers (issue 17, item 6): each worker sees only its
partitions' tenants, so the decision is made once, by the worker owning the ``"platform"`` key's
partition of ``agent.platform-signals.v1``, from both workers' alarms and tenant censuses.

Four tenants, two on each worker's partitions, all get the same latency change. Neither worker
alone sees the 3 tenants a platform incident needs (before, each decided on its own tenants, so
this gave none; with more tenants each could open one, both with the id of its own episode
counter, 1). Now: exactly one platform incident, opened once, its revisions from one writer
(0, 1, 2, ... without gaps or duplicates), naming tenants of both workers.
"""

from __future__ import annotations

import re
import time
import zlib

import pytest

from streams.sdk import SelfhealProducer
from streams.topics import ensure_topics
from tests.conftest import wait_caught_up
from tests.integration.test_incident_actions import Traffic, interleave, read_incidents

pytestmark = pytest.mark.integration



def crc32_partition(tenant: str, partitions: int) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``: CRC32 of the key)
    gives a keyed message; checked against the topic by :func:`tenant_partitions`."""
    return zlib.crc32(tenant.encode()) % partitions


def two_tenants_per_worker(split: list[set[int]], partitions: int) -> list[str]:
    """Two tenants on each worker's partitions: neither worker alone sees the 3 tenants a
    platform incident needs, both together see 4."""
    out = []
    for owned in split:
        out += [t for t in (f"tenant-{i}" for i in range(200)) if crc32_partition(t, partitions) in owned][:2]
    return out


def _owned(log) -> set[int]:
    found = re.findall(r"owning partitions \[([0-9, ]*)\]", log.read_text())
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


def test_two_workers_open_one_platform_incident_for_a_change_in_every_tenant(settings, worker_factory, tmp_path):
    ensure_topics(settings)
    workers = [worker_factory({"SELFHEAL_STATE_DIR": str(tmp_path / n / "state"),
                               "SELFHEAL_CLICKHOUSE_PATH": str(tmp_path / n / "clickhouse")}, name=n)
               for n in ("a", "b")]
    deadline = time.monotonic() + 180
    while not (all(_owned(w.log) for w in workers)
               and _owned(workers[0].log) | _owned(workers[1].log) == set(range(settings.partitions))
               and not _owned(workers[0].log) & _owned(workers[1].log)):
        assert time.monotonic() < deadline, "the two workers did not split the partitions"
        assert all(w.alive() for w in workers)
        time.sleep(0.5)
    split = [_owned(w.log) for w in workers]
    tenants = two_tenants_per_worker(split, settings.partitions)
    tr = Traffic()
    with SelfhealProducer(settings) as sdk:
        for t in interleave(*(tr.traces(t, "cardiology", 3000) for t in tenants)):
            sdk.send_trace(t)
        sdk.flush()
        for w in workers:  # baselines first (a slice is armed per batch, see test_incident_actions)
            wait_caught_up(settings, ["traces"], timeout_s=300, worker=w)
        for t in interleave(*(tr.traces(t, "cardiology", 1500, factor=1.8) for t in tenants)):
            sdk.send_trace(t)
    for w in workers:
        wait_caught_up(settings, ["traces", "signals"], timeout_s=300, worker=w)
    got = read_incidents(settings)
    assert all(w.stop() == 0 for w in workers)
    platform = [(k, i) for k, i in got if i.slice.layer == "platform" and i.metric_group == "latency"]
    tenants_alarmed = {i.slice.tenant_id for _, i in got if i.slice.tenant_id and i.metric_group == "latency"}
    assert len(tenants_alarmed) >= 3, tenants_alarmed
    ids = {i.incident_id for _, i in platform}
    assert len(ids) == 1, [(i.incident_id, i.revision, i.status) for _, i in platform]
    assert [i.status.value for _, i in platform].count("open") == 1
    revisions = sorted(i.revision for _, i in platform)
    assert revisions == list(range(len(revisions))), revisions  # one writer: no gap, no duplicate
    assert {k for k, _ in platform} == {b"platform"}
    # the decision used alarms of tenants on both workers' partitions
    seen = {s.split("|")[1] for _, i in platform for s in i.also_seen}
    parts = tenant_partitions(settings)
    assert parts == {t: crc32_partition(t, settings.partitions) for t in tenants}
    assert all({parts[t] for t in seen} & owned for owned in split), (seen, parts, split)


def tenant_partitions(settings) -> dict[str, int]:
    """Tenant -> the traces topic partition its messages went to (read back from the topic)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = settings.topic("traces")
    consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.topic_prefix}keys",
                         "enable.auto.commit": False})
    try:
        out: dict[str, int] = {}
        for p in range(settings.partitions):
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            pos, deadline = lo, time.monotonic() + 60
            while pos < hi and time.monotonic() < deadline:
                msg = consumer.poll(1)
                if msg is not None and not msg.error():
                    out[msg.key().decode()] = p
                    pos = msg.offset() + 1
        return out
    finally:
        consumer.close()
