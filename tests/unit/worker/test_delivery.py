"""Per-agent delivery state (streams.worker.delivery) with a fake app and consumer: restart at the
committed offsets on a new consumer generation, stale parked events acknowledged after the next
batch, seek-back of owned partitions only, the watchdog's rules, and the bounded shutdown."""

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from faust.types import TP

from streams.worker.delivery import (
    CRASH_EXIT_CODE,
    SHUTDOWN_FORCED_EXIT_CODE,
    AgentDelivery,
    ChangelogAcks,
    RecoveryWatchdog,
    SequencerWatchdog,
    Shutdown,
    StallReport,
    TableBackend,
)
from streams.worker.faust_fixes import ProcessedOffsets, recovery_diagnostics, stalled_changelog_partitions

TOPIC = "t.traces"


class FakeConsumer:
    def __init__(self, owned, high=None, fail_seek=False):
        self.owned = {TP(TOPIC, p) for p in owned}
        self.high = high or {}
        self.seeks: list[dict] = []
        self.fail_seek = fail_seek

    def assignment(self):
        return set(self.owned)

    def highwater(self, tp):
        return self.high.get(tp.partition)

    async def seek_wait(self, partitions):
        if self.fail_seek:
            raise TimeoutError("seek timed out")
        self.seeks.append({tp.partition: o for tp, o in partitions.items()})


class FakeApp:
    def __init__(self, consumer):
        self.consumer = consumer
        self.rebalancing_count = 1
        self.rebalancing = False
        self.flow_control = SimpleNamespace(is_active=lambda: True)


def ev(p, o):
    return SimpleNamespace(message=SimpleNamespace(topic=TOPIC, partition=p, offset=o))


def offs(events):
    return [(e.message.partition, e.message.offset) for e in events]


def make(owned=(0, 1), committed=None, high=None, fail_seek=False):
    app = FakeApp(FakeConsumer(owned, high, fail_seek))
    commits = {(TOPIC, p): o for p, o in (committed or {0: 10, 1: 0, 2: 5}).items()}
    lookups = []

    def committed_offsets(topic, partitions):
        lookups.append((topic, partitions))
        return {tp: o for tp, o in commits.items() if tp[1] in partitions}

    processed = ProcessedOffsets({TOPIC})
    return AgentDelivery("traces", TOPIC, 3, app, processed, committed_offsets), app, lookups, commits


def test_the_first_batch_restarts_at_the_committed_offsets_and_seeks_owned_partitions_only():
    d, app, lookups, _ = make()
    d.processed.mark([ev(0, 40)])  # from an earlier generation: not committable any more

    async def run():
        return await d.order([ev(0, 11), ev(0, 9), ev(0, 10), ev(1, 0)])

    ready, ack_after = asyncio.run(run())
    assert lookups == [(TOPIC, [0, 1, 2])]  # all partitions: the assignment may still move
    assert d.generation == 1 and d.processed.get(TOPIC, 0) is None
    assert app.consumer.seeks == [{0: 10, 1: 0}]  # partition 2 is not ours
    assert offs(ready) == [(0, 10), (0, 11), (1, 0)]
    assert offs(ack_after) == [(0, 9)]  # below the commit: a duplicate, acknowledged after the batch


def test_a_new_generation_turns_parked_events_below_the_new_commit_into_late_acks():
    d, app, lookups, commits = make()

    async def run():
        await d.order([ev(0, 10)])
        ready, _ = await d.order([ev(0, 12), ev(0, 13)])  # 11 missing: parked
        assert ready == [] and d.sequencer.parked_count() == 2
        app.rebalancing_count = 2  # another worker processed and committed up to 13 meanwhile
        commits[(TOPIC, 0)] = 13
        return await d.order([ev(0, 13), ev(0, 14)])

    ready, ack_after = asyncio.run(run())
    assert len(lookups) == 2 and d.generation == 2
    assert offs(ready) == [(0, 13), (0, 14)]
    assert sorted(offs(ack_after)) == [(0, 12), (0, 13)]  # the stale parked ones and the re-fetched duplicate


