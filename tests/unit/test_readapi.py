"""The read API's framework-free parts (streams.readapi): tenant tokens (401 / 403, constant-time
comparison over every token, file errors), the tenant's partition, the verdict document, and the
canary state it reads (CanaryMonitor.scorecards through the real pipeline)."""

from __future__ import annotations

import json

import pytest

from schemas import default_codec
from streams.config import Settings
from streams.errors import ConfigError
from streams.pipeline import Pipeline
from streams.processors.columns import RawMessage
from streams.readapi import AccessDenied, TenantTokens, expected_status, tenant_partition, verdict_document
from tests.factories import now_ms, trace

A, B = "a" * 32, "b" * 32


def test_own_token_passes_other_tenants_token_is_403_missing_or_unknown_is_401():
    tokens = TenantTokens({"acme": [A], "globex": B})
    tokens.authorize(f"Bearer {A}", "acme")
    tokens.authorize(f"bearer {B}", "globex")
    with pytest.raises(AccessDenied) as exc:
        tokens.authorize(f"Bearer {A}", "globex")
    assert exc.value.status == 403 and "globex" in str(exc.value)
    for header in (None, "", "Bearer", "Bearer  ", f"Basic {A}", A, "Bearer " + "c" * 32, f"Bearer {A}x"):
        with pytest.raises(AccessDenied) as exc:
            tokens.authorize(header, "acme")
        assert exc.value.status == 401, header


def test_every_token_is_compared_without_stopping_at_a_match(monkeypatch):
    import streams.readapi as readapi

    calls = []
    real = readapi.hmac.compare_digest

    def counting(a, b):
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(readapi.hmac, "compare_digest", counting)
    tokens = TenantTokens({"acme": [A], "globex": [B, "d" * 32]})
    assert tokens.tenant_of(f"Bearer {A}") == "acme"
    assert len(calls) == 3


@pytest.mark.parametrize(("data", "fragment"), [
    ({"acme": ["short"]}, "at least 24"),
    ({"acme": [A], "globex": [A]}, "one token, one tenant"),
    ({"acme": [123]}, "at least 24"),
])
def test_bad_token_sets_are_refused_naming_the_tenant_not_the_token(data, fragment):
    with pytest.raises(ConfigError) as exc:
        TenantTokens(data)
    assert fragment in str(exc.value) and A not in str(exc.value)


def test_tokens_file_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"SELFHEAL_API_TOKENS_PATH=.*missing"):
        TenantTokens.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        TenantTokens.from_file(bad)
    bad.write_text(json.dumps(["acme", A]))
    with pytest.raises(ConfigError, match="JSON object"):
        TenantTokens.from_file(bad)
    good = tmp_path / "tokens.json"
    good.write_text(json.dumps({"acme": [A]}))
    assert TenantTokens.from_file(good).tenant_of(f"Bearer {A}") == "acme"


def test_tenant_partition_is_the_sdk_producers():
    # partitions librdkafka (confluent-kafka's default consistent_random partitioner) chose for these
    # keys on a 6-partition topic of the real broker (measured 2026-12-04)
    measured = {"acme": 2, "northwind-health": 4, "t1": 5, "tenant-b": 3, "x" * 40: 2}
    assert {t: tenant_partition(t, 6) for t in measured} == measured


@pytest.mark.parametrize(("verdicts", "overall"), [
    (["promote", "promote"], "promote"), (["promote", "hold"], "hold"), (["promote", None], "hold"),
    (["promote", "rollback", "hold"], "rollback"), ([None], "hold"),
])
def test_verdict_document_sums_up_the_scorecards(verdicts, overall):
    cards = [{"cohort": "c", "workflow": None, "arm": "canary", "verdict": v} for v in verdicts]
    doc = verdict_document("acme", "rel-2", cards)
    assert doc["verdict"] == overall and doc["scorecards"] == cards


def test_scorecards_are_read_per_tenant_and_release_from_the_pipeline_state():
    pipe = Pipeline(Settings(), default_codec())
    codec = default_codec()
    recs = []
    for i in range(40):
        tenant = "acme" if i % 2 else "globex"
        arm = "canary" if i % 4 < 2 else "control"
        recs.append(trace(i, tenant_id=tenant, trace_id=f"tr-{i}", event_time=now_ms() - 120_000 + i,
                          rollout={"arm": arm, "stage_pct": 10.0, "candidate_release_id": "rel-2"}))
    msgs = []
    for off, tenant in enumerate(("acme", "globex")):
        value = codec.encode("selfheal.v1.AgentTraceBatch", {"batch_id": f"b{off}", "producer_id": "t",
                             "sent_at": now_ms(), "traces": [r for r in recs if r["tenant_id"] == tenant]})
        msgs.append(RawMessage("agent.traces.v1", tenant_partition(tenant, 6), off, tenant.encode(), value))
    out = pipe.on_traces(msgs)
    assert not out.dead_letters, [d.message for d in out.dead_letters]
    pipe.flush_state()
    cards = pipe.canary.scorecards("acme", "rel-2")
    assert [(c["cohort"], c["workflow"], c["arm"]) for c in cards] == [("cardiology", None, "canary")]
    assert cards[0]["candidate_traces"] == 10 and cards[0]["stage_pct"] == 10.0
    pipe.canary.groups.clear()  # read back from the state backend, as after a restart
    assert pipe.canary.scorecards("acme", "rel-2") == cards
    assert pipe.canary.scorecards("acme", "rel-3") == []
    assert pipe.canary.scorecards("acm", "rel-2") == []


def test_expect_gates_the_status_on_the_verdict():
    doc = {"verdict": "rollback"}
    assert expected_status(doc, None) == 200 and expected_status(doc, "rollback") == 200
    assert expected_status(doc, "promote,hold") == 409
    with pytest.raises(ValueError, match="expect='promote,maybe'"):
        expected_status(doc, "promote,maybe")


def test_docstring_examples():
    import doctest

    import streams.readapi
    import streams.telemetry

    for mod in (streams.readapi, streams.telemetry):
        failed, tried = doctest.testmod(mod)
        assert tried and not failed, mod.__name__
