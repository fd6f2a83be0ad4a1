"""StateCheckpoint (streams.worker.delivery): processed batches are marked only after a checkpoint
has flushed the state and every changelog send was acknowledged; within an interval the state is
flushed once for many batches; a failed acknowledgement leaves the batches unmarked; batches of an
older consumer generation are never marked."""

import asyncio
from types import SimpleNamespace

import pytest

from streams.errors import ChangelogError
from streams.worker.delivery import StateCheckpoint
from streams.worker.faust_fixes import ProcessedOffsets

TOPIC = "t.traces"


def ev(o, p=0):
    return SimpleNamespace(message=SimpleNamespace(topic=TOPIC, partition=p, offset=o))


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Acks:
    def __init__(self, calls, fail=False):
        self.calls, self.fail = calls, fail

    async def wait(self, timeout_s):
        self.calls.append("acks")
        if self.fail:
            raise ChangelogError("1 of 1 changelog messages not acknowledged")
        return 0


def make(calls, interval_s=1.0, fail=False, generation=lambda: 0):
    clock = Clock()
    processed = ProcessedOffsets({TOPIC})
    cp = StateCheckpoint(lambda: calls.append("flush"), Acks(calls, fail), processed, interval_s, 5.0,
                         generation=generation, clock=clock)
    return cp, processed, clock


def test_batches_within_an_interval_share_one_flush_and_are_marked_only_after_the_acks():
    calls = []
    cp, processed, clock = make(calls)

    async def go():
        await cp.done([ev(0), ev(1)])
        await cp.done([ev(2)])
        assert calls == [] and processed.get(TOPIC, 0) is None  # nothing committable yet
        clock.t = 1.0
        await cp.done([ev(3)])

    asyncio.run(go())
    assert calls == ["flush", "acks"]
    assert processed.get(TOPIC, 0) == 4
    assert cp.pending == []


def test_the_timer_checkpoints_an_idle_worker():
    calls = []
    cp, processed, clock = make(calls)

    async def go():
        await cp.done([ev(7)])
        await cp.tick()  # interval not over
        assert processed.get(TOPIC, 0) is None
        clock.t = 1.5
        await cp.tick()

    asyncio.run(go())
    assert calls == ["flush", "acks"] and processed.get(TOPIC, 0) == 8


def test_an_interval_of_zero_checkpoints_every_batch():
    calls = []
    cp, processed, _ = make(calls, interval_s=0.0)
    asyncio.run(cp.done([ev(0)]))
    assert calls == ["flush", "acks"] and processed.get(TOPIC, 0) == 1


def test_a_failed_acknowledgement_marks_nothing_and_keeps_the_batches_pending():
    calls = []
    cp, processed, clock = make(calls, fail=True)
    clock.t = 2.0
    with pytest.raises(ChangelogError):
        asyncio.run(cp.done([ev(0)]))
    assert processed.get(TOPIC, 0) is None
    assert len(cp.pending) == 1


def test_batches_of_an_older_consumer_generation_are_not_marked():
    calls = []
    gen = [1]
    cp, processed, clock = make(calls, generation=lambda: gen[0])

    async def go():
        await cp.done([ev(0, p=0)])
        gen[0] = 2  # a rebalance: the sequencer restarts at the committed offsets
        clock.t = 1.0
        await cp.done([ev(5, p=1)])

    asyncio.run(go())
    assert processed.get(TOPIC, 0) is None
    assert processed.get(TOPIC, 1) == 6