def test_an_idle_restart_keeps_its_stale_events_for_the_next_batch():
    d, app, _, commits = make()

    async def run():
        await d.order([ev(0, 10)])
        await d.order([ev(0, 12)])  # parked
        app.rebalancing_count = 2
        commits[(TOPIC, 0)] = 13
        await d.check_idle()
        assert offs(d.stale_acks) == [(0, 12)]
        return await d.order([ev(0, 13)])

    ready, ack_after = asyncio.run(run())
    assert offs(ready) == [(0, 13)] and offs(ack_after) == [(0, 12)] and d.stale_acks == []


def test_the_watchdog_seeks_back_an_idle_partition_behind_its_high_watermark():
    d, app, _, _ = make(high={0: 20, 1: 0})

    async def run():
        await d.order([ev(0, 10)])
        app.consumer.seeks.clear()
        await d.check_idle()  # nothing arrived for less than stuck_after_s: no seek yet
        assert app.consumer.seeks == []
        d.sequencer.last_seen[(TOPIC, 0)] = time.monotonic() - d.sequencer.stuck_after_s - 1
        await d.check_idle()

    asyncio.run(run())
    assert app.consumer.seeks == [{0: 11}]  # partition 1 is at its high watermark


def test_a_failed_seek_is_left_to_the_watchdog():
    d, _, _, _ = make(fail_seek=True)

    async def run():
        return await d.order([ev(0, 10)])

    ready, _ = asyncio.run(run())
    assert offs(ready) == [(0, 10)]  # the batch goes on; the seek is retried later


def test_position_reports_the_agents_next_offset_and_the_high_watermark():
    d, _, _, _ = make(high={1: 7})
    asyncio.run(d.order([ev(1, 0), ev(1, 1)]))
    assert d.position(1) == (2, 7) and d.position(2) == (5, None)


@pytest.mark.parametrize("state", ["rebalancing", "stopping", "flow_suspended"])
def test_the_watchdog_does_nothing_while_rebalancing_stopping_or_suspended(state):
    d, app, _, _ = make()
    calls = []
    app.rebalancing = state == "rebalancing"
    if state == "flow_suspended":
        app.flow_control = SimpleNamespace(is_active=lambda: False)
    dog = SequencerWatchdog(app, [d], lambda: calls.append("assign"), queued=lambda a: 0,
                            stopping=lambda: state == "stopping")
    asyncio.run(dog.tick())
    assert calls == [] and d.generation == -1


def test_the_watchdog_applies_assignments_between_batches_and_skips_busy_or_fed_agents():
    traces, app, _, _ = make()
    feedback = AgentDelivery("feedback", "t.feedback", 3, app, traces.processed, lambda t, p: {})
    calls = []
    queued = {"traces": 0, "feedback": 3}
    dog = SequencerWatchdog(app, [traces, feedback], lambda: calls.append("assign"),
                            queued=lambda a: queued[a.name], stopping=lambda: False)
    asyncio.run(dog.tick())
    assert calls == ["assign"]
    assert traces.generation == 1 and feedback.generation == -1  # feedback has events coming: left alone
    traces.busy = True
    app.rebalancing_count = 2
    asyncio.run(dog.tick())
    assert calls == ["assign"] and traces.generation == 1  # a batch in hand: no assignment, no restart


def test_a_failing_assignment_is_retried_not_raised(caplog):
    d, app, _, _ = make()

    def fail():
        raise RuntimeError("state load failed")

    asyncio.run(SequencerWatchdog(app, [d], fail, queued=lambda a: 0, stopping=lambda: False).tick())
    assert "applying the new assignment failed" in caplog.text and d.generation == 1


