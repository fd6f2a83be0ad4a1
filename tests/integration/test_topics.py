"""Topic set-up on the real broker: source topics and the worker's table changelogs up front."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from streams.topics import TABLES, changelog_topic, ensure_topics

pytestmark = pytest.mark.integration


def test_ensure_topics_creates_compacted_changelogs_before_any_worker(settings):
    first = ensure_topics(settings)
    changelogs = [changelog_topic(settings, t) for t in TABLES]
    assert changelogs == [f"{settings.full_app_id}-{t}-changelog" for t in
                          ("baselines", "incident-state", "feedback-seen", "canary-state")]
    assert {first[t] for t in changelogs} == {"created"}
    admin = AdminClient(settings.kafka_config())
    meta = admin.list_topics(timeout=10).topics
    for topic in [*changelogs, settings.topic("traces"), settings.topic("feedback")]:
        assert len(meta[topic].partitions) == settings.partitions, topic
    for res, fut in admin.describe_configs([ConfigResource("topic", t) for t in changelogs]).items():
        assert fut.result()["cleanup.policy"].value == "compact", res
    assert set(ensure_topics(settings).values()) == {"exists"}  # idempotent: the worker calls it at every start
