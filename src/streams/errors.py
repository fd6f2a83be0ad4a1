"""One exception hierarchy for selfheal. Every message names the field, value or topic at fault."""

from __future__ import annotations


class SelfhealError(Exception):
    """Base of every error selfheal raises on purpose."""


class ConfigError(SelfhealError):
    """A setting is missing or invalid (names the ``SELFHEAL_*`` variable)."""


class FrameworkVersionError(SelfhealError):
    """An installed framework release the worker's workarounds were not verified on (names the
    installed and the verified versions; see :mod:`streams.worker.faust_fixes`)."""


class BrokerUnavailableError(ConfigError):
    """No Kafka broker answered at ``SELFHEAL_KAFKA_BOOTSTRAP`` (names the address)."""


class StoreUnavailableError(ConfigError):
    """The ClickHouse store to read cannot be used: no chDB directory at ``SELFHEAL_CLICKHOUSE_PATH``,
    no selfheal database in it, or it cannot be opened (names the path or server and the setting)."""


class ChangelogError(SelfhealError):
    """Changelog messages were not acknowledged by the broker (failed, or timed out; names the
    topics): the batch that wrote them is not committed."""


class TopicNotReadyError(SelfhealError):
    """Topic partitions are not served by a leader yet (names topic, partition and error)."""


class ContractViolation(SelfhealError, ValueError):
    """A record breaks its contract.

    Attributes:
        field: dotted path of the first field at fault (``release.model``, ``tool_calls.0.latency_ms``).
        value: the offending value, as given.
        error_class: dead-letter reason code (``validation``, ``oversized``, ``duplicate_conflict`` ...).
    """

    def __init__(self, message: str, *, field: str | None = None, value: object = None,
                 error_class: str = "validation") -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.error_class = error_class


class DeliveryError(SelfhealError):
    """Kafka did not acknowledge a message (names topic, partition and the broker error).

    Attributes:
        unconfirmed: messages acknowledged without an offset, which the broker may not have
            written, as ``(topic, key, value)`` bytes; the caller may send them again (the worker
            recognises a replayed trace or feedback record).
    """

    def __init__(self, message: str, *, unconfirmed: list[tuple[str, bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.unconfirmed = unconfirmed or []


class SinkError(SelfhealError):
    """ClickHouse refused or failed a write after retries (names table and row count)."""


class TenantScopeError(SelfhealError, PermissionError):
    """A query helper was called without a valid tenant, or would cross tenants."""


class ProcessingError(SelfhealError):
    """Computing a batch's results raised (the cause is ``__cause__``): a candidate poison record,
    unlike sink, broker or changelog failures (:mod:`streams.worker.quarantine`)."""
