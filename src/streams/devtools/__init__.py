"""Developer tooling: the demo, the fleet simulator, synthetic traffic, fault injection, the
benchmarks and the one worker-process launcher. Never imported by product modules
(``tests/unit/devtools/test_layering.py``); ``streams.cli`` mounts the commands of
:mod:`streams.devtools.cli` only when this package is installed.

Modules: :mod:`~streams.devtools.demo` (``selfheal demo``), :mod:`~streams.devtools.simulate`
(the fleet simulator), :mod:`~streams.devtools.synthetic` (fast synthetic traffic as columns),
:mod:`~streams.devtools.chaos` (``selfheal chaos``), :mod:`~streams.devtools.bench` (throughput,
latency, memory), :mod:`~streams.devtools.bench_drift` (detection quality),
:mod:`~streams.devtools.bench_canary` (canary figures), :mod:`~streams.devtools.launcher`
(``selfheal worker`` subprocesses), :mod:`~streams.devtools.cli` (the commands).
"""
