"""Every touch of the private internals of faust, mode and aiokafka, in one place, checked against the version.

selfheal's worker relies on a few faust internals. Each one is named here with why it is needed,
and :func:`check_faust_version` refuses to start on a faust-streaming release they were not
verified on (:data:`VERIFIED_FAUST_VERSIONS`), or on an aiokafka release other than those whose
private consumer state fixes 6 and 7 read (:data:`VERIFIED_AIOKAFKA_VERSIONS`): a private method
can change in any release, and a commit-offset patch that silently stops applying loses data.
To verify a new release, run the
worker's integration tests (tests/integration/test_restart.py, test_scale_out.py, test_faults.py,
test_chaos.py) against it, re-read the patched methods below against its source, then add it.

1. Commit offsets follow processing (``Consumer._drain_messages``, ``Consumer._new_offset``).

   Problem (measured here, tests/integration/test_restart.py): after a rebalance, recovery seeks
   the source partitions back to their committed offsets while messages fetched *before* the
   seek are still in flight. ``Consumer._drain_messages`` then (1) records the jump from the
   committed offset to those messages as a *gap* whose offsets count as acknowledged, and (2)
   drops the re-fetched messages because their offsets are below its read offset. Offsets in the
   gap are committed without ever reaching an agent: silent loss (20-120 traces per restart in
   our runs). Upstream: faust-streaming issues #596 (recovery race leaves gaps), #606 (wrong
   commit with gaps), #312.

   Fix: for selfheal's source topics, never record gaps and never drop a message for being below
   the read offset. Our topics are written by idempotent, non-transactional producers and use
   delete retention, so offsets are contiguous and a gap can never be legitimate; re-fetched
   messages are duplicates that :class:`streams.worker.sequencer.OffsetSequencer` recognises.
   Other topics (changelogs) keep faust's behaviour.

   Second problem: faust derives the offset to commit from the acknowledged offsets, and two
   paths acknowledge a message that no agent processed: a stream skips *and acks* messages
   fetched in an earlier consumer generation (``Stream.__aiter__``, "Skipping message ...
   generation_id"), and ``Consumer._new_offset`` lets the first acked offset sit one past the
   committed one (its gap check is ``min(acked) - committed > 1``). Either can commit past an
   unprocessed message; after a second rebalance the sequencer then starts at that commit and the
   message is never processed. Fix: for our source topics the commit offset is whatever the
   agents reported as processed (:meth:`ProcessedOffsets.mark`, called after a batch's sink
   writes and changelog acknowledgements), never faust's ack list.

2. ``app.topic()`` drops its ``maxsize`` argument (faust-streaming 0.15.3 ``App.topic`` does not
   pass it on to ``Topic``): :func:`topic_with_maxsize` sets it on the topic afterwards.

3. Stop signals (``mode.Worker._on_sigterm`` / ``_on_sigint``, the loop's signal handlers):
   :class:`SignalAwareWorker` tells selfheal about SIGTERM/SIGINT before faust starts stopping
   (the bounded shutdown in :class:`streams.worker.delivery.Shutdown`).

4. Flow diagnostics for the stats line: a channel's queue depth (``Topic._subscribers``), the
   consumer's paused and buffer-full partitions (``Consumer._paused_partitions``,
   ``_buffered_partitions``): :func:`channel_depth`, :func:`consumer_flow`.

5. Test hooks only: :func:`drop_recovery_records`, which wraps ``Consumer.getmany`` (the drain
   loop's source of records), and :func:`delay_changelog_sends`, which wraps
   ``ProducerBuffer._send_pending`` (used by :mod:`streams.worker.faults`). Each is installed only
   when its fault is set: unset, the hot path runs faust's own methods and no check.

6. Diagnostics of a stalled rebalance or recovery: :func:`recovery_diagnostics` reads faust's
   consumer thread (``Consumer._thread``) and the aiokafka consumer inside it (``_fetcher``,
   ``_subscription``, private to aiokafka 0.14) for a log line; read-only.

7. Table recovery stuck on lost changelog records: :func:`stalled_changelog_partitions` reads
   faust's ``Recovery`` state (``active_offsets``, ``active_highwaters``,
   ``_active_events_received_at``, ``_recovery_started_at``) and the aiokafka fetch positions;
   :class:`streams.worker.delivery.RecoveryWatchdog` seeks such partitions back (through
   ``Consumer.seek_wait``, in the consumer's thread) so the recovery receives them again (it skips
   offsets it has applied).

8. Timers that run during table recovery: faust starts app timers only after it (``App.on_started``);
   :class:`RecoveryTimers` is a mode ``Service`` added with ``app.add_dependency``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, cast

import aiokafka
import faust
from faust.transport import consumer as faust_consumer
from faust.transport.producer import ProducerBuffer
from mode import Service

from streams.errors import FrameworkVersionError

log = logging.getLogger(__name__)

#: faust-streaming releases whose internals this module was verified against (see the docstring)
VERIFIED_FAUST_VERSIONS: tuple[str, ...] = ("0.15.3",)
#: aiokafka releases whose private consumer state (``_fetcher``, ``_subscription``: fixes 6 and 7)
#: this module was verified against
VERIFIED_AIOKAFKA_VERSIONS: tuple[str, ...] = ("0.14.0",)

# faust's own methods, kept to call for other topics and to restore (:func:`uninstall`)
_ORIGINAL_DRAIN = faust_consumer.Consumer._drain_messages
_ORIGINAL_NEW_OFFSET = faust_consumer.Consumer._new_offset
_ORIGINAL_SEND_PENDING = ProducerBuffer._send_pending
_ORIGINAL_GETMANY = faust_consumer.Consumer.getmany


def check_faust_version(installed: str | None = None, aiokafka_installed: str | None = None) -> None:
    """Refuse an unverified faust-streaming or aiokafka release (call before the worker builds its app).

    Args:
        installed: the faust-streaming version to check; default ``faust.__version__``.
        aiokafka_installed: the aiokafka version to check; default ``aiokafka.__version__``.

    Raises:
        FrameworkVersionError: ``installed`` is not in :data:`VERIFIED_FAUST_VERSIONS`, or
            ``aiokafka_installed`` not in :data:`VERIFIED_AIOKAFKA_VERSIONS` (the message names
            the package, the installed and the verified versions).
    """
    installed = faust.__version__ if installed is None else installed
    aiokafka_installed = aiokafka.__version__ if aiokafka_installed is None else aiokafka_installed
    for package, version, verified, reads in (
            ("faust-streaming", installed, VERIFIED_FAUST_VERSIONS, "patches of faust internals"),
            ("aiokafka", aiokafka_installed, VERIFIED_AIOKAFKA_VERSIONS, "reads of aiokafka's private consumer state")):
        if version not in verified:
            raise FrameworkVersionError(
                f"{package} {version} is installed, but the worker's {reads} "
                f"(streams.worker.faust_fixes) are verified on {', '.join(verified)} only; "
                f"install {package}=={verified[-1]}, or verify {version} as that "
                "module's docstring describes")


class ProcessedOffsets:
    """The commit offset of each source partition, as the agents report it.

    ``next[(topic, partition)]`` is one past the last offset of a contiguous run of processed,
    durably written messages; the patched ``Consumer._new_offset`` commits exactly that for
    ``topics`` (see :func:`install`). Events must be released in offset order per partition
    (:class:`~streams.worker.sequencer.OffsetSequencer`), so a mark never skips an offset.

    Args:
        topics: full names of the source topics the commit rule applies to.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> done = ProcessedOffsets({"t"})
        >>> done.mark([NS(message=NS(topic="t", partition=0, offset=o)) for o in (4, 5)])
        >>> done.get("t", 0), done.get("t", 1)
        (6, None)
    """

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self.next: dict[tuple[str, int], int] = {}

    def mark(self, events: Iterable[Any]) -> None:
        """Record that ``events`` (with ``.message.topic/.partition/.offset``, released in offset
        order, their writes durable) are processed: each partition's commit offset becomes its
        last offset + 1. A reprocessed duplicate never moves it back."""
        nxt = self.next
        for e in events:
            m = e.message
            key = (m.topic, m.partition)
            if nxt.get(key, -1) <= m.offset:
                nxt[key] = m.offset + 1

    def forget(self, topic: str, partitions: Iterable[int]) -> None:
        """New assignment generation: nothing is committable for ``topic``'s ``partitions``
        until the agent processes again from the committed offsets."""
        for p in partitions:
            self.next.pop((topic, p), None)

    def get(self, topic: str, partition: int) -> int | None:
        """Offset to commit for ``(topic, partition)``, ``None`` if nothing was processed."""
        return self.next.get((topic, partition))


def install(processed: ProcessedOffsets) -> None:
    """Patch faust's ``Consumer`` class (all consumers of the process) so that ``processed.topics``
    get no gap records, no read-offset drops, and ``processed`` as their commit offsets (fix 1 of
    the module docstring). Installing again replaces the previous ``processed`` (one worker app
    per process); call it before the app starts (the fetcher binds ``_drain_messages`` at start).
    """

    def _new_offset(self: Any, tp: Any) -> int | None:
        return new_offset(processed, self, tp)

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - integration tests
        await drain_messages(processed.topics, self, fetcher)

    _drain_messages.selfheal_processed = processed  # type: ignore[attr-defined]
    faust_consumer.Consumer._drain_messages = _drain_messages
    faust_consumer.Consumer._new_offset = _new_offset
    log.debug("faust Consumer._drain_messages and _new_offset patched for %s", sorted(processed.topics))


def installed() -> ProcessedOffsets | None:
    """The :class:`ProcessedOffsets` the patched consumer consults, ``None`` if not installed."""
    return getattr(faust_consumer.Consumer._drain_messages, "selfheal_processed", None)


def uninstall() -> None:
    """Restore faust's own ``Consumer`` methods (tests)."""
    faust_consumer.Consumer._drain_messages = _ORIGINAL_DRAIN
    faust_consumer.Consumer._new_offset = _ORIGINAL_NEW_OFFSET


