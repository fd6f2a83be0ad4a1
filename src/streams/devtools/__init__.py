"""Developer tooling: the fleet simulator, synthetic traffic, fault injection and the benchmarks.
Never imported by product modules.

Modules: :mod:`~streams.devtools.simulate` (the fleet simulator), :mod:`~streams.devtools.synthetic`
(fast synthetic traffic as columns), :mod:`~streams.devtools.chaos` (``selfheal chaos``),
:mod:`~streams.devtools.bench` (throughput, latency, memory), :mod:`~streams.devtools.bench_drift`
(detection quality), :mod:`~streams.devtools.bench_canary` (canary figures).
"""
