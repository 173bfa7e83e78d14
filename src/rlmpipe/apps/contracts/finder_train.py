"""Training the clause finder on CUAD, deterministically, with its thresholds chosen by cross-validation.

    python -m rlmpipe.apps.contracts.finder_train DATA_DIR --out FILE [--folds 5]

DATA_DIR is a CUAD folder as in ``../shared/data/cuad`` (``contracts/*.txt``, ``annotations.jsonl``,
``contract_labels.jsonl``). A passage is labelled with every category whose annotated text it
overlaps; a contract has a category when the experts highlighted at least one passage for it
(``n_spans > 0``). The thresholds shipped with the model come from out-of-fold scores (folds by
contract), because there is no held-out set: the same code the benchmark uses to judge variants.

Same data, same bytes: contracts in sorted order, folds by that order, single-threaded solvers,
fixed seeds, and a model file with fixed zip timestamps. Needs scikit-learn (inference does not).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.finder import (
    FORMAT,
    N_POSITIONS,
    RECALL_LEVELS,
    ClauseFinder,
    Features,
    position_bucket,
)
from rlmpipe.apps.contracts.passages import Passage, passages
from rlmpipe.ingest import Block

#: The configuration chosen by ``bench/finder_cv.py`` (see bench/RESULTS.md, "finder" section).
DEFAULT_CONFIG: dict = {  # = variant "trunc6-mc2"
    "max_chars": 1000,
    "ngram_max": 2,
    "min_df": 2,
    "min_contracts": 2,
    "max_features": 200_000,
    "truncate": 6,
    "sublinear": True,
    "context": False,
    "context_scale": 0.5,
    "position": False,
    "C": 16.0,
    "class_weight": None,
    "model": "logreg",
}

ATTRIBUTION = ("CUAD v1, The Atticus Project (Hendrycks et al., 'CUAD: An Expert-Annotated NLP Dataset for "
               "Legal Contract Review', NeurIPS 2021), CC BY 4.0")


@dataclass
class Contract:
    """One training contract: its passages, which categories each overlaps, and its annotations."""

    contract_id: str
    text: str
    passages: list[Passage]
    labels: np.ndarray  # (passages, categories) bool: the passage overlaps an annotation of the category
    present: np.ndarray  # (categories,) bool: n_spans > 0
    # annotation pieces: (category index, start, end, index of the first and one past the last passage it overlaps)
    annotations: list[tuple[int, int, int, int, int]] = field(default_factory=list)


def read_contract_text(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def load_corpus(data_dir: str | Path, contract_ids: list[str] | None = None, *,
                max_chars: int = 2000) -> list[Contract]:
    """The contracts of a CUAD folder (all, or ``contract_ids``), sorted by id, cut into passages."""
    data_dir = Path(data_dir)
    index = {name: k for k, name in enumerate(NAMES)}
    available = sorted(p.stem for p in (data_dir / "contracts").glob("*.txt"))
    wanted = sorted(set(contract_ids)) if contract_ids is not None else available
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise FileNotFoundError(f"{data_dir}: no contract file for {', '.join(missing[:5])}")
    wanted_set = set(wanted)
    annotations: dict[str, list[dict]] = {cid: [] for cid in wanted}
    with open(data_dir / "annotations.jsonl", encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            if item["contract_id"] in wanted_set:
                annotations[item["contract_id"]].append(item)
    present = {cid: np.zeros(len(NAMES), dtype=bool) for cid in wanted}
    with open(data_dir / "contract_labels.jsonl", encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            if item["contract_id"] in wanted_set and item["n_spans"] > 0:
                present[item["contract_id"]][index[item["category"]]] = True
    corpus = []
    for cid in wanted:
        text = read_contract_text(data_dir / "contracts" / f"{cid}.txt")
        cut = list(passages([Block(text, 0)], max_chars=max_chars))
        starts = [p.char_start for p in cut]
        ends = [p.char_end for p in cut]
        labels = np.zeros((len(cut), len(NAMES)), dtype=bool)
        pieces = []
        for item in sorted(annotations[cid], key=lambda a: (a["start"], a["end"], a["category"])):
            k = index[item["category"]]
            first = bisect.bisect_right(ends, item["start"])  # first passage ending after the start
            last = bisect.bisect_left(starts, item["end"])  # passages starting before the end
            labels[first:last, k] = True
            pieces.append((k, item["start"], item["end"], first, last))
        corpus.append(Contract(cid, text, cut, labels, present[cid], pieces))
    return corpus


def data_sha256(data_dir: str | Path, contract_ids: list[str]) -> str:
    """sha256 over the files training reads: each contract (sorted by id), then the two label files
    (only their lines for these contracts, so a subset's digest does not depend on the others)."""
    data_dir = Path(data_dir)
    digest = hashlib.sha256()
    wanted = set(contract_ids)
    for cid in sorted(contract_ids):
        digest.update(f"{cid}\n".encode())
        digest.update((data_dir / "contracts" / f"{cid}.txt").read_bytes())
    for name in ("annotations.jsonl", "contract_labels.jsonl"):
        digest.update(f"{name}\n".encode())
        with open(data_dir / name, "rb") as handle:
            for line in handle:
                if json.loads(line)["contract_id"] in wanted:
                    digest.update(line)
    return digest.hexdigest()


# -- design matrices ----------------------------------------------------------------------------


def design(corpus: list[Contract], features: Features, config: dict):
    """The scikit-learn design matrix of every passage: own TF-IDF, ``context_scale`` x the sum of
    its neighbours' (same contract), one-hot position bucket; and the label matrix."""
    import scipy.sparse as sp

    blocks, labels = [], []
    for contract in corpus:
        indptr, indices, values = features.rows([p.text for p in contract.passages])
        n = len(contract.passages)
        own = sp.csr_matrix((values, indices, indptr), shape=(n, len(features)))
        parts = [own]
        if config["context"]:
            shift = sp.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n), format="csr") if n > 1 \
                else sp.csr_matrix((n, n))
            parts.append((shift @ own) * config["context_scale"])
        if config["position"]:
            buckets = np.array([position_bucket(i) for i in range(n)], dtype=np.int64)
            parts.append(sp.csr_matrix((np.ones(n), (np.arange(n), buckets)), shape=(n, N_POSITIONS)))
        blocks.append(sp.hstack(parts, format="csr"))
        labels.append(contract.labels)
    return sp.vstack(blocks, format="csr"), np.vstack(labels)


