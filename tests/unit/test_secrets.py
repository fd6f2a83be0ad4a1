"""Secrets come from the environment or files only and never appear in reprs or error messages."""

from __future__ import annotations

import logging

import pytest

from streams.config import Settings
from streams.errors import ConfigError, SinkError
from streams.sinks.clickhouse import ClickHouseSink, safe_url

SECRET = "hunter2-Secret-value"


def test_secrets_from_env_are_hidden_in_repr_and_dumps(monkeypatch):
    monkeypatch.setenv("SELFHEAL_CLICKHOUSE_PASSWORD", SECRET)
    monkeypatch.setenv("SELFHEAL_KAFKA_SASL_PASSWORD", SECRET)
    s = Settings()
    assert s.clickhouse_password.get_secret_value() == SECRET
    for text in (repr(s), str(s), s.model_dump_json()):
        assert SECRET not in text


def test_secrets_from_files(monkeypatch, tmp_path):
    f = tmp_path / "ch-password"
    f.write_text(SECRET + "\n")
    monkeypatch.setenv("SELFHEAL_CLICKHOUSE_PASSWORD_FILE", str(f))
    assert Settings().clickhouse_password.get_secret_value() == SECRET
    monkeypatch.setenv("SELFHEAL_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="SELFHEAL_CLICKHOUSE_PASSWORD_FILE"):
        Settings()


def test_safe_url_drops_credentials():
    assert safe_url("https://admin:pw@ch.internal:8443/db?x=1") == "https://ch.internal:8443/db?x=1"
    assert safe_url("http://ch:8123") == "http://ch:8123"


def test_a_failing_connection_does_not_leak_the_password(caplog):
    s = Settings(clickhouse_url=f"http://admin:{SECRET}@127.0.0.1:1", clickhouse_password=SECRET)
    with caplog.at_level(logging.DEBUG), pytest.raises(SinkError) as err:
        ClickHouseSink(s)
    assert "127.0.0.1:1" in str(err.value)
    assert SECRET not in str(err.value) and err.value.__cause__ is None
    assert SECRET not in caplog.text


def test_the_database_name_must_be_a_plain_identifier():
    with pytest.raises(ValueError, match="clickhouse_database"):
        Settings(clickhouse_database="selfheal; DROP DATABASE x")
