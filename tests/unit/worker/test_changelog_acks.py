"""A batch waits for the broker's acknowledgement of every changelog message it caused before it
is marked processed (streams.worker.delivery.ChangelogAcks); faust's commit-time flush does not ensure it."""

import asyncio
from types import SimpleNamespace

import pytest

from streams.errors import ChangelogError
from streams.worker.delivery import ChangelogAcks


def _send(loop: asyncio.AbstractEventLoop, topic: str = "app-baselines-changelog") -> asyncio.Future:
    fut = loop.create_future()
    fut.message = SimpleNamespace(channel=SimpleNamespace(get_topic_name=lambda: topic))  # as faust's FutureMessage
    return fut


def test_wait_returns_once_every_send_is_acknowledged():
    async def run():
        loop = asyncio.get_running_loop()
        acks = ChangelogAcks()
        futs = [_send(loop) for _ in range(3)]
        for f in futs:
            acks.add(f)
        waiter = asyncio.create_task(acks.wait(5.0))
        for f in futs[:2]:
            f.set_result(None)
        await asyncio.sleep(0.01)
        assert not waiter.done()  # one acknowledgement still missing
        futs[2].set_result(None)
        assert await waiter == 3
        assert acks.pending == [] and await acks.wait(5.0) == 0

    asyncio.run(run())


def test_a_failed_send_fails_the_wait_naming_the_topic_and_error():
    async def run():
        acks = ChangelogAcks()
        ok, bad = _send(asyncio.get_running_loop()), _send(asyncio.get_running_loop(), "app-incident-state-changelog")
        acks.add(ok)
        acks.add(bad)
        ok.set_result(None)
        bad.set_exception(ConnectionError("broker gone"))
        expected = r"app-incident-state-changelog failed: ConnectionError\('broker gone'\)"
        with pytest.raises(ChangelogError, match=expected):
            await acks.wait(5.0)

    asyncio.run(run())


def test_a_timeout_fails_the_wait_and_leaves_the_sends_alone():
    async def run():
        acks = ChangelogAcks()
        late = _send(asyncio.get_running_loop(), "app-canary-state-changelog")
        acks.add(late)
        with pytest.raises(ChangelogError, match=r"1 of 1 changelog messages not acknowledged within 0\.05 s"
                                                 r".*app-canary-state-changelog"):
            await acks.wait(0.05)
        assert not late.cancelled()  # faust still resolves it
        late.set_result(None)
        assert await acks.wait(5.0) == 1

    asyncio.run(run())


def test_sends_added_during_a_wait_are_kept_for_the_next_one():
    async def run():
        loop = asyncio.get_running_loop()
        acks = ChangelogAcks()
        first, other_batch = _send(loop), _send(loop)
        acks.add(first)
        waiter = asyncio.create_task(acks.wait(5.0))
        await asyncio.sleep(0)
        acks.add(other_batch)  # the other agent's batch, sent while this one waits
        first.set_result(None)
        assert await waiter == 1
        assert acks.pending == [other_batch]

    asyncio.run(run())


def test_a_send_that_fails_after_a_wait_began_is_reported_by_the_next_wait():
    async def run():
        loop = asyncio.get_running_loop()
        acks = ChangelogAcks()
        first, failing = _send(loop), _send(loop)
        acks.add(first)
        waiter = asyncio.create_task(acks.wait(5.0))
        await asyncio.sleep(0)
        acks.add(failing)
        failing.set_exception(TimeoutError("request timed out"))
        first.set_result(None)
        assert await waiter == 1
        with pytest.raises(ChangelogError, match="request timed out"):
            await acks.wait(5.0)

    asyncio.run(run())
