"""Rules for corrections: near-duplicates, contradictions, pattern templates, confidence, conflicts.

Pure functions used by :class:`streams.processors.feedback.processor.FeedbackProcessor`; every rule is
documented in ``docs/feedback.md`` with the figures that chose its constants.

Near-duplicates (:func:`compare`). Two corrections on the same tenant, trace and category are
near-duplicates when

1. their similarity texts (:func:`similarity_text`: redacted, normalised, digits split from
   units) score at least ``threshold`` with rapidfuzz ``fuzz.token_set_ratio`` (0-100; the
   token-set ratio of SeatGeek's fuzzywuzzy, reimplemented by rapidfuzz:
   https://rapidfuzz.github.io/RapidFuzz/Usage/fuzz.html#token-set-ratio), and
2. ``fuzz.token_sort_ratio`` is at least :data:`MIN_COVERAGE` (token-set ratio is 100 whenever
   one text's words are a subset of the other's; "removed aspirin" is not "removed aspirin and
   added clopidogrel"), and
3. they carry the same numbers in the same order (a dose of 25 mg is not a dose of 50 mg), and
4. neither flips the polarity of the other (:data:`POLARITY`: added/removed, start/stop,
   increase/decrease, approve/deny, normal/abnormal ..., or an odd number of negations), and
5. no content word was substituted (:func:`substituted`: each text has a word, other than
   :data:`FUNCTION_WORDS`, numbers and negations, that the other lacks; "corrected metoprolol dose"
   is not "corrected lisinopril dose" however long the shared rest of the sentence is).

The threshold (default 91, ``SELFHEAL_FEEDBACK_NEAR_DUP_THRESHOLD``) is the highest one with the
best F1 on the 59 labelled pairs in ``tests/data/near_duplicate_pairs.json`` (precision 0.938,
recall 0.938; ``scripts/near_dup_threshold.py`` prints the table for every scorer and threshold).

Contradictions ("opposite corrections"): same subject (the texts without numbers and polarity
words score at least the threshold) but different numbers or flipped polarity.

Templates and patterns (:func:`correction_template`, :func:`pattern_id`): the template is the
redacted correction, normalised, with numbers replaced by ``<num>`` and redaction placeholders
kept as ``<name>``, ``<date>``, ``<phone>`` ...; a pattern signature is (category, workflow, tool,
template, release_id). Only signatures cross tenant boundaries, never the correction text.

Confidence (:func:`confidence`), in [0, 1]::

    confidence = SOURCE_WEIGHT[source] x ROLE_WEIGHT[role] x agreement(n) x SEVERITY_WEIGHT[severity]
    agreement(n) = 1 - (1 - REVIEWER_RELIABILITY) ** n        (noisy-OR over n distinct reviewers)

with the best source, best role and highest severity among the submissions folded into the
correction and ``n`` its distinct reviewers. Noisy-OR: J. Pearl, "Probabilistic Reasoning in
Intelligent Systems", 1988, section 4.3.2.

Conflict resolution (:func:`rank`, :func:`resolve`): within one trace, a correction loses if a
conflicting correction ranks higher by, in order, the best reviewer-role weight among its
supporters (``role_weight``), its number of distinct agreeing reviewers (``majority``), its
latest submission time (``recency``), and finally its dedup key (``dedup_key``, so the outcome is
deterministic).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz

#: Default near-duplicate threshold on ``fuzz.token_set_ratio`` (0-100), see module docstring.
NEAR_DUP_THRESHOLD = 91.0
#: Minimum ``fuzz.token_sort_ratio`` (0-100) for two texts to count as the same correction.
MIN_COVERAGE = 50.0

#: Weight of each feedback source (how directly it reflects the right output).
SOURCE_WEIGHT: dict[str, float] = {
    "clinician_edit": 1.0,  # the clinician rewrote the output they sign
    "reviewer": 0.9,  # a dedicated reviewer (QA, coder, pharmacist)
    "policy_engine": 0.8,  # deterministic rule, right about the rule, not always about the case
    "downstream_outcome": 0.7,  # inferred from what happened later (claim denied, message resent)
    "end_user": 0.5,  # patient or portal user
}
#: Weight of each reviewer role (domain authority over clinical content).
ROLE_WEIGHT: dict[str, float] = {
    "physician": 1.0, "pharmacist": 1.0, "nurse": 0.85, "coder": 0.85, "qa_reviewer": 0.8, "system": 0.7,
    "support_agent": 0.6, "end_user": 0.5,
}
#: Weight of each severity (how much a correction should count when learning from it).
SEVERITY_WEIGHT: dict[str, float] = {"critical": 1.0, "high": 0.9, "medium": 0.75, "low": 0.6}
SEVERITY_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
#: Probability that one independent reviewer's correction is right (noisy-OR agreement).
REVIEWER_RELIABILITY = 0.7

#: Polarity lexicon: axis → (positive words, negative words). A pair of texts where one uses a
#: positive and the other a negative word of the same axis (and not vice versa) is flipped.
POLARITY: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "presence": (frozenset({"add", "added", "adds", "adding", "include", "included", "insert", "inserted", "keep",
                            "kept"}),
                 frozenset({"remove", "removed", "removes", "removing", "delete", "deleted", "exclude", "excluded",
                            "drop", "dropped", "omit", "omitted"})),
    "therapy": (frozenset({"start", "started", "initiate", "initiated", "continue", "continued", "resume", "resumed"}),
                frozenset({"stop", "stopped", "discontinue", "discontinued", "hold", "held", "cease", "ceased"})),
    "dose": (frozenset({"increase", "increased", "raise", "raised", "higher", "uptitrate", "uptitrated"}),
             frozenset({"decrease", "decreased", "reduce", "reduced", "lower", "lowered", "taper", "tapered"})),
    "decision": (frozenset({"approve", "approved", "allow", "allowed", "accept", "accepted", "grant", "granted"}),
                 frozenset({"deny", "denied", "reject", "rejected", "refuse", "refused", "decline", "declined"})),
    "finding": (frozenset({"normal", "positive", "present", "confirmed"}),
                frozenset({"abnormal", "negative", "absent", "ruled"})),
}
_POLARITY_WORDS = frozenset(w for pos, neg in POLARITY.values() for w in pos | neg)
#: Negations: an odd number more in one text than the other flips it.
NEGATIONS = frozenset({"not", "no", "never", "without", "nor", "denies", "none"})
#: Words that carry no subject: articles, pronouns, auxiliaries, modals, prepositions, conjunctions.
_FUNCTION_WORDS = """
a an the this that these those it its it's they them their there here which who whom whose what when where why how
is are was were be been being am do does did done has have had having should must shall will would can could may
might to of in on at by for from with into onto under over about regarding as and or but so than then also just
very please once i we you he she his her our your s t
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
#: Two content words match when equal after dropping a plural/past/gerund suffix, or when their
#: rapidfuzz ratio is at least this (spelling variants: authorisation / authorization).
WORD_MATCH = 90.0

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_WS = re.compile(r"\s+")
_DIGIT_ALPHA = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_PLACEHOLDER = re.compile(r"\[([A-Z_]+)\]")
_TEMPLATE_TOKEN = re.compile(r"<[a-z_]+>|[^\W_]+", re.UNICODE)
#: Longest text compared for near-duplicates, characters (bounds CPU and the changelog state).
MAX_COMPARE_CHARS = 1_000
#: Longest pattern template, characters.
MAX_TEMPLATE_CHARS = 240


