"""Platform signal contract (``avro/platform_signal.avsc``, internal topic
``agent.platform-signals.v1``, key ``"platform"``): tenant alarms and partition censuses sent by
every worker to the one worker that decides platform-wide incidents."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas.common import Contract, EventTime


class PlatformSignal(Contract):
    """One signal: ``kind = "alarm"`` (a tenant slice's alarm no new release explains, with its
    figures) or ``"census"`` (``tenants`` on ``source_partition``; its ``event_time`` is the
    platform detector's clock)."""

    AVRO_NAME: ClassVar[str] = "selfheal.v1.PlatformSignal"

    kind: str = Field(pattern=r"^(alarm|census)$")
    source_partition: int = Field(ge=0)
    tenants: int = Field(default=0, ge=0)
    tenant_id: str | None = None
    slice_key: str | None = None
    metric_group: str | None = None
    metric: str | None = None
    detector: str | None = None
    trace_id: str | None = None
    event_time: EventTime
    first_seen: EventTime
    baseline: float = 0.0
    observed: float = 0.0
    ci_low: float = 0.0
    ci_high: float = 0.0
    effect: float = 0.0
    samples: int = 0
    statistic: float = 0.0
    threshold: float = 0.0
    evidence_trace_ids: list[str] = Field(default_factory=list)
