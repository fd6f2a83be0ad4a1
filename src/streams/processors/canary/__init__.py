"""Canary scorecards and rollout verdicts: is a release under rollout worse than its control?

What
----
Traces of a staged rollout carry ``rollout = {arm, stage_pct, candidate_release_id}``. For every
candidate release, tenant and cohort, :class:`CanaryMonitor` keeps one *scorecard* per compared
arm (``canary``: the candidate served the run; ``shadow``: it ran without serving), compares its
traces with the *control* traces of the same rollout (same candidate release, tenant, cohort)
and decides ``promote`` / ``hold`` / ``rollback`` for the current exposure stage (the stage of the
latest candidate trace). Evidence accumulates across stages (the test below is indifferent to
the allocation changing), while the minimum sample size counts per stage: after 5 % -> 25 % the
scorecard holds until the new stage has ``min_samples`` again. Seven metrics (the catalogue
entries with a ``canary`` use, :mod:`streams.processors.metrics`), each tested as the per-trace
rate of a harmful event:

=====================  =========  ===============================================  ========
metric                 role       harmful event of a trace                         arrives
=====================  =========  ===============================================  ========
correction_rate        success    at least one correction                          feedback
task_success           success    outcome other than ``success``                   trace
escalation_rate        success    outcome ``escalated``                            trace
latency_p95            success    latency in or above the control's p95 bin        trace
cost                   success    cost in or above the control's p90 bin           trace
policy_block_rate      guardrail  ``policy_blocked``                               trace
safety_feedback_rate   guardrail  unsafe-recommendation / med.-error feedback      feedback
=====================  =========  ===============================================  ========

Latency and cost thresholds are the control's running p95/p90 per workflow (log-spaced
histograms, fixed for a stratum when it opens, i.e. from earlier data only), so the latency test
stays quantile-aware and the cost test sees a shift of the distribution's upper part. Workflows
matching ``high_risk_workflows`` (medication, triage, patient-facing) get their own scorecards
(verdict ``workflow`` set, risk class ``high``: promotion at ``high_risk_alpha`` after
``high_risk_min_samples``); a cohort's other workflows share one scorecard (``workflow`` null).

Modules: :mod:`~streams.processors.canary.sequential` (the stratified conditional likelihood and
the mixture sequential tests), :mod:`~streams.processors.canary.scorecard` (a scorecard's
metrics, state, decision rules and verdict event), :mod:`~streams.processors.canary.monitor`
(:class:`CanaryMonitor`: traces and feedback in, folding by watermark, persistence, verdicts out).
Measured error rates and decision times: docs/canary.md.
"""

from streams.processors.canary.monitor import CanaryMonitor, Emitted
from streams.processors.canary.scorecard import (
    GUARDRAILS,
    M_CORR,
    SUCCESS,
    CanaryConfig,
    Group,
    Scorecard,
    ScorecardRules,
    verdict_id,
)
from streams.processors.canary.sequential import GRID, LOG_RHO, NULL, RHO, MixtureTest, stratum_loglik
from streams.processors.metrics import CANARY_INDEX, CANARY_METRICS, N_CANARY_METRICS

__all__ = [
    "CANARY_INDEX", "CANARY_METRICS", "GRID", "GUARDRAILS", "LOG_RHO", "M_CORR", "NULL", "N_CANARY_METRICS", "RHO",
    "SUCCESS", "CanaryConfig", "CanaryMonitor", "Emitted", "Group", "MixtureTest", "Scorecard", "ScorecardRules",
    "stratum_loglik", "verdict_id",
]