def fit_features(corpus: list[Contract], config: dict) -> Features:
    return Features.fit(([p.text for p in c.passages] for c in corpus), min_df=config["min_df"],
                        min_documents=config.get("min_contracts", 1), max_features=config["max_features"],
                        ngram_max=config["ngram_max"], sublinear=config["sublinear"],
                        truncate=config.get("truncate", 0), lead=config.get("lead", 0))


@dataclass
class Linear:
    """A fitted model: features and one logistic regression per category."""

    features: Features
    coef: np.ndarray  # (design columns, categories)
    intercept: np.ndarray  # (categories,)
    config: dict

    def weights(self) -> dict[str, np.ndarray]:
        """The coefficient blocks by input: own words, neighbours' words (scaled), position."""
        v = len(self.features)
        out = {"self": self.coef[:v]}
        at = v
        if self.config["context"]:
            out["context"] = self.coef[at : at + v] * self.config["context_scale"]
            at += v
        if self.config["position"]:
            out["position"] = self.coef[at : at + N_POSITIONS]
        return out


def fit(corpus: list[Contract], config: dict) -> Linear:
    """Fit the features and one linear classifier per category on ``corpus``: logistic regression
    (liblinear's dual solver: much faster than the primal with more features than passages), or
    a linear SVM whose margins are squashed by the sigmoid (for comparison only)."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    features = fit_features(corpus, config)
    x, y = design(corpus, features, config)
    coef = np.zeros((x.shape[1], len(NAMES)))
    intercept = np.full(len(NAMES), -20.0)  # a category never seen in training: never found
    for k in range(len(NAMES)):
        target = y[:, k]
        if target.all() or not target.any():
            continue
        scale = None
        if config.get("nb"):  # NB-LR (Wang & Manning 2012): columns scaled by their log-count ratio
            scale = _log_count_ratio(x, target)
            design_k = x @ sp.diags(scale)
        else:
            design_k = x
        weight = {False: 1.0, True: float(config["pos_weight"])} if config.get("pos_weight") else config["class_weight"]
        if config.get("model", "logreg") == "svm":
            model = LinearSVC(C=config["C"], class_weight=weight, max_iter=5000, random_state=0)
        else:
            model = LogisticRegression(C=config["C"], solver="liblinear", dual=True, class_weight=weight,
                                       max_iter=1000, random_state=0)
        model.fit(design_k, target)
        coef[:, k] = model.coef_[0] * (scale if scale is not None else 1.0)
        intercept[k] = model.intercept_[0]
    return Linear(features, coef, intercept, dict(config))


def _log_count_ratio(x, target: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """log((alpha + column sums over positives) / their total) - the same over negatives."""
    positive = alpha + np.asarray(x[target].sum(axis=0)).ravel()
    negative = alpha + np.asarray(x[~target].sum(axis=0)).ravel()
    return np.log(positive / positive.sum()) - np.log(negative / negative.sum())


def passage_scores(model: Linear, corpus: list[Contract]) -> list[np.ndarray]:
    """Scores (passages x categories) for each contract, computed by the shipped finder's own
    streaming code, so cross-validation judges exactly what ships."""
    finder = to_finder(model, {}, {})
    return [np.array([s for _, s in finder.score([Block(c.text, 0)])]).reshape(-1, len(NAMES))
            for c in corpus]


def to_finder(model: Linear, thresholds: dict[str, np.ndarray], info: dict) -> ClauseFinder:
    info = {"format": FORMAT, "categories": list(NAMES), **info, "config": model.config}
    return ClauseFinder(model.features, model.weights(), model.intercept, thresholds, info)


# -- cross-validation, thresholds, metrics ------------------------------------------------------


def fold_of(corpus: list[Contract], folds: int) -> np.ndarray:
    """Fold of each contract: its rank in id order, modulo ``folds`` (deterministic, by contract)."""
    return np.arange(len(corpus)) % folds


def out_of_fold(corpus: list[Contract], config: dict, folds: int, log=None) -> list[np.ndarray]:
    """Each contract's passage scores from the model trained on the other folds."""
    fold = fold_of(corpus, folds)
    scores: list[np.ndarray | None] = [None] * len(corpus)
    for k in range(folds):
        started = time.perf_counter()
        train = [c for c, f in zip(corpus, fold) if f != k]
        test = [i for i, f in enumerate(fold) if f == k]
        model = fit(train, config)
        for i, s in zip(test, passage_scores(model, [corpus[i] for i in test])):
            scores[i] = s
        if log:
            log(f"fold {k + 1}/{folds}: {len(train)} contracts trained, {time.perf_counter() - started:.0f} s")
    return scores  # type: ignore[return-value]


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


