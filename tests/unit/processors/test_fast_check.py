"""TraceFastCheck is never more lenient than the AgentTrace model: whatever it accepts, the model
accepts (mutations of every field, boundaries included, round-tripped through the Avro codec as
the worker sees them), and it accepts ordinary traces."""

from __future__ import annotations

import copy
import math
import random
import time

import pytest
from pydantic import ValidationError

from schemas import AgentTrace, default_codec
from streams.processors.ingest import TraceFastCheck

NOW = int(time.time() * 1000)
AGE_S, SKEW_S = 30 * 86400, 300
CTX = {"now_ms": NOW, "max_event_age_s": AGE_S, "max_clock_skew_s": SKEW_S}

BASE = {
    "trace_id": "tr-1", "tenant_id": "acme-health", "cohort": "cardiology", "workflow": "visit_note",
    "intent": "summarise", "agent_id": "scribe-1", "session_id": "s-1", "event_time": NOW - 60_000,
    "release": {"release_id": "rel-2", "model": "m", "prompt_version": "p", "tool_schema_version": "t",
                "policy_version": "pol", "retrieval_index_version": "idx"},
    "rollout": {"arm": "canary", "stage_pct": 5.0, "candidate_release_id": "rel-2"},
    "latency_ms": 812.5, "input_tokens": 900, "output_tokens": 300, "cost_usd": 0.012, "confidence": 0.8,
    "outcome": "success", "tool_calls": [{"name": "ehr_lookup", "status": "ok", "latency_ms": 120.0}],
    "retrieval_queries": 2, "retrieval_hits": 1, "policy_blocked": False, "retries": 0, "fallback_used": False,
    "output_sha256": "a" * 64, "attributes": {"channel": "ambient"},
}

BAD_STRINGS = ["", " ", "a" * 129, "a" * 64, "a" * 65, "A|b", "a/b", "-x", "x\n", "é", "Bad Tenant!", "ok", 5, None]
BAD_NUMBERS = [-1, -0.001, 0, 0.0, 1, 1.0, 1.5, 100, 100.0, 100.5, 1000, 1001, 2_000_000, 2_000_001, 3_600_000.0,
               3_600_001.0, math.nan, math.inf, -math.inf, True, False, "1", None, 2**70]
PATHS = {
    ("trace_id",): BAD_STRINGS, ("tenant_id",): BAD_STRINGS, ("cohort",): BAD_STRINGS, ("workflow",): BAD_STRINGS,
    ("intent",): BAD_STRINGS, ("agent_id",): BAD_STRINGS, ("session_id",): BAD_STRINGS,
    ("event_time",): [NOW, NOW + SKEW_S * 1000, NOW + SKEW_S * 1000 + 1, NOW - AGE_S * 1000,
                      NOW - AGE_S * 1000 - 1, 1_577_836_800_000, 0, -1, 1.5, "x", None, True],
    ("release", "release_id"): BAD_STRINGS, ("release", "model"): BAD_STRINGS,
    ("release", "policy_version"): BAD_STRINGS, ("rollout", "arm"): ["control", "shadow", "other", None, 1],
    ("rollout", "stage_pct"): BAD_NUMBERS, ("rollout", "candidate_release_id"): BAD_STRINGS,
    ("latency_ms",): BAD_NUMBERS, ("input_tokens",): BAD_NUMBERS, ("output_tokens",): BAD_NUMBERS,
    ("cost_usd",): BAD_NUMBERS, ("confidence",): BAD_NUMBERS, ("outcome",): ["failure", "escalated", "nope", "", None],
    ("retrieval_queries",): BAD_NUMBERS, ("retrieval_hits",): BAD_NUMBERS, ("retries",): BAD_NUMBERS,
    ("policy_blocked",): [True, 0, 1, "true", None], ("fallback_used",): [True, 0, None],
    ("output_sha256",): ["A" * 64, "a" * 63, "g" * 64, "", None, 5],
    ("tool_calls", 0, "name"): BAD_STRINGS, ("tool_calls", 0, "status"): ["error", "timeout", "denied", "bad", None],
    ("tool_calls", 0, "latency_ms"): BAD_NUMBERS,
    ("attributes",): [{}, {"": "x"}, {"k" * 129: "v"}, {"k": "v" * 2049}, {"k": "v" * 2048},
                      {f"k{i}": "v" for i in range(65)}, {f"k{i}": "v" for i in range(64)}, {"k": 1}, None, []],
    ("tool_calls",): [[], [{"name": "a", "status": "ok", "latency_ms": 1.0}] * 257, None,
                      [{"name": "a", "status": "ok", "latency_ms": 1.0, "extra": 1}]],
    ("rollout",): [None, {}, {"arm": "canary", "stage_pct": 1.0}],
    ("release",): [None, {}, {**BASE["release"], "extra": "x"}],
}


def _set(rec, path, value):
    node = rec
    for k in path[:-1]:
        if not isinstance(node, dict | list) or (isinstance(node, list) and len(node) <= k) \
                or (isinstance(node, dict) and not isinstance(node.get(k), dict | list)):
            return  # an earlier mutation replaced the parent
        node = node[k]
    if isinstance(node, dict) or (isinstance(node, list) and len(node) > path[-1]):
        node[path[-1]] = value


def _avro(rec):
    """The record as the worker decodes it, or None when Avro cannot carry it (wrong type)."""
    codec = default_codec()
    try:
        return codec.decode(codec.encode("selfheal.v1.AgentTrace", rec))[1]
    except Exception:
        return None


def _fast(rec) -> bool:
    return bool(TraceFastCheck(AGE_S, SKEW_S).batch([rec], NOW)[0])


def _model_accepts(rec) -> bool:
    try:
        AgentTrace.model_validate(rec, context=CTX)
        return True
    except ValidationError:
        return False


def test_ordinary_trace_takes_the_fast_path():
    assert _model_accepts(BASE)
    assert _fast(_avro(copy.deepcopy(BASE)))
    plain = _avro(dict(BASE, rollout=None, confidence=None, intent=None, output_sha256=None, tool_calls=[],
                       attributes={}))
    assert _fast(plain)
    mask = TraceFastCheck(AGE_S, SKEW_S).batch([plain, dict(plain, latency_ms=-1.0), plain], NOW)
    assert mask.tolist() == [True, False, True]  # one bad record does not spoil its batch


@pytest.mark.parametrize("path", list(PATHS), ids=lambda p: ".".join(map(str, p)))
def test_fast_check_never_accepts_what_the_model_rejects(path):
    for value in PATHS[path]:
        rec = copy.deepcopy(BASE)
        _set(rec, path, value)
        rec = _avro(rec)
        if rec is not None and _fast(rec):
            assert _model_accepts(rec), f"fast check accepted {'.'.join(map(str, path))}={value!r}"


def test_random_mutations():
    rng = random.Random(7)
    paths = list(PATHS)
    accepted = 0
    for _ in range(3000):
        rec = copy.deepcopy(BASE)
        for path in rng.sample(paths, rng.randint(1, 3)):
            _set(rec, path, rng.choice(PATHS[path]))
        rec = _avro(rec)
        if rec is not None and _fast(rec):
            accepted += 1
            assert _model_accepts(rec), rec
    assert accepted > 100  # the mutations include valid boundary values too
