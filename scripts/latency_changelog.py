"""One worker's trace-to-incident latency at a fixed rate, with what it wrote to each changelog
(issue 16 A/B).

``bench.latency`` (the one-worker scenario of ``make bench``: AgentTraceBatch messages of 64
traces over 80 slices, regressions injected on rotating slices, batches cut after 0.1 s) on fresh
topics, then the message count and value bytes of every changelog table (``streams.topics.TABLES``)
before the topics are deleted. The code measured is whatever ``PYTHONPATH`` puts first (the worker
subprocess inherits it), so main and a branch alternate on one broker:

    SELFHEAL_KAFKA_BOOTSTRAP=127.0.0.1:PORT PYTHONPATH=/work/main/src \\
        .venv/bin/python scripts/latency_changelog.py RATE [SECONDS]

RATE: offered traces/s; SECONDS: paced send (default 30). Prints one JSON line: the latency
report (``p50_ms``, ``p99_ms``, ``worker_cpu_s_per_1k_traces``, ...) plus ``changelog_messages``
and ``changelog_bytes`` by table.
"""

import json
import sys
import uuid

from streams.config import Settings
from streams.devtools import bench
from streams.topics import TABLES, delete_topics


def main() -> None:
    """Run the scenario once and print its JSON line (see the module docstring)."""
    rate = float(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    base = Settings()
    run_id = uuid.uuid4().hex[:8]
    root = base.state_dir / f"latcl-{run_id}"
    root.mkdir(parents=True)
    s = base.model_copy(update={"topic_prefix": f"latcl-{run_id}.", "state_dir": root,
                                "clickhouse_path": root / "clickhouse"})
    try:
        report = bench.latency(s, root / "worker.log", rate=rate, seconds=seconds)
        messages = {t: bench.changelog_messages(s, t) for t in TABLES}
        report["changelog_messages"] = messages
        report["changelog_bytes"] = {t: bench.changelog_value_bytes(s, t) if n else 0 for t, n in messages.items()}
    finally:
        delete_topics(s)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
