"""Feedback waits for its trace (streams.worker.join_wait.JoinWait), driven by a fake clock and a
fake trace-agent position: first until the trace partition is read up to where the consumer stood
when the wait began, then for the grace period while records still wait on the watermark."""

import asyncio
import logging

import pytest

from streams.worker.delivery import Abandoned
from streams.worker.join_wait import JoinWait

REF = object()  # a resolved trace reference


class Fake:
    """Clock (s) and trace positions {partition: (next offset, high watermark)}."""

    def __init__(self, positions):
        self.now = 100.0
        self.positions = positions

    def clock(self):
        return self.now

    def position(self, p):
        return self.positions.get(p, (None, None))


def test_resolved_records_go_on_at_once():
    fake = Fake({0: (3, 9)})
    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    assert wait.settled([REF, REF], partitions=[0, 0], waiting=[])
    assert wait.targets == {}  # resolved records do not look at the trace partition


def test_a_partition_read_short_of_its_target_holds_the_batch_without_time_limit():
    fake = Fake({0: (5, 9), 1: (7, 7)})
    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    assert not wait.settled([None, None], partitions=[0, 1], waiting=[])
    assert wait.targets == {0: 9, 1: 7} and wait.deadline is None
    fake.now += 3600  # no grace deadline runs while a partition is behind
    assert not wait.settled([None, None], partitions=[0, 1], waiting=[])
    fake.positions[0] = (9, 20)  # read up to the target; the watermark moved on meanwhile
    assert wait.targets == {0: 9, 1: 7}  # the target is where the consumer stood when the wait began
    # the target may be a fetch older than the trace: the grace period, then unknown traces
    assert not wait.settled([None, None], partitions=[0, 1], waiting=[])
    assert wait.deadline == fake.now + 30.0
    fake.now += 30.1
    assert wait.settled([None, None], partitions=[0, 1], waiting=[])


def test_records_waiting_on_the_watermark_get_the_grace_period_then_go_on():
    fake = Fake({0: (9, 9)})
    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    assert not wait.settled([None], partitions=[0], waiting=[0])
    assert wait.deadline == 130.0
    fake.now = 129.9
    assert not wait.settled([None], partitions=[0], waiting=[0])
    fake.now = 130.1
    assert wait.settled([None], partitions=[0], waiting=[0])


def test_a_partition_of_unknown_position_gets_the_grace_period_not_an_immediate_verdict():
    """Right after an assignment the consumer has no high watermark for the trace partition, and
    its trace watermark (another tenant's traces) may already be past the feedback: the batch
    waits for a target, or the grace period, before its traces are called unknown."""
    fake = Fake({0: (5, None)})
    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    assert not wait.settled([None], partitions=[0], waiting=[])
    assert wait.targets == {} and wait.deadline == 130.0
    fake.positions[0] = (5, 9)  # the first fetch answers: a target, held without time limit
    assert not wait.settled([None], partitions=[0], waiting=[])
    assert wait.targets == {0: 9} and wait.deadline is None
    fake.positions[0] = (9, 9)  # read up to it: then the grace period
    assert not wait.settled([None], partitions=[0], waiting=[])
    fake.now += 30.1
    assert wait.settled([None], partitions=[0], waiting=[])
    never = JoinWait(30.0, Fake({}).position, clock=fake.clock)  # never known: given up after the grace
    assert never.traces_behind({1}) == []  # not held without time limit
    assert not never.settled([None], partitions=[1], waiting=[])
    fake.now += 30.1
    assert never.settled([None], partitions=[1], waiting=[])


def test_a_stored_trace_the_trace_agent_has_not_passed_holds_its_record():
    """After a crash ClickHouse holds traces the restored state does not count yet: a record
    resolved from the store waits, without time limit, until the trace agent has passed the
    trace's offset; one resolved from this process's batches (offset -1) goes on at once."""
    from streams.processors.feedback import TraceRef

    def stored(offset: int, partition: int = 0) -> TraceRef:
        return TraceRef("acme", "cardiology", "soap_note", "rel-1", partition, offset=offset)

    fake = Fake({0: (5, 9)})
    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    assert wait.settled([stored(-1), stored(4)], partitions=[0, 0], waiting=[])  # passed: counted
    assert not wait.settled([stored(7)], partitions=[0], waiting=[])
    assert wait.deadline is None
    fake.now += 3600
    assert not wait.settled([stored(7)], partitions=[0], waiting=[])
    fake.positions[0] = (8, 9)  # the trace agent counted offset 7 again
    assert wait.settled([stored(7)], partitions=[0], waiting=[])
    assert wait.settled([stored(12)], partitions=[0], waiting=[])  # past the end: an older topic's
    # no position at all on the trace's partition: the grace period, then on
    unplaced = JoinWait(30.0, fake.position, clock=fake.clock)
    assert not unplaced.settled([stored(3, partition=4)], partitions=[4], waiting=[])
    fake.now += 30.1
    assert unplaced.settled([stored(3, partition=4)], partitions=[4], waiting=[])


def test_falling_behind_again_restarts_the_grace_period():
    fake = Fake({0: (9, 9)})
    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    assert not wait.settled([None], partitions=[0], waiting=[0])
    assert wait.deadline == 130.0
    wait.targets[0] = 12  # e.g. a second record's partition target not reached yet
    fake.now = 125.0
    assert not wait.settled([None], partitions=[0], waiting=[0])
    assert wait.deadline is None
    wait.targets[0] = 9
    assert not wait.settled([None], partitions=[0], waiting=[0])
    assert wait.deadline == 155.0  # a fresh grace period from now
    fake.now = 140.0
    assert not wait.settled([None], partitions=[0], waiting=[0])


def test_a_long_wait_logs_progress_after_ten_seconds_then_every_thirty(caplog):
    fake = Fake({2: (5, 9)})
    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    with caplog.at_level(logging.INFO, logger="selfheal.worker"):
        for t in (105.0, 110.5, 120.0, 140.0, 140.6):
            fake.now = t
            assert not wait.settled([None, REF], partitions=[2, 2], waiting=[])
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2
    assert notes[0] == ("1 feedback records waited 10 s for their traces; trace partitions not read far "
                        "enough: {2: (5, 9)}")


def test_run_returns_the_last_refs_once_settled():
    fake = Fake({0: (9, 9)})
    answers = iter([([None], [0]), ([None], [0]), ([REF], [])])
    calls = []

    def resolve(records, partitions):
        calls.append((records, partitions))
        return next(answers)

    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    refs = asyncio.run(wait.run(resolve, [{"trace_id": "a"}], [0], stopping=lambda: False, poll_s=0))
    assert refs == [REF] and len(calls) == 3


def test_run_gives_the_batch_up_at_a_stop_signal():
    fake = Fake({0: (1, 9)})
    stop = iter([False, False, True])
    wait = JoinWait(30.0, fake.position, clock=fake.clock)
    with pytest.raises(Abandoned):
        asyncio.run(wait.run(lambda r, p: ([None], []), [{}], [0], stopping=lambda: next(stop), poll_s=0))
