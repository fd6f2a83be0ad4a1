"""Kafka security for real (issue 18, item 4): the project's own broker started by
``scripts/kafka.sh`` in its SASL mode (SASL_PLAINTEXT, SCRAM-SHA-512 users added at format time,
StandardAuthorizer), the ACLs of :func:`streams.topics.acl_bindings` created through the Admin
API, and the CLI, the worker and the SDK running with credentials read from secret files
(``SELFHEAL_KAFKA_SASL_PASSWORD_FILE``). The worker's principal reads and writes selfheal's
topics, changelogs and consumer group; the agent's principal may only write the trace and
feedback topics: reading incidents (or traces) and writing incidents are refused."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from streams.config import Settings
from streams.devtools.launcher import WorkerProcess, worker_env
from streams.sdk import SelfhealProducer
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_acls
from tests.conftest import free_port_pair, kafka_producer, wait_caught_up
from tests.factories import trace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
USERS = ("admin", "selfheal", "agent")


@pytest.fixture
def sasl_broker(tmp_path: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    """A SASL/SCRAM + ACL broker of its own; yields its bootstrap and each user's password file."""
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    passwords = {u: secrets.token_hex(12) for u in USERS}
    users_file = secret_dir / "kafka-users"
    users_file.write_text("".join(f"{u}:{p}\n" for u, p in passwords.items()))
    files = {}
    for u, p in passwords.items():
        files[u] = secret_dir / f"{u}.password"
        files[u].write_text(p + "\n")
    port = free_port_pair()
    env = {**os.environ, "SELFHEAL_KAFKA_PORT": str(port), "SELFHEAL_STATE_DIR": str(tmp_path / "broker"),
           "SELFHEAL_KAFKA_HEAP": "384m", "SELFHEAL_KAFKA_SASL_USERS_FILE": str(users_file)}
    started = subprocess.run([str(ROOT / "scripts/kafka.sh"), "start"], env=env, capture_output=True, text=True,
                             timeout=200, check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}", files
    finally:
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "stop"], env=env, check=False, timeout=60)


def _settings(tmp_path: Path, bootstrap: str, user: str, prefix: str) -> Settings:
    return Settings(kafka_bootstrap=bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
                    kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=user, topic_prefix=prefix,
                    state_dir=tmp_path / "state", clickhouse_path=tmp_path / "clickhouse")


def _env(settings: Settings, password_file: Path) -> dict[str, str]:
    return worker_env(settings, {"PYTHONPATH": str(ROOT / "src"),
                                 "SELFHEAL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                 "SELFHEAL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                 "SELFHEAL_KAFKA_SASL_USERNAME": settings.kafka_sasl_username or "",
                                 "SELFHEAL_KAFKA_SASL_PASSWORD_FILE": str(password_file)})


def _read(settings: Settings, topic: str) -> tuple[str | None, list[str], int]:
    """What a consumer of ``settings`` gets reading ``topic``: ``(metadata error, fetch errors,
    messages read)`` over ~10 s (partitions assigned; its group ``probe`` is allowed by the test, so
    a refusal is about the topic, not the group)."""
    errors: list[str] = []
    consumer = Consumer({**settings.kafka_config(), "group.id": "probe", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "error_cb": lambda e: errors.append(e.name())})
    read = 0
    try:
        try:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            meta_error = meta.error.name() if meta is not None and meta.error is not None else None
        except KafkaException as exc:  # no metadata at all (e.g. authentication failed)
            return exc.args[0].name(), errors, 0
        consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
        for _ in range(20):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error():
                errors.append(msg.error().name())
            elif msg is not None:
                read += 1
        return meta_error, errors, read
    finally:
        consumer.close()


def test_agents_write_only_traces_and_feedback_and_the_worker_runs_with_its_own_principal(
        sasl_broker, tmp_path, monkeypatch):
    bootstrap, password_files = sasl_broker
    prefix = f"s{uuid.uuid4().hex[:8]}."
    roles = {u: _settings(tmp_path, bootstrap, u, prefix) for u in USERS}
    for user in USERS:  # credentials come from the secret files (SELFHEAL_KAFKA_SASL_PASSWORD_FILE)
        monkeypatch.setenv("SELFHEAL_KAFKA_SASL_PASSWORD_FILE", str(password_files[user]))
        roles[user] = Settings(**{k: v for k, v in roles[user].model_dump().items() if k != "kafka_sasl_password"})
        assert roles[user].kafka_sasl_password.get_secret_value() == password_files[user].read_text().strip()
    monkeypatch.delenv("SELFHEAL_KAFKA_SASL_PASSWORD_FILE")
    admin, worker_s, agent = roles["admin"], roles["selfheal"], roles["agent"]

    assert ensure_acls(admin, "User:selfheal", "User:agent") > 0
    # for the read probes only: the agent may use the group "probe" (a group ACL grants no topic)
    probe = AclBinding(ResourceType.GROUP, "probe", ResourcePatternType.LITERAL, "User:agent", "*",
                       AclOperation.READ, AclPermissionType.ALLOW)
    admin_client = AdminClient(admin.kafka_config())
    for fut in admin_client.create_acls([probe]).values():
        fut.result()
    del admin_client
    # the CLI as the worker's principal creates selfheal's topics and changelogs
    cli = subprocess.run([sys.executable, "-m", "streams.cli", "topics"],
                         env=_env(worker_s, password_files["selfheal"]), capture_output=True, text=True, timeout=120,
                         check=False)
    assert cli.returncode == 0, cli.stdout + cli.stderr

    worker = WorkerProcess(_env(worker_s, password_files["selfheal"]), tmp_path / "worker.log")
    worker.start()
    try:
        with SelfhealProducer(agent) as sdk:  # the agent writes traces (its idempotent producer included)
            for i in range(30):
                sdk.send_trace(trace(i))
        # the agent may not read incidents (not even see the topic), nor the traces it writes
        with kafka_producer(worker_s.kafka_config()) as p:  # the worker's principal writes incidents
            p.produce(worker_s.topic("incidents"), b"an incident", key=b"acme")
            assert p.flush(30) == 0
        assert _read(worker_s, worker_s.topic("incidents"))[2] == 1
        meta_error, _, read = _read(agent, worker_s.topic("incidents"))
        assert (meta_error, read) == ("TOPIC_AUTHORIZATION_FAILED", 0)
        _, errors, read = _read(agent, worker_s.topic("traces"))
        assert "TOPIC_AUTHORIZATION_FAILED" in errors and read == 0, errors
        refusals: list[KafkaError] = []
        with kafka_producer({**agent.kafka_config(), "message.timeout.ms": 10_000}) as producer:
            producer.produce(worker_s.topic("incidents"), b"forged", key=b"acme",
                             on_delivery=lambda err, _msg: refusals.append(err))
            producer.flush(20)
        assert [e.name() for e in refusals] == ["TOPIC_AUTHORIZATION_FAILED"]
        # a wrong password is refused
        wrong = Settings(**{**agent.model_dump(), "kafka_sasl_password": "not-the-password"})
        meta_error, errors, _ = _read(wrong, worker_s.topic("traces"))
        assert "_AUTHENTICATION" in errors, (meta_error, errors)
        wait_caught_up(worker_s, ["traces"], worker=worker)
        assert worker.stop() == 0, worker.log.read_text()[-3000:]
    finally:
        if worker.alive():
            worker.kill()
    with ClickHouseSink(worker_s) as sink:
        assert sink.query("SELECT count() FROM {db}.traces FINAL")[0][0] == 30
