"""The agents: one batch skeleton (:class:`BatchLoop`) for both source topics, two steps.

Every batch, for traces and feedback alike::

    batch ─► order (sequencer) ─► step (pipeline, sink write) ─► emit (incidents, dead letters,
    verdicts) ─► checkpoint (once per checkpoint interval: flush state ─► changelog ack wait ─►
    mark processed) ─► ack

The steps differ only in what they compute and write: :class:`TraceStep` (``Pipeline.on_traces``,
traces to ClickHouse), :class:`FeedbackStep` (decode, wait for the traces the feedback refers
to (:mod:`streams.worker.join_wait`), ``Pipeline.on_feedback``, feedback rows to ClickHouse) and
:class:`ActionStep` (incident actions: wait likewise for the incidents they name,
``Pipeline.on_actions``, ledger rows to ClickHouse).
An exception inside a batch exits the process without acknowledging it, or, after a stop signal,
leaves it uncommitted and exits 0 (:class:`~streams.worker.delivery.Shutdown`); either way the
batch is redelivered. An error of the pipeline's computation is first recorded for its
partitions, so that a message failing again and again is quarantined instead of stopping them
(:mod:`streams.worker.quarantine`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.config import Settings
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.signing import header_map
from streams.telemetry import WorkerTelemetry
from streams.worker.delivery import AgentDelivery, ChangelogAcks, Shutdown, StateCheckpoint
from streams.worker.faust_fixes import ProcessedOffsets
from streams.worker.join_wait import JoinWait, Position
from streams.worker.outputs import Outputs
from streams.worker.quarantine import Quarantine, is_processing_error, processing

log = logging.getLogger("selfheal.worker")


def raw_messages(events: list[Any]) -> list[RawMessage]:
    """The pipeline's view of faust events (timestamp s → ms; headers by name, for signatures)."""
    return [RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value,
                       int((e.message.timestamp or 0) * 1000), header_map(getattr(e.message, "headers", None)))
            for e in events]


@dataclass
class StepOutput:
    """What a step leaves for the skeleton to emit, and how many records it wrote (stats)."""

    incidents: list[Any]
    dead_letters: list[Any]
    verdicts: list[Any]
    written: int = 0
    #: platform signals to publish (``Pipeline.take_signals``, taken right after the batch's pipeline call)
    signals: list[Any] = field(default_factory=list)


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
        """Decode, look up in ClickHouse the trace ids the in-memory index does not hold (the
        duplicate check survives restarts, rebalances and evictions), run ``Pipeline.on_traces``;
        write the valid traces. ``written``: traces written."""
        pipe = self.pipeline
        await self.outputs.ready()
        with processing():
            decoded = pipe.decode_traces(messages)
            unindexed = pipe.unindexed_trace_ids(decoded)
        stored = await self.outputs.stored_traces(unindexed)
        with processing():
            out = pipe.on_traces(messages, decoded=decoded, stored=stored)
            signals = pipe.take_signals()
        if out.cols is not None:
            await self.outputs.write_traces(out.cols, out.attributes, out.batch_seq)
        return StepOutput(out.incidents, out.dead_letters, out.verdicts, out.cols.n if out.cols is not None else 0,
                          signals)


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
        with processing():
            decoded = pipe.decode_feedback(messages)
        wait = JoinWait(self.grace_s, self.trace_position, clock=self.clock)
        refs = await wait.run(pipe.feedback.resolve, decoded.records, decoded.partitions, self.stopping)
        with processing():
            out = pipe.on_feedback(messages, decoded, refs)
            signals = pipe.take_signals()
        if out.rows or out.submissions:
            await self.outputs.write_feedback(out.rows, out.submissions)
        self.outputs.add_patterns(out.patterns)  # refreshed on a timer (Outputs.refresh_patterns)
        return StepOutput(out.incidents, out.dead_letters, out.verdicts, len(out.rows), signals)


class SignalStep:
    """Platform signals (only the worker owning the signals partition gets any): the platform-wide
    detector (``Pipeline.on_signals``); its incidents are emitted like every other."""

    what = "platform signal batch"

    def __init__(self, pipeline: Pipeline, outputs: Outputs) -> None:
        self.pipeline = pipeline
        self.outputs = outputs

    async def __call__(self, messages: list[RawMessage]) -> StepOutput:
        """Run ``Pipeline.on_signals``. ``written``: 0 (nothing goes to ClickHouse but incidents)."""
        await self.outputs.ready()
        with processing():
            out = self.pipeline.on_signals(messages)
        return StepOutput(out.incidents, out.dead_letters, [])


