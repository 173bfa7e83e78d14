"""The clause finder: a linear model trained on CUAD that scores every passage of a contract for the
41 CUAD categories in milliseconds, with no language model, and narrows each finding to its clause.

Why: the embedded LM cannot find clauses at all, and a hosted one costs money per token. The finder
answers "which categories does this contract contain, and where" on its own, and its
recall-oriented thresholds pick the few passages worth sending to a real LM.

A passage (:mod:`.passages`: a section, paragraph or lettered item) is scored from its words: uni-
and bigram TF-IDF (``Features``; words cut to their first characters, a crude stemmer) and, when
the model has them, its neighbours' (bench/RESULTS.md "finder" says what the shipped model uses).
Scores are logistic: ``sigmoid(x @ W + b)`` per category. A finding is then narrowed to the
sentences of its passage that make the clause (:mod:`.narrow`), scored by the same kind of model.
Inference needs only numpy; the model file is plain arrays, read as untrusted input
(:mod:`.model_file`), never a pickle.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rlmpipe.apps.contracts import model_file
from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.model_file import ArraySpec, ModelFileError, check_range, text_array
from rlmpipe.apps.contracts.narrow import cut_to_words, grow, spans
from rlmpipe.apps.contracts.passages import MAX_CHARS, Passage, passages

__all__ = ["ClauseFinder", "Features", "Finding", "Passage", "MODEL_PATH", "RECALL_LEVELS", "ModelFileError"]

FORMAT = "rlmpipe-clause-finder/2"
MODEL_PATH = Path(__file__).resolve().parent / "finder_model" / "clause_finder.npz"
#: Passage-recall levels with a stored threshold each (``thresholds("recall0.95")``).
RECALL_LEVELS = (0.85, 0.90, 0.93, 0.95, 0.97, 0.99)
#: Passages scored together: enough to amortize numpy's per-call cost, small enough to stay lazy.
BATCH = 64
#: Bounds on the model's configuration (a model file is untrusted input: an n-gram range of a
#: million would take minutes a passage).
CONFIG_RANGES = {"max_chars": (50, 100_000, int), "ngram_max": (1, 3, int), "truncate": (0, 64, int),
                 "sublinear": (0, 1, bool), "context_scale": (0.0, 100.0, float)}

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern
_K = len(NAMES)
_WEIGHTS = ("float16", "float32")
#: what each array of a model file must be (its dimensions: "terms" is the vocabulary's size)
SPECS = {
    "info": ArraySpec(("u1",), ("info_bytes",)),
    "vocabulary": ArraySpec(("u1",), ("vocabulary_bytes",)),
    "idf": ArraySpec(("f4",), ("terms",)),
    "w_text": ArraySpec(("f2", "f4"), ("terms", _K)),
    "intercept": ArraySpec(("f4",), (_K,)),
    "w_context": ArraySpec(("f2", "f4"), ("terms", _K), required=False),
    "w_sentence": ArraySpec(("f2", "f4"), ("terms", _K), required=False),
    "sentence_intercept": ArraySpec(("f4",), (_K,), required=False),
    "narrow_margin": ArraySpec(("f4",), (_K,), required=False),
    "narrow_words": ArraySpec(("u1",), (_K,), required=False),
    **{f"threshold_{kind}": ArraySpec(("f8",), (_K,), required=kind == "f1")
       for kind in ("f1", "passage", *(f"{p}{level:.2f}" for p in ("recall", "select") for level in RECALL_LEVELS))},
}


@dataclass(frozen=True, slots=True)
class Finding:
    """A clause the finder found: ``text`` is the contract's own text at ``[char_start, char_end)``,
    the sentences that make it, inside ``passage`` (its section or paragraph, kept as context)."""

    category: str
    char_start: int
    char_end: int
    text: str
    score: float
    passage: Passage


def terms(text: str, ngram_max: int = 2, truncate: int = 0) -> list[str]:
    """Lower-cased word n-grams (1..ngram_max) of ``text``, words as scikit-learn tokenizes them;
    ``truncate`` > 0 keeps only each word's first characters (a crude stemmer: disparage,
    disparages and disparaging become one term)."""
    words = _TOKEN.findall(text.lower())
    if truncate:
        words = [w[:truncate] for w in words]
    out = list(words)
    for n in range(2, ngram_max + 1):
        out += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return out


class Features:
    """TF-IDF rows (l2-normalized) over a fixed vocabulary, computed with numpy alone.

    Same definition as scikit-learn's ``TfidfVectorizer(sublinear_tf=..., norm="l2")`` with the
    stored vocabulary and idf; training builds it with :meth:`fit` so training and inference
    cannot drift apart.
    """

    def __init__(self, vocabulary: list[str], idf: np.ndarray, *, ngram_max: int = 2, sublinear: bool = True,
                 truncate: int = 0):
        self.vocabulary = vocabulary
        self.index = {term: i for i, term in enumerate(vocabulary)}
        self.idf = np.asarray(idf, dtype=np.float64)
        self.ngram_max = ngram_max
        self.sublinear = sublinear
        self.truncate = truncate

    def __len__(self) -> int:
        return len(self.vocabulary)

    @classmethod
    def fit(cls, documents: Iterable[Iterable[str]], *, min_df: int = 2, min_documents: int = 1,
            max_features: int | None = None, ngram_max: int = 2, sublinear: bool = True,
            truncate: int = 0) -> "Features":
        """Fit on ``documents``, each the passage texts of one contract. Vocabulary: terms in at
        least ``min_df`` passages and ``min_documents`` contracts (a term of one contract's
        boilerplate says nothing about others), the ``max_features`` most frequent (ties by term,
        so the result is deterministic). Idf over passages, smoothed as in scikit-learn."""
        df: dict[str, int] = {}
        contracts: dict[str, int] = {}
        n = 0
        for texts in documents:
            seen: set[str] = set()
            for text in texts:
                n += 1
                found = set(terms(text, ngram_max, truncate))
                seen |= found
                for term in found:
                    df[term] = df.get(term, 0) + 1
            for term in seen:
                contracts[term] = contracts.get(term, 0) + 1
        kept = [(count, term) for term, count in df.items() if count >= min_df and contracts[term] >= min_documents]
        kept.sort(key=lambda item: (-item[0], item[1]))
        if max_features is not None:
            kept = kept[:max_features]
        vocabulary = sorted(term for _, term in kept)
        counts = np.array([df[term] for term in vocabulary], dtype=np.float64)
        idf = np.log((1 + n) / (1 + counts)) + 1
        return cls(vocabulary, idf, ngram_max=ngram_max, sublinear=sublinear, truncate=truncate)

    def rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR arrays (indptr, indices, values) of the texts' l2-normalized TF-IDF rows, column
        indices sorted within each row."""
        get = self.index.get
        ids: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            found = [i for i in map(get, terms(text, self.ngram_max, self.truncate)) if i is not None]
            ids += found
            lengths[row] = len(found)
        width = len(self.vocabulary)
        keys = np.repeat(np.arange(len(texts), dtype=np.int64), lengths) * width + np.asarray(ids, dtype=np.int64)
        keys, counts = np.unique(keys, return_counts=True)
        row_of = keys // width
        indices = (keys % width).astype(np.int32)
        tf = counts.astype(np.float64)
        if self.sublinear:
            tf = 1.0 + np.log(tf)
        values = tf * self.idf[indices]
        norms = np.sqrt(np.bincount(row_of, weights=values * values, minlength=len(texts)))
        values /= norms[row_of]
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(row_of, minlength=len(texts)), out=indptr[1:])
        return indptr, indices, values


