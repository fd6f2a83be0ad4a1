"""``selfheal bench-phi``: redaction quality and cost on the generated PHI corpus (issue 18, item 2).

Scores (:func:`run`):

- recall per identifier type (:data:`streams.devtools.phi_corpus.PHI_TYPES`): a planted
  identifier counts as caught only when every letter and digit of it lies inside some redacted
  span (of any placeholder type: what matters is that it is not stored), so a half-redacted name
  is a miss; "names" is the NAME type, "identifiers" all other types pooled;
- over-redaction: share of whitespace tokens of the clean notes (no PHI) that overlap a
  redacted span;
- cost per text, µs (CPU time of this process, ``time.process_time``, so per core; and wall),
  on the PHI notes, the clean notes and the simulator's feedback corrections
  (:mod:`streams.devtools.simulate`, half with its PHI tail), the share of texts that went through
  NER, and feedback records/s per core = 1e6 / mean CPU µs of a correction (the redaction step
  alone: an upper bound for the feedback path, which also joins and deduplicates).

Targets (issue 18): recall >= 0.98 on names and on identifiers, over-redaction <= 2 % of clean
tokens. Results and what was tried: BENCHMARKS.md "PHI redaction".
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Sequence
from typing import Any

from streams.devtools.phi_corpus import PHI_TYPES, clean_notes, phi_notes
from streams.privacy import Redactor, analyzer, needs_ner

TARGET_RECALL = 0.98
TARGET_OVER_REDACTION = 0.02


def _covered(spans: Sequence[tuple[int, int]], start: int, end: int, text: str) -> bool:
    return all(any(s <= i < e for s, e in spans) for i in range(start, end) if text[i].isalnum())


def _costs(redactor: Redactor, texts: Sequence[str]) -> dict[str, float]:
    cpu, wall = [], []
    for t in texts:
        c0, w0 = time.process_time(), time.perf_counter()
        redactor.redact(t)
        cpu.append((time.process_time() - c0) * 1e6)
        wall.append((time.perf_counter() - w0) * 1e6)
    q = statistics.quantiles(cpu, n=20) if len(cpu) > 1 else cpu * 19
    return {"texts": len(texts), "ner_share": sum(map(needs_ner, texts)) / max(len(texts), 1),
            "cpu_us_mean": statistics.fmean(cpu), "cpu_us_p50": statistics.median(cpu), "cpu_us_p95": q[18],
            "wall_us_mean": statistics.fmean(wall)}


def corrections(n: int, seed: int = 18) -> list[str]:
    """``n`` feedback corrections as the simulator writes them (half with its PHI tail)."""
    from streams.devtools.simulate import CORRECTIONS, PHI_TAIL, TOPICS_X

    r = random.Random(seed)
    return [r.choice(list(CORRECTIONS.values())).format(x=r.choice(TOPICS_X)) + (PHI_TAIL if r.random() < 0.5 else "")
            for _ in range(n)]


def run(n_phi: int = 600, n_clean: int = 600, n_corrections: int = 600, seed: int = 18) -> dict[str, Any]:
    """Score the redactor on a corpus of ``n_phi`` PHI notes and ``n_clean`` clean notes.

    Returns:
        ``{"recall": {type: {"planted", "caught", "recall"}}, "names_recall", "identifiers_recall",
        "over_redaction": {"tokens", "redacted", "share", "examples"}, "misses": [...],
        "cost": {"phi"|"clean"|"corrections": {...}}, "feedback_records_per_s_per_core",
        "ner_load_s", "targets_met"}``.
    """
    redactor = Redactor()
    redactor.CACHE_TEXTS = 0  # every text pays its own way
    t0 = time.perf_counter()
    analyzer(redactor.region)
    load_s = time.perf_counter() - t0
    notes, clean = phi_notes(n_phi, seed), clean_notes(n_clean, seed)

    planted = {k: 0 for k in PHI_TYPES}
    caught = {k: 0 for k in PHI_TYPES}
    misses: list[dict[str, str]] = []
    for note in notes:
        spans = [(r.start, r.end) for r in redactor.analyze(note.text)]
        for kind, s, e, value in note.spans:
            planted[kind] += 1
            if _covered(spans, s, e, note.text):
                caught[kind] += 1
            else:
                misses.append({"type": kind, "value": value, "text": note.text})
    tokens = redacted = 0
    examples: list[str] = []
    for note in clean:
        spans = [(r.start, r.end) for r in redactor.analyze(note.text)]
        for m in re.finditer(r"\S+", note.text):
            tokens += 1
            if any(s < m.end() and m.start() < e for s, e in spans):
                redacted += 1
                if len(examples) < 20:
                    examples.append(m.group(0))
    ids = [k for k in PHI_TYPES if k != "NAME"]
    names_recall = caught["NAME"] / max(planted["NAME"], 1)
    id_recall = sum(caught[k] for k in ids) / max(sum(planted[k] for k in ids), 1)
    share = redacted / max(tokens, 1)
    cost = {"phi": _costs(redactor, [n.text for n in notes]), "clean": _costs(redactor, [n.text for n in clean]),
            "corrections": _costs(redactor, corrections(n_corrections, seed))}
    return {
        "corpus": {"phi_notes": n_phi, "clean_notes": n_clean, "seed": seed},
        "recall": {k: {"planted": planted[k], "caught": caught[k], "recall": caught[k] / max(planted[k], 1)}
                   for k in PHI_TYPES},
        "names_recall": names_recall, "identifiers_recall": id_recall,
        "over_redaction": {"tokens": tokens, "redacted": redacted, "share": share, "examples": examples},
        "misses": misses[:40], "missed": len(misses),
        "cost": cost, "feedback_records_per_s_per_core": 1e6 / cost["corrections"]["cpu_us_mean"],
        "ner_load_s": load_s,
        "targets_met": names_recall >= TARGET_RECALL and id_recall >= TARGET_RECALL and share <= TARGET_OVER_REDACTION,
    }