# -- the training command -----------------------------------------------------------------------


def _single_thread() -> None:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def train(data_dir: str | Path, out: str | Path, *, contract_ids: list[str] | None = None, folds: int = 5,
          config: dict | None = None, log=None) -> dict:
    """Train on the CUAD folder ``data_dir`` and write the model to ``out``; return its ``info``.

    Thresholds come from ``folds``-fold out-of-fold scores (folds by contract); the model itself is
    then fit on all the contracts. ``contract_ids`` restricts training to those contracts.
    """
    _single_thread()
    import sklearn

    started = time.perf_counter()
    config = {**DEFAULT_CONFIG, **(config or {})}
    corpus = load_corpus(data_dir, contract_ids, max_chars=config["max_chars"])
    ids = [c.contract_id for c in corpus]
    if len(corpus) < folds:
        raise ValueError(f"need at least {folds} contracts for {folds}-fold cross-validation")
    scores = out_of_fold(corpus, config, folds, log=log)
    thresholds = all_thresholds(corpus, scores)
    honest = evaluate(corpus, scores, cv_thresholds(corpus, scores, folds))
    model = fit(corpus, config)
    command = "python -m rlmpipe.apps.contracts.finder_train DATA_DIR --out FILE" + (
        f" --folds {folds}" if folds != 5 else "") + (" (contract subset)" if contract_ids is not None else "")
    info = {
        "trained_with": command,
        "data": {"contracts": len(ids), "first": ids[0], "last": ids[-1], "sha256": data_sha256(data_dir, ids),
                 "attribution": ATTRIBUTION},
        "cv": {"folds": folds, "split": "contracts sorted by id, fold = rank mod folds",
               "thresholds": "for each fold, chosen on the out-of-fold scores of the other folds",
               **{key: honest[key] for key in ("macro", "micro", "passage_recall", "passage_recall_macro")},
               "per_category_f1": {name: round(v["f1"], 4) for name, v in honest["per_category"].items()}},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scikit-learn": sklearn.__version__},
    }
    finder = to_finder(model, thresholds, info)
    finder.save(out)
    if log:
        log(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.0f} s")
    return finder.info


