"""The agents: one batch skeleton (:class:`BatchLoop`) for both source topics, two steps.

Every batch, for traces and feedback alike::

    batch ─► order (sequencer) ─► step (pipeline, sink write) ─► emit (incidents, dead letters,
    verdicts) ─► checkpoint (once per checkpoint interval: flush state ─► changelog ack wait ─►
    mark processed) ─► ack

The steps differ only in what they compute and write: :class:`TraceStep` (``Pipeline.on_traces``,
traces to ClickHouse) and :class:`FeedbackStep` (decode, wait for the traces the feedback refers
to (:mod:`streams.worker.join_wait`), ``Pipeline.on_feedback``, feedback rows to ClickHouse).
An exception inside a batch exits the process without acknowledging it, or, after a stop signal,
leaves it uncommitted and exits 0 (:class:`~streams.worker.delivery.Shutdown`); either way the
batch is redelivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from streams.config import Settings
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.worker.delivery import AgentDelivery, ChangelogAcks, Shutdown, StateCheckpoint
from streams.worker.faust_fixes import ProcessedOffsets
from streams.worker.join_wait import JoinWait, Position
from streams.worker.outputs import Outputs

log = logging.getLogger("selfheal.worker")


def raw_messages(events: list[Any]) -> list[RawMessage]:
    """The pipeline's view of faust events (timestamp s → ms)."""
    return [RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value,
                       int((e.message.timestamp or 0) * 1000)) for e in events]


@dataclass
class StepOutput:
    """What a step leaves for the skeleton to emit, and how many records it wrote (stats)."""

    incidents: list[Any]
    dead_letters: list[Any]
    verdicts: list[Any]
    written: int = 0


class Step(Protocol):
    """One source topic's processing of a batch, between ordering and emitting."""

    #: names the batch in log lines (``"trace batch"``)
    what: str

    async def __call__(self, messages: list[RawMessage]) -> StepOutput:
        """Compute and write the batch's rows; returns what to emit."""
        ...


class TraceStep:
    """Traces: the pipeline's detection chain, then the trace rows to ClickHouse."""

    what = "trace batch"

    def __init__(self, pipeline: Pipeline, outputs: Outputs) -> None:
        self.pipeline = pipeline
        self.outputs = outputs

    async def __call__(self, messages: list[RawMessage]) -> StepOutput:
        """Run ``Pipeline.on_traces``; write the valid traces. ``written``: traces written."""
        out = self.pipeline.on_traces(messages)
        await self.outputs.ready()
        if out.cols is not None:
            await self.outputs.write_traces(out.cols, out.attributes)
        return StepOutput(out.incidents, out.dead_letters, out.verdicts, out.cols.n if out.cols is not None else 0)


