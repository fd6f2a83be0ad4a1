"""Baselines and detector state live in faust changelog tables: a worker killed with SIGKILL and
replaced resumes them (the regression after the restart is measured against the old baseline)."""

from __future__ import annotations

import pytest

from schemas import default_codec
from streams.devtools.simulate import FleetSimulator
from streams.sdk import SelfhealProducer
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_topics
from tests.conftest import kafka_producer, wait_caught_up

pytestmark = pytest.mark.integration


def produce(settings, **kw):
    with SelfhealProducer(settings) as sdk, kafka_producer(settings.kafka_config()) as raw:
        return FleetSimulator(bad_input=False, **kw).run(sdk, raw_producer=raw, codec=default_codec())


def test_killed_worker_is_replaced_and_resumes_baselines(settings, worker_factory):
    ensure_topics(settings)
    first = worker_factory(name="first")
    produce(settings, traces=12_000, seed=1, inject_at=1.0)  # normal traffic only
    wait_caught_up(settings, ["traces", "feedback"], worker=first)
    first.kill()  # SIGKILL: no graceful shutdown
    second = worker_factory(name="second")
    # from the first trace on, the injected slice runs a slower release
    rep = produce(settings, traces=6_000, seed=2, inject_at=0.0, latency_factor=1.6)
    wait_caught_up(settings, ["traces", "feedback"], worker=second)
    assert second.stop() == 0
    with ClickHouseSink(settings) as sink:
        change = rep.injected[0]
        rows = sink.query(
            "SELECT kind, metric_group, release_id, layer FROM {db}.incidents FINAL WHERE tenant_id = {t:String}",
            {"t": change.tenant_id})
        assert any(r[1] == "latency" for r in rows), "regression after the restart was not detected"
        assert any(r[0] == "release_regression" and r[2] == change.release_id for r in rows), rows
        n, distinct = sink.query("SELECT count(), uniqExact(trace_id) FROM {db}.traces FINAL")[0]
        assert (n, distinct) == (18_000, 18_000), f"{n} rows, {distinct} distinct ids; worker logs in {second.log}"
