"""The drift matrix: for an incident's kind and the manifest components its release changed, the
likely cause, the safe fix, the validation gate a fix must pass and whether rollback is always
required (``Incident.drift_matrix``, ``docs/drift-matrix.md``).

The rows follow the issue's "seed 000" reading of a release manifest (model, prompt, tool schema,
policy, retrieval index; ``avro/release_manifest.avsc``): a regression that starts with a release
is always rolled back first (the restore release is known and was healthy), a drift without a
release is investigated in place (there is nothing to roll back to). The matrix is data, declared
once here; ``docs/drift-matrix.md`` shows :func:`markdown_table` and
``tests/unit/processors/test_incident_actions.py`` keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: manifest field -> component name used in incidents (``changed_components``)
COMPONENTS = {"model": "model", "prompt_version": "prompt", "tool_schema_version": "tool_schema",
              "policy_version": "policy", "retrieval_index_version": "retrieval_index"}
#: when several components changed, the row of the riskiest one is chosen (first in this order)
RISK_ORDER = ("policy", "model", "tool_schema", "retrieval_index", "prompt")

#: (kind, component or "*") -> (likely cause, safe fix, validation gate, rollback always required)
MATRIX: dict[tuple[str, str], tuple[str, str, str, bool]] = {
    ("release_regression", "policy"): (
        "the policy version of the release changed what is blocked or allowed",
        "roll back to the restore release; review the blocked and the newly allowed outputs",
        "policy regression suite and a clinical safety review, then a canary with no harm verdict", True),
    ("release_regression", "model"): (
        "the model version of the release behaves differently on this slice",
        "roll back to the restore release; re-qualify the model on the tenant's regression set",
        "offline evaluation on the tenant's regression set (selfheal export-evalset), then a canary", True),
    ("release_regression", "tool_schema"): (
        "the tool schema of the release breaks or changes tool calls",
        "roll back to the restore release; fix the tool contract",
        "tool-call contract tests, then a canary with tool failure rate non-inferior", True),
    ("release_regression", "retrieval_index"): (
        "the retrieval index of the release changed what is retrieved",
        "roll back to the restore release (its index); rebuild and compare the index",
        "retrieval hit-rate and groundedness evaluation, then a canary", True),
    ("release_regression", "prompt"): (
        "the prompt version of the release changed the outputs",
        "roll back to the restore release; fix the prompt in a new release",
        "offline evaluation on the tenant's regression set, then a canary", True),
    ("release_regression", "*"): (
        "the release changed behaviour (no manifest difference to the restore release is known)",
        "roll back to the restore release",
        "a canary of the fixed release with no harm verdict", True),
    ("safety", "release"): (
        "unsafe outputs or policy blocks rose with the release",
        "roll back to the restore release; clinicians review sampled outputs",
        "clinical safety review of sampled outputs, then a canary with the safety guardrail", True),
    ("safety", "*"): (
        "unsafe outputs or policy blocks rose without a release change (input shift or provider-side drift)",
        "sample outputs for clinical review; tighten the policy guard in a new release",
        "clinical safety review of sampled outputs", False),
    ("input_drift", "*"): (
        "the input mix changed (new cohort, workflow, intent or document mix)",
        "compare cohorts; if the new mix is legitimate, accept it as the new baseline",
        "per-cohort evaluation on the new mix", False),
    ("output_drift", "*"): (
        "outputs, latency or cost moved without a release: provider-side model or infrastructure change",
        "sample outputs; check the provider's status; pin the model version",
        "latency and cost SLO check and a review of sampled outputs", False),
    ("workflow_drift", "*"): (
        "corrections, escalations or failures rose without a release: workflow or population change",
        "sample corrected outputs; ship a fix as a new release through a canary",
        "the regression set built from the corrections (selfheal export-evalset) passes", False),
}


def changed_components(release: Mapping[str, Any] | None, restore: Mapping[str, Any] | None) -> list[str]:
    """Components (:data:`COMPONENTS` names) whose versions differ between two manifests, in
    :data:`RISK_ORDER`; empty when either manifest is unknown.

    >>> changed_components({"model": "a", "prompt_version": "p1"}, {"model": "a", "prompt_version": "p2"})
    ['prompt']
    """
    if not release or not restore:
        return []
    diff = {name for key, name in COMPONENTS.items() if release.get(key) != restore.get(key)}
    return [c for c in RISK_ORDER if c in diff]


def matrix_row(kind: str, release_id: str | None, components: list[str]) -> dict[str, Any]:
    """The drift-matrix entry (``DriftMatrixEntry`` fields) of an incident of ``kind`` whose
    implicated release is ``release_id`` (``None``: none) and whose manifest differs from the
    restore release in ``components`` (riskiest first)."""
    if kind == "release_regression":
        key = (kind, components[0] if components else "*")
    elif kind == "safety":
        key = (kind, "release" if release_id else "*")
    else:
        key = (kind, "*")
    cause, fix, gate, rollback = MATRIX[key]
    if len(components) > 1:
        cause += f" (also changed: {', '.join(components[1:])})"
    return {"likely_cause": cause, "safe_fix": fix, "validation_gate": gate, "rollback_required": rollback}


def markdown_table() -> str:
    """:data:`MATRIX` as a Markdown table (the one in ``docs/drift-matrix.md``)."""
    lines = ["| kind | component | likely cause | safe fix | validation gate | rollback always required |",
             "|---|---|---|---|---|---|"]
    for (kind, comp), (cause, fix, gate, rollback) in MATRIX.items():
        lines.append(f"| {kind} | {comp} | {cause} | {fix} | {gate} | {'yes' if rollback else 'no'} |")
    return "\n".join(lines) + "\n"
