"""Incident action contract: what a rollout system or on-call did about an incident
(``avro/incident_action.avsc``, topic ``agent.incident-actions.v1``, key = tenant_id)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from schemas.common import Contract, EventTime, Identifier, TenantId


class ActionKind(StrEnum):
    """The actions the worker applies (``IncidentAction.action`` is a string on the wire, so an
    unknown one is a dead letter ``unknown_action`` naming it rather than an undecodable message).

    - ``acknowledge``: someone owns it (``acknowledged_by``); nothing else changes;
    - ``accept_new_baseline``: the change is benign; the incident's slices adopt the post-change
      level (their baselines of the metric group restart from the traffic after the action) and
      the incident resolves (``resolution = accepted_new_baseline``);
    - ``suppress``: routine updates withheld until ``until`` (a worsening is still reported);
    - ``mark_false_positive``: the incident resolves (``resolution = false_positive``), its
      slices' detectors of the group restart;
    - ``rollback_executed``: ``release_id`` was rolled back to ``restored_release_id``
      (``mitigated_at``); the incident resolves once the data recover, as always;
    - ``promotion_executed``: ``release_id`` was promoted despite (or after) the incident.
    """

    acknowledge = "acknowledge"
    accept_new_baseline = "accept_new_baseline"
    suppress = "suppress"
    mark_false_positive = "mark_false_positive"
    rollback_executed = "rollback_executed"
    promotion_executed = "promotion_executed"


class IncidentAction(Contract):
    """One action on ``agent.incident-actions.v1`` (key: ``tenant_id``).

    ``action`` is validated by the worker against :class:`ActionKind` (not here), so that a
    producer newer than the worker gets a dead letter naming the action it does not know.
    """

    AVRO_NAME: ClassVar[str] = "selfheal.v1.IncidentAction"

    action_id: Identifier
    incident_id: Identifier
    tenant_id: TenantId
    action: str
    actor: Identifier
    reason: str
    at: EventTime
    until: EventTime | None = None
    release_id: str | None = None
    restored_release_id: str | None = None
