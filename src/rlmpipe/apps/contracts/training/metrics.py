"""How good the clause finder is: contract-level and passage-level figures, and its findings'.

Contract level: a category is present when the experts highlighted a passage for it, predicted
present when some passage's score clears the category's threshold. Findings: what ``--lm none``
shows, each a span of the contract; *right* when it overlaps an expert's piece of its category,
*close* when its Jaccard overlap with one is at least 0.5 (the CUAD paper's criterion), and an
expert's piece is *reached* when a finding of its category overlaps it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.training.data import Contract


def contract_max(scores: list[np.ndarray]) -> np.ndarray:
    """(contracts, categories): the best passage score of each category in each contract."""
    return np.vstack([s.max(axis=0) if len(s) else np.zeros(len(NAMES)) for s in scores])


def annotation_max(corpus: list[Contract], scores: list[np.ndarray]) -> list[tuple[int, int, float]]:
    """(contract index, category, best score among the passages the annotation overlaps) per piece."""
    out = []
    for i, (contract, s) in enumerate(zip(corpus, scores)):
        for k, _, _, first, last in contract.annotations:
            out.append((i, k, float(s[first:last, k].max()) if last > first else 0.0))
    return out



def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def evaluate(corpus: list[Contract], scores: list[np.ndarray], thresholds: list[dict[str, np.ndarray]],
             kind: str = "f1") -> dict:
    """Contract-level P/R/F1 per category, macro and micro; passage recall; share of passages and
    characters at or above the thresholds (any category)."""
    t = np.vstack([th[kind] for th in thresholds])
    best = contract_max(scores)
    present = np.vstack([c.present for c in corpus])
    predicted = best >= t
    tp = (predicted & present).sum(axis=0)
    fp = (predicted & ~present).sum(axis=0)
    fn = (~predicted & present).sum(axis=0)
    per_category = {}
    hits = np.zeros(len(NAMES))
    totals = np.zeros(len(NAMES))
    for i, k, s in annotation_max(corpus, scores):
        totals[k] += 1
        hits[k] += s >= t[i, k]
    for k, name in enumerate(NAMES):
        p, r, f = prf(tp[k], fp[k], fn[k])
        per_category[name] = {"precision": p, "recall": r, "f1": f, "support": int(present[:, k].sum()),
                              "passage_recall": hits[k] / totals[k] if totals[k] else float("nan"),
                              "annotations": int(totals[k])}
    micro = prf(tp.sum(), fp.sum(), fn.sum())
    selected_passages = selected_chars = all_passages = all_chars = 0
    for i, (contract, s) in enumerate(zip(corpus, scores)):
        chosen = (s >= t[i]).any(axis=1)
        lengths = np.array([p.char_end - p.char_start for p in contract.passages])
        selected_passages += int(chosen.sum())
        all_passages += len(lengths)
        selected_chars += int(lengths[chosen].sum())
        all_chars += len(contract.text)
    return {
        "macro": {m: float(np.mean([c[m] for c in per_category.values()])) for m in ("precision", "recall", "f1")},
        "micro": dict(zip(("precision", "recall", "f1"), map(float, micro))),
        "passage_recall": float(hits.sum() / totals.sum()),
        "passage_recall_macro": float(np.nanmean([c["passage_recall"] for c in per_category.values()])),
        "passages_selected": selected_passages / all_passages,
        "chars_selected": selected_chars / all_chars,
        "per_category": per_category,
    }


def jaccard(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Character-level Jaccard overlap of two spans ``(start, end)``."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union else 0.0


@dataclass
class FindingsScore:
    """What a set of findings is worth against the experts' pieces."""

    findings: int = 0
    right: int = 0  # overlap an expert's piece of their category
    close: int = 0  # Jaccard >= 0.5 with one
    pieces: int = 0
    reached: int = 0  # expert pieces a finding of their category overlaps
    characters: int = 0

    def add(self, contract: Contract, findings: list[tuple[int, int, int]]) -> None:
        """``findings``: ``(category index, start, end)`` in ``contract``."""
        spans = contract.expert_spans()
        hit: set[int] = set()
        for k, start, end in findings:
            over = [(a, b, piece) for a, b, piece in spans.get(k, ()) if a < end and start < b]
            self.findings += 1
            self.characters += end - start
            self.right += bool(over)
            self.close += any(jaccard((start, end), (a, b)) >= 0.5 for a, b, _ in over)
            hit.update(piece for _, _, piece in over)
        self.pieces += len(contract.annotations)
        self.reached += len(hit)

    def figures(self) -> dict[str, float]:
        n = max(1, self.findings)
        return {"findings": self.findings, "right": self.right / n, "close": self.close / n,
                "reached": self.reached / max(1, self.pieces), "mean_chars": self.characters / n}