def new_offset(processed: ProcessedOffsets, consumer: Any, tp: Any) -> int | None:
    """faust's ``Consumer._new_offset`` for other topics; for ``processed.topics`` the offset
    :meth:`ProcessedOffsets.mark` recorded (faust's ack list is emptied, it only grows otherwise)."""
    if tp.topic not in processed.topics:
        return _ORIGINAL_NEW_OFFSET(consumer, tp)
    consumer._acked[tp].clear()
    consumer._acked_index[tp].clear()
    return processed.get(tp.topic, tp.partition)


async def drain_messages(ours_topics: frozenset[str], self: Any, fetcher: Any) -> None:  # pragma: no cover
    """faust's ``Consumer._drain_messages`` (0.15.3) without gap recording or read-offset drops for
    ``ours_topics`` (kept otherwise identical, including flow control). ``self`` is the consumer."""
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
                    ours = message.topic in ours_topics
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


def topic_with_maxsize(topic: faust.TopicT, maxsize: int) -> faust.TopicT:
    """Give ``topic`` the channel capacity ``maxsize`` (messages) that ``app.topic(maxsize=...)``
    drops in faust-streaming 0.15.3 (fix 2); returns ``topic``."""
    topic.maxsize = maxsize
    return topic


def channel_depth(topic: faust.TopicT) -> int:
    """Events fetched for ``topic`` and not yet taken by its agents (sum of the agent channels'
    queue sizes, ``Topic._subscribers``)."""
    return sum(ch.queue.qsize() for ch in getattr(topic, "_subscribers", ()))


