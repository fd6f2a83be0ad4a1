"""Poison records (streams.worker.quarantine and the BatchLoop around it): a failed batch makes its
ranges suspect, a suspect message that fails alone max_attempts times is quarantined as a
processing_error dead letter and its partition moves on; infrastructure errors never count."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

from streams.errors import ProcessingError, SinkError
from streams.processors.columns import RawMessage
from streams.state import DictBackend
from streams.worker.agents import BatchLoop, StepOutput
from streams.worker.faust_fixes import ProcessedOffsets
from streams.worker.quarantine import Quarantine, is_processing_error, processing

TOPIC = "t.traces"


def raw(o, p=0):
    return RawMessage(TOPIC, p, o, b"acme", b"v%d" % o)


def failure(exc):
    """``exc`` as the steps raise it from a pipeline computation."""
    try:
        with processing():
            raise exc
    except ProcessingError as wrapped:
        return wrapped


def test_a_message_failing_alone_max_attempts_times_is_condemned():
    q = Quarantine(DictBackend(), max_attempts=2)
    batch = [raw(10), raw(11), raw(12), raw(5, p=1)]
    assert not q.careful(batch)
    q.failed(batch, failure(ValueError("boom")))
    assert q.careful([raw(12)]) and q.careful([raw(5, p=1)]) and not q.careful([raw(13)])
    assert q.verdict(raw(10)) is None  # a batch failure blames no message yet
    q.failed([raw(11)], failure(ValueError("boom")))
    assert q.verdict(raw(11)) is None  # once alone: maybe transient
    q.failed([raw(11)], failure(ValueError("boom 2")))
    rec = q.verdict(raw(11))
    assert rec is not None and (rec.offset, rec.attempts, rec.error_class, rec.to) == (11, 2, "ValueError", 12)
    d = q.dead_letter(raw(11), rec)
    assert (d.error_class, d.field, d.value, d.record_index, d.payload) == (
        "processing_error", "(processing)", "ValueError", -1, b"v11")
    assert "ValueError: boom 2" in d.message and "2 times" in d.message
    q.passed([raw(11), raw(12)])
    assert q.get(TOPIC, 0) is None and q.get(TOPIC, 1) is not None


def test_only_errors_of_the_computation_count():
    assert is_processing_error(failure(KeyError("x"))) and is_processing_error(failure(ZeroDivisionError()))
    assert not is_processing_error(failure(ConnectionError("refused")))  # infrastructure, even inside
    for exc in (KeyError("x"), SinkError("down"), TimeoutError(), asyncio.CancelledError()):  # not wrapped
        assert not is_processing_error(exc)


def ev(o, p=0):
    return SimpleNamespace(message=SimpleNamespace(topic=TOPIC, partition=p, offset=o, key=b"acme", value=b"v%d" % o,
                                                   timestamp=1.0))


class Stream:
    def __init__(self, batches):
        self.batches = batches
        self.acked = []

    async def noack_take(self, n, within):
        for b in self.batches:
            yield b

    async def ack(self, e):
        self.acked.append(e.message.offset)


def run_loop(state, poison_offset, batch, max_attempts=1, error=ValueError):
    """One worker life over ``batch``: returns (exit code or None, steps seen, dead letters emitted)."""
    steps, emitted, codes = [], [], []

    class Delivery:
        busy = False

        async def order(self, events):
            return list(events), []

    class Acks:
        async def wait(self, timeout_s):
            pass

    class Outputs:
        async def emit(self, incidents, dead_letters, verdicts, redact, signals=()):
            emitted.extend(dead_letters)

    async def step(messages):
        steps.append([m.offset for m in messages])
        if any(m.offset == poison_offset for m in messages):
            if error is SinkError:  # the sink's own failure, outside the computation
                raise error("poison")
            with processing():
                raise error("poison")
        return StepOutput([], [], [], written=len(messages))

    step.what = "trace batch"
    shutdown = SimpleNamespace(stopping=False, crash=lambda what: (codes.append(70), _raise()))
    loop = BatchLoop(SimpleNamespace(take_max_messages=8, take_within_s=0.1, changelog_ack_timeout_s=1.0), Delivery(),
                     step, pipeline=SimpleNamespace(flush_state=lambda: None, redactor=SimpleNamespace(redact=str)),
                     outputs=Outputs(), acks=Acks(), processed=ProcessedOffsets([TOPIC]),
                     assignment=SimpleNamespace(check=lambda: None), shutdown=shutdown,
                     quarantine=Quarantine(state, max_attempts))
    with contextlib.suppress(SystemExit):  # the crash (its fake exit raises it)
        asyncio.run(loop.run(Stream([batch])))
    return (codes[0] if codes else None), steps, emitted, loop


def _raise():
    raise SystemExit(70)


def test_the_loop_quarantines_a_poison_message_after_bounded_restarts_and_moves_on():
    state = DictBackend()  # the changelog table: survives the "restarts"
    batch = [ev(0), ev(1), ev(2), ev(3)]
    lives = []
    for _ in range(5):
        code, steps, emitted, loop = run_loop(state, poison_offset=2, batch=batch)
        lives.append((code, steps, [d.error_class for d in emitted]))
        if code is None:
            break
    assert lives == [
        (70, [[0, 1, 2, 3]], []),  # the batch fails: ranges recorded
        (70, [[0], [1], [2]], []),  # one at a time: offset 2 fails alone (attempt 1 = max)
        (None, [[0], [1], [3]], ["processing_error"]),  # condemned: quarantined, the rest goes on
    ]
    assert loop.quarantined == 1 and loop.written == 3


def test_an_infrastructure_error_is_retried_by_a_restart_and_never_quarantines():
    state = DictBackend()
    for _ in range(3):
        code, steps, emitted, _ = run_loop(state, poison_offset=1, batch=[ev(0), ev(1)], error=SinkError)
        assert code == 70 and steps == [[0, 1]] and emitted == []
    assert not list(state.items())
