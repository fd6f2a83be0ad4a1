"""PHI/PII redaction on crafted clinical text, and the batch pre-filter derived from the rules."""

import re

import pytest

from streams.privacy import PREFILTER, RULES, Redactor, tenant_hmac

PHI = [
    ("Patient: John Smith reports chest pain", "John Smith"),
    ("seen by Dr. Alice Wong today", "Alice Wong"),
    ("DOB 03/14/1962", "03/14/1962"),
    ("born March 3, 1961", "March 3, 1961"),
    ("MRN: A1234567", "A1234567"),
    ("account number 99812345", "99812345"),
    ("call 617-555-0134", "555-0134"),
    ("reach her at +44 20 7946 0958", "7946"),
    ("email jane.doe@example.org", "jane.doe@example.org"),
    ("SSN 123-45-6789", "123-45-6789"),
]


@pytest.mark.parametrize(("text", "leak"), PHI)
def test_phi_is_removed(text, leak):
    out = Redactor().redact(text)
    assert leak not in out and "[" in out


def test_clinical_content_is_kept():
    text = "Increase metoprolol to 50 mg twice daily; recheck BP in 2 weeks."
    assert Redactor().redact(text) == text


def test_tenant_hmac_differs_per_tenant():
    assert tenant_hmac(b"k", "acme", "rev-1") != tenant_hmac(b"k", "globex", "rev-1")
    assert tenant_hmac(b"k", "acme", "rev-1") == tenant_hmac(b"k", "acme", "rev-1")


def test_a_record_label_does_not_swallow_the_next_word_and_leak_a_name():
    # "vaccination record Patient: ..." once matched RECORD with "Patient" as the id, so the name
    # label was gone and "Jane Doe" stayed in clear (seen in the simulator's corrections)
    out = Redactor().redact("Applied clinic template for vaccination record Patient: Jane Doe, call 617-555-0134.")
    assert "Jane" not in out and "Doe" not in out and "vaccination record" in out


# ---------------------------------------------------------------------------- the batch pre-filter
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_every_rule_has_a_trigger_that_every_match_contains(rule):
    # PREFILTER is the union of the triggers: a rule whose matches can lack its trigger would be
    # skipped by Redactor.redact_maps on a batch holding only such a match
    assert rule.examples, f"rule {rule.name} has no examples to check its trigger on"
    trigger = re.compile(rule.trigger, re.IGNORECASE)
    for text in rule.examples:
        spans = rule.spans(text, "US")
        assert spans, f"rule {rule.name} does not match its own example {text!r}"
        for start, end in spans:
            assert trigger.search(text[start:end]), f"{rule.name}: match {text[start:end]!r} lacks its trigger"
            assert PREFILTER.search(text[start:end])


def test_the_prefilter_lets_through_every_text_the_redactor_changes():
    texts = [text for text, _ in PHI] + [e for r in RULES for e in r.examples] + [
        "Increase metoprolol to 50 mg twice daily", "no identifiers here", "ask the member services desk",
        "record reviewed", "Mister Brown", "see Prof. Ada Byron", "Ms. Kay Ito called", "e-mail: x@y.co"]
    for text in texts:
        if Redactor().redact(text) != text:
            assert PREFILTER.search(text), text


def test_redact_maps_redacts_only_maps_with_a_candidate_value_and_keeps_the_others():
    clean, phi = {"k": "plain words"}, {"note": "Patient: John Smith"}
    out = Redactor().redact_maps([clean, phi, {}])
    assert out[0] is clean and out[2] == {} and out[1] == {"note": "Patient: [NAME]"}
    untouched = [clean, {"k": "more plain words"}]
    assert all(a is b for a, b in zip(Redactor().redact_maps(untouched), untouched, strict=True))
    assert Redactor(enabled=False).redact_maps([phi])[0] is phi
