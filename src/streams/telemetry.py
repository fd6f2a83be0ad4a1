"""Prometheus metrics of a worker: the one catalogue of what selfheal exports, and its registry.

Every metric is declared here, once, with its name, type, labels and meaning; the worker serves
them at ``/metrics`` (:mod:`streams.worker.web`) in the Prometheus text format, rendered by
prometheus_client (https://prometheus.github.io/client_python/). Names follow the Prometheus
conventions (https://prometheus.io/docs/practices/naming/): prefix ``selfheal_``, counters end
in ``_total``, base units in the name (``_seconds``, ``_messages``). Each worker has its own
:class:`~prometheus_client.CollectorRegistry` (not the process-global one), so tests and several
apps in one process never share series.

Three sources, one catalogue:

- **The stats counters.** The worker keeps cumulative counters for its JSON stats line
  (``Worker.counters()``: the pipeline's, the canary monitor's, the detectors', the sink's). They
  are read at scrape time and exported through :data:`STATS_COUNTERS` (stats key → metric name
  and help): a counter another change adds to the stats becomes a metric with one line there.
  ``tests/unit/test_telemetry.py`` fails on a stats key that is neither exported nor listed in
  :data:`COUNTED_ELSEWHERE`, so no counter is forgotten.
- **Events observed where they happen.** Per acknowledged batch (:meth:`WorkerTelemetry.on_batch`):
  Kafka messages processed, dead letters by reason, incident events by kind / severity / status,
  rollout verdicts by outcome. Durations: ClickHouse writes (retries included) and the wait for
  the changelog acknowledgements.
- **State read at scrape time.** Consumer lag per partition, open incidents by kind and
  severity, consumer-group rebalances (the callables given to :class:`WorkerTelemetry`).

Catalogue (all names as exported):

=============================================  =========  ======================================
metric                                         type       labels
=============================================  =========  ======================================
selfheal_messages_processed_total              counter    source (traces, feedback)
selfheal_dead_letters_total                    counter    source, reason (the dead letter's
                                                          error_class)
selfheal_incident_events_total                 counter    kind, severity, status
selfheal_verdicts_total                        counter    verdict (promote, hold, rollback)
selfheal_sink_write_duration_seconds           histogram  operation (the sink method)
selfheal_changelog_ack_wait_seconds            histogram  source
selfheal_consumer_lag_messages                 gauge      topic, partition
selfheal_open_incidents                        gauge      kind, severity
selfheal_rebalances_total                      counter    -
(:data:`STATS_COUNTERS`)                       counter    -
=============================================  =========  ======================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas import IncidentKind, Severity, Verdict

#: the worker's source topics (logical names), label ``source``
SOURCES = ("traces", "feedback")
#: Content-Type of :meth:`WorkerTelemetry.render` (Prometheus text format 0.0.4)
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: stats key (``Worker.counters()``) → (exported counter name, help[, labels]). One line per
#: counter; keys sharing a name become one family with their label values (same label names).
STATS_COUNTERS: dict[str, tuple[str, str] | tuple[str, str, dict[str, str]]] = {
    "traces": ("selfheal_traces_total", "Valid traces processed (after replay removal); rate() = traces/s."),
    "trace_duplicates": ("selfheal_trace_replays_total",
                         "Traces skipped as replays of an already ingested trace_id with the same content."),
    "feedback": ("selfheal_feedback_total", "Feedback rows aggregated (all dedup statuses); rate() = feedback/s."),
    "traces_written": ("selfheal_traces_written_total", "Traces written to ClickHouse by acknowledged batches."),
    "received": ("selfheal_kafka_messages_received_total",
                 "Kafka messages the consumer took from the broker (flat while a stuck batch holds consumption)."),
    "sink_failed_attempts": ("selfheal_sink_write_retries_total",
                             "ClickHouse write attempts that failed and were retried (exponential backoff)."),
    "actions": ("selfheal_incident_actions_total",
                "Incident actions applied (acknowledge, accept_new_baseline, suppress, ...), first delivery."),
    "action_replays": ("selfheal_incident_action_replays_total",
                       "Incident actions skipped as redeliveries of an action_id already applied."),
    "quarantined": ("selfheal_quarantined_messages_total",
                    "Messages quarantined to the dead-letter topic as processing_error after failing "
                    "POISON_MAX_ATTEMPTS times alone (the partition moved on)."),
    "recovery_reseeks": ("selfheal_recovery_reseeks_total",
                         "Changelog partitions sought back because the table recovery received nothing of "
                         "records already fetched (docs/reliability.md)."),
    "dead_letter_payloads_left_out": ("selfheal_dead_letter_payloads_left_out_total",
                                      "Dead letters sent without their payload (over the bound or by "
                                      "DEAD_LETTER_PAYLOAD=false; SHA-256 and size kept)."),
    "feedback_events": ("selfheal_detector_feedback_events_total",
                        "Correction / unsafe-feedback events seen by the label-delayed detectors (each once)."),
    "late_feedback": ("selfheal_detector_late_feedback_total",
                      "Feedback events whose trace's event-time bucket had folded into the baseline: counted "
                      "there, not in the CUSUM."),
    "unmatched_feedback": ("selfheal_detector_unmatched_feedback_total",
                           "Feedback events with no event-time bucket of their slice (counted in the baseline)."),
    "delays_beyond_horizon": ("selfheal_detector_delays_beyond_horizon_total",
                              "Feedback delays of 7 days or more, beyond what the delay distributions learn."),
    "folded_feedback": ("selfheal_detector_folded_feedback_total",
                        "Feedback events folded into the baseline with their matured bucket."),
    "folded_buckets": ("selfheal_detector_folded_buckets_total",
                       "Label-delay buckets folded into the baseline once 99.9 % of their feedback was due."),
    "coarsened_buckets": ("selfheal_detector_coarsened_buckets_total",
                          "Label-delay buckets merged with a neighbour to bound memory (never dropped)."),
    "admitted_ahead": ("selfheal_detector_admitted_ahead_total",
                       "Label-delay ticks let into a ring before the feedback clock reached them (traces more "
                       "than N_AHEAD ticks ahead): from there its buckets can depend on the read order."),
    "canary_rollout_traces": ("selfheal_canary_rollout_traces_total",
                              "Traces of staged rollouts counted in scorecards."),
    "canary_replayed_traces": ("selfheal_canary_replayed_traces_total",
                               "Rollout traces skipped by the canary replay guard."),
    "canary_late_traces": ("selfheal_canary_late_traces_total",
                           "Rollout traces not compared: their event-time bucket was already folded."),
    "canary_late_feedback": ("selfheal_canary_late_feedback_total",
                             "Corrections not counted in canary scorecards: their bucket had matured."),
    **{f"feedback_{status}": ("selfheal_feedback_submissions_total",
                              "Feedback submissions by dedup status; only new ones count in detectors and "
                              "scorecards (replays, resubmits, near-duplicates are stored, not counted).",
                              {"status": status})
       for status in ("new", "replay", "resubmit", "near_duplicate")},
}

#: stats keys exported by a labelled metric of this module instead (their totals are its sum)
COUNTED_ELSEWHERE: dict[str, str] = {
    "dead_letters": "selfheal_dead_letters_total",
    "incident_events": "selfheal_incident_events_total",
    "verdicts": "selfheal_verdicts_total",
    "canary_verdicts": "selfheal_verdicts_total",
}

#: sink writes take ms normally and up to ``sink_retry_s`` (300 s) while ClickHouse refuses them
SINK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: changelog acknowledgements take ms; a broker restart holds them for seconds
ACK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 300.0)


class WorkerTelemetry:
    """The metrics of one worker on a registry of its own (see the module docstring).

    Args:
        counters: stats key → cumulative count (``Worker.counters()``), read at every scrape.
        lag: ``{(topic, partition): messages}`` the worker's agents are behind the high watermark
            of the partitions it owns, read at every scrape.
        open_incidents: ``(kind, severity)`` of every open incident the worker holds.
        rebalances: consumer-group rebalances this worker went through.

    Example::

        >>> t = WorkerTelemetry(counters=lambda: {"traces": 3})
        >>> b"selfheal_traces_total 3.0" in t.render()
        True
    """

    def __init__(self, counters: Callable[[], Mapping[str, float]],
                 lag: Callable[[], Mapping[tuple[str, int], int]] = dict,
                 open_incidents: Callable[[], Iterable[tuple[str, str]]] = list,
                 rebalances: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.messages = Counter("selfheal_messages_processed", "Kafka messages in acknowledged batches.",
                                ["source"], registry=r)
        self.dead_letters = Counter("selfheal_dead_letters", "Records dead-lettered, by reason (error_class).",
                                    ["source", "reason"], registry=r)
        self.incident_events = Counter("selfheal_incident_events",
                                       "Incident events emitted (open, updated, resolved).",
                                       ["kind", "severity", "status"], registry=r)
        self.verdicts = Counter("selfheal_verdicts", "Rollout verdict events emitted, by outcome.", ["verdict"],
                                registry=r)
        self.sink_write = Histogram("selfheal_sink_write_duration_seconds",
                                    "ClickHouse write calls, retries included, s.", ["operation"],
                                    buckets=SINK_BUCKETS_S, registry=r)
        self.ack_wait = Histogram("selfheal_changelog_ack_wait_seconds",
                                  "Wait of a batch for the broker's acknowledgement of its changelog messages, s.",
                                  ["source"], buckets=ACK_BUCKETS_S, registry=r)
        for v in Verdict:  # rate() and the stall alert need the series before the first event
            self.verdicts.labels(v.value)
        for source in SOURCES:
            self.messages.labels(source)
        r.register(_ScrapeCollector(counters, lag, open_incidents, rebalances))

    def on_batch(self, source: str, messages: int, dead_letters: Iterable[Any], incidents: Iterable[Any],
                 verdicts: Iterable[Any]) -> None:
        """Count one acknowledged batch of ``source`` (``traces``/``feedback``): its Kafka
        ``messages``, its dead letters (``schemas.DeadLetter``), incident events
        (``schemas.Incident``) and verdicts (``schemas.RolloutVerdict``)."""
        self.messages.labels(source).inc(messages)
        for d in dead_letters:
            self.dead_letters.labels(source, d.error_class).inc()
        for i in incidents:
            self.incident_events.labels(_value(i.kind), _value(i.severity), _value(i.status)).inc()
        for v in verdicts:
            self.verdicts.labels(_value(v.verdict)).inc()

    def observe_sink_write(self, operation: str, seconds: float) -> None:
        """One ClickHouse write call ``operation`` (e.g. ``write_traces``) took ``seconds``."""
        self.sink_write.labels(operation).observe(seconds)

    @contextmanager
    def changelog_ack_wait(self, source: str) -> Iterator[None]:
        """Times the block (a batch's changelog acknowledgement wait) into the histogram."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ack_wait.labels(source).observe(time.perf_counter() - t0)

    def render(self) -> bytes:
        """The exposition (text format 0.0.4, :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _ScrapeCollector(Collector):
    """The metrics read from the worker at scrape time (see :class:`WorkerTelemetry`)."""

    def __init__(self, counters: Callable[[], Mapping[str, float]],
                 lag: Callable[[], Mapping[tuple[str, int], int]],
                 open_incidents: Callable[[], Iterable[tuple[str, str]]], rebalances: Callable[[], int]) -> None:
        self.counters = counters
        self.lag = lag
        self.open_incidents = open_incidents
        self.rebalances = rebalances

    def collect(self) -> Iterator[Metric]:
        values = self.counters()
        families: dict[str, CounterMetricFamily] = {}
        for key, (name, doc, *labels) in STATS_COUNTERS.items():
            if key not in values:
                continue
            lab = labels[0] if labels else {}
            fam = families.get(name)
            if fam is None:
                fam = families[name] = CounterMetricFamily(name, doc, labels=list(lab))
            fam.add_metric(list(lab.values()), float(values[key]))
        yield from families.values()
        lag = GaugeMetricFamily("selfheal_consumer_lag_messages",
                                "Messages between the agent's next offset and the partition's high watermark "
                                "(owned partitions of the source topics).", labels=["topic", "partition"])
        for (topic, partition), n in sorted(self.lag().items()):
            lag.add_metric([topic, str(partition)], float(n))
        yield lag
        open_by: dict[tuple[str, str], int] = {(k.value, s.value): 0 for k in IncidentKind for s in Severity}
        for kind, severity in self.open_incidents():
            open_by[(kind, severity)] = open_by.get((kind, severity), 0) + 1
        inc = GaugeMetricFamily("selfheal_open_incidents", "Open incidents held by this worker.",
                                labels=["kind", "severity"])
        for (kind, severity), n in sorted(open_by.items()):
            inc.add_metric([kind, severity], float(n))
        yield inc
        yield CounterMetricFamily("selfheal_rebalances", "Consumer-group rebalances this worker went through.",
                                  value=float(self.rebalances()))


def _value(x: Any) -> str:
    """An enum's value, or ``str(x)``."""
    return str(getattr(x, "value", x))
