"""The batch skeleton (streams.worker.agents.BatchLoop) with fakes around it: the order of a batch's
steps (nothing acknowledged before the sink writes, the changelog acknowledgements and the
processed mark), a failed batch exits without acknowledging, a stopped one is abandoned; and the two
steps' differences (traces written; feedback joined to its traces, its patterns queued)."""

import asyncio
from types import SimpleNamespace

import pytest

from streams.worker.agents import BatchLoop, FeedbackStep, StepOutput, TraceStep
from streams.worker.delivery import CRASH_EXIT_CODE, Shutdown
from streams.worker.faust_fixes import ProcessedOffsets

TOPIC = "t.traces"


def ev(o, p=0):
    return SimpleNamespace(message=SimpleNamespace(topic=TOPIC, partition=p, offset=o, key=b"acme", value=b"v",
                                                   timestamp=1.5))


class Stream:
    def __init__(self, calls, batches):
        self.calls = calls
        self.batches = batches

    async def noack_take(self, n, within):
        for b in self.batches:
            yield b

    async def ack(self, e):
        self.calls.append(f"ack {e.message.offset}")


def make_loop(calls, step, stopping=False):
    class Delivery:
        busy = False

        async def order(self, events):
            calls.append("order")
            return sorted(events, key=lambda e: e.message.offset)[1:], [events[0]]  # first: a "duplicate"

    class Acks:
        async def wait(self, timeout_s):
            calls.append(f"acks {timeout_s:g}")

    class Outputs:
        async def emit(self, incidents, dead_letters, verdicts, redact, signals=()):
            calls.append(f"emit {len(incidents)} {len(dead_letters)} {len(verdicts)}")

    class Processed(ProcessedOffsets):
        def mark(self, events):
            calls.append("mark")
            super().mark(events)

    pipeline = SimpleNamespace(flush_state=lambda: calls.append("flush"), redactor=SimpleNamespace(redact=str))
    codes, commits = [], []

    async def commit():
        commits.append(1)

    shutdown = Shutdown(30.0, commit=commit, exit_process=codes.append)
    shutdown.stopping = stopping
    settings = SimpleNamespace(take_max_messages=64, take_within_s=0.5, changelog_ack_timeout_s=300.0)
    loop = BatchLoop(settings, Delivery(), step, pipeline=pipeline, outputs=Outputs(), acks=Acks(),
                     processed=Processed({TOPIC}), assignment=SimpleNamespace(check=lambda: calls.append("assign")),
                     shutdown=shutdown)
    return loop, codes, commits


def test_a_batch_is_acknowledged_only_after_writes_changelog_acks_and_the_processed_mark():
    calls = []

    class Step:
        what = "trace batch"

        async def __call__(self, messages):
            calls.append(f"step {[m.offset for m in messages]} ts {messages[0].timestamp_ms}")
            return StepOutput(["incident"], [], [], written=2)

    loop, codes, _ = make_loop(calls, Step())
    stream = Stream(calls, [[ev(9), ev(10), ev(11)]])
    asyncio.run(loop.run(stream))
    assert calls == ["assign", "order", "step [10, 11] ts 1500", "emit 1 0 0", "flush", "acks 300", "mark",
                     "ack 10", "ack 11", "ack 9"]  # duplicates only after the originals
    assert loop.processed.get(TOPIC, 0) == 12 and loop.written == 2
    assert not loop.delivery.busy and codes == []


def test_a_failed_batch_exits_70_without_acknowledging_or_marking():
    calls = []

    class Step:
        what = "trace batch"

        async def __call__(self, messages):
            raise ConnectionError("ClickHouse down for longer than sink_retry_s")

    loop, codes, commits = make_loop(calls, Step())
    with pytest.raises(SystemExit):  # the fake exit returns; os._exit would not
        asyncio.run(loop.run(Stream(calls, [[ev(9), ev(10)]])))
    assert codes == [CRASH_EXIT_CODE] and commits == []
    assert not any(c.startswith(("ack", "mark")) for c in calls)
    assert loop.processed.get(TOPIC, 0) is None


def test_a_batch_failing_after_the_stop_signal_is_abandoned_exit_0_after_committing_processed_batches():
    calls = []

    class Step:
        what = "feedback batch"

        async def __call__(self, messages):
            raise RuntimeError("aborted sink retry")

    loop, codes, commits = make_loop(calls, Step(), stopping=True)
    with pytest.raises(SystemExit):
        asyncio.run(loop.run(Stream(calls, [[ev(9), ev(10)]])))
    assert codes == [0] and commits == [1]
    assert not any(c.startswith(("ack", "mark")) for c in calls)


