"""The clause finder: a linear model trained on CUAD that scores every passage of a contract for the
41 CUAD categories in milliseconds, with no language model.

Why: the embedded LM cannot find clauses at all, and a hosted one costs money per token. The finder
answers "which categories does this contract contain, and where" on its own, and its
recall-oriented thresholds pick the few passages worth sending to a real LM.

A passage's features are word uni- and bigram TF-IDF (``Features``; words may be cut to their first
characters, a crude stemmer), optionally the same for its two neighbours and its position in the
document (both tried by cross-validation; see bench/RESULTS.md for what the shipped model uses).
Scores are logistic: ``sigmoid(x @ W + b)`` per category. Inference needs only numpy; the model
file is plain arrays (``np.load`` with ``allow_pickle=False``), never a pickle, so loading it cannot run code.
"""

from __future__ import annotations

import heapq
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.passages import MAX_CHARS, Passage, passages

__all__ = ["ClauseFinder", "Features", "Finding", "Passage", "MODEL_PATH", "RECALL_LEVELS"]

FORMAT = "rlmpipe-clause-finder/1"
MODEL_PATH = Path(__file__).resolve().parent / "finder_model" / "clause_finder.npz"
#: Passage-recall levels with a stored threshold each (``thresholds("recall0.95")``).
RECALL_LEVELS = (0.85, 0.90, 0.93, 0.95, 0.97, 0.99)
#: Passages scored together: enough to amortize numpy's per-call cost, small enough to stay lazy.
BATCH = 64

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern


@dataclass(frozen=True, slots=True)
class Finding:
    """A passage whose score for ``category`` clears the threshold; ``passage`` is the contract's own
    text at ``[char_start, char_end)``."""

    category: str
    char_start: int
    char_end: int
    passage: str
    score: float


def terms(text: str, ngram_max: int = 2, truncate: int = 0, lead: int = 0) -> list[str]:
    """Lower-cased word n-grams (1..ngram_max) of ``text``, words as scikit-learn tokenizes them.

    ``truncate`` > 0 keeps only each word's first characters (a crude stemmer: disparage,
    disparages and disparaging become one term). ``lead`` > 0 adds the first words again, marked
    (``^word``): a clause's own title ("10.3 Non-Disparagement.") is a strong cue.
    """
    words = _TOKEN.findall(text.lower())
    if truncate:
        words = [w[:truncate] for w in words]
    out = list(words)
    for n in range(2, ngram_max + 1):
        out += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if lead:
        out += ["^" + w for w in words[:lead]]
    return out


def position_bucket(index: int) -> int:
    """Which position feature a passage's ordinal (0-based) in its document sets: one each for the
    first eight passages, then log2 buckets (8-15, 16-31, ..., 512-1023), then one for the rest."""
    if index < 8:
        return index
    return min(15, 5 + int(math.log2(index)))


N_POSITIONS = 16


