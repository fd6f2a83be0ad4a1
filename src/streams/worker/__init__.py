"""The stream worker: the only package that imports faust or mode.

It wires the framework-free pipeline (:mod:`streams.pipeline`) and sink to Kafka; it computes
nothing itself. Modules:

- :mod:`~streams.worker.app`: the faust app, topics, changelog tables, timers; ``run_worker``.
- :mod:`~streams.worker.agents`: one batch skeleton for both source topics, a step per topic.
- :mod:`~streams.worker.delivery`: changelog acknowledgements, per-agent sequencing, restart at
  the committed offsets, seek-back and its watchdog, bounded shutdown.
- :mod:`~streams.worker.join_wait`: how long feedback waits for its trace.
- :mod:`~streams.worker.outputs`: the ClickHouse sink and the output topics.
- :mod:`~streams.worker.sequencer`: ``OffsetSequencer``, in-order release per partition (pure).
- :mod:`~streams.worker.faust_fixes`: every touch of faust internals, version-checked.
- :mod:`~streams.worker.faults`: test hooks, installed only when a ``SELFHEAL_FAULT_*`` is set.
"""
