"""The trained clause finder: offsets, narrowing, determinism, streaming, the shipped model file."""

from __future__ import annotations

import random
import socket
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.finder import MODEL_PATH, RECALL_LEVELS, ClauseFinder, Features
from rlmpipe.ingest import Block, open_document
from tests.support.cuad import cuad_dir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "contracts").glob("*.txt"))
CUAD = cuad_dir()
needs_cuad = pytest.mark.skipif(CUAD is None, reason="CUAD data not on this machine (set RLMPIPE_CUAD_DIR)")


@pytest.fixture(scope="module")
def finder() -> ClauseFinder:
    return ClauseFinder.load()


def blocks_of(text: str, sizes=(65536,), seed: int = 0):
    rng = random.Random(seed)
    at = 0
    while at < len(text):
        n = rng.choice(sizes)
        yield Block(text[at : at + n], at)
        at += n


def test_features_match_scikit_learn():
    sklearn_text = pytest.importorskip("sklearn.feature_extraction.text")
    texts = ["The Licensee shall not assign this Agreement.", "Governing law: New York law governs.",
             "This Agreement shall be governed by the laws of Delaware.", "assign assign assign consent"]
    ours = Features.fit([texts[:2], texts[2:]], min_df=1)
    theirs = sklearn_text.TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True).fit(texts)
    assert ours.vocabulary == sorted(theirs.vocabulary_)
    indptr, indices, values = ours.rows(texts)
    dense = np.zeros((len(texts), len(ours)))
    for row in range(len(texts)):
        dense[row, indices[indptr[row] : indptr[row + 1]]] = values[indptr[row] : indptr[row + 1]]
    assert np.allclose(dense, theirs.transform(texts).toarray())


# -- the shipped model ----------------------------------------------------------------------------


def test_model_file_is_plain_arrays_not_a_pickle():
    assert zipfile.is_zipfile(MODEL_PATH)
    with np.load(MODEL_PATH, allow_pickle=False) as data:
        for key in data.files:
            assert data[key].dtype != object, key
    assert MODEL_PATH.stat().st_size <= 20 * 1024 * 1024
    assert (MODEL_PATH.parent / "README.md").is_file()


def test_the_shipped_model_was_trained_without_the_readme_examples_and_its_card_says_so():
    from rlmpipe.apps.contracts.training.data import matching_contracts

    finder = ClauseFinder.load()
    left_out = finder.info["data"]["left_out"]
    assert sorted(left_out) == sorted(p.name for p in EXAMPLES)
    if CUAD is not None:
        assert matching_contracts(CUAD, EXAMPLES) == left_out
    card = (MODEL_PATH.parent / "README.md").read_text(encoding="utf-8")
    for name, contract_id in left_out.items():
        assert f"`{name}` ({contract_id})" in card


def test_shipped_model_loads_and_finds_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    finder = ClauseFinder.load()
    assert finder.categories == NAMES
    for key in ("trained_with", "data", "cv", "versions"):
        assert key in finder.info
    assert "Atticus" in finder.info["data"]["attribution"]
    assert EXAMPLES, "examples/contracts/*.txt missing"
    for path in EXAMPLES:
        document = open_document(path)
        text = document.text()
        findings = finder.find(document.blocks())
        assert findings, f"nothing found in {path.name}"
        for finding in findings:
            assert finding.category in NAMES
            assert_narrowed(finding, text)
            assert 0.0 <= finding.score <= 1.0


def assert_narrowed(finding, text: str) -> None:
    """A finding is the contract's text at its offsets, inside its passage (also the contract's text)."""
    passage = finding.passage
    assert text[finding.char_start : finding.char_end] == finding.text and finding.text.strip() == finding.text
    assert text[passage.char_start : passage.char_end] == passage.text
    assert passage.char_start <= finding.char_start < finding.char_end <= passage.char_end


def test_thresholds(finder):
    f1 = finder.thresholds()
    assert f1.shape == (len(NAMES),) and np.all(f1 > 0)
    previous = None
    for level in RECALL_LEVELS:
        t = finder.thresholds(f"recall{level:.2f}")
        assert t.shape == (len(NAMES),)
        if previous is not None:
            assert np.all(t <= previous)  # more recall never needs a higher threshold
        previous = t
    with pytest.raises(KeyError):
        finder.thresholds("nonsense")


def test_cascade_thresholds_select_on_the_best_score_and_ask_generously(finder):
    previous = None
    for level in RECALL_LEVELS:
        select, ask = finder.cascade_thresholds(f"recall{level:.2f}")
        assert select.shape == ask.shape == (len(NAMES),) and np.all(select == select[0]) and 0 < select[0] < 1
        assert np.array_equal(ask, finder.thresholds("recall0.99"))
        if previous is not None:
            assert select[0] <= previous  # more recall never needs a higher threshold
        previous = select[0]


