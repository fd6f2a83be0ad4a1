"""OffsetSequencer: in-order release per partition, duplicates recognised, early arrivals parked."""

from types import SimpleNamespace

from streams.worker.sequencer import OffsetSequencer


def ev(p, o):
    return SimpleNamespace(message=SimpleNamespace(topic="t", partition=p, offset=o))


def offs(events):
    return [(e.message.partition, e.message.offset) for e in events]


def test_prefetched_messages_after_a_seek_wait_for_the_missing_ones():
    seq = OffsetSequencer()
    seq.reset({("t", 0): 74})
    # what faust delivered after a recovery seek: prefetched 95.. first, then the re-fetch from 74
    r = seq.feed([ev(0, o) for o in range(95, 100)])
    assert r.ready == [] and seq.parked_count() == 5
    r = seq.feed([ev(0, o) for o in range(74, 97)])
    assert offs(r.ready) == [(0, o) for o in range(74, 100)]
    assert offs(r.duplicates) == [(0, 95), (0, 96)]  # re-fetched copies of parked ones
    assert seq.parked_count() == 0


def test_duplicates_and_partitions_are_independent():
    seq = OffsetSequencer()
    seq.reset({("t", 0): 10, ("t", 1): 0})
    r = seq.feed([ev(0, 9), ev(0, 10), ev(1, 0), ev(1, 2), ev(0, 11)])
    assert offs(r.ready) == [(0, 10), (0, 11), (1, 0)]
    assert offs(r.duplicates) == [(0, 9)]
    assert seq.stuck() == {} and seq.parked_count() == 1


def test_stuck_partition_is_reported_and_reset_releases_stale_events():
    seq = OffsetSequencer(stuck_after_s=0.0)
    seq.reset({("t", 0): 5})
    seq.feed([ev(0, 7)])
    assert seq.stuck() == {("t", 0): 5}
    stale = seq.reset({("t", 0): 8})  # committed past the parked event meanwhile
    assert offs(stale) == [(0, 7)]


def test_a_missing_offset_with_later_ones_parked_is_reported_stuck():
    seq = OffsetSequencer(stuck_after_s=0.0)
    seq.reset({("t", 0): 172, ("t", 1): 50})
    # offset 172 never came (faust skipped it), later ones did; partition 1 is in order
    seq.feed([ev(0, o) for o in range(173, 212)])
    seq.feed([ev(1, o) for o in range(50, 60)])
    assert seq.stuck() == {("t", 0): 172}
    patient = OffsetSequencer(stuck_after_s=3600.0)
    patient.reset({("t", 0): 172})
    patient.feed([ev(0, 173)])
    assert patient.stuck() == {}  # parked only just now: not yet


def test_an_idle_partition_behind_its_high_watermark_is_sought_back():
    seq = OffsetSequencer(stuck_after_s=5.0)
    seq.reset({("t", 0): 1, ("t", 1): 0, ("t", 2): 3})
    t0 = seq.last_seen[("t", 0)]
    high = {("t", 0): 115, ("t", 1): 0, ("t", 2): 3, ("t", 3): None}
    # the records after offset 1 were fetched and discarded in a rebalance: nothing more arrives
    assert seq.to_seek(high, now=t0 + 1.0) == {}  # not yet stuck_after_s
    # partition 1 is empty, partition 2 caught up, partition 3 has no known high watermark
    assert seq.to_seek(high, now=t0 + 6.0) == {("t", 0): 1}
    seq.sought(("t", 0), now=t0 + 6.0)
    assert seq.to_seek(high, now=t0 + 7.0) == {}  # just sought: wait again
    seq.feed([ev(0, 1)])  # the re-fetch delivers
    assert seq.expected[("t", 0)] == 2 and seq.to_seek(high, now=seq.last_seen[("t", 0)] + 1.0) == {}
