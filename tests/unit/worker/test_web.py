"""Routing and refusals of the read API (streams.worker.web.ReadApi) on a fake app: the owner is
found in faust's table metadata by the SDK's partition of the tenant; requests without access
never reach the state; a forwarded request is not forwarded again."""

from __future__ import annotations

import asyncio

from faust.types import TP
from yarl import URL

from streams.config import Settings
from streams.readapi import TenantTokens, tenant_partition
from streams.worker.web import ROUTED_HEADER, ReadApi

TOKEN = "t" * 32
SETTINGS = Settings(topic_prefix="p.")
CHANGELOG = "p.selfheal-incident-state-changelog"


class FakeApp:
    def __init__(self, owned: set[int], metadata: dict) -> None:
        self.assignor = type("A", (), {"assigned_actives": lambda _self: {TP("p.agent.traces.v1", p) for p in owned}})()
        self.router = type("R", (), {"table_metadata": lambda _self, table: metadata})()
        self.conf = type("C", (), {"canonical_url": URL("http://me:6066")})()


class FakeView:
    def error(self, status, reason, headers=None, **kw):
        return ("error", status, reason, headers)

    def json(self, body, status=200):
        return ("json", status, body)


class FakeRequest:
    def __init__(self, headers: dict) -> None:
        self.headers = headers


def api(owned: set[int], metadata: dict, tokens=True) -> ReadApi:
    return ReadApi(FakeApp(owned, metadata), SETTINGS, pipeline=None,
                   tokens=TenantTokens({"acme": [TOKEN]}) if tokens else None,
                   changelogs={"incident-state": CHANGELOG})


def answer(a: ReadApi, headers: dict, tenant: str = "acme"):
    reached = []

    def local():
        reached.append(True)
        return 200, {"ok": True}

    return asyncio.run(a.answer(FakeView(), FakeRequest(headers), "incident-state", tenant, local)), reached


def test_owner_is_the_worker_whose_changelog_partitions_hold_the_tenants_partition():
    p = tenant_partition("acme", SETTINGS.partitions)
    others = [q for q in range(SETTINGS.partitions) if q != p]
    meta = {"http://w1:6066": {CHANGELOG: others}, "http://w2:6066": {CHANGELOG: [p]}}
    a = api(set(others), meta)
    assert not a.owns("acme") and a.owner("incident-state", "acme") == URL("http://w2:6066")
    assert api({p}, meta).owns("acme")
    assert api(set(), {}).owner("incident-state", "acme") is None


def test_the_owner_answers_locally_with_a_valid_token():
    p = tenant_partition("acme", SETTINGS.partitions)
    (kind, status, body), reached = answer(api({p}, {}), {"Authorization": f"Bearer {TOKEN}"})
    assert (kind, status, body) == ("json", 200, {"ok": True}) and reached


def test_refusals_come_before_the_state_is_read():
    p = tenant_partition("acme", SETTINGS.partitions)
    (_, status, _, headers), reached = answer(api({p}, {}), {})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and not reached
    (_, status, _, _), reached = answer(api({p}, {}), {"Authorization": f"Bearer {TOKEN}"}, tenant="globex")
    assert status == 403 and not reached
    (_, status, reason, _), reached = answer(api({p}, {}, tokens=False), {"Authorization": f"Bearer {TOKEN}"})
    assert status == 503 and "SELFHEAL_API_TOKENS_PATH" in reason and not reached


def test_no_owner_or_an_already_forwarded_request_is_503_with_retry_after():
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (_, status, _, headers), _ = answer(api(set(), {}), auth)
    assert status == 503 and headers["Retry-After"]
    p = tenant_partition("acme", SETTINGS.partitions)
    meta = {"http://w2:6066": {CHANGELOG: [p]}}
    (_, status, _, _), reached = answer(api(set(), meta), {**auth, ROUTED_HEADER: "1"})
    assert status == 503 and not reached
    # metadata naming this worker while it does not own the partition (stale): no loop to itself
    (_, status, _, _), _ = answer(api(set(), {"http://me:6066": {CHANGELOG: [p]}}), auth)
    assert status == 503
