"""A seeded PHI evaluation corpus: synthetic clinical notes and corrections with planted identifiers,
and clean notes full of drug names, dosages, codes and eponyms (issue 18, item 2).

Every planted identifier is recorded with its character span and HIPAA Safe Harbor type
(:data:`PHI_TYPES`), so recall per type is exact; clean notes hold none, so every redacted clean
token is over-redaction. Vocabulary here is written independently of the redactor's allow-list
(``streams.privacy.CLINICAL_VOCABULARY``): it has brand and generic drugs, eponyms and codes the
allow-list lacks, so the benchmark measures generalisation, not the list. All values are synthetic
(555 phone exchanges, example.org/.test domains, documentation IP ranges, SSNs in the 9xx area
never issued, made-up record numbers).

>>> notes = phi_notes(3, seed=1)
>>> all(n.text[s:e] == v for n in notes for (_, s, e, v) in n.spans)
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: identifier types scored separately (names, then the other identifiers)
PHI_TYPES = ("NAME", "LOCATION", "DATE", "PHONE", "FAX", "EMAIL", "SSN", "MRN", "HEALTH_PLAN", "ACCOUNT",
             "LICENSE", "DEVICE", "URL", "IP")

def _words(text: str) -> list[str]:
    return text.split()


FIRST = _words("Maria Jose Ahmed Wei Priya Olga Kwame Fatima Liam Noah Emma Olivia Ava Sophia Mateo Santiago "
         "Camila Valentina "
         "Aisha Omar Yusuf Mei Hiroshi Yuki Sanjay Anjali Dmitri Svetlana Chidi Ngozi Tomasz Agnieszka Lars Ingrid "
         "Connor Siobhan Rafael Lucia Andre Jamal Keisha DeShawn Latoya Carlos Guadalupe Thanh Minh Jin Seo-yeon "
         "Elena Marco Giulia Pierre Amelie Hans Greta Mohammed Layla Samuel Ruth Esther Isaac Abigail Darnell Tyrone "
         "Brianna Kayla Hunter Logan Madison Harper Evelyn Scarlett")
LAST = _words("Garcia Alvarez Khan Patel Nguyen Kim Chen Wang Okafor Mensah Kowalski Nowak Johansson Eriksen O'Brien "
        "Murphy Rodriguez Hernandez Lopez Gonzalez Petrov Ivanova Tanaka Suzuki Sato Sharma Gupta Singh Rossi "
        "Bianchi Dubois Lefevre Schmidt Muller Haddad Rahman Abdullah Cohen Levy Washington Jefferson Jackson "
        "Williams Brown Davis Miller Wilson Moore Taylor Anderson Thomas Martin Thompson White Harris Clark "
        "Lewis Robinson Walker Young Allen King Wright Scott Torres Ramirez Flores Rivera Castillo Mendoza "
        "Fitzgerald McAllister Vasquez-Ortiz Nakamura Oyelaran Adeyemi Kaczmarek Lindqvist")
CITIES = _words("Springfield Cleveland Tucson Fresno Omaha Dayton Boise Lansing Albany Trenton Savannah Spokane Tacoma "
          "Worcester Yonkers Pasadena Syracuse Akron Flint Gary Provo Ogden Laredo Amarillo Lubbock Reno Eugene "
          "Salem Bend Duluth")
STATES = _words("MA OH AZ CA NE ID MI NY NJ GA WA TX NV OR MN IL")
STREETS = _words("Elm Maple Oak Cedar Pine Washington Lincoln Jefferson Madison Lake Hill Park River Sunset Highland "
           "Willow")
STREET_KINDS = ("Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Drive", "Blvd", "Court")
MONTHS = _words("January February March April May June July August September October November December")

#: clean vocabulary: drugs (generic and brand), eponyms, codes; many are not in the redactor's list
DRUGS = _words("metformin Ozempic Mounjaro tirzepatide Jardiance Farxiga Entresto sacubitril lisinopril Lipitor "
         "Brilinta Eliquis Xarelto Keppra levetiracetam Lamictal lamotrigine Depakote Sinemet Requip Aricept "
         "Namenda Humira Enbrel Rituxan rituximab Keytruda pembrolizumab Herceptin tamoxifen Femara Lupron "
         "Synthroid Cytomel Flonase Singulair Spiriva Symbicort Advair Ventolin Protonix Pepcid Reglan Zofran "
         "Norco Percocet Dilaudid Narcan naloxone Suboxone buprenorphine Adderall Ritalin Vyvanse Strattera "
         "Abilify Latuda Zyprexa Lithium Tegretol Trileptal Topamax Imitrex Fioricet Toradol Medrol Solu-Medrol "
         "Bactrim Macrobid Augmentin Zithromax Levaquin Cipro Vancomycin Zosyn Rocephin Tamiflu Paxlovid "
         "Plavix Coumadin Lovenox Lasix Bumex Aldactone Coreg Toprol Cardizem Norvasc Zestril Diovan Cozaar")
EPONYM_PHRASES = (
    "Parkinson disease", "Parkinson's disease", "Hodgkin lymphoma", "non-Hodgkin lymphoma", "Apgar 8 and 9",
    "Alzheimer dementia", "Crohn's disease", "Hashimoto thyroiditis", "Graves disease", "Addison's disease",
    "Cushing syndrome", "Raynaud phenomenon", "Bell's palsy", "Guillain-Barre syndrome", "Kawasaki disease",
    "Glasgow Coma Scale 15", "Wells score 2", "Child-Pugh class B", "MELD 14", "Babinski sign negative",
    "Romberg negative", "Murphy's sign positive", "McBurney point tenderness", "Lachman test negative",
    "Barrett esophagus", "Wernicke encephalopathy", "Mallory-Weiss tear", "Meckel diverticulum",
    "Dupuytren contracture", "Foley catheter", "Swan-Ganz catheter", "Holter monitor", "Doppler ultrasound",
    "Gram-negative rods", "Cheyne-Stokes respiration", "Kussmaul breathing", "Braden score 16",
    "Stevens-Johnson syndrome", "Roux-en-Y gastric bypass", "Whipple procedure", "Nissen fundoplication",
    "Tinel sign", "Phalen test", "Valsalva maneuver", "Epley maneuver", "Trendelenburg position",
    "Huntington disease", "Tourette syndrome", "Sjogren syndrome", "Marfan syndrome", "Down syndrome",
    "Turner syndrome", "Wilms tumor", "Ewing sarcoma", "Kaposi sarcoma", "Burkitt lymphoma",
    "Paget disease of bone", "Lewy body dementia", "Reed-Sternberg cells", "Virchow triad",
)
CODES = ("ICD-10 E11.9", "ICD-10 I10", "ICD-10 J44.1", "ICD-10 N18.3", "ICD-10 F32.1", "CPT 99214", "CPT 93000",
         "LOINC 4548-4", "LOINC 2160-0", "SNOMED 44054006", "RxNorm 860975", "HCPCS J1885", "DRG 291")
DOSES = ("500 mg twice daily", "25 mg once daily", "0.5 mg/kg IV", "10 units at bedtime", "81 mg daily",
         "40 mg every morning", "2 puffs every 4 hours as needed", "1 g IV every 12 hours", "5 mg PO q6h PRN",
         "0.125 mg daily", "12.5 mg BID", "1,000 mL NS bolus", "2 mg IV push", "100 mcg daily")
LABS = ("BP 128/76", "HR 72", "SpO2 97% on RA", "A1c 7.2%", "eGFR 48", "K 4.1", "Na 138", "Cr 1.3", "INR 2.4",
        "LDL 96", "TSH 3.1", "WBC 11.2", "Hgb 10.4", "temp 38.1 C", "BMI 31.4", "EF 35%", "QTc 452 ms")
CLEAN_TEMPLATES = (
    "Assessment: {epo}, stable. Plan: continue {drug} {dose}; {lab}.",
    "{Drug} {dose} started for {epo}; recheck {lab} in 2 weeks.",
    "History of {epo} and {epo2}. Current meds: {drug}, {drug2} {dose}.",
    "Coded as {code}; {epo} documented. {Drug} held for {lab}.",
    "Discussed {epo} with the patient. Switch {drug} to {drug2} {dose}. {lab}, {lab2}.",
    "Corrected {drug} dose to {dose}; {code} added to the problem list.",
    "Removed duplicate {drug} entry. {epo} noted on exam; {lab}.",
    "Follow up in clinic for {epo}. Labs: {lab}, {lab2}. Continue {Drug}.",
    "Pharmacy note: {Drug} interacts with {drug2}; monitor {lab}. {code}.",
    "ED course: {epo}; given {drug} {dose}. Admitted to telemetry. {lab}.",
)


@dataclass
class Note:
    """One text with its planted identifiers: ``spans`` of ``(type, start, end, value)``."""

    text: str
    spans: list[tuple[str, int, int, str]] = field(default_factory=list)


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[tuple[str, int, int, str]] = []
        self.pos = 0

    def text(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def phi(self, kind: str, s: str) -> None:
        self.spans.append((kind, self.pos, self.pos + len(s), s))
        self.text(s)

    def note(self) -> Note:
        return Note("".join(self.parts), self.spans)


def _name(r: random.Random) -> str:
    first, last = r.choice(FIRST), r.choice(LAST)
    return r.choice((f"{first} {last}", f"{first} {last}", f"{first} {r.choice('ABCDEFGHJKLMNPRSTW')}. {last}",
                     f"{last}, {first}", f"{first} {last}-{r.choice(LAST)}"))


def _date(r: random.Random) -> str:
    y, m, d = r.randint(1930, 2026), r.randint(1, 12), r.randint(1, 28)
    return r.choice((f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y % 100:02d}", f"{y}-{m:02d}-{d:02d}",
                     f"{MONTHS[m - 1]} {d}, {y}", f"{d} {MONTHS[m - 1][:3]} {y}", f"{MONTHS[m - 1]} {d}",
                     f"{MONTHS[m - 1][:3]}. {d}"))


def _phone(r: random.Random) -> str:
    a, b = r.randint(201, 989), r.randint(100, 199)
    return r.choice((f"({a}) 555-0{b}", f"{a}-555-0{b}", f"{a}.555.0{b}", f"+1 {a} 555 0{b}", f"{a} 555 0{b}"))


def _value(kind: str, r: random.Random) -> tuple[str, str]:
    """``(lead-in text, identifier)`` for one planted identifier of ``kind``."""
    n = r.randint
    if kind == "NAME":
        return r.choice(("", "pt ", "patient ", "wife ", "son ", "daughter ", "seen with ", "per ")), _name(r)
    if kind == "LOCATION":
        return r.choice((
            ("lives in ", f"{r.choice(CITIES)}"),
            ("home: ", f"{n(2, 9999)} {r.choice(STREETS)} {r.choice(STREET_KINDS)}"),
            ("transferred from ", f"{r.choice(CITIES)}"), ("address ", r.choice(CITIES)),
            ("zip ", f"{n(10000, 99999)}"), (f"{r.choice(STATES)} ", f"{n(10000, 99999)}")))
    if kind == "DATE":
        return r.choice(("DOB ", "admitted ", "seen on ", "born ", "surgery on ", "discharged ")), _date(r)
    if kind == "PHONE":
        return r.choice(("call ", "cell ", "ph ", "phone: ", "reach daughter at ")), _phone(r)
    if kind == "FAX":
        return r.choice(("fax ", "fax: ", "faxed to ")), _phone(r)
    if kind == "EMAIL":
        user = f"{r.choice(FIRST).lower()}.{r.choice(LAST).lower().replace(chr(39), '')}{n(1, 99)}"
        return r.choice(("email ", "e-mail: ", "wrote from ")), f"{user}@{r.choice(('example.org', 'mail.test'))}"
    if kind == "SSN":
        return r.choice(("SSN ", "ssn: ", "social security ")), f"9{n(10, 99)}-{n(10, 99)}-{n(1000, 9999)}"
    if kind == "MRN":
        return r.choice(("MRN ", "MRN: ", "medical record #", "chart no. ")), r.choice(
            (f"{n(1000000, 9999999)}", f"A{n(100000, 999999)}", f"MR-{n(10000, 99999)}"))
    if kind == "HEALTH_PLAN":
        return r.choice(("member id ", "health plan no. ", "insurance ID ", "policy # ", "Medicare MBI ")), r.choice(
            (f"XG{n(1000000, 9999999)}", f"{n(100, 999)}-{n(10000, 99999)}-A", f"1EG4TE5MK{n(10, 99)}"))
    if kind == "ACCOUNT":
        return r.choice(("account ", "acct # ", "billing account ", "claim ")), f"{n(10000000, 99999999)}"
    if kind == "LICENSE":
        return r.choice(("DEA # ", "license no. ", "NPI ", "driver's license ", "plate ")), r.choice(
            (f"AB{n(1000000, 9999999)}", f"D{n(100, 999)}-{n(1000, 9999)}", f"{n(1000000000, 1999999999)}",
             f"{n(1, 9)}XYZ{n(100, 999)}"))
    if kind == "DEVICE":
        return r.choice(("pacemaker serial ", "device ID ", "UDI ", "pump S/N ", "implant serial ")), r.choice(
            (f"SN-{n(10000000, 99999999)}", f"{n(10**13, 10**14 - 1)}", f"PJN{n(100000, 999999)}"))
    if kind == "URL":
        return r.choice(("see ", "portal ", "uploaded to ")), r.choice(
            (f"https://portal.example.org/p/{n(100, 9999)}", f"www.{r.choice(LAST).lower().replace(chr(39), '')}"
                                                            f"-family.example.org", f"http://10.{n(0, 9)}.1.5/chart"))
    if kind == "IP":
        return r.choice(("from ", "device at ", "login from ")), r.choice(
            (f"192.0.2.{n(1, 254)}", f"198.51.100.{n(1, 254)}", f"2001:db8::{n(1, 9999):x}"))
    raise ValueError(f"unknown PHI type {kind!r}")


_CONTEXT = ("Corrected {drug} dose to {dose}", "Added missing {lab} to the plan", "{Drug} {dose} for {epo}",
            "Reviewed {lab} and {lab2}", "Follow-up for {epo} in 3 months", "Removed {drug} from the list",
            "Discussed {epo} risks")


def _fill(template: str, r: random.Random) -> str:
    drug, drug2 = r.sample(DRUGS, 2)
    epo, epo2 = r.sample(EPONYM_PHRASES, 2)
    lab, lab2 = r.sample(LABS, 2)
    return template.format(drug=drug, drug2=drug2, Drug=drug[:1].upper() + drug[1:], epo=epo, epo2=epo2,
                           dose=r.choice(DOSES), lab=lab, lab2=lab2, code=r.choice(CODES))


def phi_notes(n: int, seed: int = 18) -> list[Note]:
    """``n`` notes/corrections, each with 1-4 planted identifiers at the start, middle or end,
    between clinical sentences (drugs, eponyms, labs): every type of :data:`PHI_TYPES` is planted
    about equally often (round robin over a shuffled order)."""
    r = random.Random(seed)
    order = list(PHI_TYPES) * (4 * n // len(PHI_TYPES) + 1)
    r.shuffle(order)
    notes = []
    for _ in range(n):
        b = _Builder()
        kinds = [order.pop() for _ in range(r.randint(1, 4))]
        if r.random() < 0.5:  # an identifier first
            lead, value = _value(kinds[0], r)
            b.text(lead[:1].upper() + lead[1:])
            b.phi(kinds.pop(0), value)
            b.text(". ")
        if not kinds and r.random() < 0.5:
            b.text(_fill(r.choice(_CONTEXT), r))
        while kinds:
            kind = kinds.pop(0)
            b.text(_fill(r.choice(_CONTEXT), r) + r.choice((", ", "; ", ". ")))
            lead, value = _value(kind, r)
            b.text(lead[:1].upper() + lead[1:] if b.parts[-1].endswith(". ") else lead)
            b.phi(kind, value)
            if kinds:
                b.text(r.choice((". ", ", ", "; ")))
        b.text(".")
        notes.append(b.note())
    return notes


def clean_notes(n: int, seed: int = 18) -> list[Note]:
    """``n`` notes without PHI: drugs (brand names capitalised), dosages, lab values, codes and
    eponyms ("Parkinson's disease", "Apgar 8 and 9", "Foley catheter") in clinical sentences."""
    r = random.Random(seed + 1)
    return [Note(" ".join(_fill(r.choice(CLEAN_TEMPLATES), r) for _ in range(r.randint(1, 3)))) for _ in range(n)]