def _project(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The sparse rows times a dense (features x categories) matrix, in numpy."""
    n = len(indptr) - 1
    out = np.zeros((n, weights.shape[1]), dtype=np.float64)
    if len(indices) == 0:
        return out
    products = weights[indices].astype(np.float64) * values[:, None]
    nonempty = np.flatnonzero(indptr[1:] > indptr[:-1])
    out[nonempty] = np.add.reduceat(products, indptr[:-1][nonempty], axis=0)
    return out


class ClauseFinder:
    """Scores passages for the CUAD categories and narrows findings; see the module docstring.

    Made from its ``info`` (how it was made: configuration, training command, data sha256, CUAD
    attribution, CV metrics, the contracts left out, versions) and its ``arrays`` (as the model file
    stores them: ``SPECS``). ``categories`` is exactly :data:`rlmpipe.apps.contracts.categories.NAMES`.
    """

    def __init__(self, info: dict, arrays: dict[str, np.ndarray], *, vocabulary: list[str] | None = None):
        self.info = info
        self.arrays = arrays
        config = info["config"]
        if vocabulary is None:
            vocabulary = arrays["vocabulary"].tobytes().decode("utf-8").split("\n") if len(arrays["vocabulary"]) else []
        self.features = Features(vocabulary, arrays["idf"], ngram_max=config["ngram_max"],
                                 sublinear=config["sublinear"], truncate=config.get("truncate", 0))
        # float32, whatever the file stores: cross-validation scores exactly what ships
        self.w_text = arrays["w_text"].astype(np.float32)
        self.w_context = _float32(arrays.get("w_context"))
        self.context_scale = float(config.get("context_scale", 1.0))
        self.w_sentence = _float32(arrays.get("w_sentence"))
        self.intercept = arrays["intercept"].astype(np.float64)
        self.sentence_intercept = arrays["sentence_intercept"].astype(np.float64) \
            if "sentence_intercept" in arrays else self.intercept
        self.margin = arrays["narrow_margin"].astype(np.float64) if "narrow_margin" in arrays else np.zeros(_K)
        self.words = arrays["narrow_words"].astype(bool) if "narrow_words" in arrays else np.zeros(_K, dtype=bool)
        self._thresholds = {key[len("threshold_"):]: value.astype(np.float64)
                            for key, value in arrays.items() if key.startswith("threshold_")}
        self.categories: tuple[str, ...] = tuple(info["categories"])
        self.max_chars = int(config.get("max_chars", MAX_CHARS))
        if self.categories != NAMES:
            raise ValueError("the model's categories are not rlmpipe's 41 CUAD categories (in order)")

    # -- loading and saving ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ClauseFinder":
        """The model in ``path``, or the one shipped in the package when None. The file is checked
        as untrusted input (:mod:`.model_file`) before it is used: any problem is a
        :class:`ModelFileError` naming the file."""
        path = Path(path) if path is not None else MODEL_PATH
        found: dict = {}

        def dimensions(first: dict[str, np.ndarray]) -> dict[str, int]:
            found["info"] = cls._check_info(path, model_file.decode_json(path, first["info"]))
            found["vocabulary"] = model_file.decode_terms(path, first["vocabulary"])
            return {"terms": len(found["vocabulary"])}

        arrays = model_file.read_arrays(path, SPECS, {"info": model_file.MAX_INFO_BYTES,
                                                      "vocabulary": model_file.MAX_VOCABULARY_BYTES}, dimensions)
        info, vocabulary = found["info"], found["vocabulary"]
        if np.any(arrays["idf"] <= 0):
            raise ModelFileError(f"{path}: idf holds values <= 0")
        for key, value in arrays.items():
            if key.startswith("threshold_") and not np.all((value >= model_file.THRESHOLD_RANGE[0])
                                                          & (value <= model_file.THRESHOLD_RANGE[1])):
                raise ModelFileError(f"{path}: {key} holds values outside [0, 1]")
        if "narrow_margin" in arrays and np.any(arrays["narrow_margin"] < 0):
            raise ModelFileError(f"{path}: narrow_margin holds negative values")
        if "w_context" in arrays and "context_scale" not in info["config"]:
            raise ModelFileError(f"{path}: w_context without config context_scale")
        return cls(info, arrays, vocabulary=vocabulary)

    @staticmethod
    def _check_info(path: Path, info: dict) -> dict:
        """The model's info, refused unless it is this format, these categories and a configuration
        within ``CONFIG_RANGES``."""
        if info.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a clause finder model of format {FORMAT} "
                                 f"({str(info.get('format'))[:40]!r})")
        if info.get("categories") != list(NAMES):
            raise ModelFileError(f"{path}: its categories are not rlmpipe's 41 CUAD categories (in order)")
        config = info.get("config")
        if not isinstance(config, dict):
            raise ModelFileError(f"{path}: info has no config")
        for name, (low, high, kind) in CONFIG_RANGES.items():
            if name in config or name in ("ngram_max", "sublinear"):
                check_range(path, name, config.get(name), low, high, kind)
        return info

    def save(self, path: str | Path) -> Path:
        """Write the model: the same bytes for the same model (:func:`model_file.write_model`)."""
        arrays = {"info": text_array(json.dumps(self.info, sort_keys=True, indent=1)),
                  **{key: value for key, value in self.arrays.items() if key != "info"}}
        ordered = {key: arrays[key] for key in SPECS if key in arrays}
        return model_file.write_model(path, ordered)

    # -- scoring -----------------------------------------------------------------------------------

    def score(self, blocks: Iterable) -> Iterator[tuple[Passage, np.ndarray]]:
        """Every passage of the document given as ``blocks``, with a score in [0, 1] per category
        (in :attr:`categories` order). Lazy: reads the blocks only as far as the next passages need,
        holding at most ``BATCH`` passages plus one."""
        carry: tuple[Passage, np.ndarray, np.ndarray] | None = None  # (passage, own logits, its context term)
        prev_context: np.ndarray | None = None  # the context term of the passage before ``carry``
        batch: list[Passage] = []
        stream = passages(blocks, max_chars=self.max_chars)
        while True:
            batch.clear()
            for passage in stream:
                batch.append(passage)
                if len(batch) == BATCH:
                    break
            if not batch:
                break
            own, context = self._logits(batch)
            items = ([carry] if carry is not None else []) + [(p, own[i], context[i]) for i, p in enumerate(batch)]
            for item, following in zip(items, items[1:]):
                logits = item[1] + following[2] + (prev_context if prev_context is not None else 0.0)
                yield item[0], _sigmoid(logits)
                prev_context = item[2]
            carry = items[-1]
        if carry is not None:
            logits = carry[1] + (prev_context if prev_context is not None else 0.0)
            yield carry[0], _sigmoid(logits)

    def _logits(self, batch: list[Passage]) -> tuple[np.ndarray, np.ndarray]:
        """Each passage's own logits (its words and the intercept) and what it adds to each
        neighbour's logits."""
        rows = self.features.rows([p.text for p in batch])
        own = _project(*rows, self.w_text) + self.intercept
        if self.w_context is not None:
            context = _project(*rows, self.w_context) * self.context_scale
        else:
            context = np.zeros_like(own)
        return own, context

    def sentence_logits(self, texts: list[str], k: int) -> np.ndarray:
        """Each text's logit for category index ``k`` by the sentence scorer (the dedicated sentence
        weights when the model has them, else the passage weights)."""
        weights = self.w_sentence if self.w_sentence is not None else self.w_text
        intercept = self.sentence_intercept if self.w_sentence is not None else self.intercept
        return _project(*self.features.rows(texts), weights[:, k : k + 1])[:, 0] + intercept[k]

    def narrow(self, passage: Passage, k: int) -> list[tuple[int, int]]:
        """The document offsets of the clause of category index ``k`` in ``passage``: its best
        sentences (:func:`narrow.grow` with the category's margin), then, for a category cut to
        words, those words when the sentences have them (a date, the document's name; for Parties
        each party's name, one span each)."""
        found = spans(passage.text)
        logits = self.sentence_logits([passage.text[s:e] for s, e in found], k)
        first, last = grow(logits, self.margin[k])
        start, end = found[first][0], found[last][1]
        cut = cut_to_words(self.categories[k], passage.text, start, end) if self.words[k] else [(start, end)]
        return [(passage.char_start + s, passage.char_start + e) for s, e in cut]

    def thresholds(self, kind: str = "f1") -> np.ndarray:
        """Per-category decision thresholds: ``"f1"`` (chosen by cross-validation for contract-level
        F1), ``"passage"`` (what a category's further findings must clear) or ``"recall0.90"``
        ... ``"recall0.99"`` (the cheapest thresholds that kept that share of annotated passages in
        cross-validation)."""
        if kind not in self._thresholds:
            raise KeyError(f"no {kind!r} thresholds; have {sorted(self._thresholds)}")
        return self._thresholds[kind].copy()

    def cascade_thresholds(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """What the cascade shows an LM at ``level`` (``"recall0.95"``): ``(select, ask)``. A passage
        is shown when its best score clears ``select`` (one threshold for all categories,
        ``select0.95``); it is asked about every category clearing ``select`` or the generous
        per-category ``recall0.99``, so a piece shown is rarely asked about the wrong category.
        A model without selection thresholds falls back to the per-category ``level`` for both."""
        select = "select" + level[len("recall"):]
        if select not in self._thresholds:
            return self.thresholds(level), self.thresholds(level)
        ask = self.thresholds("recall0.99") if "recall0.99" in self._thresholds else self.thresholds(level)
        return self.thresholds(select), ask

    def recall_levels(self) -> list[str]:
        """The recall-oriented threshold kinds this model has (``"recall0.97"``, ...)."""
        return sorted(kind for kind in self._thresholds if kind.startswith("recall"))

    def find(self, blocks: Iterable, thresholds: np.ndarray | str | None = None, *,
             per_category: int | None = None, narrow: bool = True) -> list[Finding]:
        """Findings for every passage and category whose score is at or above the category's
        threshold (default: the F1 thresholds), in document order, each narrowed to its clause
        (``narrow=False``: the whole passage). ``per_category``: keep only that many of each
        category's best-scoring findings (categories found in nearly every contract, such as
        Parties, have low thresholds that many passages clear); then every one after a category's
        best must also clear the model's ``passage`` threshold (the best passage says the category
        is present; the others must each be likely right on their own)."""
        if thresholds is None or isinstance(thresholds, str):
            thresholds = self.thresholds(thresholds or "f1")
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.shape != (len(self.categories),):
            raise ValueError(f"need one threshold per category ({len(self.categories)})")
        found: list[tuple[int, Passage, float]] = []
        kept: list[list] = [[] for _ in self.categories]  # per category, a min-heap of (score, -order, passage)
        order = 0
        for passage, scores in self.score(blocks):
            for k in np.flatnonzero(scores >= thresholds):
                item = (float(scores[k]), -order, passage)
                order += 1
                if per_category is None:
                    found.append((k, passage, item[0]))
                elif len(kept[k]) < per_category:
                    heapq.heappush(kept[k], item)
                elif item[:2] > kept[k][0][:2]:  # equal scores: the earlier passage stays
                    heapq.heapreplace(kept[k], item)
        if per_category is not None:
            others = self._thresholds.get("passage")
            for k, heap in enumerate(kept):
                best_first = sorted(heap, reverse=True)
                found += [(k, p, s) for s, _, p in best_first[:1]]
                found += [(k, p, s) for s, _, p in best_first[1:] if others is None or s >= others[k]]
        findings = []
        for k, passage, score in found:
            for start, end in self.narrow(passage, k) if narrow else [(passage.char_start, passage.char_end)]:
                text = passage.text[start - passage.char_start:end - passage.char_start]
                findings.append(Finding(self.categories[k], start, end, text, score, passage))
        findings.sort(key=lambda f: (f.passage.char_start, f.char_start, NAMES.index(f.category)))
        return findings


def _float32(array):
    return None if array is None else np.asarray(array, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow warnings
