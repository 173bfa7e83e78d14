"""Training the clause finder on CUAD, deterministically, everything it decides chosen by cross-validation.

``rlmpipe contracts train-finder DATA_DIR --out FILE`` calls :func:`train`. One logistic regression
per category scores passages (:mod:`.data` cuts and labels them); a second, per category, scores
the sentences inside that category's passages, to narrow a finding to its clause. The thresholds
(:mod:`.thresholds`) and the narrowing rule (:mod:`.narrowing`) shipped with the model come from
out-of-fold scores (folds by contract), because there is no held-out set: the same code the
benchmark (bench/finder_cv.py) uses to judge variants. The model card is a template
(``card.md.j2``) filled from the model's own ``info``.

Same data, same bytes: contracts in sorted order, folds by that order, single-threaded solvers,
fixed seeds, and a model file with fixed zip timestamps. Needs scikit-learn (inference does not).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.finder import FORMAT, ClauseFinder, Features
from rlmpipe.apps.contracts.model_file import text_array
from rlmpipe.apps.contracts.narrow import spans
from rlmpipe.apps.contracts.training import narrowing
from rlmpipe.apps.contracts.training.data import ATTRIBUTION, Contract, data_sha256, fold_of, load_corpus
from rlmpipe.apps.contracts.training.metrics import evaluate
from rlmpipe.apps.contracts.training.thresholds import all_thresholds, cv_thresholds
from rlmpipe.ingest import Block

#: The configuration chosen by ``bench/finder_cv.py`` (see bench/RESULTS.md, "finder" section).
DEFAULT_CONFIG: dict = {
    "max_chars": 1000,  # passages: sections and paragraphs, cut at sentence ends beyond this
    "ngram_max": 2,
    "min_df": 2,
    "min_contracts": 2,  # a term of one contract's boilerplate says nothing about others
    "max_features": 200_000,
    "truncate": 6,  # words cut to 6 characters: a crude stemmer
    "sublinear": True,
    "C": 16.0,
    "context": False,  # the neighbours' words (tried; see bench/RESULTS.md)
    "context_scale": 0.5,
    "sentence_C": 4.0,  # the sentence scorer
    "weights": "float16",  # as stored: halves the file; cross-validation scores the stored weights
}

# -- fitting -------------------------------------------------------------------------------------


def fit_features(corpus: list[Contract], config: dict) -> Features:
    return Features.fit(([p.text for p in c.passages] for c in corpus), min_df=config["min_df"],
                        min_documents=config.get("min_contracts", 1), max_features=config["max_features"],
                        ngram_max=config["ngram_max"], sublinear=config["sublinear"],
                        truncate=config.get("truncate", 0))


def design(corpus: list[Contract], features: Features, config: dict):
    """The design matrix of every passage (its TF-IDF; with ``context``, then the sum of its
    neighbours' in the same contract, scaled) and the label matrix."""
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
        blocks.append(sp.hstack(parts, format="csr"))
        labels.append(contract.labels)
    return sp.vstack(blocks, format="csr"), np.vstack(labels)


@dataclass
class Sentences:
    """Every sentence of every passage of a corpus: its text, where it is, and its labels."""

    texts: list[str]
    where: np.ndarray  # (sentences, 4): contract, passage, start, end (document offsets)
    labels: np.ndarray  # (sentences, categories): the sentence overlaps an annotation of the category
    passage_labels: np.ndarray  # (sentences, categories): its passage's labels


def sentence_table(corpus: list[Contract]) -> Sentences:
    texts, where, labels, passage_labels = [], [], [], []
    for ci, contract in enumerate(corpus):
        for pi, passage in enumerate(contract.passages):
            for start, end in spans(passage.text):
                a, b = passage.char_start + start, passage.char_start + end
                row = np.zeros(len(NAMES), dtype=bool)
                for k, s, e, first, last in contract.annotations:
                    if first <= pi < last and s < b and a < e:
                        row[k] = True
                texts.append(passage.text[start:end])
                where.append((ci, pi, a, b))
                labels.append(row)
                passage_labels.append(contract.labels[pi])
    shape = (0, len(NAMES))
    return Sentences(texts, np.array(where, dtype=np.int64).reshape(-1, 4),
                     np.array(labels, dtype=bool).reshape(shape if not labels else (len(labels), -1)),
                     np.array(passage_labels, dtype=bool).reshape(shape if not labels else (len(labels), -1)))


def _logistic(x, y, C: float):
    """One category's logistic regression (liblinear's dual solver: fast with more features than
    rows; single-threaded and seeded, so deterministic): ``(coef, intercept)``."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, solver="liblinear", dual=True, max_iter=1000, random_state=0)
    model.fit(x, y)
    return model.coef_[0], float(model.intercept_[0])


def fit(corpus: list[Contract], config: dict) -> dict[str, np.ndarray | list[str]]:
    """Fit the features, one passage classifier per category and one sentence classifier per
    category (trained on the sentences of that category's passages only: it decides which of a
    finding's sentences make the clause). Returns the model's arrays (vocabulary as a list)."""
    import scipy.sparse as sp

    features = fit_features(corpus, config)
    x, y = design(corpus, features, config)
    v, k_count = len(features), len(NAMES)
    coef = np.zeros((x.shape[1], k_count))
    intercept = np.full(k_count, -20.0)  # a category never seen in training: never found
    for k in range(k_count):
        if y[:, k].all() or not y[:, k].any():
            continue
        coef[:, k], intercept[k] = _logistic(x, y[:, k], config["C"])
    table = sentence_table(corpus)
    indptr, indices, values = features.rows(table.texts)
    xs = sp.csr_matrix((values, indices, indptr), shape=(len(table.texts), v))
    w_sentence = np.zeros((v, k_count))
    sentence_intercept = np.full(k_count, -20.0)
    for k in range(k_count):
        rows = table.passage_labels[:, k]
        target = table.labels[rows, k]
        if target.all() or not target.any():
            continue
        w_sentence[:, k], sentence_intercept[k] = _logistic(xs[rows], target, config["sentence_C"])
    dtype = np.dtype(config.get("weights", "float32"))
    arrays: dict = {"vocabulary": features.vocabulary, "idf": features.idf.astype(np.float32),
                    "w_text": coef[:v].astype(dtype), "intercept": intercept.astype(np.float32),
                    "w_sentence": w_sentence.astype(dtype), "sentence_intercept": sentence_intercept.astype(np.float32)}
    if config["context"]:
        arrays["w_context"] = (coef[v:] / config["context_scale"]).astype(dtype) if config["context_scale"] else \
            coef[v:].astype(dtype)
    return arrays


def to_finder(arrays: dict, config: dict, thresholds: dict[str, np.ndarray] | None = None,
              narrow: dict[str, np.ndarray] | None = None, info: dict | None = None) -> ClauseFinder:
    """The finder these arrays make, exactly as it will be saved and loaded."""
    info = {"format": FORMAT, "categories": list(NAMES), **(info or {}), "config": config}
    stored = {key: value for key, value in arrays.items() if key != "vocabulary"}
    stored["vocabulary"] = text_array("\n".join(arrays["vocabulary"]))
    for kind, value in (thresholds or {}).items():
        stored[f"threshold_{kind}"] = np.asarray(value, dtype=np.float64)
    stored.setdefault("threshold_f1", np.ones(len(NAMES)))
    for key, value in (narrow or {}).items():
        stored[key] = value
    return ClauseFinder(info, stored, vocabulary=list(arrays["vocabulary"]))


# -- out-of-fold scores ----------------------------------------------------------------------------


@dataclass
class Scored:
    """A finder's scores of a corpus: per contract, passages x categories; and per passage, its
    sentences' offsets (document) and logits (sentences x categories)."""

    passages: list[np.ndarray]
    sentence_spans: list[list[list[tuple[int, int]]]]
    sentence_logits: list[list[np.ndarray]]


def score_corpus(finder: ClauseFinder, corpus: list[Contract]) -> Scored:
    """Scores of every contract's passages and sentences, by the finder's own streaming code: what
    cross-validation judges is exactly what ships."""
    scored = Scored([], [], [])
    for contract in corpus:
        rows, spans_of, logits_of = [], [], []
        for index, (passage, scores) in enumerate(finder.score([Block(contract.text, 0)])):
            expected = contract.passages[index]
            if (passage.char_start, passage.char_end) != (expected.char_start, expected.char_end):
                raise RuntimeError(f"{contract.contract_id}: passage {index} differs from training's")
            rows.append(scores)
            found = spans(passage.text)
            spans_of.append([(passage.char_start + s, passage.char_start + e) for s, e in found])
            logits_of.append(np.column_stack([finder.sentence_logits([passage.text[s:e] for s, e in found], k)
                                              for k in range(len(NAMES))]))
        scored.passages.append(np.array(rows).reshape(-1, len(NAMES)))
        scored.sentence_spans.append(spans_of)
        scored.sentence_logits.append(logits_of)
    return scored


def out_of_fold(corpus: list[Contract], config: dict, folds: int, log=None) -> Scored:
    """Each contract's scores from the model trained on the other folds."""
    fold = fold_of(corpus, folds)
    parts: list[tuple[int, Scored]] = []
    for k in range(folds):
        started = time.perf_counter()
        train_set = [c for c, f in zip(corpus, fold) if f != k]
        test = [i for i, f in enumerate(fold) if f == k]
        finder = to_finder(fit(train_set, config), config)
        parts += list(zip(test, _split(score_corpus(finder, [corpus[i] for i in test]))))
        if log:
            log(f"fold {k + 1}/{folds}: {len(train_set)} contracts trained, {time.perf_counter() - started:.0f} s")
    ordered = [scored for _, scored in sorted(parts, key=lambda item: item[0])]
    return Scored([s.passages[0] for s in ordered], [s.sentence_spans[0] for s in ordered],
                  [s.sentence_logits[0] for s in ordered])


def _split(scored: Scored) -> list[Scored]:
    return [Scored([p], [s], [lg]) for p, s, lg in zip(scored.passages, scored.sentence_spans, scored.sentence_logits)]


# -- the training command ------------------------------------------------------------------------


def _single_thread() -> None:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def train(data_dir: str | Path, out: str | Path, *, ids: list[str] | None = None, exclude: dict[str, str] | None = None,
          folds: int = 5, config: dict | None = None, log=None) -> dict:
    """Train on the CUAD folder ``data_dir`` and write the model to ``out``; return its ``info``.

    ``exclude``: contracts left out (file name -> CUAD id; the card names them). Thresholds and the
    narrowing rule come from ``folds``-fold out-of-fold scores (folds by contract); the model
    itself is then fit on all the contracts. ``ids`` restricts training to those contracts.
    """
    _single_thread()
    import sklearn

    started = time.perf_counter()
    config = {**DEFAULT_CONFIG, **(config or {})}
    exclude = dict(exclude or {})
    corpus = load_corpus(data_dir, ids, max_chars=config["max_chars"], exclude=list(exclude.values()))
    if len(corpus) < folds:
        raise ValueError(f"need at least {folds} contracts for {folds}-fold cross-validation")
    names = [c.contract_id for c in corpus]
    scored = out_of_fold(corpus, config, folds, log=log)
    thresholds = all_thresholds(corpus, scored.passages)
    honest = cv_thresholds(corpus, scored.passages, folds)
    chosen = narrowing.choose(corpus, scored, thresholds)
    quality = evaluate(corpus, scored.passages, honest)
    shown = narrowing.cv_findings(corpus, scored, honest, folds)
    arrays = fit(corpus, config)
    info = {
        "trained_with": "rlmpipe contracts train-finder DATA_DIR --out FILE" + (f" --folds {folds}" if folds != 5 else "")
        + "".join(f" --leave-out {name}" for name in sorted(exclude)) + (" (contract subset)" if ids is not None else ""),
        "data": {"contracts": len(names), "first": names[0], "last": names[-1],
                 "sha256": data_sha256(data_dir, names), "attribution": ATTRIBUTION,
                 "left_out": exclude},
        "cv": {"folds": folds, "split": "contracts sorted by id, fold = rank mod folds",
               "thresholds": "for each fold, chosen on the out-of-fold scores of the other folds",
               **{key: quality[key] for key in ("macro", "micro", "passage_recall", "passage_recall_macro")},
               "findings": shown,
               "per_category_f1": {name: round(v["f1"], 4) for name, v in quality["per_category"].items()}},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__},
    }
    finder = to_finder(arrays, config, thresholds, chosen, info)
    finder.save(out)
    if log:
        log(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.0f} s")
    return finder.info


def model_card(info: dict, model_file: str = "clause_finder.npz") -> str:
    """The model card (README.md beside the shipped model), from the model's own ``info``."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("rlmpipe.apps.contracts.training", "."),
                                     autoescape=False, keep_trailing_newline=True, trim_blocks=True,
                                     lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    cv = info["cv"]
    worst = sorted(cv["per_category_f1"].items(), key=lambda item: item[1])[:10]
    return environment.get_template("card.md.j2").render(
        info=info, cv=cv, data=info["data"], config=info["config"], worst=worst, model_file=model_file,
        config_json=json.dumps(info["config"], sort_keys=True))