def similarity_text(redacted: str | None) -> str:
    """Text compared for near-duplicates: NFKC, case-folded, punctuation removed, numbers split
    from units (``10mg`` → ``10 mg``), whitespace collapsed, cut at :data:`MAX_COMPARE_CHARS`.

    Takes the *redacted* correction, so the comparison (and the state that keeps it) holds no PHI.
    """
    if not redacted:
        return ""
    t = unicodedata.normalize("NFKC", redacted).casefold()
    t = _PUNCT.sub(" ", t)
    t = _DIGIT_ALPHA.sub(" ", t)
    return _WS.sub(" ", t).strip()[:MAX_COMPARE_CHARS]


def numbers(text: str) -> tuple[str, ...]:
    """The numbers of a similarity text, in order (``"25 mg for 7 days"`` → ``("25", "7")``)."""
    return tuple(_NUMBER.findall(text))


def polarity(text: str) -> dict[str, int]:
    """Polarity per axis of :data:`POLARITY`: +1 (only positive words), -1 (only negative), 0 (both)."""
    words = set(text.split())
    out: dict[str, int] = {}
    for axis, (pos, neg) in POLARITY.items():
        p, n = bool(words & pos), bool(words & neg)
        if p or n:
            out[axis] = (1 if p else 0) - (1 if n else 0)
    return out


def _subject(text: str) -> str:
    """Similarity text without numbers and polarity words (what a correction is about)."""
    return " ".join(w for w in text.split() if w not in _POLARITY_WORDS and not _NUMBER.fullmatch(w))


