"""The commit offset of selfheal's source topics follows what the agents processed, never
faust's ack list (streams.faust_fixes: skipped old-generation messages are acked by faust)."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.types import TP

from streams import faust_fixes


@pytest.fixture
def consumer():
    faust_fixes.apply({"t.traces"})
    faust_fixes.PROCESSED.clear()
    yield SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set), _gap=defaultdict(list),
                          _committed_offset=defaultdict(lambda: None))
    faust_fixes.PROCESSED.clear()


def _events(topic, partition, offsets):
    return [SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition, offset=o)) for o in offsets]


def test_acked_but_unprocessed_offsets_are_not_committed(consumer):
    tp = TP("t.traces", 0)
    consumer._committed_offset[tp] = 10
    consumer._acked[tp] = [11, 12, 13]  # e.g. old-generation messages faust skipped and acked
    consumer._acked_index[tp] = {11, 12, 13}
    assert faust_fixes._new_offset(consumer, tp) is None  # faust's own rule would commit 14
    assert consumer._acked[tp] == [] and consumer._acked_index[tp] == set()
    faust_fixes.mark_processed(_events("t.traces", 0, [10, 11]))
    assert faust_fixes._new_offset(consumer, tp) == 12
    faust_fixes.mark_processed(_events("t.traces", 0, [5, 6]))  # reprocessed duplicates never move it back
    assert faust_fixes._new_offset(consumer, tp) == 12
    faust_fixes.forget("t.traces", [0])  # new generation: nothing committable until processed again
    assert faust_fixes._new_offset(consumer, tp) is None


def test_other_topics_keep_fausts_rule(consumer):
    tp = TP("t.baselines-changelog", 0)
    consumer._acked[tp] = [3, 4, 5, 7]
    assert faust_fixes._new_offset(consumer, tp) == 6
