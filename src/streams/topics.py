"""Topic administration with confluent-kafka's AdminClient: create selfheal's topics up front,
check that a broker answers (:func:`check_broker`), and read a consumer group's progress
(:func:`group_lag`, :class:`GroupLag`: the one lag helper of the demo, benchmarks, chaos run and
tests).

Source topics must exist with the intended partition count before workers start (faust's
auto-create ignores ``SELFHEAL_PARTITIONS``). All are keyed by tenant_id.

The worker's table changelogs (``<app id>-<table>-changelog``, compacted) are created here too,
and by the worker itself before faust starts. faust declares them when each table starts, and
measured here that raced the group's first assignment: the assignor ignored the missing
``canary-state`` changelog (so its partitions were not recovered), and in 1 demo run of 8 the
first changelog send to it waited for the topic's metadata until the batch failed after
``changelog_ack_timeout_s``.

:func:`ensure_topics` returns only when every partition is served by its leader. A topic is
"created" once the controller accepts it, before the broker has loaded its partitions; an
idempotent producer that writes at once can then lose records with no error (KAFKA-15591, fixed
in Kafka 4.5): its first request fails with NOT_LEADER_OR_FOLLOWER, the next one in flight is
appended as the partition's first batch (a broker without producer state accepts any first
sequence), and the retried first one is answered as a duplicate, which librdkafka reports as
delivered. Measured here: 2 feedback records lost in 2 of about 120 runs of the kill test's
producers, the log's first batch starting at sequence 2 (``kafka.tools.DumpLogSegments``), 0 in
200 runs with the wait; right after ``create_topics`` 54 of 54 partitions did not answer
ListOffsets yet (docs/reliability.md).
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    OffsetSpec,
    ResourcePatternType,
    ResourceType,
)
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from streams.config import KAFKA_MAX_REQUEST_BYTES, Settings
from streams.errors import BrokerUnavailableError, ConfigError, TopicNotReadyError

#: per-topic configuration (Kafka topic config names); retention in ms
TOPIC_CONFIGS = {
    "traces": {"retention.ms": str(7 * 86400_000), "compression.type": "producer"},
    "feedback": {"retention.ms": str(30 * 86400_000), "compression.type": "producer"},
    "incidents": {"retention.ms": str(90 * 86400_000)},
    # retention: Settings.dead_letter_retention_s (ensure_topics); max.message.bytes: what the
    # worker's producer may send (streams.processors.deadletters keeps every envelope below it)
    "deadletter": {"retention.ms": str(30 * 86400_000), "max.message.bytes": str(KAFKA_MAX_REQUEST_BYTES)},
    "verdicts": {"retention.ms": str(90 * 86400_000)},
    "actions": {"retention.ms": str(90 * 86400_000)},
    "signals": {"retention.ms": str(7 * 86400_000)},
}

#: the worker's faust tables (streams.worker.app); each has a compacted changelog topic
TABLES = ("baselines", "incident-state", "feedback-seen", "canary-state", "quarantine")
CHANGELOG_CONFIG = {"cleanup.policy": "compact"}


def check_broker(settings: Settings, timeout_s: float = 10.0) -> None:
    """Return when a broker at ``settings.kafka_bootstrap`` answers a metadata request.

    Raises:
        BrokerUnavailableError: none answered within ``timeout_s`` seconds (names the address
            and ``SELFHEAL_KAFKA_BOOTSTRAP``).
    """
    try:
        # log_level 0: the client's own connection errors would repeat this one every 50 ms
        AdminClient({**settings.kafka_config(), "log_level": 0}).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        reason = err.name() if hasattr(err, "name") else repr(exc)
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {settings.kafka_bootstrap} within {timeout_s:g} s ({reason}); "
            "set SELFHEAL_KAFKA_BOOTSTRAP to a running broker, or start the local one with `make kafka`") from None


def changelog_topic(settings: Settings, table: str) -> str:
    """faust's changelog topic name of ``table``: ``<app id>-<table>-changelog``."""
    return f"{settings.full_app_id}-{table}-changelog"


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Create missing topics (source and output topics, the worker's table changelogs) and wait
    until every partition of them is served by its leader; returns ``{topic: "created" | "exists"}``.

    Raises:
        ConfigError: an existing topic has a different partition count than ``settings.partitions``.
        TopicNotReadyError: partitions still not served after ``timeout_s`` s (named).
        KafkaException: the broker refused for another reason.
    """
    admin = AdminClient(settings.kafka_config())
    meta = admin.list_topics(timeout=timeout_s)
    result: dict[str, str] = {}
    new = []
    wanted = {settings.topic(name): config for name, config in TOPIC_CONFIGS.items()}
    wanted[settings.topic("deadletter")] = {**TOPIC_CONFIGS["deadletter"],
                                            "retention.ms": str(settings.dead_letter_retention_s * 1000)}
    wanted.update({changelog_topic(settings, t): CHANGELOG_CONFIG for t in TABLES})
    for topic, config in wanted.items():
        if topic in meta.topics:
            have = len(meta.topics[topic].partitions)
            if have != settings.partitions:
                raise ConfigError(f"topic {topic} has {have} partitions; SELFHEAL_PARTITIONS={settings.partitions}")
            result[topic] = "exists"
        else:
            new.append(NewTopic(topic, num_partitions=settings.partitions, replication_factor=settings.replication,
                                config=config))
    if new:
        for topic, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
            try:
                fut.result()
                result[topic] = "created"
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                result[topic] = "exists"
    wait_until_served(admin, {topic: settings.partitions for topic in wanted}, timeout_s)
    return result


#: topics an agent (producer of traces and feedback) may write; it may read none
AGENT_TOPICS = ("traces", "feedback")


def acl_bindings(settings: Settings, worker_principal: str, agent_principal: str) -> list[AclBinding]:
    """The ACLs selfheal needs on a broker with an authorizer (docs/security.md "Kafka").

    - ``worker_principal`` (worker and CLI, e.g. ``User:selfheal``): every operation on the topics
      named ``<topic_prefix>agent.*`` (sources, incidents, dead letters, verdicts) and
      ``<app id>*`` (its table changelogs and faust's internal topics), on the consumer groups
      ``<app id>*``, and cluster ``DESCRIBE`` / ``IDEMPOTENT_WRITE``;
    - ``agent_principal`` (SDK producers, e.g. ``User:agent``): ``WRITE`` and ``DESCRIBE`` on the
      trace and feedback topics only; no read, no other topic, no group.

    Returns:
        ``AclBinding`` list (confluent-kafka), all ``ALLOW`` from any host.
    """
    allow, any_host = AclPermissionType.ALLOW, "*"
    out = [AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, worker_principal, any_host,
                      AclOperation.ALL, allow)
           for prefix in (f"{settings.topic_prefix}agent.", settings.full_app_id)]
    out.append(AclBinding(ResourceType.GROUP, settings.full_app_id, ResourcePatternType.PREFIXED, worker_principal,
                          any_host, AclOperation.ALL, allow))
    out += [AclBinding(ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, worker_principal, any_host,
                       op, allow) for op in (AclOperation.DESCRIBE, AclOperation.IDEMPOTENT_WRITE)]
    out += [AclBinding(ResourceType.TOPIC, settings.topic(t), ResourcePatternType.LITERAL, agent_principal, any_host,
                       op, allow) for t in AGENT_TOPICS for op in (AclOperation.WRITE, AclOperation.DESCRIBE)]
    return out


def ensure_acls(settings: Settings, worker_principal: str, agent_principal: str, timeout_s: float = 30.0) -> int:
    """Create :func:`acl_bindings` (idempotent: an existing ACL is left as it is); returns how many.
    Run it with an admin's credentials (``settings`` of a super user or one allowed to ``ALTER``
    the cluster).

    Raises:
        KafkaException: the broker refused (e.g. no authorizer configured, or not allowed).
    """
    bindings = acl_bindings(settings, worker_principal, agent_principal)
    admin = AdminClient(settings.kafka_config())
    for fut in admin.create_acls(bindings, request_timeout=timeout_s).values():
        fut.result()
    return len(bindings)


class _NotServed(Exception):
    pass


def wait_until_served(admin: AdminClient, topics: dict[str, int], timeout_s: float = 30.0) -> None:
    """Wait until each partition of ``topics`` (``{topic: partition count}``) answers a ListOffsets
    request at its leader: the broker has loaded it and accepts produce requests (see the module
    docstring for why a producer must not write earlier). Polled with exponential backoff
    (tenacity, 50 ms doubling to 1 s).

    Raises:
        TopicNotReadyError: partitions still not served after ``timeout_s`` s; names up to 5 of
            them with the broker's or client's error.
    """
    pending = {(t, p) for t, n in topics.items() for p in range(n)}
    errors: dict[tuple[str, int], str] = {}
    request_s = max(1.0, min(10.0, timeout_s))

    def probe() -> None:
        try:
            # refresh the client's metadata first: list_offsets fails with _NOENT for a partition
            # its cached metadata does not know, and the cache is not refreshed by that failure
            admin.list_topics(timeout=request_s)
            futures = admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in sorted(pending)},
                                         request_timeout=request_s)
        except KafkaException as exc:
            raise _NotServed from exc
        for tp, fut in futures.items():
            try:
                fut.result()
                pending.discard((tp.topic, tp.partition))
            except KafkaException as exc:
                errors[(tp.topic, tp.partition)] = exc.args[0].name() if exc.args else repr(exc)
        if pending:
            raise _NotServed

    if not pending:
        return
    try:
        Retrying(retry=retry_if_exception_type(_NotServed), wait=wait_exponential(0.05, max=1.0),
                 stop=stop_after_delay(timeout_s), reraise=True)(probe)
    except _NotServed:
        shown = ", ".join(f"{t}[{p}] ({errors.get((t, p), 'no answer')})" for t, p in sorted(pending)[:5])
        raise TopicNotReadyError(f"{len(pending)} partition(s) not served by a leader after {timeout_s} s: "
                                 f"{shown}") from None


def delete_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Delete selfheal's topics and the worker's changelog topics (fresh demo runs, tests)."""
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    names = [settings.topic(n) for n in TOPIC_CONFIGS if settings.topic(n) in existing]
    # the worker's internal topics (changelogs, assignor) carry the app id as prefix
    names += [t for t in existing if t.startswith(settings.full_app_id + "-")]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=timeout_s).values():
            fut.result()