class Features:
    """TF-IDF rows (l2-normalized) over a fixed vocabulary, computed with numpy alone.

    Same definition as scikit-learn's ``TfidfVectorizer(sublinear_tf=..., norm="l2")`` with the
    stored vocabulary and idf; training builds it with :meth:`fit` so training and inference
    cannot drift apart.
    """

    def __init__(self, vocabulary: list[str], idf: np.ndarray, *, ngram_max: int = 2, sublinear: bool = True,
                 truncate: int = 0, lead: int = 0):
        self.vocabulary = vocabulary
        self.index = {term: i for i, term in enumerate(vocabulary)}
        self.idf = np.asarray(idf, dtype=np.float64)
        self.ngram_max = ngram_max
        self.sublinear = sublinear
        self.truncate = truncate
        self.lead = lead

    def __len__(self) -> int:
        return len(self.vocabulary)

    @classmethod
    def fit(cls, documents: Iterable[Iterable[str]], *, min_df: int = 2, min_documents: int = 1,
            max_features: int | None = None, ngram_max: int = 2, sublinear: bool = True,
            truncate: int = 0, lead: int = 0) -> "Features":
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
                found = set(terms(text, ngram_max, truncate, lead))
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
        return cls(vocabulary, idf, ngram_max=ngram_max, sublinear=sublinear, truncate=truncate, lead=lead)

    def rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR arrays (indptr, indices, values) of the texts' l2-normalized TF-IDF rows, column
        indices sorted within each row."""
        get = self.index.get
        ids: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            found = [i for i in map(get, terms(text, self.ngram_max, self.truncate, self.lead)) if i is not None]
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
    """Scores passages for the CUAD categories; see the module docstring for what it is.

    ``info`` says how it was made: training command, data sha256, CUAD attribution, CV metrics,
    versions. ``categories`` is exactly :data:`rlmpipe.apps.contracts.categories.NAMES`.
    """

    def __init__(self, features: Features, weights: dict[str, np.ndarray], intercept: np.ndarray,
                 thresholds: dict[str, np.ndarray], info: dict):
        self.features = features
        # float32, as the file stores them: cross-validation scores exactly what ships
        self.w_self = np.asarray(weights["self"], dtype=np.float32)
        self.w_context = _float32(weights.get("context"))  # None: no neighbour features
        self.w_position = _float32(weights.get("position"))
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self._thresholds = {kind: np.asarray(value, dtype=np.float64) for kind, value in thresholds.items()}
        self.info = info
        self.categories: tuple[str, ...] = tuple(info["categories"])
        self.max_chars = int(info["config"].get("max_chars", MAX_CHARS))
        if self.categories != NAMES:
            raise ValueError("the model's categories are not rlmpipe's 41 CUAD categories (in order)")

    # -- loading and saving ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ClauseFinder":
        """The model in ``path``, or the one shipped in the package when None."""
        path = Path(path) if path is not None else MODEL_PATH
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        info = json.loads(arrays.pop("info").tobytes().decode("utf-8"))
        if info.get("format") != FORMAT:
            raise ValueError(f"{path}: not a clause finder model ({info.get('format')!r})")
        vocabulary = arrays.pop("vocabulary").tobytes().decode("utf-8").split("\n")
        config = info["config"]
        features = Features(vocabulary, arrays.pop("idf"), ngram_max=config["ngram_max"],
                            sublinear=config["sublinear"], truncate=config.get("truncate", 0),
                            lead=config.get("lead", 0))
        weights = {name: arrays.pop(f"w_{name}") for name in ("self", "context", "position") if f"w_{name}" in arrays}
        intercept = arrays.pop("intercept")
        thresholds = {key[len("threshold_"):]: value for key, value in arrays.items() if key.startswith("threshold_")}
        return cls(features, weights, intercept, thresholds, info)

    def save(self, path: str | Path) -> Path:
        """Write the model as an ``.npz`` that is the same bytes for the same model (fixed zip
        timestamps and order; ``np.savez`` stamps the current time)."""
        arrays: dict[str, np.ndarray] = {
            "info": np.frombuffer(json.dumps(self.info, sort_keys=True, indent=1).encode("utf-8"), dtype=np.uint8),
            "vocabulary": np.frombuffer("\n".join(self.features.vocabulary).encode("utf-8"), dtype=np.uint8),
            "idf": self.features.idf.astype(np.float32),
            "intercept": self.intercept.astype(np.float32),
            "w_self": self.w_self,
        }
        if self.w_context is not None:
            arrays["w_context"] = self.w_context
        if self.w_position is not None:
            arrays["w_position"] = self.w_position
        for kind, value in sorted(self._thresholds.items()):
            arrays[f"threshold_{kind}"] = value.astype(np.float64)
        return write_npz(path, arrays)

    # -- scoring -----------------------------------------------------------------------------------

    def score(self, blocks: Iterable) -> Iterator[tuple[Passage, np.ndarray]]:
        """Every passage of the document given as ``blocks``, with a score in [0, 1] per category
        (in :attr:`categories` order). Lazy: reads the blocks only as far as the next passages need,
        holding at most ``BATCH`` passages plus one."""
        carry: tuple[Passage, np.ndarray, np.ndarray] | None = None  # (passage, own logits, its context term)
        prev_context: np.ndarray | None = None  # the context term of the passage before ``carry``
        index = 0
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
            own, context = self._logits(batch, index)
            index += len(batch)
            items = ([carry] if carry is not None else []) + [(p, own[i], context[i]) for i, p in enumerate(batch)]
            for item, following in zip(items, items[1:]):
                logits = item[1] + following[2] + (prev_context if prev_context is not None else 0.0)
                yield item[0], _sigmoid(logits)
                prev_context = item[2]
            carry = items[-1]
        if carry is not None:
            logits = carry[1] + (prev_context if prev_context is not None else 0.0)
            yield carry[0], _sigmoid(logits)

    def _logits(self, batch: list[Passage], first_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Each passage's own logits (its words, position and the intercept) and what it adds to
        each neighbour's logits."""
        rows = self.features.rows([p.text for p in batch])
        own = _project(*rows, self.w_self) + self.intercept
        if self.w_position is not None:
            buckets = [position_bucket(first_index + i) for i in range(len(batch))]
            own += self.w_position[buckets].astype(np.float64)
        if self.w_context is not None:
            context = _project(*rows, self.w_context)
        else:
            context = np.zeros_like(own)
        return own, context

    def thresholds(self, kind: str = "f1") -> np.ndarray:
        """Per-category decision thresholds: ``"f1"`` (chosen by cross-validation for contract-level
        F1) or ``"recall0.90"`` / ``"recall0.95"`` / ``"recall0.97"`` / ``"recall0.99"`` (the
        lowest score that kept that share of annotated passages in cross-validation)."""
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
             per_category: int | None = None) -> list[Finding]:
        """Findings for every passage and category whose score is at or above the category's
        threshold (default: the F1 thresholds), in document order. ``per_category``: keep only that
        many of each category's best-scoring findings (categories found in nearly every contract,
        such as Parties, have low thresholds that many passages clear); then every one after a
        category's best must also clear the model's ``passage`` threshold (the best passage says
        the category is present; the others must each be likely right on their own)."""
        if thresholds is None or isinstance(thresholds, str):
            thresholds = self.thresholds(thresholds or "f1")
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.shape != (len(self.categories),):
            raise ValueError(f"need one threshold per category ({len(self.categories)})")
        found: list[Finding] = []
        kept: list[list] = [[] for _ in self.categories]  # per category, a min-heap of (score, -order, finding)
        order = 0
        for passage, scores in self.score(blocks):
            for k in np.flatnonzero(scores >= thresholds):
                finding = Finding(self.categories[k], passage.char_start, passage.char_end, passage.text,
                                  float(scores[k]))
                order += 1
                if per_category is None:
                    found.append(finding)
                elif len(kept[k]) < per_category:
                    heapq.heappush(kept[k], (finding.score, -order, finding))
                elif (finding.score, -order) > kept[k][0][:2]:  # equal scores: the earlier passage stays
                    heapq.heapreplace(kept[k], (finding.score, -order, finding))
        if per_category is None:
            return found
        others = self._thresholds.get("passage")
        ranked = []
        for k, heap in enumerate(kept):
            best_first = sorted(heap, reverse=True)
            ranked += best_first[:1] + [item for item in best_first[1:] if others is None or item[0] >= others[k]]
        return [item[2] for item in sorted(ranked, key=lambda item: -item[1])]


def _float32(array):
    return None if array is None else np.asarray(array, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow warnings


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """An ``.npz`` (zip of ``.npy``) whose bytes depend only on the arrays: fixed timestamps, the
    given order, deflate at a fixed level. ``np.load(path, allow_pickle=False)`` reads it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            data = io.BytesIO()
            np.lib.format.write_array(data, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(entry, data.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(buffer.getvalue())
    temp.replace(path)
    return path
