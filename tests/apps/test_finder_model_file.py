"""A ``--finder-model`` file is untrusted input: every hostile file is refused with one line that names
it, before anything larger than a valid model of its vocabulary is allocated (issue 28, item 2).

Each attack is a file built here from a tiny valid model."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.finder import FORMAT, ClauseFinder, ModelFileError
from rlmpipe.apps.contracts.model_file import json_depth, text_array, write_model
from rlmpipe.ingest import Block
from tests.support.cli import error_lines, rlmpipe

ROOT = Path(__file__).resolve().parents[2]
TERMS = ["agreement", "governed", "law", "governed by"]
K = len(NAMES)


def tiny(config: dict | None = None, **changes) -> dict[str, np.ndarray]:
    """The arrays of a valid four-term model, with ``changes`` (None removes an array)."""
    info = {"format": FORMAT, "categories": list(NAMES),
            "config": {"max_chars": 1000, "ngram_max": 2, "truncate": 0, "sublinear": True, **(config or {})}}
    rng = np.random.default_rng(0)
    arrays = {"info": text_array(json.dumps(info)), "vocabulary": text_array("\n".join(TERMS)),
              "idf": np.ones(len(TERMS), dtype=np.float32),
              "w_text": rng.normal(size=(len(TERMS), K)).astype(np.float32),
              "intercept": np.zeros(K, dtype=np.float32), "threshold_f1": np.full(K, 0.5)}
    arrays.update(changes)
    return {key: value for key, value in arrays.items() if value is not None}


def model(tmp_path: Path, name: str = "model.npz", **kwargs) -> Path:
    return write_model(tmp_path / name, tiny(**kwargs))


def refused(path: Path, *words: str) -> str:
    """Load ``path``: it must be refused with one line naming it and saying ``words``."""
    with pytest.raises(ModelFileError) as caught:
        ClauseFinder.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_the_tiny_model_itself_loads_and_scores(tmp_path):
    finder = ClauseFinder.load(model(tmp_path))
    (passage, scores), = finder.score([Block("This agreement is governed by law.", 0)])
    assert scores.shape == (K,) and np.all((scores > 0) & (scores < 1))


def test_a_zip_bomb_is_refused_before_it_unpacks(tmp_path):
    """idf.npy declares 64 M floats (256 MiB unpacked, a few hundred KB packed) for a four-term
    vocabulary: refused from its header, without unpacking it."""
    path = tmp_path / "bomb.npz"
    write_model(path, tiny(idf=None))
    header = io.BytesIO()
    count = 64 << 20
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (count,)})
    entry_info = zipfile.ZipInfo("idf.npy")
    entry_info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "a", compresslevel=1) as archive:
        with archive.open(entry_info, "w", force_zip64=True) as entry:
            entry.write(header.getvalue())
            zeros = bytes(1 << 22)
            for _ in range(count * 4 // len(zeros)):
                entry.write(zeros)
    assert path.stat().st_size < 4 << 20
    tracemalloc.start()
    try:
        refused(path, "idf", "does not fit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MB allocated to refuse it"


def test_a_header_declaring_terabytes_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40, K)})
    arrays = tiny(w_text=None)
    write_model(path, arrays)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("w_text.npy", header.getvalue() + bytes(64))
    refused(path, "w_text", "unpacked")


def test_an_n_gram_range_of_a_million_is_refused(tmp_path):
    refused(model(tmp_path, config={"ngram_max": 1_000_000}), "ngram_max", "1000000")


@pytest.mark.parametrize("value", [np.nan, -np.inf, np.inf])
def test_thresholds_that_are_not_finite_are_refused(tmp_path, value):
    thresholds = np.full(K, 0.5)
    thresholds[3] = value
    refused(model(tmp_path, threshold_f1=thresholds), "threshold_f1", "NaN or infinite")


def test_thresholds_outside_0_1_are_refused(tmp_path):
    refused(model(tmp_path, threshold_f1=np.full(K, -0.5)), "threshold_f1", "outside [0, 1]")


def test_weights_that_are_not_finite_are_refused(tmp_path):
    weights = np.zeros((len(TERMS), K), dtype=np.float32)
    weights[1, 1] = np.nan
    refused(model(tmp_path, w_text=weights), "w_text", "NaN")


def test_deeply_nested_json_in_the_info_is_refused(tmp_path):
    nested = "[" * 100_000 + "]" * 100_000
    assert json_depth(nested) == 100_000
    refused(model(tmp_path, info=text_array(nested)), "nested")


def test_info_that_is_not_a_model_s_is_refused(tmp_path):
    refused(model(tmp_path, info=text_array(json.dumps({"format": "something else"}))), "format")
    refused(model(tmp_path, "b.npz", info=text_array("{not json")), "not JSON")


def test_an_empty_file_is_refused(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    refused(empty, "empty")


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    refused(junk, "not a model file")


@pytest.mark.parametrize(("name", "array", "words"), [
    ("w_text", np.zeros((len(TERMS), K - 1), dtype=np.float32), ("w_text", "does not fit")),
    ("idf", np.ones(len(TERMS) + 1, dtype=np.float32), ("idf", "does not fit")),
    ("intercept", np.zeros((K, 1), dtype=np.float32), ("intercept", "dimension")),
    ("threshold_f1", np.full(K, 0.5, dtype=np.float32), ("threshold_f1", "dtype")),
])
def test_wrong_shapes_and_dtypes_are_refused(tmp_path, name, array, words):
    refused(model(tmp_path, **{name: array}), *words)


def test_a_pickled_array_is_refused(tmp_path):
    path = tmp_path / "pickle.npz"
    write_model(path, tiny(idf=None))
    data = io.BytesIO()
    np.save(data, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("idf.npy", data.getvalue())
    refused(path, "idf", "dtype")


def test_a_vocabulary_that_repeats_a_term_is_refused(tmp_path):
    refused(model(tmp_path, vocabulary=text_array("law\nlaw\ngoverned\nagreement")), "repeats")


def test_a_vocabulary_of_millions_of_empty_terms_is_refused_before_it_is_split(tmp_path):
    tracemalloc.start()
    try:
        refused(model(tmp_path, vocabulary=text_array("\n" * 3_000_000)), "vocabulary terms")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MB allocated to refuse it"


def test_an_unexpected_or_missing_array_is_refused(tmp_path):
    refused(model(tmp_path, extra=np.zeros(3, dtype=np.float32)), "unexpected array")
    refused(model(tmp_path, "b.npz", w_text=None), "no w_text")


@pytest.mark.parametrize("attack", ["empty", "nan"])
def test_the_cli_says_one_line_naming_the_file_and_exits_2(tmp_path, attack):
    bad = tmp_path / "bad.npz"
    if attack == "empty":
        bad.write_bytes(b"")
    else:
        write_model(bad, tiny(threshold_f1=np.full(K, np.nan)))
    result = rlmpipe("contracts", "analyze", ROOT / "examples" / "contracts", "--lm", "none", "--finder-model", bad,
                     "--out", tmp_path / "out", "--workspace", tmp_path / "ws", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == error_lines(result.stderr) and len(lines) == 1, result.stderr
    assert str(bad) in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "contracts.jsonl").exists()