def test_selection_threshold_keeps_the_share_of_pieces_whose_every_passage_clears_it():
    from rlmpipe.apps.contracts.training.thresholds import selection_threshold

    class Contract:  # (the fields selection_threshold reads)
        def __init__(self, annotations):
            self.annotations = annotations

    n = len(NAMES)
    scores = np.zeros((4, n))
    scores[0, 3], scores[1, 7], scores[2, 0], scores[3, 5] = 0.9, 0.2, 0.6, 0.4
    # pieces: passage 0 alone (0.9); passages 1-2 (min of the best scores: 0.2); passage 3 (0.4)
    corpus = [Contract([(3, 0, 10, 0, 1), (7, 10, 30, 1, 3), (5, 30, 40, 3, 4)])]
    assert selection_threshold(corpus, [scores], 1 / 3) == 0.9
    assert selection_threshold(corpus, [scores], 0.5) == 0.4  # two pieces of three: the second-best need
    assert selection_threshold(corpus, [scores], 1.0) == 0.2


def test_passage_threshold_is_the_best_passage_level_f1_cut():
    from rlmpipe.apps.contracts.training.thresholds import passage_thresholds

    class Contract:  # (the field passage_thresholds reads)
        def __init__(self, labels):
            self.labels = labels

    n = len(NAMES)
    scores, labels = np.zeros((6, n)), np.zeros((6, n), dtype=bool)
    scores[:, 2] = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    labels[:, 2] = [True, True, False, True, False, False]
    # cuts: above 0.9 F1 0; 0.85 -> 2/4; 0.75 -> 4/5; 0.5 -> 4/6; 0.25 -> 6/7 (best); 0.15 -> 6/8; 0.05 -> 6/9
    t = passage_thresholds([Contract(labels[:3]), Contract(labels[3:])], [scores[:3], scores[3:]])
    assert t[2] == pytest.approx(0.25)
    assert t[0] > 0  # a category never annotated: above every score seen, so never found
    assert np.all(t[[k for k in range(n) if k != 2]] > scores.max(axis=0)[[k for k in range(n) if k != 2]])


def _with_thresholds(finder: ClauseFinder, f1: np.ndarray, passage: float) -> ClauseFinder:
    arrays = {**finder.arrays, "threshold_f1": f1, "threshold_passage": np.full(len(NAMES), passage)}
    return ClauseFinder(finder.info, arrays, vocabulary=finder.features.vocabulary)


def test_further_findings_of_a_category_must_clear_the_passage_threshold(finder):
    """--lm none keeps up to 3 findings a category: the best clears the contract-level f1 threshold,
    the others the passage threshold too (a category almost every contract has, like Document Name,
    has an f1 threshold near 0 that weak passages clear)."""
    assert finder.thresholds("passage").shape == (len(NAMES),)  # the shipped model has them
    text = EXAMPLES[0].read_text(encoding="utf-8")
    rows = np.array([s for _, s in finder.score([Block(text, 0)])])
    k = int(np.argmax(np.sort(rows, axis=0)[-3]))  # the category whose third-best passage scores highest
    top = np.sort(rows[:, k])[::-1][:3]
    assert top[0] > top[1] > top[2]
    f1 = np.ones(len(NAMES))
    f1[k] = top[2] - 1e-9  # exactly the 3 best clear it

    def scores(model, **kw):
        return [f.score for f in model.find([Block(text, 0)], **kw)]

    in_order = [float(v) for v in rows[:, k] if v >= f1[k]]  # document order
    assert scores(_with_thresholds(finder, f1, 0.0), per_category=3) == pytest.approx(in_order)
    kept = scores(_with_thresholds(finder, f1, (top[1] + top[2]) / 2), per_category=3)
    assert sorted(kept) == pytest.approx(sorted(top[:2]))  # the third is below the passage threshold
    strict = _with_thresholds(finder, f1, 1.0)
    assert scores(strict, per_category=3) == pytest.approx([top[0]])  # the best always stays
    assert len(scores(strict)) == 3  # without per_category: every passage above f1, as before


def test_a_finding_is_narrowed_to_the_sentences_that_make_it(finder):
    """The Scoutcam example's governing law is the sentence that says so, inside its section's
    passage, not the section (nor, as before, a 941-character passage that starts at section 11)."""
    path = next(p for p in EXAMPLES if "scoutcam" in p.name)
    text = path.read_text(encoding="utf-8")
    law = [f for f in finder.find(open_document(path).blocks(), per_category=3) if f.category == "Governing Law"]
    assert law
    best = max(law, key=lambda f: f.score)
    assert_narrowed(best, text)
    assert best.passage.text.startswith("13. Governing Law")
    assert "State of New York" in best.text and len(best.text) < len(best.passage.text)
    whole = finder.find(open_document(path).blocks(), per_category=3, narrow=False)
    assert all((f.char_start, f.char_end) == (f.passage.char_start, f.passage.char_end) for f in whole)