def consumer_flow(consumer: Any) -> dict[str, Any]:
    """The consumer's flow state for a stalled worker's log: ``paused`` and ``buffer_full``
    partitions (``"topic:partition"``, from ``_paused_partitions`` / ``_buffered_partitions``) and
    its diagnostic ``flags`` (e.g. ``CONSUMER_FETCHING``)."""
    return {
        "paused": sorted(f"{tp.topic}:{tp.partition}" for tp in getattr(consumer, "_paused_partitions", ())),
        "buffer_full": sorted(f"{tp.topic}:{tp.partition}" for tp in getattr(consumer, "_buffered_partitions", ())),
        "flags": sorted(getattr(getattr(consumer, "diag", None), "flags", ()) or ()),
    }


class SignalAwareWorker(faust.Worker):
    """faust's Worker, calling ``on_signal()`` on SIGTERM/SIGINT before faust starts stopping
    (mode's ``_on_sigterm`` / ``_on_sigint`` are the loop's signal handlers; fix 3)."""

    def __init__(self, *args: Any, on_signal: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_signal = on_signal

    def _on_sigterm(self) -> None:
        self._on_signal()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._on_signal()
        super()._on_sigint()


def delay_changelog_sends(wait: Callable[[], Awaitable[None]]) -> None:
    """TEST HOOK (fix 5): every changelog message (topic ending ``-changelog``) awaits ``wait()``
    in faust's producer buffer before it reaches the Kafka client. Call before the app starts
    (the buffer's task binds ``_send_pending`` at start); :func:`restore_changelog_sends` undoes it."""
    send = _ORIGINAL_SEND_PENDING

    async def held(self: ProducerBuffer, fut: Any) -> None:
        if fut.message.channel.get_topic_name().endswith("-changelog"):
            await wait()
        await send(self, fut)

    ProducerBuffer._send_pending = held  # type: ignore[method-assign]


def drop_recovery_records(n: int) -> None:
    """TEST HOOK (fix 5): the next ``n`` changelog records the consumer delivers while a table
    recovery runs are lost between the fetch and the recovery (their read offset advances, nothing
    reaches the recovery): the state of the scale-out stall (docs/reliability.md), for
    :class:`streams.worker.delivery.RecoveryWatchdog`'s test. Wraps ``Consumer.getmany`` (all
    consumers of the process); call before the app starts (the drain loop binds ``getmany`` at
    start), and only when the fault is set: the drain loop itself never checks for it.
    :func:`restore_recovery_records` undoes it."""
    left = n

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        nonlocal left
        async for tp, message in _ORIGINAL_GETMANY(self, timeout):
            if left and self.app.in_recovery and message.topic in self.app.tables.changelog_topics:
                left -= 1
                self._read_offset[tp] = message.offset  # lost after the fetch, as in the stall
                log.warning("TEST HOOK: changelog record %s[%d]@%d dropped before the recovery", message.topic,
                            message.partition, message.offset)
                continue
            yield tp, message

    faust_consumer.Consumer.getmany = getmany  # type: ignore[method-assign]


def restore_recovery_records() -> None:
    """Undo :func:`drop_recovery_records` (tests)."""
    faust_consumer.Consumer.getmany = _ORIGINAL_GETMANY  # type: ignore[method-assign]


def restore_changelog_sends() -> None:
    """Undo :func:`delay_changelog_sends` (tests)."""
    ProducerBuffer._send_pending = _ORIGINAL_SEND_PENDING  # type: ignore[method-assign]


def _frames(task: asyncio.Task, limit: int = 12) -> list[str]:
    """``task``'s suspended coroutine chain, outermost first (``file:line function``), following
    ``cr_await`` (``Task.get_stack`` gives one frame for a suspended coroutine)."""
    out: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(out) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            out.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return out


def recovery_diagnostics(app: Any) -> dict[str, Any]:
    """What a worker stuck in a rebalance or table recovery is waiting on (fix 6, diagnostics only).

    Reads, without locking (a snapshot for a log line; values may be mid-update): faust's
    ``app.rebalancing`` / ``app.in_recovery``, the main loop's tasks and their suspended frames,
    and the aiokafka consumer inside faust's consumer thread (``Consumer._thread._consumer``): per
    assigned partition its fetch position, paused flag and whether fetched records wait unconsumed
    (``Fetcher._records``), the nodes with fetches in flight, whether a reassignment is in
    progress, and the consumer thread loop's tasks. Never raises: a part it cannot read is given
    as ``"<error: ...>"``.
    """
    out: dict[str, Any] = {"rebalancing": bool(getattr(app, "rebalancing", False)),
                           "in_recovery": bool(getattr(app, "in_recovery", False))}
    try:
        out["tasks"] = {f"{t.get_name()}": _frames(t) for t in asyncio.all_tasks() if not t.done()}
    except Exception as exc:  # diagnostics never fail the worker
        out["tasks"] = f"<error: {exc!r}>"
    try:
        recovery = app.tables.recovery
        out["recovery_remaining"] = {
            f"{tp.topic}:{tp.partition}": {"offset": recovery.active_offsets.get(tp),
                                           "highwater": hw, "events_at": recovery._active_events_received_at.get(tp)}
            for tp, hw in recovery.active_highwaters.items()
            if hw is not None and recovery.active_offsets.get(tp) is not None and hw > recovery.active_offsets[tp]}
        out["recovery_buffered"] = recovery._current_total_buffer_size()
        out["changelog_queue"] = app.tables.changelog_queue.qsize()
    except Exception as exc:
        out["recovery_remaining"] = f"<error: {exc!r}>"
    try:
        thread = app.consumer._thread
        kafka = thread._consumer
        fetcher = kafka._fetcher
        subscription = kafka._subscription
        assignment = subscription.subscription.assignment if subscription.subscription else None
        parts: dict[str, Any] = {}
        for tp in sorted(assignment.tps if assignment else (), key=lambda t: (t.topic, t.partition)):
            state = assignment.state_value(tp)
            record = fetcher._records.get(tp)
            parts[f"{tp.topic}:{tp.partition}"] = {
                "position": state._position, "paused": state.paused, "status": str(state._status),
                "unconsumed": type(record).__name__ if record is not None else None,
                "read_offset": app.consumer._read_offset.get(tp),
                "callback": tp in app.topics._tp_to_callback}
        out["kafka"] = {
            "partitions": parts,
            "in_flight_nodes": sorted(fetcher._in_flight),
            "pending_fetch_tasks": len(fetcher._pending_tasks),
            "fetch_waiters": len(fetcher._fetch_waiters),
            "reassignment_in_progress": bool(subscription.reassignment_in_progress),
            "assignment_active": bool(assignment.active) if assignment else None,
        }
        loop = thread.thread_loop
        out["consumer_thread_tasks"] = {t.get_name(): _frames(t) for t in asyncio.all_tasks(loop) if not t.done()}
    except Exception as exc:
        out.setdefault("kafka", f"<error: {exc!r}>")
    return out


def stalled_changelog_partitions(app: Any, idle_s: float, now: float) -> dict[Any, int]:
    """Active changelog partitions whose table recovery is stuck on records already fetched (fix 7):
    ``{tp: offset to fetch again from}``.

    A partition is stuck when the recovery still needs offsets up to its high watermark
    (``Recovery.active_offsets[tp] < active_highwaters[tp]``), the consumer's fetch position is
    already past that watermark (aiokafka fetched them and handed them out), no changelog event
    of it reached the recovery for ``idle_s`` (``Recovery._active_events_received_at``, or since
    the recovery started), and the changelog queue is empty: the records were lost between the
    fetch and the recovery, and nothing would fetch them again (measured, docs/reliability.md:
    a scale-out takeover waited forever with every record of three partitions fetched and none
    received). The offset is the one after the last record the recovery applied.

    Args:
        app: the faust app (``tables.recovery``, ``consumer._thread._consumer``).
        idle_s: seconds without an event before a partition counts as stuck.
        now: ``time.monotonic()`` (faust's recovery clock).
    """
    recovery = app.tables.recovery
    if not recovery.in_recovery or app.tables.changelog_queue.qsize():
        return {}
    started = getattr(recovery, "_recovery_started_at", None)
    kafka = app.consumer._thread._consumer
    subscription = kafka._subscription.subscription
    assignment = subscription.assignment if subscription else None
    if assignment is None:
        return {}
    stuck: dict[Any, int] = {}
    for tp, highwater in list(recovery.active_highwaters.items()):
        offset = recovery.active_offsets.get(tp)
        if highwater is None or offset is None or offset >= highwater or tp not in assignment.tps:
            continue
        last = recovery._active_events_received_at.get(tp, started)
        if last is None or now - last < idle_s:
            continue
        position = assignment.state_value(tp)._position
        if position is not None and position > highwater:
            stuck[tp] = max(offset + 1, 0)
    return stuck


class RecoveryTimers(Service):
    """Run ``ticks`` every ``interval_s`` from the app's start, recovery included (fix 8).

    faust starts ``app.timer`` and ``app.task`` coroutines only once table recovery has completed
    (``App.on_started`` waits for it), so a watchdog of the recovery itself cannot be one. This
    mode Service is a dependency of the app (:func:`add_recovery_timers`): mode starts it with the
    app and stops it with the app. A tick that raises is logged and the next one runs.

    Args:
        ticks: coroutine functions without arguments.
        interval_s: seconds between rounds.
    """

    def __init__(self, ticks: list[Callable[[], Awaitable[None]]], interval_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ticks = ticks
        self.interval_s = interval_s

    @Service.task
    async def _run(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval_s)
            for tick in self.ticks:
                try:
                    await tick()
                except Exception:  # a diagnostic or watchdog never stops the worker
                    log.warning("recovery timer %r failed", tick, exc_info=True)


def add_recovery_timers(app: faust.App, ticks: list[Callable[[], Awaitable[None]]], interval_s: float = 1.0) -> None:
    """Run ``ticks`` with :class:`RecoveryTimers`, started and stopped with ``app`` (call before it starts)."""
    app.add_dependency(RecoveryTimers(ticks, interval_s, loop=app.loop))
