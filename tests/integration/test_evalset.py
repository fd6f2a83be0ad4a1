"""Replayable evaluation sets on real chDB: traces that carry input / original-output references,
the crafted feedback stream through the pipeline, then ``selfheal export-evalset``: the set
round-trips into the documented Langfuse and Phoenix item shapes (docs/evalsets.md), is
versioned and content-hashed, and each export has its row in ``evalset_exports``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from streams.evalset import export_evalset, langfuse_item, phoenix_example
from streams.sinks.clickhouse import ClickHouseSink
from tests.conftest import ROOT
from tests.feedback_stream import PHI, PHI_LEAKS, crafted_stream
from tests.integration.test_feedback_store import run_pipeline

pytestmark = pytest.mark.integration


def test_a_replayable_set_round_trips_into_langfuse_and_phoenix_items_and_its_version_is_recorded(settings,
                                                                                                   tmp_path):
    traces, feedback = crafted_stream()
    for i, t in enumerate(traces):
        if i % 2 == 0:  # half the producers supply references, the rest do not
            t["input_ref"] = {"uri": f"s3://notes/{t['trace_id']}.json", "text": f"Transcript. {PHI}",
                              "sha256": hashlib.sha256(t["trace_id"].encode()).hexdigest()}
            t["output_ref"] = {"uri": None, "text": "Draft SOAP note.", "sha256": t["output_sha256"]}
    run_pipeline(settings, traces, feedback)
    now = datetime.now(UTC)
    since, until = now - timedelta(days=1), now + timedelta(hours=1)
    with ClickHouseSink(settings) as sink:
        first = export_evalset(sink, "t-a", since, until)
        again = export_evalset(sink, "t-a", since, until)  # same content: same version, same bytes
        narrower = export_evalset(sink, "t-a", since, until, include_lost=True, cohort="oncology")  # empty: new
        rows = sink.query("SELECT version, records_sha256, records, format_version, filter FROM "
                          "{db}.evalset_exports FINAL WHERE tenant_id = 't-a' ORDER BY version")
    assert (first.version, again.version, narrower.version) == (1, 1, 2)
    assert first.data == again.data and first.records == 9
    assert rows[0][:4] == (1, first.records_sha256, 9, 2) and rows[1][:3] == (2, narrower.records_sha256, 0)
    assert json.loads(rows[0][4]) == {"cohort": None, "include_lost": False, "release_id": None,
                                      "since": since.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                                      "until": until.isoformat(timespec="milliseconds").replace("+00:00", "Z")}

    lines = first.data.decode().splitlines()
    header, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["version"] == 1 and header["format_version"] == 2
    assert header["records_sha256"] == hashlib.sha256(first.data.split(b"\n", 1)[1]).hexdigest() == \
        first.records_sha256
    assert not any(leak in first.data.decode() for leak in PHI_LEAKS)  # reference texts redacted
    with_ref = [r for r in records if r["input_ref"] is not None]
    without = [r for r in records if r["input_ref"] is None]
    assert with_ref and without
    by_id = {t["trace_id"]: t for t in traces}
    for r in with_ref:
        t = by_id[r["trace_id"]]
        assert r["input_ref"]["uri"] == t["input_ref"]["uri"] and r["input_ref"]["sha256"] == t["input_ref"]["sha256"]
        assert r["input_ref"]["text"].startswith("Transcript.")
        assert r["original_output"] == {"uri": None, "text": "Draft SOAP note.", "sha256": t["output_sha256"]}
    for r in without:  # the output is still identified by the trace's output hash
        assert r["original_output"] == {"uri": None, "text": None, "sha256": by_id[r["trace_id"]]["output_sha256"]}
    for r in records:
        assert r["corrected_output"] == r["corrected_text"] and r["category"] and r["manifest"]["release_id"]

    # the documented mapping (docs/evalsets.md): every field lands where the tools expect it
    for r in records:
        lf = langfuse_item(r, "t-a", header["version"])
        assert set(lf) == {"id", "input", "expected_output", "metadata", "source_trace_id"}
        assert lf["id"] == f"t-a-v1-{r['dedup_key']}" and lf["source_trace_id"] == r["trace_id"]
        assert lf["input"] == {"input_ref": r["input_ref"], "original_output": r["original_output"]}
        assert lf["expected_output"] == {"text": r["corrected_output"]}
        assert lf["metadata"]["category"] == r["category"] and lf["metadata"]["manifest"] == r["manifest"]
        px = phoenix_example(r)
        assert set(px) == {"input", "output", "metadata"}
        assert px["input"] == lf["input"] and px["output"] == {"corrected_output": r["corrected_output"]}
        assert px["metadata"]["trace_id"] == r["trace_id"]
        json.dumps(lf), json.dumps(px)  # JSON-serialisable as both APIs require

    # the CLI writes the same set and says which version it is
    out = tmp_path / "set.jsonl"
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "200",
           "SELFHEAL_CLICKHOUSE_PATH": str(settings.clickhouse_dir), "SELFHEAL_STATE_DIR": str(settings.state_dir)}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "export-evalset", "--tenant", "t-a", "--since",
                           since.isoformat(), "--until", until.isoformat(), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes() == first.data and "set version 1" in proc.stdout
