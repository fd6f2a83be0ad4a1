"""A short chaos run inside `make test`: a SIGKILL, a ClickHouse outage, a broker restart and a
SIGTERM against the worker, on a broker of the test's own (restarting the shared one would
disturb nothing else, but its state belongs to every other test). `make chaos` is the long run.
"""

from __future__ import annotations

import pytest

from streams.devtools.chaos import ChaosConfig, run_chaos
from tests.conftest import free_port_pair

pytestmark = pytest.mark.integration


def test_chaos_run_loses_and_doubles_nothing_through_every_fault(settings, tmp_path):
    cfg = ChaosConfig(traces=16_000, rate=800.0, kills=1, broker_restart=True, broker_down_s=5.0,
                      sink_outage_s=5.0, sigterm=True, kafka_port=free_port_pair(), shutdown_timeout_s=30.0,
                      catch_up_timeout_s=300.0, work_dir=tmp_path / "chaos")
    report = run_chaos(cfg, settings)
    assert report["faults_injected"] == {"sigkill": 1, "broker_restart": 1, "sink_outage": 1, "sigterm": 1}, report
    # every stream at once (a lost feedback id also shows up as an extra dead letter, say), with
    # where each lost id was found (on the topic or not: producer side or pipeline side)
    bad = {name: s for name, s in report["streams"].items() if not (s["in"] > 0 and s["lost"] == s["duplicated"] == 0)}
    assert bad == {}, (bad, report["problems"])
    assert set(report["streams"]) == {"traces", "feedback_submissions", "feedback_unique", "dead_letters"}
    # also: caught up, every SIGTERM (mid-run and final) exit 0 in time, the ClickHouse outage
    # resumed, baseline state equal to the changelog, no incident re-opened as a new episode, no
    # incident on another tenant that the same batches replayed without faults do not give (a
    # crash that loses or doubles counts shows there: before the feedback dedup state was written
    # at the checkpoint, 4 of 12 runs had a false correction-rate incident the replay did not give).
    # Not here: detecting (and attributing) the injected regression, which this short run gives
    # too few post-change traces per slice to do every time (1 of 3 runs missed it); the demo
    # test and `make chaos` (30k traces) assert it.
    known = ("injected regression not detected",)
    problems = [p for p in report["problems"] if not any(k in p for k in known)]
    assert problems == [], problems
