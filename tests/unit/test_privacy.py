"""PHI/PII redaction (presidio + spaCy NER + the project's rules) on crafted clinical text, and the
batch pre-filter derived from the rules."""

import re

import pytest

from streams.privacy import CLINICAL_VOCABULARY, PREFILTER, RULES, Redactor, needs_ner, tenant_hmac

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
    # issue 18: bare names, as clinicians write them
    ("Maria Garcia has diabetes", "Garcia"),
    ("pt Jose Alvarez, call 415-555-0199", "Alvarez"),
    ("Dr. Patel prescribed metformin 500mg to Ahmed Khan", "Khan"),
    # the other Safe Harbor identifiers of free text
    ("lives at 12 Elm Street, Apt 4 in Springfield", "Elm"),
    ("Boston, MA 02139", "02139"),
    ("transferred from Cleveland yesterday", "Cleveland"),
    ("fax 415.555.0188", "555.0188"),
    ("seen on 4 July", "4 July"),
    ("member id XG-88812", "XG-88812"),
    ("health plan no. HP1234567", "HP1234567"),
    ("DEA # AB1234563", "AB1234563"),
    ("pacemaker serial SN-48213377", "48213377"),
    ("portal https://mychart.example.org/p/77", "mychart"),
    ("from 10.20.30.40", "10.20.30.40"),
    ("see http://10.9.1.5/chart", "10.9.1.5"),
    ("address Worcester.", "Worcester"),
    ("per Layla McAllister.", "McAllister"),
    ("wife Seo-yeon Martin-Lefevre called", "Seo-yeon"),
    ("son Camila Wright visited", "Camila"),  # a first name that is also a contraceptive brand
    ("cell 950 555 0115", "555 0115"),  # an area code not in service is still a phone number
]

ISSUE_18 = {
    "Maria Garcia has diabetes": "[NAME] has diabetes",
    "pt Jose Alvarez, call 415-555-0199": "pt [NAME], call [PHONE]",
    "Dr. Patel prescribed metformin 500mg to Ahmed Khan": "[NAME] prescribed metformin 500mg to [NAME]",
}


@pytest.mark.parametrize(("text", "leak"), PHI)
def test_phi_is_removed(text, leak):
    out = Redactor().redact(text)
    assert leak not in out and "[" in out


@pytest.mark.parametrize(("text", "stored"), ISSUE_18.items())
def test_the_three_strings_of_issue_18_are_stored_without_the_names(text, stored):
    assert Redactor().redact(text) == stored


@pytest.mark.parametrize("text", [
    "Increase metoprolol to 50 mg twice daily; recheck BP in 2 weeks.",
    "Parkinson disease stable on carbidopa-levodopa 25/100 tid; Hodgkin lymphoma in remission; Apgar 9.",
    "Graves disease on methimazole; Foley catheter removed; Bell's palsy improving.",
    "ICD-10 E11.9, A1c 7.2 %, eGFR 58; continue Lipitor 40 mg.",
    "Switch Lipitor to Crestor 20 mg. Continue Suboxone; Hgb 10.4, Cr 1.3.",
])
def test_clinical_content_is_kept(text):
    assert Redactor().redact(text) == text


def test_a_common_surname_eponym_is_a_name_without_its_clinical_noun():
    assert "Graves" not in Redactor().redact("Called Michael Graves about the results")


def test_ner_runs_only_on_texts_with_a_capitalised_word_outside_the_clinical_vocabulary():
    assert not needs_ner("Increase metoprolol to 50 mg; Parkinson score stable.")
    assert needs_ner("Maria has diabetes")
    assert {"parkinson", "metformin", "apgar"} <= CLINICAL_VOCABULARY


def test_without_ner_names_are_found_after_a_title_or_label_only():
    assert Redactor(ner=False).redact("pt: jose alvarez, Dr. Patel") == "pt: [NAME], [NAME]"


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
        assert rule.spans(text, "US"), f"rule {rule.name} does not match its own example {text!r}"
        # the whole match (label included: a rule with a group redacts only the identifier)
        spans = rule.spans(text, "US") if rule.pattern is None else [m.span() for m in rule.pattern.finditer(text)]
        for start, end in spans:
            assert trigger.search(text[start:end]), f"{rule.name}: match {text[start:end]!r} lacks its trigger"
            assert PREFILTER.search(text[start:end])


def test_the_prefilter_lets_through_every_text_the_redactor_changes():
    texts = [text for text, _ in PHI] + [e for r in RULES for e in r.examples] + [
        "Increase metoprolol to 50 mg twice daily", "no identifiers here", "ask the member services desk",
        "record reviewed", "Mister Brown", "see Prof. Ada Byron", "Ms. Kay Ito called", "e-mail: x@y.co"]
    for text in texts:
        if Redactor().redact(text) != text:
            assert PREFILTER.search(text) or needs_ner(text), text


def test_redact_maps_redacts_only_maps_with_a_candidate_value_and_keeps_the_others():
    clean, phi = {"k": "plain words"}, {"note": "Patient: John Smith"}
    out = Redactor().redact_maps([clean, phi, {}])
    assert out[0] is clean and out[2] == {} and out[1] == {"note": "Patient: [NAME]"}
    untouched = [clean, {"k": "more plain words"}]
    assert all(a is b for a, b in zip(Redactor().redact_maps(untouched), untouched, strict=True))
    assert Redactor(enabled=False).redact_maps([phi])[0] is phi
