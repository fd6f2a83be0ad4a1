"""Types and limits shared by every contract.

The limits here are the single source for both the pydantic models (SDK-side and slow-path
validation) and the vectorised checks in :mod:`streams.processors.ingest` (hot path); a unit test
asserts the two agree record by record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StringConstraints, ValidationInfo

#: Tenant ids are lower-case slugs: they appear in Kafka keys, ClickHouse row policies and HMAC
#: keys, so anything looser invites injection and ambiguity.
TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
#: Labels (cohort, workflow, intent, release, tool names): no "|" or "/" (slice-key separators).
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
MAX_ID_LEN = 128
MAX_TOKENS = 2_000_000
MAX_LATENCY_MS = 3_600_000.0
MAX_COST_USD = 1_000.0
MAX_RETRIES = 1_000
MAX_TOOL_CALLS = 256
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_LEN = 2_048
MAX_TEXT_LEN = 65_536
#: Earliest accepted event time: 2020-01-01T00:00:00Z, ms. Later bounds are relative to "now" and
#: come from settings (``max_event_age_s``, ``max_clock_skew_s``).
MIN_EVENT_TIME_MS = 1_577_836_800_000

TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]
Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN)]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _epoch_ms(value: object) -> object:
    # integers are epoch *milliseconds*, as on the wire (Avro timestamp-millis). pydantic alone
    # would read values below 2e10 as seconds, so a producer sending seconds by mistake would get
    # a plausible date instead of an error.
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"event_time={value} ms is not a representable time") from None
    return value


#: Event time: timezone-aware UTC datetime; naive values are taken as UTC; integers are epoch ms.
#: Avro timestamp-millis.
EventTime = Annotated[datetime, BeforeValidator(_epoch_ms), AfterValidator(_utc)]


def check_event_time(event_ms: int, context: object) -> None:
    """Check an event time (epoch ms) against the accepted window.

    ``context`` is the pydantic validation context: a mapping with ``now_ms`` (epoch ms),
    ``max_event_age_s`` and ``max_clock_skew_s`` (seconds), or ``None`` for the static bound only.

    Raises:
        ValueError: naming ``event_time`` and the value when outside the window.
    """
    if event_ms < MIN_EVENT_TIME_MS:
        raise ValueError(f"event_time={event_ms} ms is before 2020-01-01")
    if isinstance(context, dict) and "now_ms" in context:
        now_ms = int(context["now_ms"])
        if event_ms > now_ms + int(context.get("max_clock_skew_s", 300)) * 1000:
            raise ValueError(f"event_time={event_ms} ms is in the future (now={now_ms} ms)")
        if event_ms < now_ms - int(context.get("max_event_age_s", 30 * 86400)) * 1000:
            raise ValueError(f"event_time={event_ms} ms is older than the accepted age")


def _in_event_time_window(value: datetime, info: ValidationInfo) -> datetime:
    check_event_time(to_ms(value), info.context)
    return value


#: The ``event_time`` of a trace or feedback: an :data:`EventTime` that also lies in the accepted
#: window (:func:`check_event_time`, with the validation context). One validator for every
#: contract, attached to the field (not the model), so the error names the field and its value.
WindowedEventTime = Annotated[EventTime, AfterValidator(_in_event_time_window)]


def to_ms(value: datetime) -> int:
    """Convert an aware datetime to Unix epoch milliseconds (Avro ``timestamp-millis``)."""
    return int(value.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """Convert Unix epoch milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Severity(StrEnum):
    """Severity of feedback or an incident, lowest first (Avro enum ``selfheal.v1.Severity``)."""

    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class Contract(BaseModel):
    """Base of every contract model: unknown fields are errors, values are validated on assign.

    ``AVRO_NAME`` is the full name of the matching schema in ``avro/`` (``selfheal.v1.<Name>``);
    :mod:`schemas.codec` uses it to encode a model and ``tests/unit/test_contracts.py`` to check
    that model and schema agree field by field.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    AVRO_NAME: ClassVar[str] = ""