def flipped(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` take opposite sides of some polarity axis, or one has an odd number
    of :data:`NEGATIONS` more than the other."""
    pa, pb = polarity(a), polarity(b)
    negs = sum(w in NEGATIONS for w in a.split()) - sum(w in NEGATIONS for w in b.split())
    return negs % 2 == 1 or any(pa[x] * pb.get(x, 0) < 0 for x in pa)


def _stems(word: str) -> set[str]:
    out = {word}
    for suffix in ("s", "d", "es", "ed", "ing"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            out.add(word[: -len(suffix)])
    return out


def _content(text: str) -> list[str]:
    return [w for w in text.split() if w not in FUNCTION_WORDS and w not in NEGATIONS and not _NUMBER.fullmatch(w)]


def _unmatched(xs: list[str], ys: list[str]) -> list[str]:
    ystems = [_stems(y) for y in ys]
    return [x for x in xs if not any(_stems(x) & ys_ or fuzz.ratio(x, y) >= WORD_MATCH
                                     for y, ys_ in zip(ys, ystems, strict=True))]


def substituted(a: str, b: str) -> bool:
    """True if each similarity text has a content word the other lacks (a word swapped for
    another, as opposed to words only added or dropped on one side)."""
    ca, cb = _content(a), _content(b)
    return bool(_unmatched(ca, cb)) and bool(_unmatched(cb, ca))


def similarity(a: str, b: str) -> float:
    """``fuzz.token_set_ratio`` of two similarity texts, 0-100 (no further preprocessing)."""
    return fuzz.token_set_ratio(a, b, processor=None)


def same_wording(a: str, b: str, threshold: float = NEAR_DUP_THRESHOLD) -> bool:
    """Token-set ratio >= ``threshold`` and token-sort ratio >= :data:`MIN_COVERAGE`."""
    return similarity(a, b) >= threshold and fuzz.token_sort_ratio(a, b, processor=None) >= MIN_COVERAGE


def compare(a: str, b: str, threshold: float = NEAR_DUP_THRESHOLD) -> str:
    """Relation of two similarity texts (same tenant, trace and category assumed).

    Returns:
        ``"near_duplicate"``: similar (:func:`same_wording`), same numbers in the same order, no
        polarity flip, no substituted content word; ``"contradiction"``: same subject (the texts
        without numbers and polarity words are similar, no substituted content word) but
        different numbers or a flipped polarity;
        ``"distinct"`` otherwise (two different corrections).
    """
    if not a or not b:
        return "near_duplicate" if a == b else "distinct"
    same_numbers = numbers(a) == numbers(b)
    flip = flipped(a, b)
    if same_numbers and not flip and same_wording(a, b, threshold) and not substituted(a, b):
        return "near_duplicate"
    sa, sb = _subject(a), _subject(b)
    if (flip or not same_numbers) and same_wording(sa, sb, threshold) and not substituted(sa, sb):
        return "contradiction"
    return "distinct"


def correction_template(redacted: str | None) -> str:
    """Pattern template of a redacted correction: NFKC, case-folded, redaction placeholders kept as
    ``<name>``/``<date>``/..., every token holding a digit replaced by ``<num>``, punctuation
    dropped, cut at :data:`MAX_TEMPLATE_CHARS`.

    ``"Corrected metoprolol dose to 25 mg. Patient: [NAME]"`` →
    ``"corrected metoprolol dose to <num> mg patient <name>"``.
    """
    if not redacted:
        return ""
    t = _PLACEHOLDER.sub(lambda m: f" <{m.group(1).lower()}> ", unicodedata.normalize("NFKC", redacted))
    t = _DIGIT_ALPHA.sub(" ", t.casefold())
    toks = ["<num>" if any(c.isdigit() for c in tok) else tok for tok in _TEMPLATE_TOKEN.findall(t)]
    return " ".join(toks)[:MAX_TEMPLATE_CHARS].strip()


def pattern_id(category: str, workflow: str, tool: str, template: str, release_id: str) -> str:
    """Pattern signature id: SHA-1 of (category, workflow, tool, template, release_id), hex, 16 chars.

    Carries no tenant id, so the same pattern in two tenants has the same id.
    """
    return hashlib.sha1("\x1f".join((category, workflow, tool, template, release_id)).encode()).hexdigest()[:16]


def agreement(n: int) -> float:
    """Noisy-OR agreement factor of ``n`` distinct reviewers, in [0, 1): ``1 - (1 - r)^n``."""
    return 1.0 - (1.0 - REVIEWER_RELIABILITY) ** max(n, 0)


def confidence(sources: Iterable[str], roles: Iterable[str], reviewers: int, severity: str) -> float:
    """Confidence of a correction in [0, 1] (module docstring): best source weight x best role
    weight x noisy-OR agreement of ``reviewers`` distinct reviewers x severity weight.

    Raises:
        ValueError: unknown source, role or severity (names the value).
    """
    try:
        s = max(SOURCE_WEIGHT[x] for x in sources)
        r = max(ROLE_WEIGHT[x] for x in roles)
        v = SEVERITY_WEIGHT[severity]
    except KeyError as exc:
        raise ValueError(f"confidence: unknown source, reviewer_role or severity {exc.args[0]!r}") from None
    except ValueError:
        raise ValueError("confidence: a correction needs at least one source and one reviewer role") from None
    return round(s * r * agreement(reviewers) * v, 6)


@dataclass(frozen=True, slots=True)
class Candidate:
    """What conflict resolution needs of one correction on a trace.

    Attributes:
        key: dedup key.
        category: failure category.
        text: similarity text of its first wording.
        reviewers: HMAC hashes of its distinct supporting reviewers.
        role_weight: best :data:`ROLE_WEIGHT` among its supporters.
        last_ms: latest submission event time, epoch ms.
    """

    key: str
    category: str
    text: str
    reviewers: frozenset[str]
    role_weight: float
    last_ms: int


@dataclass(frozen=True, slots=True)
class Resolution:
    """Conflict outcome of one correction.

    Attributes:
        conflict: it conflicts with at least one other correction on the trace.
        outcome: ``"won"`` or ``"lost"`` (empty without conflict).
        rule: the first ranking criterion that decided it (``role_weight``, ``majority``,
            ``recency``, ``dedup_key``).
        against: dedup key of the deciding opponent (the strongest conflicting correction).
        note: human-readable explanation.
    """

    conflict: bool = False
    outcome: str = ""
    rule: str = ""
    against: str = ""
    note: str = ""


def conflicting(a: Candidate, b: Candidate, threshold: float = NEAR_DUP_THRESHOLD) -> bool:
    """Two corrections of one trace conflict when each has a reviewer the other lacks (different
    reviewers disagree) and they differ in category or contradict each other (:func:`compare`)."""
    if not (a.reviewers - b.reviewers) or not (b.reviewers - a.reviewers):
        return False
    return a.category != b.category or compare(a.text, b.text, threshold) == "contradiction"


def rank(c: Candidate) -> tuple[float, int, int, str]:
    """Sort key of a correction in a conflict, higher wins: (role weight, distinct reviewers,
    latest submission ms, dedup key)."""
    return (c.role_weight, len(c.reviewers), c.last_ms, c.key)


_RULES = ("role_weight", "majority", "recency", "dedup_key")


def _decider(w: Candidate, loser: Candidate) -> str:
    for name, x, y in zip(_RULES, rank(w), rank(loser), strict=True):
        if x != y:
            return name
    return "dedup_key"


def _explain(rule: str, w: Candidate, loser: Candidate) -> str:
    if rule == "role_weight":
        return f"role weight {w.role_weight:.2f} > {loser.role_weight:.2f}"
    if rule == "majority":
        return f"{len(w.reviewers)} agreeing reviewers > {len(loser.reviewers)}"
    if rule == "recency":
        return f"latest submission at {w.last_ms} ms > {loser.last_ms} ms"
    return "tie on role weight, agreement and time; higher dedup key"


def resolve(cands: Sequence[Candidate], threshold: float = NEAR_DUP_THRESHOLD) -> dict[str, Resolution]:
    """Conflict outcome per dedup key of one trace's corrections (module docstring).

    A correction loses if any correction it conflicts with ranks higher (:func:`rank`); it wins if
    it conflicts with some and outranks all of them. The deciding opponent is the highest-ranked
    conflicting correction (for a loser) or the highest-ranked one it beat (for a winner).
    """
    out: dict[str, Resolution] = {}
    for c in cands:
        opp = [o for o in cands if o.key != c.key and conflicting(c, o, threshold)]
        if not opp:
            out[c.key] = Resolution()
            continue
        top = max(opp, key=rank)
        if rank(top) > rank(c):
            rule = _decider(top, c)
            out[c.key] = Resolution(True, "lost", rule, top.key, f"lost to {top.key}: {_explain(rule, top, c)}")
        else:
            rule = _decider(c, top)
            out[c.key] = Resolution(True, "won", rule, top.key, f"won over {top.key}: {_explain(rule, c, top)}")
    return out
