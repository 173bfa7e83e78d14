"""Decision thresholds for the clause finder's scores, each chosen on out-of-fold scores.

- ``f1``: per category, on a contract's best passage score: is the category present? (best
  contract-level F1);
- ``passage``: per category, on one passage's score: what a category's further findings must clear
  without a language model (best passage-level F1);
- ``recallX``: per category, the cheapest thresholds that together keep X of all annotated pieces;
- ``selectX``: one threshold on a passage's best score over the categories keeping X of the pieces
  (what the cascade shows a language model).

Every chooser sees only scores and labels: cross-validation calls them with the other folds' scores
(:func:`cv_thresholds`), training with all of them.
"""

from __future__ import annotations

import numpy as np

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.finder import RECALL_LEVELS
from rlmpipe.apps.contracts.training.data import Contract, fold_of
from rlmpipe.apps.contracts.training.metrics import annotation_max, contract_max

#: An F1 threshold may not call a category present in more than this many times the contracts
#: that have it: for a category the model cannot rank (a handful of examples), the F1-best
#: threshold is otherwise "present everywhere" (F1 0.04 instead of 0), hundreds of false findings.
MAX_PRESENT_RATIO = 2.0


def f1_thresholds(best: np.ndarray, present: np.ndarray, max_ratio: float = MAX_PRESENT_RATIO) -> np.ndarray:
    """Per category, the threshold on the contract's best passage score with the highest F1 over
    these contracts (midway between neighbouring scores; ties: the middle of the tied ones),
    among those predicting at most ``max_ratio`` x as many contracts present as have it."""
    out = np.ones(best.shape[1])
    for k in range(best.shape[1]):
        y = present[:, k]
        values = np.unique(best[:, k])[::-1]  # descending
        if not y.any():
            out[k] = min(1.0, values[0] + 1e-6)  # never seen: above every score seen
            continue
        cuts = np.concatenate([(values[:-1] + values[1:]) / 2, [values[-1] / 2]])
        predicted = best[:, k][None, :] >= cuts[:, None]  # (cuts, contracts)
        n_predicted = predicted.sum(axis=1)
        f1 = 2 * (predicted & y).sum(axis=1) / (n_predicted + y.sum())
        f1[n_predicted > max_ratio * y.sum()] = -1.0
        if f1.max() < 0:  # many contracts tie at the top score
            out[k] = cuts[0]
            continue
        winners = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out[k] = cuts[winners[len(winners) // 2]]
    return out


def passage_thresholds(corpus: list[Contract], scores: list[np.ndarray]) -> np.ndarray:
    """Per category, the threshold on a passage's own score with the best passage-level F1 (a passage
    is right when an annotation of that category overlaps it; midway between neighbouring scores).

    What a category's second and third findings must clear: the contract-level ``f1`` threshold only
    decides that a category is present, and for one found in nearly every contract (Document Name:
    about 0.001) it lets almost any passage through once the best one has."""
    stacked, labels = np.vstack(scores), np.vstack([contract.labels for contract in corpus])
    out = np.ones(stacked.shape[1])
    for k in range(stacked.shape[1]):
        order = np.argsort(-stacked[:, k], kind="stable")
        values, right = stacked[order, k], labels[order, k]
        if not right.any():
            out[k] = min(1.0, values[0] + 1e-6)  # never annotated: above every score seen
            continue
        tp = np.cumsum(right)
        f1 = 2 * tp / (np.arange(1, len(values) + 1) + right.sum())
        # a cut can only fall between different scores: the last index of each run of equal ones
        last = np.r_[values[1:] != values[:-1], True]
        best = np.flatnonzero(last)[np.argmax(f1[last])]
        out[k] = (values[best] + values[best + 1]) / 2 if best + 1 < len(values) else values[best] / 2
    return out


def recall_thresholds(corpus: list[Contract], scores: list[np.ndarray], level: float,
                      context_chars: int = 300) -> np.ndarray:
    """Per category thresholds that together keep ``level`` of *all* annotated passages (every
    category's pieces counted together) while selecting the fewest characters for an LM to read.

    A threshold per category chosen for its own recall would be driven by the categories the model
    ranks worst: to keep 97% of a rare category's few pieces it must flag nearly every passage, and
    the cascade would read the whole contract. Instead each category's threshold maximises
    ``pieces kept - lam * characters selected`` (a passage costs its length plus ``context_chars``
    on each side, the window it is shown in), with one ``lam`` for all categories, found by
    bisection: the cheapest thresholds that reach the level. A category that would cost far more
    than it keeps is given up (its threshold is above every score) rather than flooding the LM."""
    n = len(NAMES)
    kept_at: list[np.ndarray] = []  # per category: its pieces' best scores, descending
    cost_at: list[np.ndarray] = []  # per category: characters selected at each of those thresholds
    lengths = np.concatenate([[p.char_end - p.char_start + 2 * context_chars for p in c.passages] for c in corpus])
    flat = np.vstack(scores) if scores else np.zeros((0, n))
    by_category: list[list[float]] = [[] for _ in range(n)]
    for _, k, value in annotation_max(corpus, scores):
        by_category[k].append(value)
    for k in range(n):
        pieces = np.sort(np.array(by_category[k], dtype=float))[::-1]
        order = np.argsort(-flat[:, k], kind="stable")
        cumulative = np.concatenate([[0.0], np.cumsum(lengths[order])])
        selected = np.searchsorted(-flat[order, k], -pieces, side="right")  # passages scoring >= each piece
        kept_at.append(pieces)
        cost_at.append(cumulative[selected])
    total = sum(len(p) for p in kept_at)

    def choose(lam: float) -> tuple[np.ndarray, int]:
        thresholds, kept = np.full(n, 1.0 + 1e-9), 0
        for k in range(n):
            if not len(kept_at[k]):
                continue
            gain = np.arange(1, len(kept_at[k]) + 1) - lam * cost_at[k]
            best = int(np.argmax(gain))
            if gain[best] > 0:
                thresholds[k], kept = kept_at[k][best], kept + best + 1
        return thresholds, kept

    if not total:
        return np.full(n, 1.0 + 1e-9)
    need = int(np.ceil(level * total - 1e-9))
    low, high = 0.0, 1.0  # lam = 0 keeps everything; raise high until it keeps too little
    while choose(high)[1] >= need and high < 1e6:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if choose(middle)[1] >= need else (low, middle)
    return choose(low)[0]


def selection_threshold(corpus: list[Contract], scores: list[np.ndarray], level: float) -> float:
    """One threshold on a passage's *best* score over all categories that keeps ``level`` of all
    annotated pieces: the highest ``t`` such that that share of pieces has every passage it
    overlaps scoring at least ``t`` for some category (a piece reaches the LM only if all of it is
    shown).

    Chosen over per-category recall thresholds by cross-validation (bench/contracts_cost.py): a
    passage that two categories would each select costs its characters once, and a passage the
    model is sure of for *any* category is worth showing; at the same share of pieces kept it
    selects about a quarter fewer characters."""
    need = []
    for contract, s in zip(corpus, scores):
        best = s.max(axis=1) if len(s) else np.zeros(0)
        for _, _, _, first, last in contract.annotations:
            need.append(float(best[first:last].min()) if last > first else 0.0)
    if not need:
        return 1.0 + 1e-9
    values = np.sort(np.array(need))[::-1]  # descending: keeping the first i + 1 needs t <= values[i]
    index = min(len(values) - 1, max(0, int(np.ceil(level * len(values) - 1e-9)) - 1))
    return float(values[index])


def all_thresholds(corpus: list[Contract], scores: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every kind of threshold the finder ships: ``f1``, ``passage``, per-category ``recallX`` and the cascade's
    single selection threshold ``selectX`` (stored per category, all equal, like the others)."""
    best = contract_max(scores)
    present = np.vstack([c.present for c in corpus])
    out = {"f1": f1_thresholds(best, present), "passage": passage_thresholds(corpus, scores)}
    for level in RECALL_LEVELS:
        out[f"recall{level:.2f}"] = recall_thresholds(corpus, scores, level)
        out[f"select{level:.2f}"] = np.full(len(NAMES), selection_threshold(corpus, scores, level))
    return out


def cv_thresholds(corpus: list[Contract], scores: list[np.ndarray], folds: int) -> list[dict[str, np.ndarray]]:
    """For each contract, thresholds chosen on the out-of-fold scores of the *other* folds only."""
    fold = fold_of(corpus, folds)
    per_fold = []
    for k in range(folds):
        keep = [i for i in range(len(corpus)) if fold[i] != k]
        per_fold.append(all_thresholds([corpus[i] for i in keep], [scores[i] for i in keep]))
    return [per_fold[f] for f in fold]


