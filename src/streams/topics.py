"""Topic administration with confluent-kafka's AdminClient: create selfheal's topics up front.

Source topics must exist with the intended partition count before workers start (faust's
auto-create ignores it, ../shared/INFRA.md). All are keyed by tenant_id.

The worker's table changelogs (``<app id>-<table>-changelog``, compacted) are created here too,
and by the worker itself before faust starts. faust declares them when each table starts, and
measured here that raced the group's first assignment: the assignor ignored the missing
``canary-state`` changelog (so its partitions were not recovered), and in 1 demo run of 8 the
first changelog send to it waited for the topic's metadata until the batch failed after
``changelog_ack_timeout_s``.
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Settings
from streams.errors import ConfigError

#: per-topic configuration (Kafka topic config names); retention in ms
TOPIC_CONFIGS = {
    "traces": {"retention.ms": str(7 * 86400_000), "compression.type": "producer"},
    "feedback": {"retention.ms": str(30 * 86400_000), "compression.type": "producer"},
    "incidents": {"retention.ms": str(90 * 86400_000)},
    "deadletter": {"retention.ms": str(30 * 86400_000)},
    "verdicts": {"retention.ms": str(90 * 86400_000)},
}

#: the worker's faust tables (streams.app); each has a compacted changelog topic
TABLES = ("baselines", "incident-state", "feedback-seen", "canary-state")
CHANGELOG_CONFIG = {"cleanup.policy": "compact"}


def changelog_topic(settings: Settings, table: str) -> str:
    """faust's changelog topic name of ``table``: ``<app id>-<table>-changelog``."""
    return f"{settings.full_app_id}-{table}-changelog"


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Create missing topics (source and output topics, the worker's table changelogs); returns
    ``{topic: "created" | "exists"}``.

    Raises:
        ConfigError: an existing topic has a different partition count than ``settings.partitions``.
        KafkaException: the broker refused for another reason.
    """
    admin = AdminClient(settings.kafka_config())
    meta = admin.list_topics(timeout=timeout_s)
    result: dict[str, str] = {}
    new = []
    wanted = {settings.topic(name): config for name, config in TOPIC_CONFIGS.items()}
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
    return result


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
