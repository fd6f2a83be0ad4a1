"""ClickHouseSink.close on embedded chDB: it really releases the connection (the one chDB engine a
process hosts can then open another directory), is idempotent, ends a write's retries, and the
sink is listed by ``unclosed_sinks`` exactly while it is open (issue 13: a chDB connection left
open at interpreter exit can crash the process)."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.exceptions import ProgrammingError

from streams.config import Settings
from streams.errors import SinkError
from streams.sinks.clickhouse import ClickHouseSink, unclosed_sinks


def _settings(tmp_path, name: str) -> Settings:
    return Settings(state_dir=tmp_path, clickhouse_path=tmp_path / name, sink_retry_s=30.0)


def test_close_releases_the_connection_once_and_for_all(tmp_path):
    sink = ClickHouseSink(_settings(tmp_path, "a"))
    assert sink.location in unclosed_sinks() and not sink.closed
    sink.migrate()
    sink.close()
    sink.close()  # idempotent
    assert sink.closed and sink.location not in unclosed_sinks()
    with pytest.raises(ProgrammingError, match="closed"):
        sink.query("SELECT 1")
    with pytest.raises(SinkError):  # one attempt, not sink_retry_s of retries on a closed client
        sink.refresh_patterns(None)
    # chDB hosts one engine per process, bound to one directory while any connection is open:
    # another directory opens only because the first connection is really closed
    with ClickHouseSink(_settings(tmp_path, "b")) as other:
        assert other.query("SELECT 1") == [(1,)]
    assert other.closed


def test_a_with_block_closes_the_sink_when_its_body_raises(tmp_path):
    with pytest.raises(ZeroDivisionError), ClickHouseSink(_settings(tmp_path, "a")) as sink:
        sink.query("SELECT 1")
        1 / 0  # noqa: B018
    assert sink.closed and sink.location not in unclosed_sinks()
