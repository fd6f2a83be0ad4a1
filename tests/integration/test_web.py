"""The worker's web endpoints on the real broker and worker, read with a real HTTP client (aiohttp):
``/metrics`` parsed with prometheus_client's own parser (counters move with real traffic), and the
read API for rollout controllers (verdicts, open incidents, missing and cross-tenant tokens).

The traffic is the seeded safety-guardrail rollout of tests/integration/test_canary.py (tenant
``globex``, one cohort, 6,000 traces per arm side): its canary scorecard ends in ``rollback``,
which opens a release-regression incident; two empty messages add dead letters.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.devtools.bench_canary import ArmEffect, CohortPlan
from streams.topics import ensure_topics
from tests.conftest import kafka_producer, wait_caught_up
from tests.integration.test_canary import RELEASE, crafted, send

pytestmark = pytest.mark.integration

TENANT, OTHER = "globex", "acme"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def get(url: str, token: str | None = None) -> tuple[int, str, dict]:
    """``(status, body text, headers)`` of a GET (aiohttp client)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def fetch(url: str, token: str | None = None) -> tuple[int, str, dict]:
    return asyncio.run(get(url, token))


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus_client: (sample name, sorted labels) → value."""
    status, body, headers = fetch(f"{base}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), (status, headers)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))


def wait_for_web(base: str, worker, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.alive(), worker.log.read_text()[-3000:]
        try:
            if fetch(f"{base}/metrics")[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no /metrics at {base} within {timeout_s} s")


def test_metrics_move_with_traffic_and_the_read_api_serves_each_tenant_only_its_own(settings, worker_factory,
                                                                                     tmp_path):
    ensure_topics(settings)
    tokens = {TENANT: secrets.token_hex(16), OTHER: secrets.token_hex(16)}
    tokens_file = tmp_path / "api-tokens.json"
    tokens_file.write_text(json.dumps({t: [v] for t, v in tokens.items()}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = worker_factory({"SELFHEAL_WEB_ENABLED": "true", "SELFHEAL_WEB_PORT": str(port),
                             "SELFHEAL_API_TOKENS_PATH": str(tokens_file)})
    wait_for_web(base, worker)
    before = scrape(base)
    assert total(before, "selfheal_traces_total") == 0
    assert total(before, "selfheal_verdicts_total", verdict="rollback") == 0

    plan = CohortPlan("cardiology", 50.0, ArmEffect(safety=4.0, correction=0.8, latency=0.9, escalation=0.7),
                      tenant=TENANT, release=RELEASE)
    records = crafted([plan], 6_000, seed=1)
    send(settings, records)
    with kafka_producer(settings.kafka_config()) as p:
        for _ in range(2):
            p.produce(settings.topic("traces"), b"", key=TENANT.encode())
        p.flush(30)
    wait_caught_up(settings, ["traces", "feedback"], timeout_s=600, worker=worker)

    after = scrape(base)
    traces_sent = sum(1 for kind, _ in records if kind == "trace")
    assert total(after, "selfheal_traces_total") == traces_sent
    assert total(after, "selfheal_feedback_total") > 0
    assert total(after, "selfheal_feedback_submissions_total", status="new") > 0
    assert total(after, "selfheal_messages_processed_total", source="traces") > 0
    assert total(after, "selfheal_dead_letters_total", source="traces", reason="empty") == 2
    assert total(after, "selfheal_verdicts_total", verdict="rollback") >= 1
    assert total(after, "selfheal_incident_events_total", kind="release_regression", status="open") >= 1
    assert total(after, "selfheal_sink_write_duration_seconds_count", operation="write_traces") > 0
    assert total(after, "selfheal_changelog_ack_wait_seconds_count", source="traces") > 0
    assert total(after, "selfheal_rebalances_total") >= 1
    sources = {settings.topic("traces"), settings.topic("feedback")}  # (the action and signal topics carry none here)
    lag = {lab: v for (n, lab), v in after.items()
           if n == "selfheal_consumer_lag_messages" and dict(lab)["topic"] in sources}
    assert len(lag) == 2 * settings.partitions and all(v == 0 for v in lag.values()), lag  # caught up

    # verdicts: the tenant's own token reads the rollback; missing, unknown and other tenants' tokens do not
    url = f"{base}/v1/verdicts/{TENANT}/{RELEASE}"
    status, body, _ = fetch(url, tokens[TENANT])
    assert status == 200, body
    doc = json.loads(body)
    assert doc["verdict"] == "rollback" and doc["tenant"] == TENANT and doc["release"] == RELEASE
    assert {(s["cohort"], s["arm"], s["verdict"]) for s in doc["scorecards"]} >= {("cardiology", "canary", "rollback")}
    status, body, headers = fetch(url)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), body
    assert fetch(url, "x" * 32)[0] == 401
    status, body, _ = fetch(url, tokens[OTHER])
    assert status == 403 and TENANT in json.loads(body)["error"]
    assert fetch(f"{base}/v1/verdicts/{TENANT}/no-such-release", tokens[TENANT])[0] == 404
    # the status-code gate of webhooks (Flagger): 409 unless the verdict is an expected one
    assert fetch(f"{url}?expect=rollback", tokens[TENANT])[0] == 200
    assert fetch(f"{url}?expect=promote,hold", tokens[TENANT])[0] == 409
    assert fetch(f"{url}?expect=maybe", tokens[TENANT])[0] == 400

    # open incidents: the rollback's release-regression incident, as the open gauge counts it
    status, body, _ = fetch(f"{base}/v1/incidents?tenant={TENANT}&status=open", tokens[TENANT])
    assert status == 200, body
    doc = json.loads(body)
    assert all(i["slice"]["tenant_id"] == TENANT for i in doc["incidents"])
    assert doc["count"] == len(doc["incidents"]) == total(after, "selfheal_open_incidents")
    assert any(i["kind"] == "release_regression" and i["release_id"] == RELEASE for i in doc["incidents"]), doc
    assert fetch(f"{base}/v1/incidents?tenant={TENANT}", tokens[OTHER])[0] == 403
    assert fetch(f"{base}/v1/incidents?tenant={TENANT}")[0] == 401
    status, body, _ = fetch(f"{base}/v1/incidents?tenant={OTHER}", tokens[OTHER])
    assert status == 200 and json.loads(body)["incidents"] == []
    assert fetch(f"{base}/v1/incidents?tenant={TENANT}&status=resolved", tokens[TENANT])[0] == 400
    # faust's own table pages are off (they would show state without a token)
    assert fetch(f"{base}/table/incident-state/")[0] == 404
    assert worker.stop() == 0


def test_any_worker_answers_for_a_tenant_by_routing_to_the_owner(settings, worker_factory, tmp_path):
    """Two workers split the partitions; the tenant's state sits on one of them. Both answer the
    same document: the other forwards the request (with the token) to the owner it finds in
    faust's table metadata. The non-owner holds no scorecard, so without the forward it would
    answer 404."""
    ensure_topics(settings)
    token = secrets.token_hex(16)
    tokens_file = tmp_path / "api-tokens.json"
    tokens_file.write_text(json.dumps({TENANT: [token]}))
    ports = [free_port(), free_port()]
    # one chDB directory per worker process (chDB admits one process), as in test_scale_out
    workers = [worker_factory({"SELFHEAL_WEB_ENABLED": "true", "SELFHEAL_WEB_PORT": str(port),
                               "SELFHEAL_WEB_HOST": "127.0.0.1", "SELFHEAL_API_TOKENS_PATH": str(tokens_file),
                               "SELFHEAL_STATE_DIR": str(tmp_path / f"w{i}" / "state"),
                               "SELFHEAL_CLICKHOUSE_PATH": str(tmp_path / f"w{i}" / "clickhouse")}, name=f"w{i}")
               for i, port in enumerate(ports)]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    for base, w in zip(bases, workers, strict=True):
        wait_for_web(base, w)
    send(settings, crafted([CohortPlan("cardiology", 50.0, tenant=TENANT, release=RELEASE)], 1_000, seed=3))
    wait_caught_up(settings, ["traces", "feedback"], timeout_s=600, worker=workers[0])
    owners = []
    for base in bases:  # both workers took partitions (3/3), and only the owner counted the tenant's traces
        deadline = time.monotonic() + 60  # a partition's lag is known from the consumer's first fetch of it
        while True:
            m = scrape(base)
            lags = {lab for (n, lab) in m if n == "selfheal_consumer_lag_messages"
                    and dict(lab)["topic"] in {settings.topic("traces"), settings.topic("feedback")}}
            if len(lags) == settings.partitions or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(lags) == settings.partitions, lags
        owners.append(total(m, "selfheal_canary_rollout_traces_total") > 0)
    assert sorted(owners) == [False, True], owners
    docs = []
    deadline = time.monotonic() + 60
    for base in bases:
        while True:  # 503 while an assignment is still settling
            status, body, _ = fetch(f"{base}/v1/verdicts/{TENANT}/{RELEASE}", token)
            if status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 200, (base, status, body)
        docs.append(json.loads(body))
    assert docs[0] == docs[1] and docs[0]["scorecards"], docs
    assert fetch(f"{bases[owners.index(False)]}/v1/incidents?tenant={TENANT}", token)[0] == 200
    for w in workers:
        assert w.stop() == 0
