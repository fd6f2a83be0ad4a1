"""The trace a feedback item refers to: :class:`TraceRef`, and the index of recent ones.

Trace join: a feedback item needs its trace's slice (cohort, workflow, release). The
:class:`TraceIndex` keeps recent traces of this worker's partitions (bounded FIFO); older ones
are looked up in ClickHouse. Feedback always follows its trace, so while the partition's trace
watermark (latest event time seen) is behind the feedback's event time, the item waits; once the
watermark passes (plus ``allowed_lateness_ms``) and the trace is still unknown, it is dead-lettered
as ``unknown_trace``.

A trace reference is built in exactly two ways, both here: from a batch of validated traces
(:meth:`TraceRef.from_columns`, the pipeline) and from a stored row whose columns are named by
:data:`TRACE_REF_COLUMNS` (:meth:`TraceRef.from_row`; the sink generates its ``trace_refs``
SELECT from the same names, ``streams.sinks.clickhouse``), so a field added to the reference
cannot be filled from the wrong column.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from streams.processors.columns import ARM_CODES, TraceColumns

#: the columns of a stored trace reference row, in order: what ``ClickHouseSink.trace_refs``
#: selects (an SQL expression per name) and :meth:`TraceRef.from_row` reads
TRACE_REF_COLUMNS = ("trace_id", "cohort", "workflow", "release_id", "partition", "session_id", "event_time_ms",
                     "tool", "rollout_arm", "candidate_release_id", "stage_pct", "offset")


class TraceRef(NamedTuple):
    """What feedback needs from its trace (a tuple: one is kept per recent trace, built per batch)."""

    tenant_id: str
    cohort: str
    workflow: str
    release_id: str
    partition: int
    session_id: str = ""
    #: content fingerprint of the trace (duplicate detection of redelivered traces; 0 when loaded
    #: from the store, which only holds traces already deduplicated)
    fingerprint: int = 0
    event_time_ms: int = 0
    tool: str = ""  # first tool call of the trace that did not return ok ("" if none)
    #: rollout of the trace: arm (``columns.ARM_CODES``, -1 = none), candidate release, stage %
    rollout_arm: int = -1
    candidate_release_id: str = ""
    stage_pct: float = 0.0
    #: source offset of a trace loaded from the store (-1: built from a batch of this process,
    #: so already counted here). After a restart a stored trace may not be counted in the
    #: restored state yet: the worker's join waits until the trace agent has passed this offset
    #: (:mod:`streams.worker.join_wait`)
    offset: int = -1

    @classmethod
    def from_columns(cls, cols: TraceColumns, fingerprints: Sequence[int]) -> list[TraceRef]:
        """The reference of every trace of a batch, in batch order.

        Args:
            cols: validated traces (session id and tool calls from ``detail``, else from ``records``).
            fingerprints: content fingerprint of each trace, shape ``(n,)``.
        """
        failed = np.flatnonzero(cols.tool_failure).tolist()
        records = cols.records
        if cols.detail is not None:  # the decode pass's columns
            session_ids: list[str] = cols.detail.session_id
            tools = [""] * cols.n
            for i, name in cols.detail.first_failed_tool(failed).items():
                tools[i] = name
        else:
            session_ids = [r["session_id"] for r in records]
            failed_set = set(failed)
            tools = [next(t["name"] for t in r["tool_calls"] if t["status"] != "ok") if i in failed_set else ""
                     for i, r in enumerate(records)]
        columns: dict[str, Iterable[Any]] = {
            "tenant_id": cols.tenant_id, "cohort": cols.cohort, "workflow": cols.workflow,
            "release_id": cols.release_id, "partition": cols.partition.tolist(),
            "session_id": session_ids, "fingerprint": fingerprints,
            "event_time_ms": cols.event_time_ms.tolist(),
            "tool": tools,
            "rollout_arm": cols.rollout_arm.tolist(),
            "candidate_release_id": [c or "" for c in cols.candidate_release_id],
            "stage_pct": np.nan_to_num(cols.stage_pct, nan=0.0).tolist(),
            "offset": itertools.repeat(-1),  # counted by this process
        }
        return list(map(cls, *(columns[name] for name in cls._fields)))

    @classmethod
    def from_row(cls, tenant_id: str, row: Sequence[Any]) -> TraceRef:
        """The reference of a stored trace from a row in :data:`TRACE_REF_COLUMNS` order
        (``rollout_arm`` as its contract symbol, ``""`` outside a rollout).

        Raises:
            ValueError: the row does not have one value per column.
        """
        r = dict(zip(TRACE_REF_COLUMNS, row, strict=True))
        return cls(tenant_id=tenant_id, cohort=r["cohort"], workflow=r["workflow"], release_id=r["release_id"],
                   partition=int(r["partition"]), session_id=r["session_id"], event_time_ms=int(r["event_time_ms"]),
                   tool=r["tool"], rollout_arm=ARM_CODES.get(r["rollout_arm"], -1),
                   candidate_release_id=r["candidate_release_id"], stage_pct=float(r["stage_pct"]),
                   offset=int(r["offset"]))

    @classmethod
    def by_trace_id(cls, tenant_id: str, rows: Iterable[Sequence[Any]]) -> dict[str, TraceRef]:
        """``{trace_id: reference}`` of stored rows (:meth:`from_row`) of one tenant."""
        at = TRACE_REF_COLUMNS.index("trace_id")
        return {row[at]: cls.from_row(tenant_id, row) for row in rows}


class TraceIndex:
    """Recent traces by id (bounded, oldest evicted first) and the trace watermark per partition.

    Args:
        capacity: traces kept (about 250 bytes each).
    """

    def __init__(self, capacity: int = 500_000) -> None:
        self.capacity = capacity
        self.refs: dict[str, TraceRef] = {}
        self.watermark_ms: dict[int, int] = {}

    def add_many(self, trace_ids: list[str], refs: list[TraceRef], max_event_ms: dict[int, int]) -> None:
        """Add traces (parallel lists) and advance the per-partition watermarks (partition ->
        latest event time of the batch, ms)."""
        self.refs.update(zip(trace_ids, refs, strict=True))
        over = len(self.refs) - self.capacity
        if over > 0:
            for k in list(self._oldest(over)):
                del self.refs[k]
        for p, t in max_event_ms.items():
            if t > self.watermark_ms.get(p, -1):
                self.watermark_ms[p] = t

    def _oldest(self, n: int) -> Iterable[str]:
        it = iter(self.refs)
        for _ in range(n):
            yield next(it)

    def get(self, trace_id: str) -> TraceRef | None:
        """The trace's ref, if it is still in memory."""
        return self.refs.get(trace_id)