def test_cancellation_leaves_the_batch_unacknowledged_and_does_not_exit():
    calls = []

    class Step:
        what = "trace batch"

        async def __call__(self, messages):
            raise asyncio.CancelledError

    loop, codes, _ = make_loop(calls, Step())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(loop.run(Stream(calls, [[ev(9), ev(10)]])))
    assert codes == [] and not any(c.startswith("ack") for c in calls)


class Outputs:
    def __init__(self):
        self.calls = []

    async def ready(self):
        self.calls.append("ready")

    async def stored_traces(self, ids):
        self.calls.append(("stored", ids))
        return {("acme", "t0"): [(1, 0, 0)]}

    async def write_traces(self, cols, attributes, batch_seq=0):
        self.calls.append(("traces", cols.n, batch_seq))

    async def write_feedback(self, rows, submissions):
        self.calls.append(("feedback", len(rows), len(submissions)))

    async def write_actions(self, rows):
        self.calls.append(("actions", len(rows)))

    def add_patterns(self, patterns):
        self.calls.append(("patterns", patterns))


def test_the_trace_step_checks_unindexed_ids_in_the_store_then_writes_valid_traces_and_counts_them():
    for cols in (SimpleNamespace(n=3), None):
        out = SimpleNamespace(cols=cols, attributes=[], incidents=["i"], dead_letters=["d"], verdicts=[], batch_seq=7)
        outputs = Outputs()
        seen = {}

        def on_traces(msgs, *, decoded, stored, out=out, seen=seen):
            seen.update(decoded=decoded, stored=stored)
            return out

        pipeline = SimpleNamespace(decode_traces=lambda msgs: "decoded", on_traces=on_traces,
                                   unindexed_trace_ids=lambda dec: {"acme": ["t0"]} if dec == "decoded" else {},
                                   take_signals=lambda: ["s"])
        res = asyncio.run(TraceStep(pipeline, outputs)([]))
        assert (res.incidents, res.dead_letters, res.written) == (["i"], ["d"], 3 if cols else 0)
        assert res.signals == ["s"]  # the batch's platform signals go out with it
        assert seen == {"decoded": "decoded", "stored": {("acme", "t0"): [(1, 0, 0)]}}
        stored = ("stored", {"acme": ["t0"]})
        # the batch's processing sequence number is stored with its traces (streams.replay)
        assert outputs.calls == (["ready", stored, ("traces", 3, 7)] if cols else ["ready", stored])


def test_the_feedback_step_waits_for_its_traces_then_writes_and_queues_patterns():
    resolved = iter([([None], [0]), (["ref"], [])])  # waiting on the watermark, then found
    seen = {}
    decoded = SimpleNamespace(records=[{"trace_id": "t1"}], partitions=[4])

    def on_feedback(msgs, dec, refs):
        seen["refs"] = refs
        return SimpleNamespace(rows=[{"r": 1}], submissions=[], incidents=[], dead_letters=[], verdicts=["v"],
                               patterns={"acme": {"p1"}})

    pipeline = SimpleNamespace(decode_feedback=lambda msgs: decoded, on_feedback=on_feedback, take_signals=list,
                               feedback=SimpleNamespace(resolve=lambda records, partitions: next(resolved)))
    outputs = Outputs()
    step = FeedbackStep(pipeline, outputs, grace_s=30.0, trace_position=lambda p: (8, 8), stopping=lambda: False)
    res = asyncio.run(step([]))
    assert seen["refs"] == ["ref"] and res.verdicts == ["v"] and res.written == 1
    assert outputs.calls == ["ready", ("feedback", 1, 0), ("patterns", {"acme": {"p1"}})]


def test_the_action_step_waits_until_the_trace_agent_could_have_opened_the_incident():
    """An action whose incident is unknown waits while the tenant's trace partition is not read
    up to where the consumer stood (the incident may still come from that backlog), then applies."""
    from streams.worker.agents import ActionStep

    known = {"now": False}
    position = {"next": 5}
    decoded = SimpleNamespace(records=[{"tenant_id": "acme", "incident_id": "i1"}], partitions=[2])

    def knows(tenant, iid):
        position["next"] += 2  # the trace agent advances meanwhile; at 9 it has opened the incident
        known["now"] = position["next"] >= 9
        return known["now"]

    applied = {}

    def on_actions(msgs):
        applied["known"] = known["now"]
        return SimpleNamespace(incidents=["rev"], dead_letters=[], rows=[{"a": 1}])

    pipeline = SimpleNamespace(action_ingest=SimpleNamespace(decode=lambda msgs: decoded), on_actions=on_actions,
                               incidents=SimpleNamespace(knows=knows))
    outputs = Outputs()
    step = ActionStep(pipeline, outputs, trace_position=lambda p: (position["next"], 9), stopping=lambda: False)
    res = asyncio.run(step([]))
    assert applied["known"] and res.incidents == ["rev"] and res.written == 1
    assert outputs.calls == ["ready", ("actions", 1)]
