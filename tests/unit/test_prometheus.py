"""deploy/prometheus agrees with the metric catalogue and the compose file: rules.yml is a valid
rule file whose expressions name only exported metrics, Prometheus scrapes the workers' web port
and mounts the rules; ``promtool`` (Debian package ``prometheus``) checks the files and runs the
alert unit tests of rules_test.yml where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from schemas import DeadLetter
from streams.config import Settings
from streams.telemetry import STATS_COUNTERS, WorkerTelemetry

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy/prometheus"
COMPOSE = ROOT / "deploy/compose/docker-compose.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus); YAML checks still ran")


def rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def exported_names() -> set[str]:
    """Every sample name a worker exports (all label sets touched once, so each family shows)."""
    t = WorkerTelemetry(counters=lambda: dict.fromkeys(STATS_COUNTERS, 1), lag=lambda: {("t", 0): 1},
                        open_incidents=lambda: [("safety", "high")], rebalances=lambda: 1)
    dl = DeadLetter.model_construct(error_class="validation")
    t.on_batch("traces", 1, [dl], [], [])
    t.observe_sink_write("write_traces", 0.01)
    with t.changelog_ack_wait("traces"):
        pass
    return {s.name for fam in text_string_to_metric_families(t.render().decode()) for s in fam.samples}


def test_rule_file_structure():
    doc = yaml.safe_load((PROM / "rules.yml").read_text())
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    alerts = [r["alert"] for r in rules()]
    assert len(alerts) == len(set(alerts))
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"page", "ticket", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
    # the alerts: open high-severity incidents, stalled consumption / growing lag,
    # dead-letter rate, sink write failures
    assert {"SelfhealHighSeverityIncidentOpen", "SelfhealConsumptionStalled", "SelfhealConsumerLagGrowing",
            "SelfhealDeadLetterRate", "SelfhealSinkWriteFailing"} <= set(alerts)


def test_rule_expressions_name_only_exported_metrics():
    exported = exported_names()
    for rule in rules():
        used = set(re.findall(r"\bselfheal_[a-z_]+\b", rule["expr"]))
        assert used <= exported, (rule["alert"], used - exported)


def test_compose_runs_prometheus_with_the_rules_and_it_scrapes_the_workers_web_port():
    compose = yaml.safe_load(COMPOSE.read_text())
    prom = compose["services"]["prometheus"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in prom["volumes"]}
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert mounts["../prometheus/rules.yml"] in config["rule_files"]
    assert mounts["../prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    env = compose["services"]["worker"]["environment"]
    worker = Settings(**{k.removeprefix("SELFHEAL_").lower(): v for k, v in env.items() if not k.endswith("_FILE")})
    assert worker.web_enabled and worker.web_bind == "0.0.0.0"
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == worker.web_port and job["metrics_path"] == "/metrics"
    assert "api_tokens" in compose["services"]["worker"]["secrets"]
    assert env["SELFHEAL_API_TOKENS_PATH"] == "/run/secrets/api_tokens"


@needs_promtool
def test_promtool_accepts_the_files_and_the_alerts_fire_as_specified():
    for args in (["check", "rules", "rules.yml"], ["check", "config", "--syntax-only", "prometheus.yml"],
                 ["test", "rules", "rules_test.yml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
