"""Feedback aggregation through the real worker and broker (issue 4):

- the crafted stream (tests/feedback_stream.py) sent twice → identical FINAL contents, with the
  dedup, conflict, scope and redaction outcomes asserted; the golden-set export is reproducible;
- a worker killed with SIGKILL in the middle of a feedback stream (with rows written past its
  committed offsets, so the replacement gets them again) and replaced → FINAL contents identical
  to an uninterrupted worker's (no lost, no doubled rows).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest

from schemas import default_codec
from streams.devtools.simulate import FleetSimulator
from streams.sdk import SelfhealProducer
from streams.sinks.clickhouse import ClickHouseSink
from streams.topics import ensure_topics, group_lag
from tests.conftest import kafka_producer, settings_env, wait_caught_up
from tests.feedback_stream import EXPECTED, crafted_stream
from tests.integration.test_feedback_store import check_crafted_outcome, feedback_final, patterns_final

pytestmark = pytest.mark.integration


def snapshot(settings) -> dict[str, list[tuple]]:
    """FINAL contents of the feedback tables (the worker must be stopped: it owns the chDB dir)."""
    sink = ClickHouseSink(settings)
    try:
        return {
            "feedback": feedback_final(sink),
            "patterns": patterns_final(sink),
            # where a submission was processed (batch number and position, kept for replays) differs
            # between a killed and a clean run by design; what was decided about it must not
            "submissions": sink.query("SELECT * EXCEPT (batch_seq, batch_pos) FROM {db}.feedback_submissions FINAL "
                                      "ORDER BY tenant_id, source_partition, source_offset, record_index"),
            "dead_letters": sink.query("SELECT dead_letter_id, error_class FROM {db}.dead_letters FINAL "
                                       "ORDER BY dead_letter_id"),
        }
    finally:
        sink.close()


def test_crafted_stream_twice_gives_identical_final_contents(settings, worker_factory, tmp_path):
    ensure_topics(settings)
    traces, feedback = crafted_stream()
    worker = worker_factory(name="first")
    with SelfhealProducer(settings) as sdk:
        for t in traces:
            sdk.send_trace(t)
        sdk.flush()
        for f in feedback:
            sdk.send_feedback(f)
    wait_caught_up(settings, ["traces", "feedback"], worker=worker)
    assert worker.stop() == 0
    first = snapshot(settings)
    with ClickHouseSink(settings) as sink:
        check_crafted_outcome(sink)
    assert len(first["submissions"]) == EXPECTED["submissions"] and not first["dead_letters"]

    worker = worker_factory(name="second")  # restarts from its changelog
    with SelfhealProducer(settings) as sdk:
        for f in feedback:  # the whole feedback stream again: every record is an exact replay
            sdk.send_feedback(f)
    wait_caught_up(settings, ["traces", "feedback"], worker=worker)
    assert worker.stop() == 0
    second = snapshot(settings)
    assert second["feedback"] == first["feedback"]
    assert second["patterns"] == first["patterns"]
    # the log of submissions keeps the first pass as it was and gains one replay per record
    added = set(second["submissions"]) - set(first["submissions"])
    assert set(first["submissions"]) <= set(second["submissions"]) and len(added) == EXPECTED["submissions"]
    assert {r[8] for r in added} == {"replay"}
    with ClickHouseSink(settings) as sink:
        check_crafted_outcome(sink, replays=1)

    # the golden set of a tenant, exported twice by the CLI: byte-identical
    env = settings_env(settings)
    digests = []
    for i in range(2):
        out = tmp_path / f"evalset-{i}.jsonl"
        proc = subprocess.run([sys.executable, "-m", "streams.cli", "export-evalset", "--tenant", "t-a",
                               "--since", "2020-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z", "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        assert len(out.read_bytes().splitlines()) == 1 + 9
    assert digests[0] == digests[1]


class _Split:
    """Traces in batches (few messages), feedback one message per record (many small batches)."""

    def __init__(self, traces: SelfhealProducer, feedback: SelfhealProducer) -> None:
        self.traces, self.feedback, self.settings = traces, feedback, traces.settings

    def send_trace(self, trace) -> None:
        self.traces.send_trace(trace)

    def send_feedback(self, fb) -> None:
        self.feedback.send_feedback(fb)

    def flush(self) -> None:
        self.traces.flush()
        self.feedback.flush()


def _feedback_progress(settings, group: str) -> tuple[int, int]:
    return group_lag(settings, group, [settings.topic("feedback")])


def _processed_feedback_rows(log) -> int:
    """Feedback rows the worker reports in its latest complete stats line (0 before the first
    one; the line being written may be cut at the log's buffer boundary)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if " stats {" in ln]
    for ln in reversed(lines):
        try:
            return json.loads(ln.split(" stats ", 1)[1])["feedback"]
        except json.JSONDecodeError:
            continue
    return 0


def test_worker_killed_mid_stream_loses_and_doubles_no_feedback(settings, worker_factory, tmp_path):
    ensure_topics(settings)
    # one Kafka message per record and small batches: many feedback batches to be killed in
    slow = {"SELFHEAL_TAKE_MAX_MESSAGES": "4"}
    # commits every 5 s and stats every 0.2 s: the kill comes when the worker has processed part of
    # the feedback (its own count), and some of what it wrote is not committed yet
    worker = worker_factory(extra_env={**slow, "SELFHEAL_COMMIT_INTERVAL_S": "5", "SELFHEAL_STATS_INTERVAL_S": "0.2"},
                            name="killed")
    with (SelfhealProducer(settings) as traces, SelfhealProducer(settings, batch=False) as feedback,
          kafka_producer(settings.kafka_config()) as raw):
        sim = FleetSimulator(traces=3_000, seed=11, inject_at=1.0, bad_input=False, near_dup_rate=0.15,
                             conflict_rate=0.1, feedback_lag=(5, 60))
        rep = sim.run(_Split(traces, feedback), raw_producer=raw, codec=default_codec())
    deadline = time.monotonic() + 300
    while _processed_feedback_rows(worker.log) < 0.3 * rep.feedback_unique_expected:
        assert worker.alive() and time.monotonic() < deadline, "no feedback progress"
        time.sleep(0.05)
    done, end = _feedback_progress(settings, settings.full_app_id)
    assert done < end, "the worker finished before it could be killed; make the stream longer"
    worker.kill()  # SIGKILL in the middle of the feedback stream
    done, end = _feedback_progress(settings, settings.full_app_id)
    with ClickHouseSink(settings) as sink:  # free now: what the killed worker wrote
        written = sink.query("SELECT count() FROM {db}.feedback_submissions FINAL")[0][0]
    # one record per message: written beyond the committed offsets = written and then redelivered
    redelivered = written - done
    print(f"killed at {done}/{end} committed feedback messages, {written} submissions written")
    assert done < end and redelivered > 0, "nothing was written past the commits: the kill tested no redelivery"
    worker = worker_factory(extra_env=slow, name="replacement")
    wait_caught_up(settings, ["traces", "feedback"], timeout_s=600, worker=worker)
    assert worker.stop() == 0
    killed = snapshot(settings)

    # the same topics through an uninterrupted worker (own consumer group, changelog and store)
    ref = settings.model_copy(update={"app_id": "ref", "state_dir": tmp_path / "ref-state",
                                      "clickhouse_path": tmp_path / "ref-clickhouse"})
    ref_worker = worker_factory(extra_env={"SELFHEAL_APP_ID": "ref", "SELFHEAL_STATE_DIR": str(ref.state_dir),
                                           "SELFHEAL_CLICKHOUSE_PATH": str(ref.clickhouse_dir)}, name="reference")
    wait_caught_up(ref, ["traces", "feedback"], timeout_s=600, worker=ref_worker)
    assert ref_worker.stop() == 0
    clean = snapshot(ref)

    assert (len(killed["submissions"]), len(clean["submissions"])) == (rep.feedback_produced,) * 2
    assert len(killed["feedback"]) == len(clean["feedback"]) == rep.feedback_unique_expected
    assert killed["feedback"] == clean["feedback"]
    assert killed["submissions"] == clean["submissions"]
    diff = set(killed["patterns"]) ^ set(clean["patterns"])
    assert killed["patterns"] == clean["patterns"], sorted(diff)[:6]
    assert not killed["dead_letters"] and not clean["dead_letters"]
    statuses = {r[8] for r in killed["submissions"]}
    assert statuses == {"new", "replay", "resubmit", "near_duplicate"}
    assert sum(1 for r in killed["submissions"] if r[8] == "near_duplicate") == rep.feedback_near_duplicates
