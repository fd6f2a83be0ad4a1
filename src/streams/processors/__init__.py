"""The processors: everything the pipeline computes on a batch, free of faust and of I/O.

Data reads one way: :mod:`~streams.processors.columns` (the batch as columns) ←
:mod:`~streams.processors.ingest` (decode, validate, dead letters);
:mod:`~streams.processors.metrics` (the one metric catalogue) →
:mod:`~streams.processors.baselines` (slice state) → :mod:`~streams.processors.drift` (detectors,
alarms) → :mod:`~streams.processors.incidents` (episodes, incident events);
:mod:`~streams.processors.canary` (rollout scorecards, verdicts) and
:mod:`~streams.processors.feedback` (trace join, dedup, corrections) beside them. State persists
through :class:`streams.state.StateBackend`; :mod:`streams.pipeline` chains them per batch.
"""
