"""PHI/PII redaction for free text before it is persisted, and tenant-keyed hashing of identifiers.

Applied on every path that stores free text: trace ``attributes`` values, feedback
``corrected_text``/``edit_diff``, dead-letter ``value``/``message`` (docs/feedback.md
"Redaction", docs/reliability.md "Security and isolation").

Detectors (:data:`RULES`, applied in that order; each replaces a span with a typed placeholder
such as ``[EMAIL]``):

- phone numbers: ``phonenumbers.PhoneNumberMatcher`` (Google's libphonenumber port), region US by
  default, plus international numbers written with ``+``;
- e-mail addresses, US SSNs, dates (numeric and month-name forms, e.g. dates of birth), medical
  record / account numbers introduced by MRN, record, account, member id, patient id;
- personal names introduced by a title (Mr, Mrs, Ms, Dr, ...) or a label (patient:, name:,
  pt:), which is where names appear in clinical notes and corrections.

Batch pre-filter: most trace attribute values hold no PHI, and running every rule on every value
is the costly part, so :meth:`Redactor.redact_maps` first asks :data:`PREFILTER`, one regex that
matches wherever any rule could match. It is *derived* from the rules: each :class:`Rule`
declares a ``trigger``, a pattern that every match of the rule contains (an ``@`` for e-mail, a
digit for numbers and dates, the title or label word for names), and the pre-filter is their
union. A rule added without a correct trigger fails ``tests/unit/test_privacy.py``, which checks
every rule's examples against its trigger; a pre-filter written by hand next to the rules could
silently skip a new one.

Free-text NER (spaCy/presidio) is not used: its models are not installable from PyPI here; the
pattern set above is tested on crafted PHI in ``tests/unit/test_privacy.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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

#: a digit: every number-like span (ids, dates, phones, SSNs) has one
_DIGIT = r"\d"


@dataclass(frozen=True, slots=True)
class Rule:
    """One redaction rule.

    Attributes:
        name: short name (tests, docs).
        trigger: regex (matched case-insensitively) that every match of the rule contains; the
            union of all triggers is :data:`PREFILTER`.
        examples: texts the rule must redact (``tests/unit/test_privacy.py`` checks that the
            rule matches each and that its trigger matches inside every match).
        pattern: the compiled pattern, or ``None`` for a rule with its own matcher (phones).
        replacement: placeholder, or a function of the match (a name label keeps its label).
    """

    name: str
    trigger: str
    examples: tuple[str, ...]
    pattern: re.Pattern[str] | None
    replacement: str | Callable[[re.Match[str]], str] = ""

    def spans(self, text: str, region: str) -> list[tuple[int, int]]:
        """``(start, end)`` of every match in ``text`` (``region``: default phone region)."""
        if self.pattern is None:
            return [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, region)]
        return [m.span() for m in self.pattern.finditer(text)]

    def apply(self, text: str, region: str) -> str:
        """``text`` with every match replaced (one left-to-right pass, like ``re.sub``)."""
        if self.pattern is not None:
            return self.pattern.sub(self.replacement, text)
        for start, end in reversed(self.spans(text, region)):
            text = text[:start] + str(self.replacement) + text[end:]
        return text


#: the rules in the order they are applied (an e-mail or record id goes before the date and phone
#: patterns that would otherwise take its digits; a name label before the title that may follow it)
RULES: tuple[Rule, ...] = (
    Rule("email", "@", ("email jane.doe@example.org",), EMAIL, "[EMAIL]"),
    Rule("record", _DIGIT, ("MRN: A1234567", "account number 99812345"), RECORD, "[RECORD_ID]"),
    Rule("ssn", _DIGIT, ("SSN 123-45-6789",), SSN, "[SSN]"),
    Rule("date", _DIGIT, ("DOB 03/14/1962", "born March 3, 1961", "on 2024-02-29"), DATE, "[DATE]"),
    Rule("name_label", r"\b(?:patient|pt|name)\b", ("Patient: John Smith reports", "pt: Ann Lee", "name : Bo Li"),
         NAME_LABEL, lambda m: m.group(0).split(":")[0] + ": [NAME]"),
    Rule("name_title", r"\b(?:mr|mrs|ms|miss|dr|prof)\b", ("seen by Dr. Alice Wong today", "Mrs Jones"),
         NAME_TITLE, "[NAME]"),
    Rule("phone", _DIGIT, ("call 617-555-0134", "(617) 555 0134"), None, "[PHONE]"),
    Rule("plus_phone", _DIGIT, ("reach her at +44 20 7946 0958",), PLUS_PHONE, "[PHONE]"),
)
#: matches wherever some rule could match (the union of the rules' triggers, deduplicated)
PREFILTER = re.compile("|".join(dict.fromkeys(f"(?:{r.trigger})" for r in RULES)), re.IGNORECASE)


class Redactor:
    """Replaces PHI/PII spans in text with typed placeholders (:data:`RULES`).

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
        for rule in RULES:
            text = rule.apply(text, self.region)
        return text

    def redact_map(self, values: Mapping[str, str]) -> dict[str, str]:
        """Redact every value of a string map (keys are schema-like names and kept)."""
        if not self.enabled or not values:
            return dict(values)
        return {k: self.redact(v) or "" for k, v in values.items()}

    def redact_maps(self, maps: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """Redact a batch of string maps (trace attributes), paying per value only where needed.

        One :data:`PREFILTER` search over the whole batch decides whether any value could hold
        PHI; only then is each map checked, and only maps with a candidate value are redacted.
        Maps left alone are returned as they are (the same objects).
        """
        if not self.enabled or not PREFILTER.search("\n".join(v for a in maps for v in a.values())):
            return list(maps)
        return [self.redact_map(a) if a and any(PREFILTER.search(v) for v in a.values()) else a for a in maps]


def tenant_hmac(key: bytes, tenant_id: str, identifier: str) -> str:
    """HMAC-SHA256 of ``identifier`` under a key derived for ``tenant_id`` (hex, 32 chars).

    The same reviewer in two tenants hashes differently, so hashes cannot be joined across tenants.
    """
    tenant_key = hmac.new(key, tenant_id.encode(), hashlib.sha256).digest()
    return hmac.new(tenant_key, identifier.encode(), hashlib.sha256).hexdigest()[:32]
