"""How far each category's findings are narrowed, chosen on out-of-fold scores; and the findings
``--lm none`` shows, judged fold-honestly.

A finding's span is its best sentence grown over neighbours within a margin of its logit
(:func:`rlmpipe.apps.contracts.narrow.grow`), then, for a date, a document name or the parties, cut
to those words (:func:`~rlmpipe.apps.contracts.narrow.cut_to_words`: one finding per party). Per category, the margin (``MARGINS``; the
last keeps the whole passage) and whether to cut to words are the option whose findings most often
lie within Jaccard 0.5 of an expert's piece of their category (ties: more findings that overlap
one, then the narrower option).
"""

from __future__ import annotations

import numpy as np

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.narrow import WORDS, cut_to_words, grow
from rlmpipe.apps.contracts.training.data import Contract, fold_of
from rlmpipe.apps.contracts.training.metrics import FindingsScore, jaccard

#: margins tried (logits); the last one keeps every sentence of the passage
MARGINS = (0.0, 0.5, 1.0, 2.0, 4.0, 1e9)
#: findings shown per category without a language model (pipeline.FINDINGS_PER_CATEGORY)
PER_CATEGORY = 3


def findings_of(scores: np.ndarray, thresholds: dict[str, np.ndarray], per_category: int = PER_CATEGORY):
    """``(category, passage index, score)`` of what ``ClauseFinder.find(per_category=...)`` keeps:
    each category's best passage when it clears ``f1``, and up to ``per_category - 1`` more that
    clear ``f1`` and ``passage`` too (ties: the earlier passage)."""
    out = []
    f1, passage = thresholds["f1"], thresholds.get("passage")
    for k in range(scores.shape[1] if len(scores) else 0):
        column = scores[:, k]
        order = np.argsort(-column, kind="stable")[:per_category]
        if not len(order) or column[order[0]] < f1[k]:
            continue
        out.append((k, int(order[0]), float(column[order[0]])))
        out += [(k, int(i), float(column[i])) for i in order[1:]
                if column[i] >= f1[k] and (passage is None or column[i] >= passage[k])]
    return out


def options(k: int) -> list[tuple[float, bool]]:
    """The ``(margin, cut to words)`` options for category ``k``."""
    words = (False, True) if NAMES[k] in WORDS else (False,)
    return [(margin, cut) for cut in words for margin in MARGINS]


def spans(contract: Contract, sentence_spans, logits: np.ndarray, k: int, option) -> list[tuple[int, int]]:
    """The document spans ``option`` narrows a finding of category ``k`` to (one, or one per party)."""
    margin, cut = option
    first, last = grow(logits[:, k], margin)
    start, end = sentence_spans[first][0], sentence_spans[last][1]
    return cut_to_words(NAMES[k], contract.text, start, end) if cut else [(start, end)]


def _outcomes(corpus: list[Contract], scored, found: list[list[tuple[int, int, float]]]):
    """Per category, for each finding: (contract index, [(close, right) counts for each option])."""
    table: dict[int, list] = {}
    for ci, (contract, chosen) in enumerate(zip(corpus, found)):
        experts = contract.expert_spans()
        for k, pi, _ in chosen:
            mine = experts.get(k, ())
            row = []
            for option in options(k):
                close = right = 0
                for start, end in spans(contract, scored.sentence_spans[ci][pi], scored.sentence_logits[ci][pi], k,
                                        option):
                    over = [(a, b) for a, b, _ in mine if a < end and start < b]
                    close += any(jaccard((start, end), piece) >= 0.5 for piece in over)
                    right += bool(over)
                row.append((close, right))
            table.setdefault(k, []).append((ci, row))
    return table


def _best(rows: list, k: int) -> int:
    """The option index with the most close findings (then right ones, then the narrower)."""
    if not rows:
        return 0
    totals = np.array([[r[j][0] for _, r in rows] for j in range(len(options(k)))], dtype=float).sum(axis=1)
    rights = np.array([[r[j][1] for _, r in rows] for j in range(len(options(k)))], dtype=float).sum(axis=1)
    return int(np.lexsort((np.arange(len(totals)), -rights, -totals))[0])


def _arrays(chosen: dict[int, int]) -> dict[str, np.ndarray]:
    margin = np.zeros(len(NAMES), dtype=np.float32)
    words = np.zeros(len(NAMES), dtype=np.uint8)
    for k, index in chosen.items():
        margin[k], words[k] = options(k)[index]
    return {"narrow_margin": margin, "narrow_words": words}


def choose(corpus: list[Contract], scored, thresholds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The narrowing the shipped model uses: per category, the best option over the findings the
    thresholds keep on all the out-of-fold scores."""
    found = [findings_of(scores, thresholds) for scores in scored.passages]
    table = _outcomes(corpus, scored, found)
    return _arrays({k: _best(table.get(k, []), k) for k in range(len(NAMES))})


def cv_findings(corpus: list[Contract], scored, honest: list[dict[str, np.ndarray]], folds: int) -> dict:
    """What ``--lm none`` shows, fold-honestly: each contract's findings by the thresholds of the
    other folds, narrowed by the option chosen on the other folds' findings. Returns the
    :class:`FindingsScore` figures (share right, close, expert pieces reached)."""
    found = [findings_of(scores, chosen) for scores, chosen in zip(scored.passages, honest)]
    table = _outcomes(corpus, scored, found)
    fold = fold_of(corpus, folds)
    pick = {(k, f): _best([row for row in table.get(k, []) if fold[row[0]] != f], k)
            for k in range(len(NAMES)) for f in range(folds)}
    score = FindingsScore()
    for ci, (contract, chosen) in enumerate(zip(corpus, found)):
        score.add(contract, [(k, start, end) for k, pi, _ in chosen
                             for start, end in spans(contract, scored.sentence_spans[ci][pi],
                                                     scored.sentence_logits[ci][pi], k, options(k)[pick[k, fold[ci]]])])
    return score.figures()
