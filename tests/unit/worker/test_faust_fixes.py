"""The commit offset of selfheal's source topics follows what the agents processed, never
faust's ack list (streams.worker.faust_fixes: skipped old-generation messages are acked by faust);
the patches refuse an unverified faust release and can be undone."""

import asyncio
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import aiokafka
import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from streams.errors import FrameworkVersionError, SelfhealError
from streams.worker import faust_fixes


@pytest.fixture
def processed():
    done = faust_fixes.ProcessedOffsets({"t.traces"})
    faust_fixes.install(done)
    yield done
    faust_fixes.uninstall()


@pytest.fixture
def consumer():
    return SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set), _gap=defaultdict(list),
                           _committed_offset=defaultdict(lambda: None))


def _events(topic, partition, offsets):
    return [SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition, offset=o)) for o in offsets]


def test_acked_but_unprocessed_offsets_are_not_committed(processed, consumer):
    new_offset = faust_consumer.Consumer._new_offset  # the installed patch, called as faust calls it
    tp = TP("t.traces", 0)
    consumer._committed_offset[tp] = 10
    consumer._acked[tp] = [11, 12, 13]  # e.g. old-generation messages faust skipped and acked
    consumer._acked_index[tp] = {11, 12, 13}
    assert new_offset(consumer, tp) is None  # faust's own rule would commit 14
    assert consumer._acked[tp] == [] and consumer._acked_index[tp] == set()
    processed.mark(_events("t.traces", 0, [10, 11]))
    assert new_offset(consumer, tp) == 12
    processed.mark(_events("t.traces", 0, [5, 6]))  # reprocessed duplicates never move it back
    assert new_offset(consumer, tp) == 12
    processed.forget("t.traces", [0])  # new generation: nothing committable until processed again
    assert new_offset(consumer, tp) is None


def test_other_topics_keep_fausts_rule(processed, consumer):
    tp = TP("t.baselines-changelog", 0)
    consumer._acked[tp] = [3, 4, 5, 7]
    assert faust_consumer.Consumer._new_offset(consumer, tp) == 6


def test_install_points_the_patch_at_the_given_offsets_and_uninstall_restores_faust():
    original = faust_consumer.Consumer._new_offset, faust_consumer.Consumer._drain_messages
    first, second = faust_fixes.ProcessedOffsets({"a"}), faust_fixes.ProcessedOffsets({"b"})
    try:
        faust_fixes.install(first)
        assert faust_fixes.installed() is first
        faust_fixes.install(second)  # a second app in the process: the latest offsets count
        assert faust_fixes.installed() is second
        second.mark(_events("b", 1, [41]))
        consumer = SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set))
        assert faust_consumer.Consumer._new_offset(consumer, TP("b", 1)) == 42
    finally:
        faust_fixes.uninstall()
    assert (faust_consumer.Consumer._new_offset, faust_consumer.Consumer._drain_messages) == original
    assert faust_fixes.installed() is None


def test_the_verified_version_passes_and_the_installed_one_is_verified():
    faust_fixes.check_faust_version("0.15.3")
    assert faust.__version__ in faust_fixes.VERIFIED_FAUST_VERSIONS  # the venv runs what was verified
    faust_fixes.check_faust_version()


@pytest.mark.parametrize("version", ["0.15.4", "0.16.0", "0.11.0", ""])
def test_an_unverified_version_is_refused_naming_both_versions(version):
    with pytest.raises(FrameworkVersionError) as err:
        faust_fixes.check_faust_version(version)
    assert f"faust-streaming {version} is installed" in str(err.value)
    assert "verified on 0.15.3" in str(err.value)
    assert isinstance(err.value, SelfhealError)


def test_the_installed_aiokafka_is_verified():
    assert aiokafka.__version__ in faust_fixes.VERIFIED_AIOKAFKA_VERSIONS  # the venv runs what was verified
    faust_fixes.check_faust_version("0.15.3", "0.14.0")


@pytest.mark.parametrize("version", ["0.14.1", "0.13.0", "0.15.0", ""])
def test_an_unverified_aiokafka_is_refused_naming_both_versions(version):
    """Fixes 6 and 7 read aiokafka's private consumer state (``_fetcher``, ``_subscription``):
    an aiokafka release they were not verified on is refused like an unverified faust."""
    with pytest.raises(FrameworkVersionError) as err:
        faust_fixes.check_faust_version("0.15.3", version)
    assert f"aiokafka {version} is installed" in str(err.value)
    assert "verified on 0.14.0" in str(err.value) and "aiokafka==0.14.0" in str(err.value)


def test_topic_with_maxsize_repairs_what_app_topic_drops():
    app = faust.App("selfheal-unit-maxsize", broker="kafka://127.0.0.1:1")
    topic = app.topic("t.feedback", maxsize=123)
    assert topic.maxsize is None  # faust 0.15.3 drops it: the reason for the repair
    assert faust_fixes.topic_with_maxsize(topic, 5000) is topic and topic.maxsize == 5000


def test_consumer_flow_reads_paused_and_buffer_full_partitions():
    consumer = SimpleNamespace(_paused_partitions={TP("t.feedback", 2), TP("t.feedback", 0)},
                               _buffered_partitions={TP("t.traces", 1)},
                               diag=SimpleNamespace(flags={"CONSUMER_FETCHING"}))
    assert faust_fixes.consumer_flow(consumer) == {"paused": ["t.feedback:0", "t.feedback:2"],
                                                   "buffer_full": ["t.traces:1"], "flags": ["CONSUMER_FETCHING"]}
    assert faust_fixes.consumer_flow(SimpleNamespace()) == {"paused": [], "buffer_full": [], "flags": []}


def test_delayed_changelog_sends_wait_and_other_topics_do_not(tmp_path: Path):
    sent: list[str] = []
    hold = tmp_path / "hold"
    hold.touch()

    async def original(self, fut):  # stands in for faust's send: records the topic
        sent.append(fut.message.channel.get_topic_name())

    def fut(topic):
        return SimpleNamespace(message=SimpleNamespace(channel=SimpleNamespace(get_topic_name=lambda: topic)))

    async def run():
        async def while_held():
            while hold.exists():
                await asyncio.sleep(0.01)

        faust_fixes.delay_changelog_sends(while_held)
        held = asyncio.create_task(ProducerBuffer._send_pending(None, fut("app-baselines-changelog")))
        await ProducerBuffer._send_pending(None, fut("t.incidents"))
        await asyncio.sleep(0.05)
        assert sent == ["t.incidents"] and not held.done()
        hold.unlink()
        await held
        assert sent == ["t.incidents", "app-baselines-changelog"]

    saved = faust_fixes._ORIGINAL_SEND_PENDING
    faust_fixes._ORIGINAL_SEND_PENDING = original
    try:
        asyncio.run(run())
    finally:
        faust_fixes._ORIGINAL_SEND_PENDING = saved
        faust_fixes.restore_changelog_sends()
    assert ProducerBuffer._send_pending is saved
