"""The chaos run's episode check: an incident opened while an overlapping one of the same tenant
and metric group is still open is a re-opened episode; redeliveries count once."""

from __future__ import annotations

from streams.devtools.chaos import reopened_episodes


def _event(iid: str, status: str, revision: int = 0, cohort: str | None = "cardiology", group: str = "quality",
           tenant: str = "acme", layer: str = "tenant_cohort") -> dict:
    return {"incident_id": iid, "revision": revision, "status": status, "metric_group": group,
            "slice": {"layer": layer, "tenant_id": tenant, "cohort": cohort, "workflow": None, "release_id": None}}


def test_an_overlapping_incident_opened_while_one_is_open_is_reported():
    events = [(0, 0, _event("a", "open")), (0, 1, _event("b", "open", layer="tenant", cohort=None))]
    bad, counts = reopened_episodes(events)
    assert [b["incident_id"] for b in bad] == ["b"] and bad[0]["while_open"] == ["a"]
    assert counts == {"events": 2, "redelivered_events": 0, "incidents": 2}


def test_after_resolution_other_groups_cohorts_tenants_and_redeliveries_are_fine():
    events = [(0, 0, _event("a", "open")), (0, 1, _event("a", "open")),  # redelivered: same id and revision
              (0, 2, _event("c", "open", cohort="oncology")),  # another cohort: no overlap
              (0, 3, _event("d", "open", group="latency")),  # another metric group
              (1, 0, _event("e", "open", tenant="globex")),  # another tenant
              (0, 4, _event("a", "resolved", revision=1)),
              (0, 5, _event("f", "open"))]  # a new episode after "a" resolved
    bad, counts = reopened_episodes(events)
    assert bad == []
    assert counts == {"events": 7, "redelivered_events": 1, "incidents": 5}
