"""A targeted fix for faust-streaming 0.15.3's consumer loop, applied when :mod:`streams.app` loads.

Problem (measured here, tests/integration/test_restart.py): after a rebalance, recovery seeks the
source partitions back to their committed offsets while messages fetched *before* the seek are
still in flight. ``Consumer._drain_messages`` then (1) records the jump from the committed offset
to those messages as a *gap* whose offsets count as acknowledged, and (2) drops the re-fetched
messages because their offsets are below its read offset. Offsets in the gap are committed
without ever reaching an agent: silent loss (20-120 traces per restart in our runs). Upstream:
faust-streaming issues #596 (recovery race leaves gaps), #606 (wrong commit with gaps), #312.

Fix: for selfheal's source topics, never record gaps and never drop a message for being below
the read offset. Our topics are written by idempotent, non-transactional producers and use
delete retention, so offsets are contiguous and a gap can never be legitimate; re-fetched
messages are duplicates that :class:`streams.sequencer.OffsetSequencer` recognises. Other topics
(changelogs) keep faust's behaviour.

Second problem: faust derives the offset to commit from the acknowledged offsets, and two paths
acknowledge a message that no agent processed: a stream skips *and acks* messages fetched in an
earlier consumer generation (``Stream.__aiter__``, "Skipping message ... generation_id"), and
``Consumer._new_offset`` lets the first acked offset sit one past the committed one (its gap
check is ``min(acked) - committed > 1``). Either can commit past an unprocessed message; after a
second rebalance the sequencer then starts at that commit and the message is never processed.
Fix: for our source topics the commit offset is whatever the agents reported as processed
(:func:`mark_processed`, called after a batch's sink writes), never faust's ack list.

"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from faust.transport import consumer as faust_consumer
from mode import Service

log = logging.getLogger(__name__)

#: topics the patched loop applies to (set by streams.app)
PATCHED_TOPICS: set[str] = set()
#: next offset to commit per (topic, partition) of PATCHED_TOPICS: one past the last offset of a
#: contiguous run of processed, durably written messages (set by :func:`mark_processed`)
PROCESSED: dict[tuple[str, int], int] = {}
_original = faust_consumer.Consumer._drain_messages
_original_new_offset = faust_consumer.Consumer._new_offset


def mark_processed(events: Any) -> None:
    """Record that ``events`` (faust events, released in offset order by the sequencer, their
    writes durable) are processed: the commit offset of each partition becomes last offset + 1."""
    for e in events:
        m = e.message
        key = (m.topic, m.partition)
        if PROCESSED.get(key, -1) <= m.offset:
            PROCESSED[key] = m.offset + 1


def forget(topic: str, partitions: Any) -> None:
    """New assignment generation: nothing is committable for ``topic``'s ``partitions`` until
    the agent processes again from the committed offsets."""
    for p in partitions:
        PROCESSED.pop((topic, p), None)


def _new_offset(self: Any, tp: Any) -> int | None:
    """faust's ``Consumer._new_offset`` for other topics; for :data:`PATCHED_TOPICS` the offset
    :func:`mark_processed` recorded (faust's ack list is emptied, it only grows otherwise)."""
    if tp.topic not in PATCHED_TOPICS:
        return _original_new_offset(self, tp)
    self._acked[tp].clear()
    self._acked_index[tp].clear()
    return PROCESSED.get((tp.topic, tp.partition))


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - exercised by integration tests
    """faust's ``Consumer._drain_messages`` without gap recording or read-offset drops for
    :data:`PATCHED_TOPICS` (kept otherwise identical, including flow control)."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(faust_consumer.CONSUMER_FETCHING)
            ait = cast(AsyncIterator, getmany(timeout=1.0))
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    ours = message.topic in PATCHED_TOPICS
                    if ours or r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if not ours and gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        if r_offset is None or offset > r_offset:
                            set_read_offset(tp, offset)
                unset_flag(faust_consumer.CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(faust_consumer.CONSUMER_FETCHING)


def apply(topics: set[str]) -> None:
    """Install the patched loop and commit offsets for ``topics`` (idempotent)."""
    PATCHED_TOPICS.update(topics)
    if faust_consumer.Consumer._drain_messages is not _drain_messages:
        faust_consumer.Consumer._drain_messages = _drain_messages
        faust_consumer.Consumer._new_offset = _new_offset
        log.debug("faust Consumer._drain_messages patched for %s", sorted(PATCHED_TOPICS))
