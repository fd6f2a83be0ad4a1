"""Dead-letter envelope: what could not be decoded, validated or processed, and why
(``avro/dead_letter.avsc``)."""

from __future__ import annotations

from typing import ClassVar

from schemas.common import Contract, EventTime


class DeadLetter(Contract):
    """One rejected message or record on ``agent.deadletter.v1``.

    ``record_index`` is the index inside a batch message, ``-1`` when the whole message failed.
    ``payload`` holds the original message bytes, or the failing record as canonical JSON when it
    arrived inside an otherwise valid batch; it is left out (empty, ``payload_left_out`` names
    why) above a size bound or by setting, and ``payload_sha256`` / ``payload_bytes`` always
    describe the original, so nothing is lost without a trace. ``value_numeric`` marks a
    ``value`` read from a numeric field (a diagnosis, not free text: kept through redaction).
    """

    AVRO_NAME: ClassVar[str] = "selfheal.v1.DeadLetter"

    dead_letter_id: str
    source_topic: str
    source_partition: int
    source_offset: int
    record_index: int
    key: bytes | None = None
    payload: bytes
    schema_fingerprint: str | None = None
    error_class: str
    field: str | None = None
    value: str | None = None
    message: str
    tenant_id: str | None = None
    occurred_at: EventTime
    payload_sha256: str | None = None
    payload_bytes: int | None = None
    payload_left_out: str | None = None
    value_numeric: bool = False
