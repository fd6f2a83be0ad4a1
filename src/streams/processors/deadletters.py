"""Dead letters ready to leave the worker: size-bounded and redacted once (:func:`seal`).

A dead-letter envelope is written to ClickHouse (metadata, payload hash) and published to the
dead-letter topic. Two things must hold for both, whatever the input was:

- **It fits.** The envelope of a 3,000,605-byte message once carried the whole message, the
  dead-letter produce failed with ``MessageSizeTooLargeError`` (producer ``max_request_size``),
  the worker exited without acknowledging and met the same message again at every restart: one
  message stopped every tenant (issue 18). :func:`seal` leaves the payload out above
  ``max_payload_bytes`` (and always when payloads are switched off,
  ``SELFHEAL_DEAD_LETTER_PAYLOAD=false``); the envelope keeps the original's SHA-256 and size
  (``payload_sha256``, ``payload_bytes``) and says why (``payload_left_out``). The key (1 KiB)
  and message (4,000 characters) are bounded where the envelope is built
  (:func:`streams.processors.ingest.make_dead_letter`), so the envelope stays below
  ``max_payload_bytes`` + about 6 KiB.
- **It is redacted, and keeps its diagnosis.** ``value`` and ``message`` quote the input, so they
  go through the redactor; but a number read from a numeric field is not free text: the value
  ``2147483647`` of an out-of-range ``input_tokens`` was stored as ``[PHONE]`` (a US number to
  libphonenumber). A ``value_numeric`` dead letter keeps its value, and every number standing
  alone in its message (the value, the bound it broke; not a number inside a longer token such
  as a phone number or a date); the rest of the message is redacted piece by piece
  (:func:`redact_around`).

Sealing happens once per dead letter; the sink and the topic get the same sealed copy (they were
redacted separately before).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from hashlib import sha256

from schemas import DeadLetter

#: ``payload_left_out`` reasons
OVER_BOUND = "over_bound"
BY_SETTING = "setting"


#: a number standing alone: not preceded or followed by a letter, digit, ``.``, ``-``, ``+``, ``/``
#: or ``=`` glued to a word (so not part of a phone number, a date, an id or a version)
_ALONE = r"(?<![\w.+\-/]){}(?![\w.\-/])"
#: numbers a numeric dead letter's message states besides the value (bounds: ``<= 1000000``,
#: ``max_message_bytes=1048576``), standing alone as in :data:`_ALONE`
NUMBER = re.compile(r"(?<![\w.+\-/])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w.\-/])")


def redact_around(text: str, keep: Sequence[str], redact: Callable[[str], str | None]) -> str:
    """``text`` redacted except where one of ``keep`` stands alone (see :data:`_ALONE`: the
    number is not part of a longer token such as a phone number or a date); the pieces between
    are redacted separately.

    Example: ``redact_around("input_tokens: <= 1000000 (got 2147483647)", ["2147483647"], r)``
    keeps ``2147483647`` whatever ``r`` does with digits.
    """
    keep = sorted({k for k in keep if k}, key=len, reverse=True)  # longest first in the alternation
    if not keep:
        return redact(text) or ""
    pattern = re.compile(_ALONE.format("(" + "|".join(map(re.escape, keep)) + ")"))
    pieces = pattern.split(text)  # text, kept, text, kept, ..., text
    return "".join(p if i % 2 else ((redact(p) or "") if p else p) for i, p in enumerate(pieces))


def seal(letters: Sequence[DeadLetter], *, redact: Callable[[str], str | None], include_payload: bool = True,
         max_payload_bytes: int = 1_048_576) -> list[DeadLetter]:
    """The dead letters as they are stored and published: payload left out when
    ``include_payload`` is false or it is larger than ``max_payload_bytes`` (bytes); ``field``,
    ``value`` and ``message`` redacted (a numeric ``value`` kept, see the module docstring).

    Args:
        letters: envelopes from :func:`streams.processors.ingest.make_dead_letter`.
        redact: the redactor (``Redactor.redact``: text in, redacted text out, ``None`` kept).
        include_payload: ``Settings.dead_letter_payload``.
        max_payload_bytes: ``Settings.dead_letter_max_payload_bytes``.

    Returns:
        New envelopes, same order; ``payload_sha256`` and ``payload_bytes`` describe the original.
    """
    out = []
    for d in letters:
        update: dict[str, object] = {}
        if d.payload_sha256 is None:  # built elsewhere: describe the payload before it may go
            update["payload_sha256"] = sha256(d.payload).hexdigest()
            update["payload_bytes"] = len(d.payload)
        if d.payload and (not include_payload or len(d.payload) > max_payload_bytes):
            update["payload"] = b""
            update["payload_left_out"] = BY_SETTING if not include_payload else OVER_BOUND
        if d.value_numeric and d.value:
            # a numeric field's message is the contract's wording, the field path and numbers
            # (the value, the bound it broke): every standalone number in it is kept
            update["message"] = redact_around(d.message, [d.value, *NUMBER.findall(d.message)], redact)
        else:
            update["value"] = redact(d.value) if d.value else d.value
            update["message"] = redact(d.message) or ""
        if d.field:
            update["field"] = redact(d.field)
        out.append(d.model_copy(update=update))
    return out
