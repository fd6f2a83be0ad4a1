"""Poison records: a message whose processing keeps failing at the same offset is quarantined to the
dead-letter topic and its partition moves on (issue 18).

The worker is crash-only: an exception inside a batch exits the process without acknowledging,
and the restarted worker gets the batch again (in-memory state that a half-processed batch may
have touched is rebuilt from the changelogs). A record that raises every time would stop its
partition, and with it the worker's other partitions, in a restart loop. Kafka Streams answers
this with its deserialization, production and processing exception handlers (KIP-161, KIP-210,
KIP-1033: log, skip, continue); selfheal skips only after the failure has been seen again with
the suspect message alone, so one transient error never dead-letters a good record:

1. A batch fails with a processing error: an exception raised while the pipeline computes
   (decode, validation, dedup, detectors, incidents, feedback aggregation; the steps wrap those
   calls in :func:`processing`), not one of the sink, the broker, the changelog or a shutdown,
   and not an :data:`INFRASTRUCTURE` error raised inside the computation. For every partition
   in it the worker records the failed offset range and the error in the ``quarantine`` changelog table
   (the record follows the partition to whichever worker owns it next), waits for the broker's
   acknowledgement, and exits (code 70).
2. The restarted worker processes batches that touch a recorded range one message at a time
   (:meth:`Quarantine.careful`). When a message fails alone, its offset's attempt count grows.
3. A message whose count reached ``poison_max_attempts`` is not processed again: it becomes a
   ``processing_error`` dead letter (field ``(processing)``, value the exception class, message
   the exception text and the attempts; payload the original message) and is acknowledged.
   A partition's record is dropped once the worker has passed its range.

So a poison message costs ``1 + poison_max_attempts`` restarts at most (3 by default), after
which its partition, and every partition behind the worker, moves on. Counted in the stats line
(``quarantined``) and logged (``quarantined ... after N attempts``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from faust.exceptions import FaustError

from schemas import DeadLetter
from streams.errors import ChangelogError, DeliveryError, ProcessingError, SinkError
from streams.processors.columns import RawMessage
from streams.processors.ingest import make_dead_letter
from streams.state import StateBackend
from streams.worker.delivery import Abandoned

log = logging.getLogger("selfheal.worker")

#: errors of the infrastructure, not of a record: the batch is retried by a restart, never quarantined
INFRASTRUCTURE: tuple[type[BaseException], ...] = (SinkError, ChangelogError, DeliveryError, Abandoned, OSError,
                                                   TimeoutError, asyncio.TimeoutError, KafkaError, FaustError)


@contextmanager
def processing() -> Iterator[None]:
    """Wrap a pipeline computation: an exception it raises becomes :class:`ProcessingError`
    (its cause kept), the only kind of failure that counts towards quarantine.

    Raises:
        ProcessingError: the computation raised an ``Exception``.
    """
    try:
        yield
    except Exception as exc:
        raise ProcessingError(f"{type(exc).__name__}: {exc}") from exc


def is_processing_error(exc: BaseException) -> bool:
    """``exc`` was raised by computing a record's results (:func:`processing`; counts towards
    quarantine), not by the sink, the broker, the changelog or a shutdown."""
    return isinstance(exc, ProcessingError) and not isinstance(exc.__cause__, INFRASTRUCTURE)


def cause(exc: BaseException) -> BaseException:
    """The exception a :class:`ProcessingError` wraps (``exc`` itself otherwise)."""
    return exc.__cause__ if isinstance(exc, ProcessingError) and exc.__cause__ is not None else exc


@dataclass
class FailureRecord:
    """One partition's failure record (JSON in the ``quarantine`` table).

    Attributes:
        to: last offset of the failed range (inclusive): up to it, messages go one at a time.
        offset: the offset that failed alone (``-1``: none yet).
        attempts: times ``offset`` failed alone.
        error: ``"<exception class>: <message>"`` of the latest failure.
        error_class: the exception class name.
    """

    to: int
    offset: int = -1
    attempts: int = 0
    error: str = ""
    error_class: str = ""

    def to_bytes(self) -> bytes:
        """JSON encoding of the record."""
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> FailureRecord:
        """Decode :meth:`to_bytes` output."""
        return cls(**json.loads(raw))


class Quarantine:
    """The failure records of the source topics' partitions, in a state backend (the
    ``quarantine`` changelog table in the worker, shared by both agents; an empty value is a
    cleared record).

    Args:
        state: the backend (keys ``<topic>|<partition>``, written to the partition's changelog).
        max_attempts: ``Settings.poison_max_attempts`` (failures alone before quarantine, >= 1).
    """

    def __init__(self, state: StateBackend, max_attempts: int) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.state = state
        self.max_attempts = max_attempts

    @staticmethod
    def _key(topic: str, partition: int) -> str:
        return f"{topic}|{partition}"

    def get(self, topic: str, partition: int) -> FailureRecord | None:
        """The partition's record, or ``None``."""
        raw = self.state.get(self._key(topic, partition))
        return FailureRecord.from_bytes(raw) if raw else None

    def careful(self, messages: Sequence[RawMessage]) -> bool:
        """Some message lies in a recorded failed range: process the batch one message at a time."""
        for m in messages:
            rec = self.get(m.topic, m.partition)
            if rec is not None and m.offset <= rec.to:
                return True
        return False

    def verdict(self, message: RawMessage) -> FailureRecord | None:
        """The record that condemns ``message`` (it failed alone ``max_attempts`` times at this
        offset), or ``None`` when it is to be processed."""
        rec = self.get(message.topic, message.partition)
        if rec is not None and rec.offset == message.offset and rec.attempts >= self.max_attempts:
            return rec
        return None

    def failed(self, messages: Sequence[RawMessage], exc: BaseException) -> None:
        """Record that processing ``messages`` raised ``exc`` (one message: an attempt of its
        offset; several: their ranges become suspect)."""
        alone = len(messages) == 1
        by_partition: dict[tuple[str, int], list[int]] = {}
        for m in messages:
            by_partition.setdefault((m.topic, m.partition), []).append(m.offset)
        for (topic, partition), offsets in by_partition.items():
            rec = self.get(topic, partition) or FailureRecord(to=-1)
            rec.to = max(rec.to, max(offsets))
            if alone:
                rec.attempts = rec.attempts + 1 if rec.offset == offsets[0] else 1
                rec.offset = offsets[0]
            err = cause(exc)
            rec.error_class = type(err).__name__
            rec.error = f"{rec.error_class}: {err}"[:1000]
            self.state.put(self._key(topic, partition), rec.to_bytes(), partition)

    def passed(self, messages: Sequence[RawMessage]) -> None:
        """``messages`` are done (processed or quarantined): drop records whose range is passed."""
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            last[(m.topic, m.partition)] = max(last.get((m.topic, m.partition), -1), m.offset)
        for (topic, partition), offset in last.items():
            rec = self.get(topic, partition)
            if rec is not None and offset >= rec.to:
                self.state.put(self._key(topic, partition), b"", partition)

    def dead_letter(self, message: RawMessage, rec: FailureRecord) -> DeadLetter:
        """The ``processing_error`` dead letter of a condemned message (payload: its bytes)."""
        log.warning("quarantined %s[%d]@%d after %d attempts: %s", message.topic, message.partition, message.offset,
                    rec.attempts, rec.error)
        return make_dead_letter(
            message, index=-1, error_class="processing_error", field_path="(processing)", value=rec.error_class,
            message=f"processing failed {rec.attempts} times at {message.topic}[{message.partition}]@{message.offset}"
                    f" ({rec.error}); quarantined so the partition moves on")