def model_card(info: dict, model_file: str = "clause_finder.npz") -> str:
    """The model card (README.md beside the shipped model), from the model's own ``info``."""
    cv, data, config = info["cv"], info["data"], info["config"]
    worst = sorted(cv["per_category_f1"].items(), key=lambda item: item[1])[:10]
    features = "word 1-%d-gram TF-IDF%s" % (config["ngram_max"], " (sublinear tf)" if config["sublinear"] else "")
    if config.get("truncate"):
        features += f" over words cut to their first {config['truncate']} characters (a crude stemmer)"
    if config.get("min_contracts", 1) > 1:
        features += f", terms seen in at least {config['min_contracts']} training contracts"
    if config["context"]:
        features += ", the neighbouring passages' TF-IDF"
    if config["position"]:
        features += ", the passage's position in the document"
    lines = [
        "# CUAD clause finder",
        "",
        f"`{model_file}` scores every passage of a contract for the 41 CUAD clause categories with one "
        "logistic regression per category, without any language model "
        "(`rlmpipe.apps.contracts.finder.ClauseFinder`). Passages: paragraphs (text between blank lines), "
        f"longer ones cut at about {config['max_chars']:,} characters. Features: {features}. "
        "The file is plain numpy arrays in a zip (`np.load(path, allow_pickle=False)`): loading it runs no code.",
        "",
        "## Training",
        "",
        f"    {info['trained_with']}",
        "",
        f"Data: {data['contracts']} contracts ({data['first']} .. {data['last']}) of {data['attribution']}. "
        f"sha256 over the files used (contracts in id order, then their lines of annotations.jsonl and "
        f"contract_labels.jsonl; `finder_train.data_sha256`): `{data['sha256']}`.",
        "",
        f"Configuration: `{json.dumps(config, sort_keys=True)}`. Versions: "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ". Training is deterministic: "
        "the same data gives the same bytes.",
        "",
        "## Cross-validated quality",
        "",
        f"{cv['folds']}-fold cross-validation grouped by contract ({cv['split']}); {cv['thresholds']}. "
        "Contract level: a category is present when the experts highlighted a passage for it, predicted "
        "present when some passage's score clears the category's threshold.",
        "",
        "| | precision | recall | F1 |",
        "|---|---|---|---|",
        f"| macro (41 categories) | {cv['macro']['precision']:.3f} | {cv['macro']['recall']:.3f} | "
        f"{cv['macro']['f1']:.3f} |",
        f"| micro (contract x category) | {cv['micro']['precision']:.3f} | {cv['micro']['recall']:.3f} | "
        f"{cv['micro']['f1']:.3f} |",
        "",
        f"Passage recall at the F1 thresholds (annotated pieces overlapped by a passage of their category "
        f"that clears it): {cv['passage_recall']:.3f}. Weakest categories (F1): "
        + ", ".join(f"{name} {f1:.2f}" for name, f1 in worst) + ".",
        "",
        "Thresholds shipped: `f1` (per category, best contract-level F1 on the out-of-fold scores: is the "
        "category present?); `passage` (per category, best passage-level F1: what a category's second and "
        "third findings must clear without a language model, `finder_train.passage_thresholds`); "
        "`recall0.85` .. `recall0.99`: the cheapest per-category thresholds (fewest characters selected) "
        "that together keep that share of all annotated passages on the out-of-fold scores "
        "(`finder_train.recall_thresholds`); and `select0.85` .. `select0.99`: one threshold on a "
        "passage's best score over the categories keeping that share of the annotated passages "
        "(`finder_train.selection_threshold`). The cascade shows a language model the passages that "
        "clear `selectX` and asks it about the categories clearing `selectX` or `recall0.99` there. "
        "Categories with few examples (Price Restrictions, Most Favored Nation, ...) are found poorly: "
        "the finder alone misses them, and a recall level may give one up when it would cost far more "
        "text than it keeps.",
        "",
        "## License and attribution",
        "",
        "Trained on CUAD v1 by The Atticus Project (Hendrycks, Burns, Chen and Ball, \"CUAD: An "
        "Expert-Annotated NLP Dataset for Legal Contract Review\", NeurIPS 2021 Datasets and Benchmarks), "
        "licensed CC BY 4.0; the contracts are public EDGAR filings.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlmpipe.apps.contracts.finder_train",
                                     description="Train the CUAD clause finder (deterministic).")
    parser.add_argument("data_dir", help="CUAD folder (contracts/, annotations.jsonl, contract_labels.jsonl)")
    parser.add_argument("--out", required=True, help="model file to write (.npz)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds for the thresholds")
    parser.add_argument("--card", help="also write the model card (README.md) here")
    args = parser.parse_args(argv)
    from rlmpipe.offline import configure_offline_defaults

    configure_offline_defaults()
    info = train(args.data_dir, args.out, folds=args.folds, log=lambda m: print(m, file=sys.stderr))
    if args.card:
        Path(args.card).write_text(model_card(info, Path(args.out).name), encoding="utf-8")
    cv = info["cv"]
    print(f"CV contract-level macro F1 {cv['macro']['f1']:.3f}, micro F1 {cv['micro']['f1']:.3f}, "
          f"passage recall {cv['passage_recall']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
