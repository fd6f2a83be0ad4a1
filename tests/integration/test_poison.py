"""No input stops the pipeline, and no forged copy replaces a stored trace (issue 18), on the real
broker and chDB with worker subprocesses.

- A 3,000,605-byte and an 8 MB message on the trace topic (its ``max.message.bytes`` raised so
  the broker takes them, as an operator may) are dead-lettered ``oversized`` with their payload
  left out (SHA-256 and size kept), and a batch message holding a trace that raises inside the
  detection chain (``SELFHEAL_FAULT_POISON_TRACE_ID``) is quarantined as ``processing_error``
  after a bounded number of restarts; every valid record behind them is written.
- A trace whose id was stored before a worker restart, sent again with other content, is
  dead-lettered ``duplicate_conflict`` and ``traces FINAL`` keeps the original; an identical copy
  from another offset is a replay (skipped).
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from schemas import default_codec
from streams.devtools.chaos import read_topic
from streams.devtools.launcher import WorkerProcess
from streams.errors import TenantScopeError
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.queries import stored_traces_by_tenant
from streams.topics import ensure_topics
from tests.conftest import kafka_producer, settings_env, wait_caught_up
from tests.factories import now_ms, trace

pytestmark = pytest.mark.integration

CODEC = default_codec()
BIG = (3_000_605, 8 * 1024 * 1024)
POISON = "tr-poison-1"


def batch(tenant: str, ids: list[str], **over) -> bytes:
    recs = [trace(i, trace_id=t, tenant_id=tenant, session_id=f"s-{t}", **over) for i, t in enumerate(ids)]
    return CODEC.encode("selfheal.v1.AgentTraceBatch",
                        {"batch_id": ids[0], "producer_id": "poison-test", "sent_at": now_ms(), "traces": recs})


def query(settings, sql: str) -> list[tuple]:
    sink = ClickHouseSink(settings)
    try:
        return sink.query(sql)
    finally:
        sink.close()


class Supervisor:
    """Restarts the worker whenever it exits, like an orchestrator; counts the exits."""

    def __init__(self, settings, log_dir, extra_env: dict[str, str]) -> None:
        self.env = {**settings_env(settings), **extra_env}
        self.log = log_dir / "worker.log"
        self.exit_codes: list[int] = []
        self.worker = WorkerProcess(self.env, self.log).start()

    def tick(self) -> None:
        if not self.worker.alive():
            self.exit_codes.append(self.worker.proc.returncode)
            self.worker = WorkerProcess(self.env, self.log).start()

    def wait_caught_up(self, settings, timeout_s: float, max_exits: int) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.tick()
            assert len(self.exit_codes) <= max_exits, f"restart loop: exits {self.exit_codes}; log {self.log}"
            try:
                wait_caught_up(settings, ["traces"], timeout_s=2.0, worker=self.worker)
                return
            except AssertionError:
                continue
        raise AssertionError(f"not caught up after {timeout_s} s; exits {self.exit_codes}; log {self.log}:\n"
                             + self.log.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        self.worker.stop()


def test_oversized_and_poison_messages_do_not_stop_the_pipeline(settings, tmp_path):
    ensure_topics(settings)
    admin = AdminClient(settings.kafka_config())
    res = ConfigResource("topic", settings.topic("traces"), incremental_configs=[
        ConfigEntry("max.message.bytes", str(16 * 1024 * 1024), incremental_operation=AlterConfigOpType.SET)])
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result()
    bigs = [os.urandom(n) for n in BIG]  # incompressible: the broker really stores this many bytes
    valid: list[str] = []
    with kafka_producer({**settings.kafka_config(), "enable.idempotence": True, "linger.ms": 5,
                         "message.max.bytes": 32 * 1024 * 1024}) as p:

        def send(tenant: str, value: bytes) -> None:
            p.produce(settings.topic("traces"), value, key=tenant.encode())
            p.poll(0)

        def good(tenant: str, n: int, tag: str) -> None:
            ids = [f"tr-{tag}-{tenant}-{i}" for i in range(n)]
            valid.extend(ids)
            send(tenant, batch(tenant, ids))

        for round_ in range(3):  # traffic of other tenants around the bad messages
            for tenant in ("globex", "initech"):
                good(tenant, 20, f"r{round_}")
        good("acme", 20, "before")
        send("acme", bigs[0])
        good("acme", 20, "mid1")
        send("acme", bigs[1])
        good("acme", 20, "mid2")
        send("acme", batch("acme", ["tr-poison-neighbour", POISON]))  # quarantined with its message
        for i in range(5):
            good("acme", 20, f"after{i}")
            good("globex", 20, f"after{i}")
        assert p.flush(60) == 0

    max_attempts = 2
    sup = Supervisor(settings, tmp_path, {"SELFHEAL_FAULT_POISON_TRACE_ID": POISON,
                                          "SELFHEAL_POISON_MAX_ATTEMPTS": str(max_attempts),
                                          "SELFHEAL_STATS_INTERVAL_S": "1"})
    try:
        # the poison batch crashes once, then its message alone max_attempts times at most
        sup.wait_caught_up(settings, timeout_s=300, max_exits=1 + max_attempts)
        assert all(code == 70 for code in sup.exit_codes), sup.exit_codes
        assert 1 <= len(sup.exit_codes) <= 1 + max_attempts
        assert sup.worker.alive()
        deadline = time.monotonic() + 30  # the stats line (every second) counts the quarantined message
        while '"quarantined": 1' not in sup.log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sup.stop()

    stored = {r[0] for r in query(settings, "SELECT trace_id FROM {db}.traces FINAL")}
    assert set(valid) <= stored, f"{len(set(valid) - stored)} valid traces missing"
    assert POISON not in stored
    dls = query(settings, "SELECT error_class, value, message, payload_sha256, payload_bytes "
                          "FROM {db}.dead_letters FINAL WHERE source_topic = '" + settings.topic("traces") + "'")
    oversized = sorted((r for r in dls if r[0] == "oversized"), key=lambda r: r[4])
    assert [(r[3], r[4]) for r in oversized] == [(hashlib.sha256(b).hexdigest(), len(b)) for b in bigs]
    assert [r[1] for r in oversized] == [str(n) for n in BIG]  # numeric value kept through redaction
    poison = [r for r in dls if r[0] == "processing_error"]
    assert len(poison) == 1 and poison[0][1] == "PoisonError" and POISON in poison[0][2], poison

    # a batch redelivered after a crash publishes its dead letters again: one per dead_letter_id
    envelopes = list({e["dead_letter_id"]: e for e in (CODEC.decode(v)[1] for _, _, _, v in
                                                          read_topic(settings, settings.topic("deadletter")))}.values())
    big_env = sorted((e for e in envelopes if e["error_class"] == "oversized"), key=lambda e: e["payload_bytes"])
    assert [(e["payload"], e["payload_left_out"], e["payload_sha256"], e["payload_bytes"]) for e in big_env] == [
        (b"", "over_bound", hashlib.sha256(b).hexdigest(), len(b)) for b in bigs]
    quarantined = [e for e in envelopes if e["error_class"] == "processing_error"]
    assert quarantined and all(e["payload"] and e["payload_left_out"] is None for e in quarantined)
    assert CODEC.decode(quarantined[0]["payload"])[1]["traces"][1]["trace_id"] == POISON  # replayable
    log = sup.log.read_text(errors="replace")
    assert "quarantined" in log and '"quarantined": 1' in log


def test_a_forged_copy_after_a_restart_does_not_replace_the_stored_trace(settings, worker_factory):
    ensure_topics(settings)
    original = {"latency_ms": 1506.71, "outcome": "success", "event_time": now_ms() - 120_000}
    forged = {**original, "latency_ms": 7535.55, "outcome": "escalated"}

    def produce(values: list[bytes]) -> None:
        with kafka_producer({**settings.kafka_config(), "enable.idempotence": True}) as p:
            for v in values:
                p.produce(settings.topic("traces"), v, key=b"acme")
            assert p.flush(30) == 0

    produce([batch("acme", ["tr-orig", "tr-a1"], **original)])
    w = worker_factory()
    wait_caught_up(settings, ["traces"], timeout_s=120, worker=w)
    assert w.stop() == 0
    # the next worker's index is empty: only the store knows tr-orig
    produce([batch("acme", ["tr-orig", "tr-b1"], **forged), batch("acme", ["tr-orig", "tr-b2"], **original)])
    w = worker_factory()
    wait_caught_up(settings, ["traces"], timeout_s=120, worker=w)
    assert w.stop() == 0

    rows = query(settings, "SELECT latency_ms, outcome FROM {db}.traces FINAL WHERE trace_id = 'tr-orig'")
    assert rows == [(1506.71, "success")]
    assert query(settings, "SELECT count() FROM {db}.traces WHERE trace_id = 'tr-orig'") == [(1,)]
    stored = {r[0] for r in query(settings, "SELECT trace_id FROM {db}.traces FINAL")}
    assert {"tr-a1", "tr-b1", "tr-b2"} <= stored
    dls = query(settings, "SELECT error_class, value, record_index FROM {db}.dead_letters FINAL")
    assert dls == [("duplicate_conflict", "tr-orig", 0)]  # the identical copy is a replay, not a conflict


def test_the_stored_trace_lookup_finds_ids_of_any_content_and_only_the_tenants(settings):
    ids = ["tr-plain", "tr,with,commas", "tr\x1funit-separator", "tr'quote\\back\nline", "ü-ñ"]
    sink = ClickHouseSink(settings)
    try:
        sink.migrate()
        rows = [[tenant, tid, 1_700_000_000_000 + i, 1.5, 3, "success", "r1", 2, 40 + i]
                for tenant in ("acme", "globex") for i, tid in enumerate(ids)]
        sink.client.insert(f"{settings.clickhouse_database}.trace_ids", [
            [r[0], r[1], datetime.fromtimestamp(r[2] / 1000, tz=UTC), *r[3:]] for r in rows],
            column_names=["tenant_id", "trace_id", "event_time", "latency_ms", "output_tokens", "outcome",
                          "release_id", "source_partition", "source_offset"])
        q = sink.for_tenant("acme")
        plain = [i for i in ids if "\x1f" not in i]
        for asked in (plain, ids):  # the joined form, and the general one (an id with the separator)
            found = q.stored_traces([*asked, "tr-unknown"])
            assert sorted(r[0] for r in found) == sorted(asked)
            assert {(r[1], r[4], r[6]) for r in found} <= {(1_700_000_000_000 + i, "success", 2) for i in range(5)}
            # the worker's one lookup per batch: both tenants store every id, each gets only what it asked
            split = {"acme": asked[:2], "globex": [*asked[2:], "tr-unknown"], "initech": ["tr-plain"]}
            by_tenant = stored_traces_by_tenant(sink, split)
            assert {t: sorted(r[0] for r in rows) for t, rows in by_tenant.items()} == {
                "acme": sorted(asked[:2]), "globex": sorted(asked[2:])}
            assert sorted(by_tenant["acme"]) == sorted(r for r in q.stored_traces(asked) if r[0] in asked[:2])
        with pytest.raises(TenantScopeError):
            stored_traces_by_tenant(sink, {"Not A Tenant": ["tr-plain"]})
    finally:
        sink.close()