def test_the_stop_signal_aborts_once_and_the_watchdog_exits_75_after_the_timeout():
    exited = threading.Event()
    codes, aborted = [], []

    def fake_exit(code):
        codes.append(code)
        exited.set()

    shutdown = Shutdown(0.05, commit=None, exit_process=fake_exit)
    shutdown.on_stop(lambda: aborted.append(1))
    shutdown.on_signal()
    shutdown.on_signal()  # SIGINT after SIGTERM: nothing new
    assert shutdown.stopping and aborted == [1]
    assert exited.wait(5.0) and codes == [SHUTDOWN_FORCED_EXIT_CODE]


def test_abandon_commits_the_processed_batches_and_exits_0_even_if_the_commit_fails():
    for commit_fails in (False, True):
        codes, commits = [], []

        async def commit(fails=commit_fails, commits=commits):
            commits.append(1)
            if fails:
                raise ConnectionError("broker gone")

        shutdown = Shutdown(30.0, commit=commit, exit_process=codes.append)
        with pytest.raises(SystemExit):  # only a fake exit returns
            asyncio.run(shutdown.abandon("trace batch"))
        assert commits == [1] and codes == [0]


def test_a_crash_exits_70():
    codes = []
    shutdown = Shutdown(30.0, commit=None, exit_process=codes.append)
    with pytest.raises(SystemExit):
        try:
            raise RuntimeError("sink down")
        except RuntimeError:
            shutdown.crash("trace batch")
    assert codes == [CRASH_EXIT_CODE]


def test_table_backend_writes_the_store_and_tracks_the_changelog_send():
    sends = []
    table = SimpleNamespace(data={}, send_changelog=lambda *a, **k: sends.append((a, k)) or f"fut{len(sends)}")
    acks = ChangelogAcks()
    backend = TableBackend(table, acks)
    backend.put("slice|a", b"row", 4)
    assert backend.get("slice|a") == b"row" and backend.get("other") is None
    assert sends == [((4, b"slice|a", b"row"), {"key_serializer": "raw", "value_serializer": "raw"})]
    assert acks.pending == ["fut1"] and list(backend.items()) == [("slice|a", b"row")]


def test_the_flow_report_shows_channel_depths_consumer_pauses_and_sequencer_positions():
    d, app, _, _ = make()
    app.in_recovery = False
    app.consumer._paused_partitions = {TP("t.feedback", 1)}
    asyncio.run(d.order([ev(0, 10), ev(0, 12)]))
    dog = SequencerWatchdog(app, [d], lambda: None, queued=lambda a: 7, stopping=lambda: False)
    assert dog.flow() == {"queued": {"traces": 7}, "paused": ["t.feedback:1"], "buffer_full": [], "flags": [],
                          "in_recovery": False, "flow_suspended": False,
                          "traces": {"next": {0: 11, 1: 0, 2: 5}, "parked": 1}}


def test_stall_report_logs_once_a_recovery_lasts_after_s_then_every_repeat_s(caplog):
    app = SimpleNamespace(rebalancing=False, in_recovery=False)
    now = [0.0]
    report = StallReport(app, lambda: {"queued": {}}, after_s=30, repeat_s=60, clock=lambda: now[0],
                         diagnostics=lambda a: {"in_recovery": a.in_recovery})

    def at(t):
        now[0] = t
        asyncio.run(report.tick())

    at(0)
    app.in_recovery = True
    for t in (1, 20, 30.5):
        at(t)
    assert report.reports == 0  # 29.5 s into the recovery
    at(31.5)
    assert report.reports == 1 and '"in_recovery": true' in caplog.text
    at(60)
    assert report.reports == 1
    at(91.5)
    assert report.reports == 2
    app.in_recovery = False
    at(92)
    app.rebalancing = True  # a new stall starts its own clock
    at(100)
    at(129)
    assert report.reports == 2
    at(130)
    assert report.reports == 3


def test_recovery_diagnostics_never_raises_on_an_app_without_a_consumer_thread():
    out = recovery_diagnostics(SimpleNamespace(rebalancing=True, in_recovery=False, consumer=None))
    assert out["rebalancing"] is True and out["kafka"].startswith("<error:")


CL = "t.selfheal-baselines-changelog"


