"""Choose the near-duplicate threshold: precision/recall of rapidfuzz scorers on labelled pairs.

Usage: .venv/bin/python scripts/near_dup_threshold.py [--pairs tests/data/near_duplicate_pairs.json]

For each scorer and threshold prints precision, recall and F1 of "near_duplicate" against the
hand labels, with selfheal's guards (same numbers in order, no polarity flip, token-sort coverage, no
substituted content word) and without them,
and then the confusion table of :func:`streams.processors.feedback.corrections.compare` at the default
threshold.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rapidfuzz import fuzz

from streams.processors.feedback import corrections as C

SCORERS = {"ratio": fuzz.ratio, "token_sort_ratio": fuzz.token_sort_ratio, "token_set_ratio": fuzz.token_set_ratio,
           "WRatio": fuzz.WRatio}


def load(path: Path) -> list[tuple[str, str, str]]:
    """Labelled pairs ``(a, b, label)`` as similarity texts."""
    return [(C.similarity_text(a), C.similarity_text(b), lab) for a, b, lab in json.loads(path.read_text())["pairs"]]


def prf(pred: list[bool], truth: list[bool]) -> tuple[float, float, float]:
    """Precision, recall, F1 of boolean predictions."""
    tp = sum(p and t for p, t in zip(pred, truth, strict=True))
    fp = sum(p and not t for p, t in zip(pred, truth, strict=True))
    fn = sum(t and not p for p, t in zip(pred, truth, strict=True))
    prec = tp / (tp + fp) if tp + fp else 1.0
    rec = tp / (tp + fn) if tp + fn else 1.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    default = Path(__file__).resolve().parents[1] / "tests/data/near_duplicate_pairs.json"
    ap.add_argument("--pairs", type=Path, default=default)
    args = ap.parse_args()
    pairs = load(args.pairs)
    truth = [lab == "near_duplicate" for _, _, lab in pairs]
    n_pos = sum(truth)
    print(f"{len(pairs)} pairs: {n_pos} near_duplicate, {len(pairs) - n_pos} not "
          f"({Counter(lab for *_, lab in pairs)})\n")
    print("| scorer | guards | threshold | precision | recall | F1 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, scorer in SCORERS.items():
        for guards in (True, False):
            best = None
            rows = []
            for thr in range(70, 101):
                pred = [scorer(a, b, processor=None) >= thr
                        and (not guards or (C.numbers(a) == C.numbers(b) and not C.flipped(a, b)
                                            and fuzz.token_sort_ratio(a, b, processor=None) >= C.MIN_COVERAGE
                                            and not C.substituted(a, b)))
                        for a, b, _ in pairs]
                p, r, f = prf(pred, truth)
                rows.append((thr, p, r, f))
                if best is None or f >= best[3] - 1e-12:  # ties: the higher (stricter) threshold
                    best = (thr, p, r, f)
            for thr, p, r, f in rows:
                if thr in (80, 85, 88, 90, 91, 92, 95) or thr == best[0]:
                    mark = " **best F1 (highest threshold)**" if thr == best[0] else ""
                    print(f"| {name} | {'yes' if guards else 'no'} | {thr} | {p:.3f} | {r:.3f} | {f:.3f}{mark} |")
    print(f"\ncompare() at threshold {C.NEAR_DUP_THRESHOLD:g} (rows: label, columns: predicted)")
    conf = Counter((lab, C.compare(a, b)) for a, b, lab in pairs)
    rels = ("near_duplicate", "contradiction", "distinct")
    print("| label \\ predicted | " + " | ".join(rels) + " |")
    print("| --- | " + " | ".join("---:" for _ in rels) + " |")
    for lab in rels:
        print(f"| {lab} | " + " | ".join(str(conf[(lab, p)]) for p in rels) + " |")
    pred = [C.compare(a, b) == "near_duplicate" for a, b, _ in pairs]
    p, r, f = prf(pred, truth)
    print(f"\nnear_duplicate at {C.NEAR_DUP_THRESHOLD:g}: precision {p:.3f}, recall {r:.3f}, F1 {f:.3f}")
    for (a, b, lab), pr in zip(pairs, pred, strict=True):
        if pr != (lab == "near_duplicate"):
            print(f"  {'missed' if not pr else 'false positive'} ({lab}): {a!r} | {b!r} "
                  f"score {fuzz.token_set_ratio(a, b, processor=None):.1f}")


if __name__ == "__main__":
    main()
