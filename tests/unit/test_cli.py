"""The product CLI as a newcomer meets it: errors a user can cause are one line naming the setting
to change (no traceback, exit code != 0), and tables fit an 80-column terminal."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from rich.console import Console

import streams.cli as cli
from streams.config import Settings
from streams.errors import BrokerUnavailableError
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import check_broker
from tests.conftest import ROOT

#: values as long as the demo's (the 80-column table cut them to "releas…", "northw…")
LONG = ("release_regression", "northwind-health", "patient_message_reply", "rel-2026-11-20-canary",
        "safety_feedback_rate", "freeze_rollout", "tenant_cohort_workflow", "inconclusive")


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m streams.cli *args`` with only ``env`` (and this checkout's ``src``) as environment."""
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "COLUMNS": "80", **env})


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfheal: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("command", [("incidents", "northwind-health"), ("scorecard", "--release", "rel-2"),
                                     ("refresh-patterns",)])
def test_no_store_at_the_path_is_one_line_naming_the_setting(tmp_path, command):
    nowhere = tmp_path / "nowhere" / "clickhouse"
    proc = run_cli(*command, SELFHEAL_CLICKHOUSE_PATH=str(nowhere), SELFHEAL_STATE_DIR=str(tmp_path))
    assert_one_line_error(proc, 2, f"no ClickHouse store at {nowhere}", "SELFHEAL_CLICKHOUSE_PATH")
    assert not nowhere.exists()  # reading creates nothing


def test_a_store_without_the_database_is_one_line_naming_the_setting(tmp_path):
    # what `make demo` then `selfheal incidents` met: a chDB directory nothing was written to
    empty = tmp_path / "clickhouse"
    ClickHouseSink(Settings(state_dir=tmp_path, clickhouse_path=empty, clickhouse_url=None)).close()
    proc = run_cli("incidents", "northwind-health", SELFHEAL_CLICKHOUSE_PATH=str(empty))
    assert_one_line_error(proc, 2, "has no database 'selfheal'", "SELFHEAL_CLICKHOUSE_PATH")


def test_unknown_and_invalid_tenants_are_one_line(tmp_path):
    settings = Settings(state_dir=tmp_path, clickhouse_path=tmp_path / "ch", clickhouse_url=None)
    sink = ClickHouseSink(settings)
    sink.migrate()
    sink.close()
    env = {"SELFHEAL_CLICKHOUSE_PATH": str(settings.clickhouse_dir)}
    assert_one_line_error(run_cli("incidents", "nobody", **env), 1, "no traces and no incidents of tenant 'nobody'",
                          "SELFHEAL_CLICKHOUSE_PATH")
    assert_one_line_error(run_cli("incidents", "Not A Slug", **env), 2, "not a valid tenant slug")


def test_no_broker_is_one_line_naming_the_setting():
    proc = run_cli("topics", SELFHEAL_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert_one_line_error(proc, 2, "no Kafka broker answered at 127.0.0.1:1", "SELFHEAL_KAFKA_BOOTSTRAP")


def test_check_broker_raises_a_config_error_naming_the_address():
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:1 within 1 s .*SELFHEAL_KAFKA_BOOTSTRAP"):
        check_broker(Settings(kafka_bootstrap="127.0.0.1:1"), timeout_s=1.0)


#: a scorecard as the sink returns it, with figures as wide as real ones
VERDICTS = [("v1", 11, "northwind-health", "oncology", "patient_message_reply", "canary", 50.0, "rollback", "standard",
             "", "rollback: correction_rate +114%", 1370, 1214, 1470, datetime(2026, 1, 1, tzinfo=UTC))]
METRICS = [("v1", m, role, status, unit, c, t, 1.14, -0.88, 7.33, 7.7e-10, 123_456, 120_001)
           for m, role, status, unit, c, t in (
               ("correction_rate", "success", "harm", "rate", 0.14, 0.28),
               ("latency_p95", "success", "non_inferior", "ms", 11_484.0, 10_970.0),
               ("cost", "success", "inconclusive", "USD", 0.0212, 0.0207),
               ("safety_feedback_rate", "guardrail", "inconclusive", "rate", 0.0104, 0.0224))]
INCIDENTS = [
    ("2103d5521579edb34ee0", "resolved", "release_regression", "tenant_cohort_workflow", "oncology",
     "patient_message_reply", "correction_rate", 0.1232, 0.2936, "high", "roll_back", "rel-2026-11-20-canary", "s"),
    ("f7a984c97937d28a5a05", "updated", "release_regression", "release", "cardiology", "", "latency_p95", 7813.0,
     14320.0, "medium", "freeze_rollout", "rel-2026-11-18-rc1", "s")]


class _FakeTenant:
    def incidents(self, status: str | None = None) -> list[tuple]:
        return INCIDENTS

    def trace_count(self) -> int:
        return 1

    def scorecards(self, release: str) -> tuple[list[tuple], list[tuple]]:
        return VERDICTS, METRICS


class _FakeSink:
    """What the table commands read."""

    location = "chdb:///tmp/x"

    def for_tenant(self, tenant: str) -> _FakeTenant:
        return _FakeTenant()

    def scorecards(self, release: str) -> tuple[list[tuple], list[tuple]]:
        return VERDICTS, METRICS

    def close(self) -> None:
        pass


@pytest.mark.parametrize("args", [["incidents", "northwind-health"],
                                  ["scorecard", "--release", "rel-2026-11-20-canary", "--tenant", "northwind-health"]])
def test_tables_fit_80_columns_and_cut_nothing(monkeypatch, args):
    from typer.testing import CliRunner

    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=80, color_system=None))
    monkeypatch.setattr(cli, "open_store", lambda settings: _FakeSink())
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    shown = [v for v in LONG if v in text]
    assert len(shown) >= 4 and all(v in text for v in ("northwind-health", "rel-2026-11-20-canary")), text
    if args[0] == "scorecard":
        assert all(m[1] in text for m in METRICS) and "123,456" in text and "p=7.7e-10" in text
    else:
        assert all(v in text for v in ("2103d5521579edb34ee0", "release_regression", "patient_message_reply",
                                       "tenant_cohort_workflow", "freeze_rollout", "0.1232 → 0.2936"))
