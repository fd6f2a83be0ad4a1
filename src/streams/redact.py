"""PHI/PII redaction for free text before it is persisted, and tenant-keyed hashing of identifiers.

Applied on every path that stores free text: trace ``attributes`` values, feedback
``corrected_text``/``edit_diff``, dead-letter ``value``/``message`` (README "Privacy").

Detectors (each replaced by a typed placeholder such as ``[EMAIL]``):

- phone numbers: ``phonenumbers.PhoneNumberMatcher`` (Google's libphonenumber port), region US by
  default, plus international numbers written with ``+``;
- e-mail addresses, US SSNs, dates (numeric and month-name forms, e.g. dates of birth), medical
  record / account numbers introduced by MRN, record, account, member id, patient id;
- personal names introduced by a title (Mr, Mrs, Ms, Dr, ...) or a label (patient:, name:,
  pt:), which is where names appear in clinical notes and corrections.

Free-text NER (spaCy/presidio) is not used: its models are not installable from PyPI here; the
pattern set above is tested on crafted PHI in ``tests/unit/test_redact.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

import phonenumbers

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?"
          r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
DATE = re.compile(
    r"\b(?:\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}-\d{2}-\d{2}|"
    + MONTHS + r"\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}|\d{1,2} "
    + MONTHS + r"\.? \d{4})\b",
    re.IGNORECASE,
)
RECORD = re.compile(
    r"\b(?:MRN|medical record(?: number| no\.?)?|record(?: number| no\.?| #)?|acct|account(?: number| no\.?)?|"
    r"member id|patient id|chart(?: number| no\.?)?)\s*[:#]?\s*(?=[A-Z-]*\d)[A-Z0-9-]{4,}\b",  # an id has a digit
    re.IGNORECASE,
)
NAME_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.? [A-Z][a-z]+(?: [A-Z][a-z]+)?")
NAME_LABEL = re.compile(r"\b(?:patient|pt|name|patient name)\s*:\s*[A-Z][a-z]+(?: [A-Z][a-z]+){0,2}", re.IGNORECASE)
PLUS_PHONE = re.compile(r"\+\d[\d ()-]{7,}\d")


class Redactor:
    """Replaces PHI/PII spans in text with typed placeholders.

    Args:
        region: default phone region for libphonenumber (ISO 3166 code).
        enabled: ``False`` returns text unchanged (``SELFHEAL_REDACT=false``, tests only).
    """

    def __init__(self, region: str = "US", enabled: bool = True) -> None:
        self.region = region
        self.enabled = enabled

    def redact(self, text: str | None) -> str | None:
        """Redacted copy of ``text`` (``None`` stays ``None``)."""
        if not text or not self.enabled:
            return text
        out = EMAIL.sub("[EMAIL]", text)
        out = RECORD.sub("[RECORD_ID]", out)
        out = SSN.sub("[SSN]", out)
        out = DATE.sub("[DATE]", out)
        out = NAME_LABEL.sub(lambda m: m.group(0).split(":")[0] + ": [NAME]", out)
        out = NAME_TITLE.sub("[NAME]", out)
        spans = [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(out, self.region)]
        for start, end in reversed(spans):
            out = out[:start] + "[PHONE]" + out[end:]
        return PLUS_PHONE.sub("[PHONE]", out)

    def redact_map(self, values: Mapping[str, str]) -> dict[str, str]:
        """Redact every value of a string map (keys are schema-like names and kept)."""
        if not self.enabled or not values:
            return dict(values)
        return {k: self.redact(v) or "" for k, v in values.items()}


def tenant_hmac(key: bytes, tenant_id: str, identifier: str) -> str:
    """HMAC-SHA256 of ``identifier`` under a key derived for ``tenant_id`` (hex, 32 chars).

    The same reviewer in two tenants hashes differently, so hashes cannot be joined across tenants.
    """
    tenant_key = hmac.new(key, tenant_id.encode(), hashlib.sha256).digest()
    return hmac.new(tenant_key, identifier.encode(), hashlib.sha256).hexdigest()[:32]