class ActionStep:
    """Incident actions: wait until the incidents they name can be known, apply them, write the
    ledger rows.

    An action names an incident a trace (or feedback) batch opened; after a restart the action
    agent may be ahead of the trace agent that re-creates that incident from its changelog and
    replay. So an action whose incident is not known yet waits, as feedback waits for its trace
    (:class:`~streams.worker.join_wait.JoinWait`), until the trace agent has read the tenant's
    partition up to where the consumer stood when the wait began; only then is the incident
    unknown (a dead letter ``unknown_incident``).

    Args:
        pipeline: the worker's pipeline (``on_actions``, ``incidents.knows``).
        outputs: the sink (``incident_actions`` rows).
        trace_position: trace partition → (next offset of the trace agent, high watermark).
        stopping: true once a stop signal came (a waiting batch is then given up and redelivered).
    """

    what = "action batch"

    def __init__(self, pipeline: Pipeline, outputs: Outputs, trace_position: Callable[[int], Position],
                 stopping: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.outputs = outputs
        self.trace_position = trace_position
        self.stopping = stopping
        self.clock = clock

    async def __call__(self, messages: list[RawMessage]) -> StepOutput:
        """Wait for the named incidents (bounded by the trace agent's progress), run
        ``Pipeline.on_actions``, write its ledger rows. ``written``: actions applied.

        Raises:
            Abandoned: stopped while waiting.
        """
        pipe = self.pipeline
        await self.outputs.ready()
        with processing():
            decoded = pipe.action_ingest.decode(messages)

        def resolve(records: list[dict[str, Any]], _partitions: list[int]) -> tuple[list[Any], list[int]]:
            known = pipe.incidents.knows
            return [True if known(r["tenant_id"], r["incident_id"]) else None for r in records], []

        await JoinWait(0.0, self.trace_position, clock=self.clock).run(
            resolve, decoded.records, decoded.partitions, self.stopping)
        with processing():
            out = pipe.on_actions(messages)
        if out.rows:
            await self.outputs.write_actions(out.rows)
        return StepOutput(out.incidents, out.dead_letters, [], len(out.rows))


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
        telemetry: counts each batch and times its state checkpoint wait (flush and changelog
            acknowledgements, when one runs; the worker's; ``None``: not measured).
        quarantine: failure records of poison messages (:mod:`streams.worker.quarantine`); with
            ``None`` every failed batch just crashes (tests of the skeleton).
        checkpoint: flushes state and marks batches processed (shared by the agents); default: a
            checkpoint after every batch.
    """

    def __init__(self, settings: Settings, delivery: AgentDelivery, step: Step, *, pipeline: Pipeline,
                 outputs: Outputs, acks: ChangelogAcks, processed: ProcessedOffsets, assignment: Assignment,
                 shutdown: Shutdown, telemetry: WorkerTelemetry | None = None,
                 quarantine: Quarantine | None = None, checkpoint: StateCheckpoint | None = None) -> None:
        self.telemetry = telemetry
        self.settings = settings
        self.delivery = delivery
        self.step = step
        self.pipeline = pipeline
        self.outputs = outputs
        self.acks = acks
        self.processed = processed
        self.assignment = assignment
        self.shutdown = shutdown
        self.quarantine = quarantine
        self.checkpoint = checkpoint or StateCheckpoint(pipeline.flush_state, acks, processed, 0.0,
                                                        settings.changelog_ack_timeout_s)
        #: records written by batches marked processed (their offsets are committed after)
        self.written = 0
        #: messages quarantined as poison (``processing_error`` dead letters)
        self.quarantined = 0

    async def run(self, stream: Any) -> None:
        """Process ``stream`` (a faust stream of the agent's topic) until the agent stops.

        A batch touching a partition's recorded failure is processed one message at a time, and a
        condemned message is quarantined (:mod:`streams.worker.quarantine`); a processing error
        is recorded there before the worker exits."""
        s = self.settings
        delivery = self.delivery
        async for batch in stream.noack_take(s.take_max_messages, within=s.take_within_s):
            delivery.busy = True
            events: list[Any] = []
            ack_after: list[Any] = []
            current: list[Any] = []
            try:
                self.assignment.check()
                events, ack_after = await delivery.order(batch)
                raws = raw_messages(events)
                if self.quarantine is not None and self.quarantine.careful(raws):
                    for e, raw in zip(events, raws, strict=True):
                        current = [e]
                        await self.process(current, [raw])
                else:
                    current = events
                    await self.process(events, raws)
            except asyncio.CancelledError:
                raise  # shutting down: the batch stays unacknowledged and is redelivered
            except BaseException as exc:
                if self.shutdown.stopping:
                    await self.shutdown.abandon(self.step.what)
                await self.record_failure(current, exc)
                self.shutdown.crash(self.step.what)
            for e in events + ack_after:  # duplicates only after the originals are done
                await stream.ack(e)
            delivery.busy = False

    async def process(self, events: list[Any], raws: list[RawMessage]) -> None:
        """One unit of work: step (or the quarantine of a condemned message), emit, record it as
        passed in the quarantine, hand it to the state checkpoint (which flushes state, waits for
        the changelog acknowledgements and marks processed, now or within its interval)."""
        condemned = self.quarantine.verdict(raws[0]) if self.quarantine is not None and len(raws) == 1 else None
        if condemned is not None:
            out = StepOutput([], [self.quarantine.dead_letter(raws[0], condemned)], [])
            self.quarantined += 1
        else:
            out = await self.step(raws)
        await self.outputs.emit(out.incidents, out.dead_letters, out.verdicts, self.pipeline.redactor.redact,
                                out.signals)
        if self.quarantine is not None:
            self.quarantine.passed(raws)
        t = self.telemetry
        with t.changelog_ack_wait(self.delivery.name) if t is not None else nullcontext():
            await self.checkpoint.done(events)  # state flushed and acknowledged before the mark
        self.written += out.written
        if t is not None:
            t.on_batch(self.delivery.name, len(events), out.dead_letters, out.incidents, out.verdicts)

    async def record_failure(self, events: list[Any], exc: BaseException) -> None:
        """Before a crash: record a processing error of ``events`` in the quarantine table and
        wait (at most 30 s) for the broker to acknowledge it; infrastructure errors are not
        recorded (see :func:`~streams.worker.quarantine.is_processing_error`)."""
        if self.quarantine is None or not events or not is_processing_error(exc):
            return
        try:
            self.quarantine.failed(raw_messages(events), exc)
            await self.acks.wait(min(30.0, self.settings.changelog_ack_timeout_s))
            log.warning("processing error recorded for %d message(s) (%s)", len(events), exc)
        except Exception:
            log.warning("could not record the processing error for quarantine", exc_info=True)
