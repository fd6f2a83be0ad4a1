"""Producer-to-tenant binding: keys file, signatures, rotation with two keys, and ingest's
``tenant_auth`` dead letters (the record never reaches the pipeline's later stages)."""

from __future__ import annotations

import base64
import json

import pytest

from schemas.codec import AvroCodec
from streams.config import Settings
from streams.errors import ConfigError
from streams.processors.columns import RawMessage
from streams.processors.ingest import Ingest
from streams.signing import KEY_ID_HEADER, SIGNATURE_HEADER, TenantKeys, header_map, verifying_keys
from tests.factories import now_ms, trace

CODEC = AvroCodec()
K_OLD, K_NEW, K_GLOBEX = b"o" * 32, b"n" * 32, b"g" * 32


def keys_file(tmp_path, keys: dict) -> str:
    path = tmp_path / "tenant-keys.json"
    path.write_text(json.dumps({t: {k: base64.b64encode(v).decode() for k, v in ids.items()}
                                for t, ids in keys.items()}))
    return path


@pytest.fixture
def worker_keys(tmp_path):
    return TenantKeys.load(keys_file(tmp_path, {"acme": {"k1": K_OLD, "k2": K_NEW}, "globex": {"g1": K_GLOBEX}}))


def payload(tenant="acme") -> bytes:
    return CODEC.encode("selfheal.v1.AgentTraceBatch", {"batch_id": "b", "producer_id": "p", "sent_at": now_ms(),
                                                        "traces": [trace(tenant_id=tenant)]})


def test_the_producer_signs_with_its_last_key_and_the_worker_accepts_both_active_keys(worker_keys):
    value = payload()
    headers = header_map(TenantKeys({"acme": {"k1": K_OLD, "k2": K_NEW}}).sign("acme", value))
    assert headers[KEY_ID_HEADER] == b"k2"
    assert worker_keys.verify("acme", value, headers) is None
    old = header_map(TenantKeys({"acme": {"k1": K_OLD}}).sign("acme", value))  # a producer not yet rotated
    assert worker_keys.verify("acme", value, old) is None


@pytest.mark.parametrize(("tenant", "headers", "reason"), [
    ("acme", {}, "not signed"),
    ("acme", {KEY_ID_HEADER: b"k2"}, "selfheal-signature missing"),
    ("acme", "tampered", "does not match"),
    ("globex", "acme-signed", "not an active key of tenant 'globex'"),  # acme's key, keyed as globex
    ("acme", "retired", "not an active key"),
])
def test_a_missing_wrong_or_other_tenants_signature_is_refused(worker_keys, tenant, headers, reason):
    value = payload(tenant)
    acme = TenantKeys({"acme": {"k2": K_NEW}})
    if headers == "tampered":
        headers = header_map(acme.sign("acme", value))
        value = value[:-1] + bytes([value[-1] ^ 1])
    elif headers == "acme-signed":
        headers = header_map(acme.sign("acme", value))
    elif headers == "retired":
        headers = header_map(TenantKeys({"acme": {"k0": b"z" * 32}}).sign("acme", value))
    assert reason in worker_keys.verify(tenant, value, headers)


def test_ingest_dead_letters_unauthentic_messages_as_tenant_auth(worker_keys):
    ingest = Ingest(CODEC, "traces", tenant_keys=worker_keys)
    good, forged = payload(), payload()
    msgs = [RawMessage("agent.traces.v1", 0, 0, b"acme", good, headers=header_map(worker_keys.sign("acme", good))),
            RawMessage("agent.traces.v1", 0, 1, b"acme", forged),
            RawMessage("agent.traces.v1", 0, 2, b"acme", forged,
                       headers={KEY_ID_HEADER: b"k2", SIGNATURE_HEADER: b"0" * 64})]
    out = ingest.decode(msgs)
    assert out.offsets == [0]
    assert [(d.source_offset, d.error_class, d.field, d.value, d.tenant_id) for d in out.dead_letters] == [
        (1, "tenant_auth", "(headers)", "unsigned", "acme"), (2, "tenant_auth", "(headers)", "k2", "acme")]
    assert all(K_NEW.decode() not in d.message for d in out.dead_letters)
    # off (the embedded demo's default): unsigned messages pass
    assert Ingest(CODEC, "traces").decode(msgs[1:2]).offsets == [1]


def test_keys_file_errors_name_the_file_and_tenant_never_the_key(tmp_path):
    with pytest.raises(ConfigError, match="3 keys"):
        TenantKeys.load(keys_file(tmp_path, {"acme": {"a": K_OLD, "b": K_NEW, "c": K_GLOBEX}}))
    with pytest.raises(ConfigError, match="at least 32"):
        TenantKeys({"acme": {"a": b"short"}})
    bad = tmp_path / "bad.json"
    bad.write_text('{"acme": {"a": "not base64!"}}')
    with pytest.raises(ConfigError, match="'acme' key 'a' is not base64"):
        TenantKeys.load(bad)
    with pytest.raises(ConfigError, match="SELFHEAL_TENANT_KEYS_FILE"):
        verifying_keys(Settings(tenant_auth=True))
    assert verifying_keys(Settings()) is None


def test_a_forged_message_never_reaches_a_baseline(tmp_path):
    from schemas import default_codec
    from streams.pipeline import Pipeline

    keys = keys_file(tmp_path, {"acme": {"k1": K_OLD}, "globex": {"g1": K_GLOBEX}})
    pipe = Pipeline(Settings(state_dir=tmp_path, tenant_auth=True, tenant_keys_file=keys), default_codec())
    signer = TenantKeys({"acme": {"k1": K_OLD}})
    good, forged = payload("acme"), payload("globex")
    out = pipe.on_traces([
        RawMessage("agent.traces.v1", 0, 0, b"acme", good, headers=header_map(signer.sign("acme", good))),
        RawMessage("agent.traces.v1", 0, 1, b"globex", forged, headers=header_map(signer.sign("acme", forged)))])
    assert [d.error_class for d in out.dead_letters] == ["tenant_auth"]
    assert {info.tenant_id for info in pipe.engine.store.info} == {"acme"}  # every baseline slice
