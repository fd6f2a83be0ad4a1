"""deploy/compose/docker-compose.yml agrees with the code (no Docker engine here, so it is parsed)."""

from pathlib import Path

import yaml

from streams.config import TOPICS, Settings

COMPOSE = Path(__file__).resolve().parents[2] / "deploy/compose/docker-compose.yml"


def load():
    return yaml.safe_load(COMPOSE.read_text())


def test_services_present():
    services = load()["services"]
    assert {"kafka", "clickhouse", "init", "worker"} <= set(services)
    assert services["worker"]["command"] == ["selfheal", "worker"]


def test_worker_settings_are_real_settings_and_point_at_the_services():
    doc = load()
    env = doc["services"]["worker"]["environment"]
    fields = set(Settings.model_fields)
    for key in env:
        assert key.startswith("SELFHEAL_")
        name = key.removeprefix("SELFHEAL_").lower().removesuffix("_file")
        assert name in fields, f"{key} is not a setting"
    s = Settings(**{k.removeprefix("SELFHEAL_").lower(): v for k, v in env.items() if not k.endswith("_FILE")})
    kafka = doc["services"]["kafka"]
    host, port = s.kafka_bootstrap.split(":")
    assert f"PLAINTEXT://{host}:{port}" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"{port}:{port}" in kafka["ports"]
    ch = doc["services"]["clickhouse"]
    assert s.clickhouse_url == "http://clickhouse:8123" and "8123:8123" in ch["ports"]
    assert ch["environment"]["CLICKHOUSE_DB"] == s.clickhouse_database
    assert int(kafka["environment"]["KAFKA_NUM_PARTITIONS"]) == s.partitions
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # selfheal creates topics
    assert set(TOPICS) >= {"traces", "feedback", "incidents", "deadletter"}


def test_secrets_come_from_files_not_the_environment():
    env = load()["services"]["worker"]["environment"]
    assert "SELFHEAL_CLICKHOUSE_PASSWORD" not in env and "SELFHEAL_CLICKHOUSE_PASSWORD_FILE" in env
