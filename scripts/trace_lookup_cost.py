"""Cost of the trace duplicate check's store lookup (issue 18, BENCHMARKS.md): ``trace_ids`` rows
of one tenant in a fresh embedded chDB, then ``TenantQueries.stored_traces`` for batches of ids
that are not stored (the common case: new traces) and once for stored ones.

Usage: ``PYTHONPATH=src .venv/bin/python scripts/trace_lookup_cost.py [stored_ids] [ids_per_batch]``
(defaults 2,000,000 and 16,384 = 64 messages of 256 traces, one worker batch). Prints median and
p90 ms per lookup and µs per trace id.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time

import pyarrow as pa

from streams.config import Settings
from streams.sinks.clickhouse import ClickHouseSink


def main(n_stored: int = 2_000_000, batch: int = 16_384, rounds: int = 21) -> None:
    """Fill ``trace_ids`` with ``n_stored`` ids, time ``rounds`` lookups of ``batch`` new ids."""
    d = tempfile.mkdtemp(prefix="trace-lookup-")
    s = Settings(state_dir=d, clickhouse_path=f"{d}/clickhouse")
    sink = ClickHouseSink(s)
    try:
        sink.migrate()
        for start in range(0, n_stored, 500_000):
            k = min(500_000, n_stored - start)
            sink.client.insert_arrow(f"{s.clickhouse_database}.trace_ids", pa.table({
                "tenant_id": ["acme"] * k, "trace_id": [f"tr-{i:012d}" for i in range(start, start + k)],
                "event_time": pa.array([1_700_000_000_000] * k, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                "latency_ms": [1.0] * k, "output_tokens": pa.array([1] * k, pa.uint32()),
                "outcome": ["success"] * k, "release_id": ["r"] * k,
                "source_partition": pa.array([0] * k, pa.uint16()),
                "source_offset": pa.array(range(start, start + k), pa.uint64())}))
        sink.client.command(f"OPTIMIZE TABLE {s.clickhouse_database}.trace_ids FINAL")
        q = sink.for_tenant("acme")
        times = []
        for r in range(rounds):
            new = [f"new-{r}-{i}" for i in range(batch)]
            t0 = time.perf_counter()
            assert q.stored_traces(new) == []
            times.append(time.perf_counter() - t0)
        old = [f"tr-{random.randrange(n_stored):012d}" for _ in range(batch)]
        t0 = time.perf_counter()
        found = q.stored_traces(old)
        hit_s = time.perf_counter() - t0
        times.sort()
        med, p90 = times[rounds // 2], times[int(rounds * 0.9)]
        print(f"stored_ids={n_stored} ids_per_lookup={batch} new_ids: median_ms={med * 1000:.1f} "
              f"p90_ms={p90 * 1000:.1f} per_id_us={med / batch * 1e6:.2f}; stored_ids: {hit_s * 1000:.1f} ms "
              f"({len(found)} rows)")
    finally:
        sink.close()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