def _recovering_app(positions, offsets, highwaters, received_at, started_at=0.0, queued=0):
    """A faust app as :func:`stalled_changelog_partitions` reads it: recovery state, changelog
    queue, aiokafka assignment positions."""
    tps = {TP(CL, p) for p in positions}
    states = {TP(CL, p): SimpleNamespace(_position=pos) for p, pos in positions.items()}
    assignment = SimpleNamespace(tps=tps, state_value=states.__getitem__)
    recovery = SimpleNamespace(in_recovery=True, _recovery_started_at=started_at,
                               active_offsets={TP(CL, p): o for p, o in offsets.items()},
                               active_highwaters={TP(CL, p): h for p, h in highwaters.items()},
                               _active_events_received_at={TP(CL, p): t for p, t in received_at.items()})
    kafka = SimpleNamespace(_subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)))
    tables = SimpleNamespace(recovery=recovery, changelog_queue=SimpleNamespace(qsize=lambda: queued))
    return SimpleNamespace(tables=tables,
                           consumer=SimpleNamespace(_thread=SimpleNamespace(_consumer=kafka)))


def test_stalled_changelog_partitions_are_those_fetched_past_the_high_watermark_and_never_received():
    app = _recovering_app(
        positions={0: 56, 1: 30, 2: 28, 3: 10},
        offsets={0: -1, 1: 10, 2: 27, 3: 4},      # 2 is complete
        highwaters={0: 55, 1: 40, 2: 27, 3: 9},
        received_at={3: 95.0})                     # 3 received an event 5 s ago
    # 0: all fetched, nothing received since the start -> from 0; 1: not fetched yet (position 30 <= 40)
    assert stalled_changelog_partitions(app, idle_s=15, now=100.0) == {TP(CL, 0): 0}
    assert stalled_changelog_partitions(app, idle_s=15, now=111.0) == {TP(CL, 0): 0, TP(CL, 3): 5}
    assert stalled_changelog_partitions(app, idle_s=150, now=111.0) == {}  # not idle long enough
    queued = _recovering_app(positions={0: 56}, offsets={0: -1}, highwaters={0: 55}, received_at={}, queued=3)
    assert stalled_changelog_partitions(queued, idle_s=15, now=100.0) == {}  # events still on their way


def test_recovery_watchdog_seeks_stuck_partitions_back_at_most_every_idle_s():
    consumer = FakeConsumer(owned=[])
    app = SimpleNamespace(in_recovery=True, consumer=consumer)
    now = [100.0]
    stuck = {TP(CL, 0): 0}
    dog = RecoveryWatchdog(app, idle_s=15, clock=lambda: now[0], find=lambda a, idle, t: dict(stuck))
    asyncio.run(dog.tick())
    assert consumer.seeks == [{0: 0}] and dog.reseeks == 1
    now[0] = 110.0
    asyncio.run(dog.tick())
    assert dog.reseeks == 1  # sought 10 s ago
    now[0] = 116.0
    asyncio.run(dog.tick())
    assert consumer.seeks == [{0: 0}, {0: 0}] and dog.reseeks == 2
    app.in_recovery = False
    asyncio.run(dog.tick())
    assert dog.reseeks == 2 and dog.last_seek == {}


def test_recovery_watchdog_seeks_a_partition_never_sought_whatever_the_clock_reads():
    """time.monotonic's reference point is undefined, so its readings may be any float: a stuck
    partition never sought is sought on the first tick even at -2e18 s. Before, "never sought"
    was the sentinel time -1e18 s, and a clock reading below it never sought anything."""
    consumer = FakeConsumer(owned=[])
    app = SimpleNamespace(in_recovery=True, consumer=consumer)
    now = [-2e18]
    dog = RecoveryWatchdog(app, idle_s=15, clock=lambda: now[0], find=lambda a, idle, t: {TP(CL, 0): 7})
    asyncio.run(dog.tick())
    assert consumer.seeks == [{0: 7}] and dog.reseeks == 1
    asyncio.run(dog.tick())
    assert dog.reseeks == 1  # sought 0 s ago