@needs_cuad
def test_findings_are_verbatim_on_cuad_contracts(finder):
    for name in ("cuad_000.txt", "cuad_100.txt", "cuad_314.txt"):  # cuad_314 is one long line
        path = CUAD / "contracts" / name
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
        scored = list(finder.score(open_document(path).blocks()))
        assert scored
        for passage, scores in scored:
            assert text[passage.char_start : passage.char_end] == passage.text
            assert scores.shape == (len(NAMES),) and np.all((scores >= 0) & (scores <= 1))
        findings = finder.find(open_document(path).blocks(), thresholds="recall0.90")
        assert {f.category for f in findings} <= set(NAMES)
        for f in findings:
            assert_narrowed(f, text)


def test_scores_do_not_depend_on_blocking(finder):
    text = EXAMPLES[0].read_text(encoding="utf-8")
    whole = [(p, s) for p, s in finder.score([Block(text, 0)])]
    pieces = [(p, s) for p, s in finder.score(blocks_of(text, (1, 50, 3000)))]
    assert [p for p, _ in whole] == [p for p, _ in pieces]
    assert np.allclose(np.array([s for _, s in whole]), np.array([s for _, s in pieces]))


# -- streaming ------------------------------------------------------------------------------------


def synthetic_contract(paragraphs: int):
    """Blocks of a long synthetic contract, 10 paragraphs each, recording how many were read."""
    state = {"read": 0}
    clauses = ["This Agreement shall be governed by the laws of the State of New York.",
               "Neither party may assign this Agreement without the prior written consent of the other party.",
               "Licensee shall maintain insurance with reputable insurers during the Term.",
               "The parties agree to meet quarterly to review performance."]

    def generate():
        at = 0
        for start in range(0, paragraphs, 10):
            text = "".join(f"{start + i + 1}. {clauses[(start + i) % len(clauses)]}\n\n" for i in range(10))
            state["read"] += 1
            yield Block(text, at)
            at += len(text)

    return generate(), state


def test_score_reads_blocks_lazily(finder):
    blocks, state = synthetic_contract(100_000)  # 10,000 blocks
    stream = finder.score(blocks)
    first_passage, _ = next(stream)
    assert first_passage.char_start == 0
    assert state["read"] <= 10, f"{state['read']} blocks read before the first passage came out"
    for _ in range(500):
        next(stream)
    assert state["read"] <= 60


def test_memory_is_flat_in_document_size(finder):
    def peak(paragraphs: int) -> int:
        blocks, _ = synthetic_contract(paragraphs)
        tracemalloc.start()
        try:
            best = np.zeros(len(NAMES))
            for _, scores in finder.score(blocks):
                np.maximum(best, scores, out=best)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(2_000), peak(20_000)
    assert large < 1.5 * small, f"peak memory grew {large / small:.1f}x for a 10x longer document"


# -- training ---------------------------------------------------------------------------------------


@needs_cuad
def test_training_is_deterministic_and_its_card_names_what_was_left_out(tmp_path):
    pytest.importorskip("sklearn")
    from rlmpipe.apps.contracts.training.train import model_card, train

    ids = sorted(p.stem for p in (CUAD / "contracts").glob("*.txt"))[:7]
    left_out = {"example.txt": ids[0]}
    first = tmp_path / "a" / "model.npz"
    second = tmp_path / "b" / "model.npz"
    info = train(CUAD, first, ids=ids, exclude=left_out, folds=3)
    train(CUAD, second, ids=ids, exclude=left_out, folds=3)
    assert first.read_bytes() == second.read_bytes()
    assert info["data"]["contracts"] == 6 and len(info["data"]["sha256"]) == 64
    assert info["data"]["left_out"] == left_out and info["data"]["first"] == ids[1]
    card = model_card(info, first.name)
    assert f"`example.txt` ({ids[0]})" in card and "--leave-out example.txt" in card
    assert set(info["cv"]["findings"]) >= {"right", "close", "reached"}
    model = ClauseFinder.load(first)
    assert model.categories == NAMES
    text = (CUAD / "contracts" / f"{ids[1]}.txt").read_text(encoding="utf-8")
    found = model.find([Block(text, 0)], thresholds="recall0.99")
    assert any(f.category == "Document Name" for f in found)
    for finding in found:
        assert_narrowed(finding, text)
