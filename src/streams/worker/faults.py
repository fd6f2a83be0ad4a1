"""TEST HOOKS: fault injection for ``selfheal chaos`` and tests/integration/test_faults.py.

Never set in production. Read from ``SELFHEAL_FAULT_*`` environment variables by their own
settings class (:class:`FaultSettings`), not the product ``Settings``, and installed only when one
is set (:func:`install`):

- ``SELFHEAL_FAULT_SINK_FAIL_WRITES=N``: the worker's first N ClickHouse writes fail;
- ``SELFHEAL_FAULT_SINK_FAIL_FILE=path``: every ClickHouse write of the worker fails while the
  file exists (a ClickHouse outage);
- ``SELFHEAL_FAULT_CHANGELOG_HOLD_FILE=path``: while the file exists, the worker's changelog
  messages wait in faust's producer buffer before reaching the Kafka client, as they do when the
  client waits for a partition leader after a broker restart (a stalled changelog producer);
- ``SELFHEAL_FAULT_DROP_RECOVERY_RECORDS=N``: the first N changelog records the consumer
  delivers during a table recovery are lost before reaching it (the scale-out stall of
  docs/reliability.md; the recovery watchdog must fetch them again);
- ``SELFHEAL_FAULT_POISON_TRACE_ID=id``: a trace batch holding a trace with this id raises
  ``RuntimeError`` in the detection chain (``Pipeline.process_columns``), every time: a poison
  record (:mod:`streams.worker.quarantine`).

A sink write fails with ``ConnectionError`` before reaching ClickHouse, exactly like a refused
connection, inside the sink's own retry loop (the injected client replaces the sink's client
once its migrations are applied; migrations were never failed by these hooks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.pipeline import Pipeline
from streams.sinks.clickhouse import ClickHouseSink
from streams.worker import faust_fixes


class FaultSettings(BaseSettings):
    """The fault-injection hooks (environment ``SELFHEAL_FAULT_<FIELD>``, see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="SELFHEAL_FAULT_", extra="ignore")

    sink_fail_writes: int = Field(0, ge=0, description="TEST HOOK: the worker's first N ClickHouse writes fail")
    sink_fail_file: Path | None = Field(None, description=(
        "TEST HOOK: while this file exists, every ClickHouse write of the worker fails"))
    changelog_hold_file: Path | None = Field(None, description=(
        "TEST HOOK: while this file exists, the worker's changelog messages wait in faust's producer "
        "buffer (a stalled changelog producer, as after a broker restart)"))

    drop_recovery_records: int = Field(0, ge=0, description=(
        "TEST HOOK: the first N changelog records delivered during a table recovery are lost before it"))

    poison_trace_id: str | None = Field(None, description=(
        "TEST HOOK: a trace batch holding a trace with this id raises inside the detection chain"))

    @property
    def sink_faults(self) -> bool:
        """A sink fault is set."""
        return self.sink_fail_writes > 0 or self.sink_fail_file is not None


class FailingClient:
    """A ClickHouse client whose writes (``insert_arrow``, ``insert``, ``command``) raise
    ``ConnectionError`` while a fault is injected; reads and everything else reach ``client``.

    Args:
        client: the sink's clickhouse-connect client.
        fail_writes: fail this many writes first.
        fail_file: fail every write while this file exists.
    """

    WRITES = frozenset({"insert_arrow", "insert", "command"})

    def __init__(self, client: Any, fail_writes: int = 0, fail_file: Path | None = None) -> None:
        self.client = client
        self.fail_writes = fail_writes
        self.fail_file = fail_file

    def fault(self, what: str) -> None:
        """Raise like a refused connection if a fault is injected now (consumes one ``fail_writes``)."""
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise ConnectionError(f"injected write failure on {what} (SELFHEAL_FAULT_SINK_FAIL_WRITES)")
        if self.fail_file is not None and self.fail_file.exists():
            raise ConnectionError(f"injected write failure on {what} ({self.fail_file} exists)")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if name not in self.WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            self.fault(f"{args[0]}" if name != "command" and args else name)  # the table of an insert
            return attr(*args, **kwargs)

        return write


def install(faults: FaultSettings) -> Callable[[ClickHouseSink], ClickHouseSink]:
    """Install the hooks ``faults`` sets: the changelog hold and the recovery drop at once (call before the app starts);
    returns the function that prepares the sink (after its migrations; identity without a sink
    fault)."""
    if faults.drop_recovery_records:
        faust_fixes.drop_recovery_records(faults.drop_recovery_records)
    hold = faults.changelog_hold_file
    if hold is not None:

        async def while_held() -> None:
            while hold.exists():
                await asyncio.sleep(0.05)

        faust_fixes.delay_changelog_sends(while_held)
    if not faults.sink_faults:
        return lambda sink: sink

    def prepare(sink: ClickHouseSink) -> ClickHouseSink:
        sink.client = FailingClient(sink.client, faults.sink_fail_writes, faults.sink_fail_file)
        return sink

    return prepare


class PoisonError(RuntimeError):
    """Raised by the poison hook (``SELFHEAL_FAULT_POISON_TRACE_ID``)."""


def poison(pipeline: Pipeline, faults: FaultSettings) -> None:
    """Make ``pipeline``'s detection chain raise :class:`PoisonError` on every batch that holds the
    trace ``faults.poison_trace_id`` (no-op when unset)."""
    trace_id = faults.poison_trace_id
    if trace_id is None:
        return
    inner = pipeline.process_columns

    def process_columns(cols: Any) -> Any:
        if trace_id in cols.trace_id:
            raise PoisonError(f"injected processing failure on trace {trace_id} (SELFHEAL_FAULT_POISON_TRACE_ID)")
        return inner(cols)

    pipeline.process_columns = process_columns
