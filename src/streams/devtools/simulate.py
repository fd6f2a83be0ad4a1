"""A simulated multi-tenant clinical agent fleet: traces, clinician feedback, one injected regression.

Fleet (deterministic for a given seed):

- tenants (health systems) with their specialties (cohorts) and workflows: ambient scribe SOAP
  notes, discharge summaries, prior authorisation letters, patient portal replies, billing codes;
  each (cohort, workflow) has its own latency, length, cost, confidence, outcome and tool profile
  (log-normal latency and tokens, Beta confidence), so slices legitimately differ;
- release manifests (model, prompt, tool schema, policy, retrieval index versions);
- clinician feedback on ~12% of runs (edits, reviewer corrections, policy denials) arriving a few
  hundred runs later (``feedback_lag``, in trace indexes: lock-step with the traces) or, with
  ``feedback_delay_s``, after a log-normal delay in event time (clinician review: the demo's
  :data:`DEMO_FEEDBACK_DELAY` has median 20 min, p99 3 h); feedback not due by the run's last trace
  has not arrived yet and is not sent; with >= 10% exact replays (same feedback_id resent) and >= 5% resubmits
  (new id, same correction re-typed with different case/spacing);
- near-duplicates (``near_dup_rate``: a second reviewer sends the same correction worded
  differently, :data:`PARAPHRASES`) and conflicting reviews (``conflict_rate``: a second reviewer
  gives another category, or on medication errors another dose); these come from their own RNG,
  so the rest of the traffic for a seed is the same whatever their rates;
- a handful of malformed messages and invalid records (they must reach the dead-letter topic);
- one injected regression: at ``inject_at`` (fraction of the run) a new release replaces the
  incumbent for one tenant × cohort; on it the correction rate is ``correction_factor`` x and
  latency ``latency_factor`` x (every quantile, so p95 too);
- optional staged rollouts (:class:`RolloutPlan`, the demo runs ``DEMO_ROLLOUTS``): in a tenant ×
  cohort, from a fraction of the run on, each trace carries ``rollout`` = control or canary
  (drawn with the stage's percentage) and canary traces run the candidate release with its
  effects. The draws use their own RNG, so every other trace is the same as without rollouts.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from schemas.codec import AvroCodec
from streams.sdk import SelfhealProducer

TENANTS = {
    "northwind-health": {"weight": 0.40, "cohorts": {"cardiology": 0.35, "primary_care": 0.45, "oncology": 0.20}},
    "riverside-clinic": {"weight": 0.25, "cohorts": {"primary_care": 0.60, "pediatrics": 0.40}},
    "summit-medical": {"weight": 0.20, "cohorts": {"cardiology": 0.50, "oncology": 0.30, "dermatology": 0.20}},
    "lakeside-ortho": {"weight": 0.15, "cohorts": {"orthopedics": 0.70, "primary_care": 0.30}},
}
WORKFLOWS = {
    "soap_note": {"weight": 0.50, "intents": ["new_visit", "follow_up", "telehealth"], "latency_ms": 4200, "out": 650,
                  "inp": 5200, "tools": ["ehr_lookup", "med_list"], "corr": 0.14},
    "discharge_summary": {"weight": 0.15, "intents": ["inpatient", "observation"], "latency_ms": 6800, "out": 900,
                          "inp": 9000, "tools": ["ehr_lookup", "lab_results", "med_list"], "corr": 0.16},
    "prior_auth": {"weight": 0.15, "intents": ["imaging", "medication", "procedure"], "latency_ms": 5200, "out": 520,
                   "inp": 3800, "tools": ["payer_policy_search", "icd_lookup"], "corr": 0.10},
    "patient_message_reply": {"weight": 0.12, "intents": ["refill", "results", "scheduling", "symptom"],
                              "latency_ms": 2100, "out": 180, "inp": 1400, "tools": ["ehr_lookup"], "corr": 0.08},
    "billing_coding": {"weight": 0.08, "intents": ["e_and_m", "procedure"], "latency_ms": 3000, "out": 120,
                       "inp": 4200, "tools": ["icd_lookup", "cpt_lookup"], "corr": 0.11},
}
COHORT_LATENCY = {"cardiology": 1.10, "primary_care": 0.95, "oncology": 1.25, "pediatrics": 0.90,
                  "dermatology": 0.85, "orthopedics": 1.00}
BASE_RELEASE = {"release_id": "rel-2026-11-01", "model": "gpt-4.1-2026-09-15", "prompt_version": "scribe-v14",
                "tool_schema_version": "tools-2026-10", "policy_version": "pol-7.2",
                "retrieval_index_version": "kb-2026-10-28"}
NEW_RELEASE = {"release_id": "rel-2026-11-18-rc1", "model": "gpt-4.1-mini-2026-11-10", "prompt_version": "scribe-v15",
               "tool_schema_version": "tools-2026-10", "policy_version": "pol-7.2",
               "retrieval_index_version": "kb-2026-11-15"}
CANARY_RELEASE = {"release_id": "rel-2026-11-20-canary", "model": "gpt-4.1-2026-11-12",
                  "prompt_version": "scribe-v14.1", "tool_schema_version": "tools-2026-10", "policy_version": "pol-7.2",
                  "retrieval_index_version": "kb-2026-10-28"}
CATEGORIES = [("omission", 0.30), ("hallucination", 0.16), ("formatting_error", 0.16), ("medication_error", 0.05),
              ("coding_error", 0.08), ("stale_policy", 0.05), ("tool_failure", 0.05),
              ("customer_specific_exception", 0.07),
              ("tone", 0.05), ("unsafe_recommendation", 0.03)]
CORRECTIONS = {
    "omission": "Added missing {x} to the assessment and plan.",
    "hallucination": "Removed {x}; it was not discussed in the visit.",
    "formatting_error": "Moved {x} under the correct SOAP heading.",
    "medication_error": "Corrected {x} dose to 25 mg twice daily.",
    "coding_error": "Changed code for {x} to the documented diagnosis.",
    "stale_policy": "Updated prior authorisation criteria for {x} to the 2026 payer policy.",
    "tool_failure": "Re-pulled {x} from the chart; lookup had failed.",
    "customer_specific_exception": "Applied clinic template for {x}.",
    "tone": "Softened wording about {x} for the patient portal.",
    "unsafe_recommendation": "Removed advice to stop {x} without follow-up.",
}
#: the same correction worded differently (a near-duplicate of CORRECTIONS[category])
PARAPHRASES = {
    "omission": "Added the missing {x} to assessment and plan",
    "hallucination": "Removed the {x}, it was not discussed during the visit.",
    "formatting_error": "Moved the {x} under the correct SOAP heading",
    "medication_error": "{x} dose corrected to 25 mg twice daily",
    "coding_error": "Changed the code for {x} to match the documented diagnosis.",
    "stale_policy": "Updated prior authorization criteria for {x} to 2026 payer policy",
    "tool_failure": "Lookup had failed, re-pulled {x} from the chart.",
    "customer_specific_exception": "Applied the clinic template for {x}",
    "tone": "Softened the wording about {x} for patient portal.",
    "unsafe_recommendation": "Removed the advice to stop {x} without a follow-up.",
}
#: the opposite of the medication_error correction (another dose): a contradiction
OPPOSITE_DOSE = "Corrected {x} dose to 50 mg twice daily."
TOPICS_X = ["metoprolol", "lisinopril", "HbA1c results", "chest pain history", "allergy list", "follow-up plan",
            "MRI lumbar spine", "statin therapy", "smoking status", "vaccination record", "fall risk", "ECG findings"]
PHI_TAIL = " Patient: Jane Doe, DOB 04/12/1961, call 617-555-0134."
ROLES = {"clinician_edit": ["physician", "nurse"], "reviewer": ["qa_reviewer", "coder", "pharmacist"],
         "policy_engine": ["system"], "end_user": ["end_user"], "downstream_outcome": ["system"]}


@dataclass
class InjectedChange:
    """The regression the simulator injects (what the demo must detect)."""

    tenant_id: str
    cohort: str
    workflow: str  # "*" = all workflows of the cohort
    release_id: str
    at_trace: int  # global trace index where the change starts
    correction_factor: float
    latency_factor: float


@dataclass
class BenignShift:
    """A change with no release behind it that operators accept (the demo's "accepted benign
    shift"): from fraction ``at`` of the run on, latency in one tenant × cohort is
    ``latency_factor`` x (an infrastructure move, say). It only scales values already drawn, so
    every other trace is the same as without it."""

    tenant_id: str
    cohort: str
    at: float
    latency_factor: float


#: the demo's benign shift: lakeside-ortho's orthopedics moves to a slower EHR gateway
DEMO_BENIGN_SHIFT = BenignShift("lakeside-ortho", "orthopedics", 0.55, 1.5)


@dataclass
class RolloutPlan:
    """A staged rollout of a candidate release in one tenant × cohort.

    ``stages`` are ``(start, stage_pct)`` pairs: from fraction ``start`` of the run on, a trace
    of the cohort is canary with probability ``stage_pct`` % (else control); before the first
    start the cohort is not in the rollout. Canary traces run ``release`` with corrections
    ``correction_factor`` x and latency ``latency_factor`` x.
    """

    tenant_id: str
    cohort: str
    stages: tuple[tuple[float, float], ...]
    correction_factor: float = 1.0
    latency_factor: float = 1.0
    release: dict[str, str] = field(default_factory=lambda: dict(CANARY_RELEASE))

    def stage_at(self, fraction: float) -> float | None:
        """Stage percentage at ``fraction`` of the run (``None`` before the rollout starts)."""
        pct = None
        for start, stage in self.stages:
            if fraction >= start:
                pct = stage
        return pct


#: the demo's clinician review delay of feedback after its trace, event time: log-normal with median
#: 1,200 s (20 min) and sigma 0.95, so p99 = 1,200 s x exp(2.326 x 0.95) = 10,900 s (3.0 h)
DEMO_FEEDBACK_DELAY = (1200.0, 0.95)

#: the demo's rollouts: one candidate release in two cohorts of the injected tenant, harmless in
#: primary care, with twice the corrections in oncology (rolled back there only), 5 % -> 25 % -> 50 %
DEMO_ROLLOUTS = (
    RolloutPlan("northwind-health", "primary_care", ((0.05, 5.0), (0.15, 25.0), (0.30, 50.0))),
    RolloutPlan("northwind-health", "oncology", ((0.05, 5.0), (0.15, 25.0), (0.30, 50.0)), correction_factor=2.0),
)


@dataclass
class SimulationReport:
    """What was produced, for the demo summary and tests."""

    traces_produced: int = 0
    feedback_produced: int = 0
    feedback_unique_expected: int = 0
    feedback_replays: int = 0
    feedback_resubmits: int = 0
    feedback_near_duplicates: int = 0  # near-duplicates sent (fold into an existing correction)
    feedback_conflicts: int = 0  # conflicting reviews sent (each a new correction, flagged with its rival)
    bad_messages: int = 0
    bad_records: int = 0
    injected: list[InjectedChange] = field(default_factory=list)
    #: ordinal (0-based) of each trace of the injected slice, and of its feedback's emission
    slice_ordinal: dict[str, int] = field(default_factory=dict)
    feedback_ordinal: dict[str, int] = field(default_factory=dict)
    slice_ordinal_at_injection: int = 0
    elapsed_s: float = 0.0
    rollouts: list[RolloutPlan] = field(default_factory=list)
    benign_shift: BenignShift | None = None
    #: traces per rollout "tenant/cohort" and arm
    rollout_traces: dict[str, dict[str, int]] = field(default_factory=dict)
    #: event-time delay of each first feedback sent after its trace, seconds (replays, resubmits and
    #: second opinions follow their feedback by 0-2 s)
    feedback_delays_s: list[float] = field(default_factory=list)
    #: feedback drawn but due after the run's last trace: not arrived yet, not sent
    feedback_not_yet_due: int = 0


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def _pick(rng: random.Random, weights: dict[str, float] | list[tuple[str, float]]) -> str:
    items = list(weights.items()) if isinstance(weights, dict) else weights
    r = rng.random() * sum(w for _, w in items)
    for k, w in items:
        r -= w
        if r <= 0:
            return k
    return items[-1][0]


class FleetSimulator:
    """Generates the fleet's traffic and sends it through the SDK.

    Args:
        traces: number of traces to produce.
        seed: RNG seed (same seed → same traffic, ids included).
        inject_at: fraction of the run where the regression starts.
        inject_tenant, inject_cohort: where it is injected.
        correction_factor, latency_factor: effect sizes on the injected slice.
        span_s: event-time span of the run, seconds, ending now.
        bad_input: send malformed messages and invalid records too.
        rollouts: staged rollouts to run (none by default; the demo runs ``DEMO_ROLLOUTS``).
        benign_shift: a release-free latency change (none by default; the demo runs
            ``DEMO_BENIGN_SHIFT``).
        feedback_lag: feedback comes this many traces (uniform, inclusive) after its trace.
        feedback_delay_s: ``(median_s, sigma)``: instead, feedback comes a log-normal delay in
            event time after its trace (seconds; own RNG, so the rest of the traffic for a seed
            is the same), and is sent at the first trace at or after its event time; ``None``
            (default) keeps ``feedback_lag``. The demo runs :data:`DEMO_FEEDBACK_DELAY`.
    """

    def __init__(self, traces: int = 50_000, seed: int = 7, inject_at: float = 0.45,
                 inject_tenant: str = "northwind-health", inject_cohort: str = "cardiology",
                 correction_factor: float = 2.5, latency_factor: float = 1.5, span_s: float = 6 * 3600,
                 bad_input: bool = True, replay_rate: float = 0.12, resubmit_rate: float = 0.07,
                 feedback_lag: tuple[int, int] = (50, 600), near_dup_rate: float = 0.04,
                 conflict_rate: float = 0.02, rollouts: Sequence[RolloutPlan] = (),
                 benign_shift: BenignShift | None = None,
                 feedback_delay_s: tuple[float, float] | None = None) -> None:
        self.benign_shift = benign_shift
        self.feedback_delay_s = feedback_delay_s
        self.delay_rng = random.Random(f"{seed}-delays")  # own stream: other traffic unchanged
        self.n = traces
        self.rng = random.Random(seed)
        self.seed = seed
        self.inject_at_trace = int(traces * inject_at)
        self.change = InjectedChange(inject_tenant, inject_cohort, "*", NEW_RELEASE["release_id"],
                                     self.inject_at_trace, correction_factor, latency_factor)
        self.span_ms = int(span_s * 1000)
        self.bad_input = bad_input
        self.replay_rate = replay_rate
        self.resubmit_rate = resubmit_rate
        self.feedback_lag = feedback_lag
        self.rollouts = {(p.tenant_id, p.cohort): p for p in rollouts}
        self.rollout_rng = random.Random(seed * 1_000_003 + 17)  # own stream: other traces unchanged
        self.rollout_traces: dict[str, dict[str, int]] = {}
        self.near_dup_rate = near_dup_rate
        self.conflict_rate = conflict_rate
        self.review_rng = random.Random(f"{seed}-reviews")  # second opinions; keeps self.rng's stream

    def _trace(self, i: int, t_ms: int) -> tuple[dict[str, Any], float]:
        rng = self.rng
        tenant = _pick(rng, {k: v["weight"] for k, v in TENANTS.items()})
        cohort = _pick(rng, TENANTS[tenant]["cohorts"])
        workflow = _pick(rng, {k: v["weight"] for k, v in WORKFLOWS.items()})
        wf = WORKFLOWS[workflow]
        injected = i >= self.change.at_trace and tenant == self.change.tenant_id and cohort == self.change.cohort
        release = NEW_RELEASE if injected else BASE_RELEASE
        lat = _lognormal(rng, wf["latency_ms"] * COHORT_LATENCY[cohort], 0.35) * (
            self.change.latency_factor if injected else 1.0)
        shift = self.benign_shift
        if shift is not None and (tenant, cohort) == (shift.tenant_id, shift.cohort) and i >= shift.at * self.n:
            lat *= shift.latency_factor
        out_tok = max(1, int(_lognormal(rng, wf["out"], 0.30)))
        in_tok = max(1, int(_lognormal(rng, wf["inp"], 0.25)))
        r = rng.random()
        outcome = "failure" if r < 0.02 else "escalated" if r < 0.06 else "abandoned" if r < 0.07 else "success"
        tools = []
        for name in wf["tools"]:
            s = rng.random()
            tools.append({"name": name, "status": "error" if s < 0.015 else "timeout" if s < 0.02 else "ok",
                          "latency_ms": round(_lognormal(rng, 180.0, 0.5), 1)})
        queries = rng.randint(0, 3)
        hits = sum(1 for _ in range(queries) if rng.random() < 0.93)
        trace_id = hashlib.sha1(f"{self.seed}-{i}".encode()).hexdigest()[:24]
        output_sha = hashlib.sha256(f"out-{trace_id}".encode()).hexdigest()
        trace = {
            "trace_id": trace_id, "tenant_id": tenant, "cohort": cohort, "workflow": workflow,
            "intent": rng.choice(wf["intents"]), "agent_id": f"{workflow}-agent", "session_id": f"s-{trace_id[:10]}",
            "event_time": t_ms, "release": release, "rollout": None, "latency_ms": round(lat, 2),
            "input_tokens": in_tok, "output_tokens": out_tok,
            "cost_usd": round(in_tok * 2.5e-6 + out_tok * 1.0e-5, 6),
            "confidence": round(min(max(rng.betavariate(8, 2), 0.0), 1.0), 4), "outcome": outcome, "tool_calls": tools,
            "retrieval_queries": queries, "retrieval_hits": hits, "policy_blocked": rng.random() < 0.005,
            "retries": 1 if rng.random() < 0.03 else 0, "fallback_used": rng.random() < 0.01,
            "output_sha256": output_sha, "attributes": {"channel": "ambient" if workflow == "soap_note" else "api",
                                                        "locale": "en-US"},
        }
        p_corr = wf["corr"] * (self.change.correction_factor if injected else 1.0)
        plan = self.rollouts.get((tenant, cohort)) if not injected else None
        stage = plan.stage_at(i / max(self.n, 1)) if plan is not None else None
        if plan is not None and stage is not None:
            arm = "canary" if self.rollout_rng.random() < stage / 100.0 else "control"
            trace["rollout"] = {"arm": arm, "stage_pct": stage, "candidate_release_id": plan.release["release_id"]}
            if arm == "canary":
                trace["release"] = plan.release
                trace["latency_ms"] = round(lat * plan.latency_factor, 2)
                p_corr *= plan.correction_factor
            counts = self.rollout_traces.setdefault(f"{tenant}/{cohort}", {"control": 0, "canary": 0})
            counts[arm] += 1
        return trace, p_corr

    def _feedback(self, trace: dict[str, Any], t_ms: int) -> dict[str, Any]:
        rng = self.rng
        category = _pick(rng, CATEGORIES)
        source = "policy_engine" if category == "stale_policy" and rng.random() < 0.5 else \
            "reviewer" if rng.random() < 0.25 else "clinician_edit"
        x = rng.choice(TOPICS_X)
        text = CORRECTIONS[category].format(x=x)
        phi = rng.random() < 0.1
        if phi:
            text += PHI_TAIL  # PHI the redactor must remove
        self._topic[trace["trace_id"]] = (x, phi)
        return {
            "feedback_id": uuid.UUID(int=rng.getrandbits(128)).hex, "trace_id": trace["trace_id"],
            "tenant_id": trace["tenant_id"], "session_id": trace["session_id"], "source": source,
            "category": category,
            "regulatory_tags": ["medication_terminology"] if category == "medication_error" else
            ["billing_code_accuracy"] if category == "coding_error" else [],
            "severity": "high" if category in ("unsafe_recommendation", "medication_error") else
            rng.choice(["low", "medium", "medium"]),
            "original_output_hash": trace["output_sha256"], "corrected_text": text, "edit_diff": None,
            "reviewer_id": f"rev-{rng.randint(1, 40):03d}", "reviewer_role": rng.choice(ROLES[source]),
            "event_time": t_ms,
        }

    def run(self, sdk: SelfhealProducer, progress: Callable[[int, int], None] | None = None,
            raw_producer: Producer | None = None, codec: AvroCodec | None = None) -> SimulationReport:
        """Produce the whole run through ``sdk``; returns what was sent. ``progress(done, total)``
        is called every 1,000 traces."""
        rng = self.rng
        self._topic: dict[str, tuple[str, bool]] = {}  # trace_id → (correction topic, PHI tail)
        rep = SimulationReport(injected=[self.change], rollouts=list(self.rollouts.values()),
                               benign_shift=self.benign_shift)
        rep.rollout_traces = self.rollout_traces
        start_ms = int(time.time() * 1000) - self.span_ms - 60_000
        step = self.span_ms / max(self.n, 1)
        pending: list[tuple[int, int, dict[str, Any]]] = []  # heap of (emit at trace index, seq, feedback)
        sent_fb: list[dict[str, Any]] = []
        slice_count = 0
        t0 = time.perf_counter()
        bad_at = set(rng.sample(range(self.n), 12)) if self.bad_input else set()
        for i in range(self.n):
            t_ms = int(start_ms + i * step)
            trace, p_corr = self._trace(i, t_ms)
            in_slice = trace["tenant_id"] == self.change.tenant_id and trace["cohort"] == self.change.cohort
            if in_slice:
                rep.slice_ordinal[trace["trace_id"]] = slice_count
                if i < self.change.at_trace:
                    rep.slice_ordinal_at_injection = slice_count + 1
                slice_count += 1
            if i in bad_at:
                self._send_bad(trace, sdk, raw_producer, codec, rep)
            sdk.send_trace(trace)
            rep.traces_produced += 1
            if rng.random() < p_corr:
                lag = rng.randint(*self.feedback_lag)
                if self.feedback_delay_s is None:
                    delay_ms = int(lag * step)
                else:
                    delay_ms = int(_lognormal(self.delay_rng, *self.feedback_delay_s) * 1000)
                    lag = max(1, math.ceil(delay_ms / step))
                fb = self._feedback(trace, t_ms + delay_ms)
                if self.feedback_delay_s is not None and i + lag >= self.n:
                    rep.feedback_not_yet_due += 1  # arrives after the run: the labels a live system lacks
                else:
                    heapq.heappush(pending, (i + lag, len(sent_fb) + len(pending), fb))
                    fb["_delay_s"] = delay_ms / 1000
            # emit due feedback (and its replays/resubmits); lock-step mode sends the rest at the end
            last = i == self.n - 1 and self.feedback_delay_s is None
            while pending and (pending[0][0] <= i or last):
                fb = heapq.heappop(pending)[2]
                rep.feedback_delays_s.append(fb.pop("_delay_s"))
                fb["event_time"] = min(fb["event_time"], int(time.time() * 1000))
                sdk.send_feedback(fb)
                rep.feedback_produced += 1
                rep.feedback_unique_expected += 1
                sent_fb.append(fb)
                if fb["trace_id"] in rep.slice_ordinal:
                    rep.feedback_ordinal[fb["trace_id"]] = slice_count
                r = rng.random()
                if r < self.replay_rate:
                    sdk.send_feedback(fb)  # exact replay
                    rep.feedback_produced += 1
                    rep.feedback_replays += 1
                elif r < self.replay_rate + self.resubmit_rate:
                    again = dict(fb, feedback_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                                 corrected_text="  " + fb["corrected_text"].upper().replace(" ", "  ") + " ",
                                 event_time=fb["event_time"] + 1000)
                    sdk.send_feedback(again)
                    rep.feedback_produced += 1
                    rep.feedback_resubmits += 1
                self._second_opinion(fb, sdk, rep)
            if progress and (i + 1) % 1000 == 0:
                progress(i + 1, self.n)
        sdk.flush()
        if raw_producer is not None:
            raw_producer.flush(30)
        rep.elapsed_s = time.perf_counter() - t0
        return rep

    def _second_opinion(self, fb: dict[str, Any], sdk: SelfhealProducer, rep: SimulationReport) -> None:
        """Maybe send a second reviewer's near-duplicate or conflicting review of ``fb``."""
        rr = self.review_rng
        r = rr.random()
        if r >= self.near_dup_rate + self.conflict_rate:
            return
        x, phi = self._topic.pop(fb["trace_id"])
        tail = PHI_TAIL if phi else ""
        role = rr.choice(ROLES["reviewer"])
        other = dict(fb, feedback_id=uuid.UUID(int=rr.getrandbits(128)).hex, source="reviewer", reviewer_role=role,
                     reviewer_id=f"rev-{rr.randint(100, 140):03d}", event_time=fb["event_time"] + 2000)
        if r < self.near_dup_rate:
            other["corrected_text"] = PARAPHRASES[fb["category"]].format(x=x) + tail
            rep.feedback_near_duplicates += 1
        else:
            if fb["category"] == "medication_error" and rr.random() < 0.5:
                other["corrected_text"] = OPPOSITE_DOSE.format(x=x) + tail
            else:
                cat = rr.choice([c for c, _ in CATEGORIES if c != fb["category"]])
                other.update(category=cat, corrected_text=CORRECTIONS[cat].format(x=x) + tail,
                             severity="high" if cat in ("unsafe_recommendation", "medication_error") else "medium",
                             regulatory_tags=["medication_terminology"] if cat == "medication_error" else
                             ["billing_code_accuracy"] if cat == "coding_error" else [])
            rep.feedback_conflicts += 1
            rep.feedback_unique_expected += 1
        sdk.send_feedback(other)
        rep.feedback_produced += 1

    def _send_bad(self, trace: dict[str, Any], sdk: SelfhealProducer, raw: Producer | None, codec: AvroCodec | None,
                  rep: SimulationReport) -> None:
        """Malformed input the worker must dead-letter: garbage bytes, truncated Avro, and records
        that break the contract (sent around the SDK's validation, as a buggy agent would)."""
        if raw is None or codec is None:
            return
        topic = sdk.settings.topic("traces")
        key = trace["tenant_id"].encode()
        kind = self.rng.randrange(4)
        if kind == 0:
            raw.produce(topic, b'{"trace_id": "not avro"}', key=key)
            rep.bad_messages += 1
        elif kind == 1:
            good = codec.encode("selfheal.v1.AgentTrace", trace)
            raw.produce(topic, good[: len(good) // 2], key=key)
            rep.bad_messages += 1
        else:
            bad = dict(trace, trace_id=trace["trace_id"] + "-bad")
            if kind == 2:
                bad["latency_ms"] = -5.0
            else:
                bad["tenant_id"] = "Bad Tenant!"
            raw.produce(topic, codec.encode("selfheal.v1.AgentTrace", bad), key=key)
            rep.bad_records += 1
