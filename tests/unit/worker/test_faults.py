"""Fault-injection hooks (streams.worker.faults): read from SELFHEAL_FAULT_* on their own, installed
only when set, and failing sink writes like a refused connection inside the sink's retry loop."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.producer import ProducerBuffer

from streams.config import Settings
from streams.errors import SinkError
from streams.sinks.clickhouse import ClickHouseSink
from streams.worker import faults, faust_fixes


class RecordingClient:
    def __init__(self):
        self.calls = []

    def insert_arrow(self, table, data):
        self.calls.append(("insert_arrow", table))

    def command(self, sql, parameters=None):
        self.calls.append(("command", sql))

    def query(self, sql, parameters=None):
        self.calls.append(("query", sql))
        return SimpleNamespace(result_rows=[])


def test_fault_settings_come_from_their_own_env_names_not_the_product_settings(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("SELFHEAL_FAULT_SINK_FAIL_FILE", str(tmp_path / "down"))
    monkeypatch.setenv("SELFHEAL_FAULT_SINK_FAIL_WRITES", "2")
    monkeypatch.setenv("SELFHEAL_FAULT_CHANGELOG_HOLD_FILE", str(tmp_path / "hold"))
    f = faults.FaultSettings()
    assert (f.sink_fail_writes, f.sink_fail_file, f.changelog_hold_file) == (2, tmp_path / "down", tmp_path / "hold")
    assert not any(name.startswith("fault") for name in Settings.model_fields)


def test_nothing_is_installed_without_a_fault(monkeypatch):
    for name in ("SINK_FAIL_FILE", "SINK_FAIL_WRITES", "CHANGELOG_HOLD_FILE", "DROP_RECOVERY_RECORDS"):
        monkeypatch.delenv(f"SELFHEAL_FAULT_{name}", raising=False)
    before = ProducerBuffer._send_pending
    getmany = faust_consumer.Consumer.getmany
    prepare = faults.install(faults.FaultSettings())
    sink = SimpleNamespace(client=RecordingClient())
    client = sink.client
    assert prepare(sink) is sink and sink.client is client
    assert ProducerBuffer._send_pending is before
    assert faust_consumer.Consumer.getmany is getmany  # the drain loop reads faust's own records


def test_the_changelog_hold_is_installed_when_set(tmp_path: Path):
    before = ProducerBuffer._send_pending
    try:
        faults.install(faults.FaultSettings(changelog_hold_file=tmp_path / "hold"))
        assert ProducerBuffer._send_pending is not before
    finally:
        faust_fixes.restore_changelog_sends()
    assert ProducerBuffer._send_pending is before


def test_the_recovery_drop_is_installed_when_set_and_loses_n_changelog_records(monkeypatch):
    """SELFHEAL_FAULT_DROP_RECOVERY_RECORDS=2 wraps ``Consumer.getmany``: the first 2 changelog
    records delivered during a table recovery are lost (their read offset advances), other
    records pass. Before, the drain loop checked a module global for every record, set or not."""
    cl, src = "app-table-changelog", "agent.traces.v1"

    async def fetched(self, timeout):
        for topic, offset in [(src, 0), (cl, 5), (cl, 6), (cl, 7)]:
            yield (topic, 0), SimpleNamespace(topic=topic, partition=0, offset=offset)

    monkeypatch.setattr(faust_fixes, "_ORIGINAL_GETMANY", fetched)
    consumer = SimpleNamespace(app=SimpleNamespace(in_recovery=True, tables=SimpleNamespace(changelog_topics={cl})),
                               _read_offset={})

    async def drain():
        return [(m.topic, m.offset) async for _, m in faust_consumer.Consumer.getmany(consumer, 1.0)]

    before = faust_consumer.Consumer.getmany
    try:
        faults.install(faults.FaultSettings(drop_recovery_records=2))
        assert asyncio.run(drain()) == [(src, 0), (cl, 7)]
        assert consumer._read_offset == {(cl, 0): 6}
        assert asyncio.run(drain()) == [(src, 0), (cl, 5), (cl, 6), (cl, 7)]  # 2 lost, no more
    finally:
        monkeypatch.undo()
        faust_fixes.restore_recovery_records()
    assert faust_consumer.Consumer.getmany is before


def test_the_first_n_writes_fail_and_reads_pass():
    client = faults.FailingClient(RecordingClient(), fail_writes=2)
    client.query("SELECT 1")
    with pytest.raises(ConnectionError, match=r"injected write failure on db\.traces"):
        client.insert_arrow("db.traces", None)
    with pytest.raises(ConnectionError, match="injected write failure on command"):
        client.command("INSERT INTO db.feedback_patterns SELECT 1")
    client.insert_arrow("db.traces", None)
    assert client.client.calls == [("query", "SELECT 1"), ("insert_arrow", "db.traces")]


def test_writes_fail_while_the_file_exists(tmp_path: Path):
    down = tmp_path / "down"
    client = faults.FailingClient(RecordingClient(), fail_file=down)
    client.command("OPTIMIZE TABLE x")
    down.touch()
    with pytest.raises(ConnectionError, match="down exists"):
        client.insert_arrow("db.traces", None)
    down.unlink()
    client.insert_arrow("db.traces", None)
    assert [c[0] for c in client.client.calls] == ["command", "insert_arrow"]


def test_an_injected_failure_goes_through_the_sinks_retry_loop_and_counts(tmp_path: Path):
    sink = ClickHouseSink(Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch"), retry_s=5.0)
    chdb, inner = sink.client, RecordingClient()
    try:
        sink.client = inner
        assert faults.install(faults.FaultSettings(sink_fail_writes=2))(sink) is sink
        assert sink._insert("traces", pa.table({"a": [1]})) == 1  # two failures retried, then written
        assert sink.failed_attempts == 2 and inner.calls == [("insert_arrow", f"{sink.db}.traces")]
        sink.client.fail_file = tmp_path / "down"
        (tmp_path / "down").touch()
        sink.abort()  # ends the retries at once
        with pytest.raises(SinkError, match=r"injected write failure on .*down exists"):
            sink._insert("traces", pa.table({"a": [1]}))
        assert sink.failed_attempts == 3
    finally:
        sink.client = chdb
        sink.close()