class GroupLag:
    """Progress of a consumer group over topics, ``(committed, end)`` messages summed over their
    partitions, read through one long-lived client (cheap to poll every second; librdkafka
    reconnects it by itself after a broker restart). :func:`group_lag` is the one-shot form.

    ``committed`` counts, per partition, the messages between the log start and the group's
    committed offset (0 without a commit); ``end`` counts the messages between log start and
    high watermark. The group has consumed everything when ``committed >= end``.

    Args:
        settings: broker connection and partition count (``settings.partitions`` per topic).
        group: consumer group id (the worker's is ``settings.full_app_id``).
        topic_names: full topic names (``settings.topic("traces")``, ...).
        request_timeout_s: timeout of each broker request, seconds.

    Example: ``with GroupLag(s, s.full_app_id, [s.topic("traces")]) as lag: done, end = lag()``.
    """

    def __init__(self, settings: Settings, group: str, topic_names: list[str], request_timeout_s: float = 10.0) -> None:
        self.request_timeout_s = request_timeout_s
        self.tps = [TopicPartition(t, p) for t in topic_names for p in range(settings.partitions)]
        self.consumer: Consumer | None = Consumer({**settings.kafka_config(), "group.id": group,
                                                   "enable.auto.commit": False})

    def __call__(self, retry_s: float = 60.0) -> tuple[int, int]:
        """``(committed, end)`` now. A broker that is still loading its group coordinator (a fresh
        broker answers ``NOT_COORDINATOR`` / ``COORDINATOR_LOAD_IN_PROGRESS``), electing leaders or
        restarting is asked again with exponential backoff (tenacity, 0.2 s doubling to 3 s) for up
        to ``retry_s`` seconds.

        Raises:
            KafkaException: still failing after ``retry_s``.
        """
        for attempt in Retrying(retry=retry_if_exception_type(KafkaException), wait=wait_exponential(0.2, max=3.0),
                                stop=stop_after_delay(retry_s), reraise=True):
            with attempt:
                return self.measure()
        raise AssertionError("unreachable")

    def measure(self) -> tuple[int, int]:
        """One ``(committed, end)`` reading, messages summed over the partitions, no retry.

        Raises:
            KafkaException: the broker did not answer within ``request_timeout_s``.
        """
        committed = self.consumer.committed(self.tps, timeout=self.request_timeout_s)
        done = end = 0
        for tp, c in zip(self.tps, committed, strict=True):
            lo, hi = self.consumer.get_watermark_offsets(tp, timeout=self.request_timeout_s, cached=False)
            end += hi - lo
            done += max(c.offset, lo) - lo if c.offset >= 0 else 0
        return done, end

    def close(self) -> None:
        """Close the client (idempotent)."""
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def __enter__(self) -> GroupLag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def group_lag(settings: Settings, group: str, topic_names: list[str], retry_s: float = 60.0) -> tuple[int, int]:
    """``(committed, end)`` messages of consumer group ``group`` summed over the partitions of
    ``topic_names`` (full names), as :class:`GroupLag` defines them; each attempt opens a fresh
    client, retried with backoff for up to ``retry_s`` seconds (a fresh broker answers
    ``NOT_COORDINATOR`` while it loads its group coordinator).

    Raises:
        KafkaException: still failing after ``retry_s``.
    """
    for attempt in Retrying(retry=retry_if_exception_type(KafkaException), wait=wait_exponential(0.2, max=3.0),
                            stop=stop_after_delay(retry_s), reraise=True):
        with attempt, GroupLag(settings, group, topic_names) as lag:
            return lag.measure()
    raise AssertionError("unreachable")


def committed_offsets(settings: Settings, group: str, topic: str, partitions: list[int],
                      timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """Next offset to process per partition for consumer group ``group``: its committed offset,
    or the partition's first offset when it has none (``auto.offset.reset=earliest``).

    Raises:
        KafkaException: the broker did not answer within ``timeout_s``.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_config(), "group.id": group, "enable.auto.commit": False})
    try:
        out = {}
        for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s):
            if tp.offset >= 0:
                out[(topic, tp.partition)] = tp.offset
            else:
                low, _ = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
                out[(topic, tp.partition)] = low
        return out
    finally:
        consumer.close()
