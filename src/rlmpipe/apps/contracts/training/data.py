"""Training data: a CUAD folder read into contracts cut into passages, each labelled with the
categories the experts' passages overlap.

DATA_DIR is laid out as CUAD (``../shared/data/cuad``): ``contracts/*.txt``, ``annotations.jsonl``
(one line per highlighted piece: contract, category, start, end as code-point offsets) and
``contract_labels.jsonl`` (one line per contract and category, with ``n_spans``). A passage is
labelled with every category whose annotated text it overlaps; a contract has a category when the
experts highlighted at least one passage for it (``n_spans > 0``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.passages import MAX_CHARS, Passage, passages
from rlmpipe.ingest import Block

ATTRIBUTION = ("CUAD v1, The Atticus Project (Hendrycks et al., 'CUAD: An Expert-Annotated NLP Dataset for "
               "Legal Contract Review', NeurIPS 2021), CC BY 4.0")
FILES = ("contracts", "annotations.jsonl", "contract_labels.jsonl")


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

    def expert_spans(self) -> dict[int, list[tuple[int, int, int]]]:
        """Per category, ``(start, end, piece)`` of every annotated piece, and of every other place
        its text occurs: CUAD gives a text that occurs several times (a party's short name) at its
        first occurrence only, so a finding elsewhere on the same words is as right."""
        out: dict[int, list[tuple[int, int, int]]] = {}
        for piece, (k, start, end, _, _) in enumerate(self.annotations):
            spans = out.setdefault(k, [])
            spans.append((start, end, piece))
            text = self.text[start:end]
            at = self.text.find(text) if len(text) >= 2 else -1
            while at != -1:
                if at != start:
                    spans.append((at, at + len(text), piece))
                at = self.text.find(text, at + 1)
        return out


def read_contract_text(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def contract_ids(data_dir: str | Path) -> list[str]:
    """The ids of every contract in the folder, sorted."""
    return sorted(p.stem for p in (Path(data_dir) / "contracts").glob("*.txt"))


def load_corpus(data_dir: str | Path, ids: list[str] | None = None, *, max_chars: int = MAX_CHARS,
                exclude: list[str] = (), cut=None) -> list[Contract]:
    """The contracts of a CUAD folder (all, or ``ids``, minus ``exclude``), sorted by id, cut into
    passages (by :func:`.passages.passages`, or ``cut(text, max_chars)``: a benchmark's other cutter)."""
    data_dir = Path(data_dir)
    index = {name: k for k, name in enumerate(NAMES)}
    available = contract_ids(data_dir)
    wanted = sorted(set(ids if ids is not None else available) - set(exclude))
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise FileNotFoundError(f"{data_dir}: no contract file for {', '.join(missing[:5])}")
    wanted_set = set(wanted)
    annotations: dict[str, list[dict]] = {cid: [] for cid in wanted}
    for item in _lines(data_dir / "annotations.jsonl", wanted_set):
        annotations[item["contract_id"]].append(item)
    present = {cid: np.zeros(len(NAMES), dtype=bool) for cid in wanted}
    for item in _lines(data_dir / "contract_labels.jsonl", wanted_set):
        if item["n_spans"] > 0:
            present[item["contract_id"]][index[item["category"]]] = True
    corpus = []
    for cid in wanted:
        text = read_contract_text(data_dir / "contracts" / f"{cid}.txt")
        cut_up = cut(text, max_chars) if cut else list(passages([Block(text, 0)], max_chars=max_chars))
        starts = [p.char_start for p in cut_up]
        ends = [p.char_end for p in cut_up]
        labels = np.zeros((len(cut_up), len(NAMES)), dtype=bool)
        pieces = []
        for item in sorted(annotations[cid], key=lambda a: (a["start"], a["end"], a["category"])):
            k = index[item["category"]]
            first = bisect.bisect_right(ends, item["start"])  # first passage ending after the start
            last = bisect.bisect_left(starts, item["end"])  # passages starting before the end
            labels[first:last, k] = True
            pieces.append((k, item["start"], item["end"], first, last))
        corpus.append(Contract(cid, text, cut_up, labels, present[cid], pieces))
    return corpus


def _lines(path: Path, wanted: set[str]):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            if item["contract_id"] in wanted:
                yield item


def data_sha256(data_dir: str | Path, ids: list[str]) -> str:
    """sha256 over the files training reads: each contract (sorted by id), then the two label files
    (only their lines for these contracts, so a subset's digest does not depend on the others)."""
    data_dir = Path(data_dir)
    digest = hashlib.sha256()
    wanted = set(ids)
    for cid in sorted(ids):
        digest.update(f"{cid}\n".encode())
        digest.update((data_dir / "contracts" / f"{cid}.txt").read_bytes())
    for name in FILES[1:]:
        digest.update(f"{name}\n".encode())
        with open(data_dir / name, "rb") as handle:
            for line in handle:
                if json.loads(line)["contract_id"] in wanted:
                    digest.update(line)
    return digest.hexdigest()


def matching_contracts(data_dir: str | Path, files: list[Path]) -> dict[str, str]:
    """The CUAD id of each file whose text is exactly one of the folder's contracts (file name ->
    id): how the README's examples are found and left out of the shipped model's training."""
    by_digest = {hashlib.sha256(read_contract_text(Path(data_dir) / "contracts" / f"{cid}.txt").encode()).hexdigest(): cid
                 for cid in contract_ids(data_dir)}
    found = {}
    for path in files:
        cid = by_digest.get(hashlib.sha256(read_contract_text(path).encode()).hexdigest())
        if cid is not None:
            found[Path(path).name] = cid
    return found


def fold_of(corpus: list[Contract], folds: int) -> np.ndarray:
    """Fold of each contract: its rank in id order, modulo ``folds`` (deterministic, by contract:
    a contract's passages are never split between training and test)."""
    return np.arange(len(corpus)) % folds
