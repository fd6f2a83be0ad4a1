"""deploy/prometheus and the docs agree with the metric catalogue and the compose file: rules.yml is
a valid rule file whose expressions name only exported metrics, every metric docs/rollout.md and
docs/otlp.md name is exported, Prometheus scrapes the workers' web port and mounts the rules;
``promtool`` (Debian package ``prometheus``) checks the files and runs the alert unit tests of
rules_test.yml where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas import DeadLetter
from streams.config import Settings
from streams.otlp.service import OtlpService
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


def names_in(exposition: str) -> set[str]:
    """The names a reader may write for the metrics of an exposition: every sample name
    (``selfheal_traces_total``, ``..._seconds_bucket``), every family name (a histogram's
    ``..._seconds``) and a counter family's ``_total`` name even before its first labelled sample."""
    names = set()
    for fam in text_string_to_metric_families(exposition):
        names |= {fam.name, *(s.name for s in fam.samples)}
        if fam.type == "counter":
            names.add(f"{fam.name}_total")
    return names


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


def test_every_metric_the_docs_name_is_exported(tmp_path):
    worker = WorkerTelemetry(counters=lambda: dict.fromkeys(STATS_COUNTERS, 1), lag=lambda: {("t", 0): 1},
                             open_incidents=lambda: [("safety", "high")], rebalances=lambda: 1)
    worker_names = names_in(worker.render().decode())
    # the OTLP receiver's metrics (streams.otlp.service): its own registry, no broker needed to render it
    service = OtlpService(Settings(kafka_bootstrap="127.0.0.1:1", state_dir=tmp_path))
    try:
        otlp_names = names_in(generate_latest(service.registry).decode())
    finally:
        service.close()
    assert any(n.startswith("selfheal_otlp_") for n in otlp_names) and "selfheal_traces_total" in worker_names
    for doc in ("docs/rollout.md", "docs/otlp.md"):
        named = set(re.findall(r"\bselfheal_[a-z0-9_]*[a-z0-9]\b", (ROOT / doc).read_text()))
        assert named, f"{doc} names no metric: this test would check nothing"
        unknown = {n for n in named if n not in (otlp_names if n.startswith("selfheal_otlp_") else worker_names)}
        assert not unknown, f"{doc} names metrics nobody exports: {sorted(unknown)}"


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