class FeedbackStep:
    """Feedback: decode, wait for the traces it refers to, join and aggregate, write the rows.

    Args:
        pipeline: the worker's pipeline.
        outputs: the sink (feedback rows, submissions, pattern refresh queue).
        grace_s: ``Settings.feedback_grace_s`` (s, see :class:`~streams.worker.join_wait.JoinWait`).
        trace_position: trace partition → (next offset of the trace agent, high watermark).
        stopping: true once a stop signal came (a waiting batch is then given up).
        clock: monotonic seconds.
    """

    what = "feedback batch"

    def __init__(self, pipeline: Pipeline, outputs: Outputs, grace_s: float,
                 trace_position: Callable[[int], Position], stopping: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.outputs = outputs
        self.grace_s = grace_s
        self.trace_position = trace_position
        self.stopping = stopping
        self.clock = clock

    async def __call__(self, messages: list[RawMessage]) -> StepOutput:
        """Decode, :meth:`JoinWait.run`, ``Pipeline.on_feedback``; write rows and submissions and
        queue their patterns' refresh. ``written``: feedback rows written.

        Raises:
            Abandoned: stopped while waiting for traces or for the sink.
        """
        pipe = self.pipeline
        await self.outputs.ready()
        decoded = pipe.decode_feedback(messages)
        wait = JoinWait(self.grace_s, self.trace_position, clock=self.clock)
        refs = await wait.run(pipe.feedback.resolve, decoded.records, decoded.partitions, self.stopping)
        out = pipe.on_feedback(messages, decoded, refs)
        if out.rows or out.submissions:
            await self.outputs.write_feedback(out.rows, out.submissions)
        self.outputs.add_patterns(out.patterns)  # refreshed on a timer (Outputs.refresh_patterns)
        return StepOutput(out.incidents, out.dead_letters, out.verdicts, len(out.rows))


class Assignment:
    """The trace partitions this worker owns, applied to the pipeline (it loads their state).

    Args:
        app: the faust app (``assignor.assigned_actives()``), or a fake.
        topic: full name of the trace topic.
        pipeline: told about every change (``Pipeline.on_assigned``).
    """

    def __init__(self, app: Any, topic: str, pipeline: Pipeline) -> None:
        self.app = app
        self.topic = topic
        self.pipeline = pipeline
        self.partitions: frozenset[int] = frozenset()

    def check(self) -> None:
        """Apply the current assignment if it changed (logs ``owning partitions [...]``).

        Raises:
            Exception: whatever ``Pipeline.on_assigned`` raises; the next check retries.
        """
        assigned = frozenset(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.topic)
        if assigned != self.partitions:
            self.pipeline.on_assigned(set(assigned))
            self.partitions = assigned  # only once applied: a failure is retried
            log.info("owning partitions %s", sorted(assigned))


class BatchLoop:
    """One agent's loop over its batches (see the module docstring); run it as the faust agent's
    body: ``await loop.run(stream)``.

    Args:
        settings: batch size and wait (``take_max_messages``, ``take_within_s``), and
            ``changelog_ack_timeout_s``.
        delivery: the agent's ordering and busy state.
        step: the topic's processing.
        pipeline: its ``flush_state`` and redactor (dead letters are redacted when emitted).
        outputs: emits incidents, dead letters and verdicts.
        acks: the changelog sends to wait for before marking the batch processed.
        processed: the commit offsets, marked after the waits.
        assignment: applied before each batch.
        shutdown: abandon (after a stop signal) or crash on a failed batch.
        checkpoint: flushes state and marks batches processed (shared by the agents); default: a
            checkpoint after every batch.
    """

    def __init__(self, settings: Settings, delivery: AgentDelivery, step: Step, *, pipeline: Pipeline,
                 outputs: Outputs, acks: ChangelogAcks, processed: ProcessedOffsets, assignment: Assignment,
                 shutdown: Shutdown, checkpoint: StateCheckpoint | None = None) -> None:
        self.settings = settings
        self.delivery = delivery
        self.step = step
        self.pipeline = pipeline
        self.outputs = outputs
        self.acks = acks
        self.processed = processed
        self.assignment = assignment
        self.shutdown = shutdown
        self.checkpoint = checkpoint or StateCheckpoint(pipeline.flush_state, acks, processed, 0.0,
                                                        settings.changelog_ack_timeout_s)
        #: records written by batches marked processed (their offsets are committed after)
        self.written = 0

    async def run(self, stream: Any) -> None:
        """Process ``stream`` (a faust stream of the agent's topic) until the agent stops."""
        s = self.settings
        delivery = self.delivery
        async for batch in stream.noack_take(s.take_max_messages, within=s.take_within_s):
            delivery.busy = True
            try:
                self.assignment.check()
                events, ack_after = await delivery.order(batch)
                out = await self.step(raw_messages(events))
                await self.outputs.emit(out.incidents, out.dead_letters, out.verdicts, self.pipeline.redactor.redact)
                await self.checkpoint.done(events)  # state flushed and acknowledged before the mark
                self.written += out.written
            except asyncio.CancelledError:
                raise  # shutting down: the batch stays unacknowledged and is redelivered
            except BaseException:
                if self.shutdown.stopping:
                    await self.shutdown.abandon(self.step.what)
                self.shutdown.crash(self.step.what)
            for e in events + ack_after:  # duplicates only after the originals are done
                await stream.ack(e)
            delivery.busy = False
