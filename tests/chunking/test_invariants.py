"""The chunking contract, on arbitrary text and on real contracts, for both strategies:

* ``text == source[char_start:char_end]``;
* ``token_count == len(encode(text)) <= chunk_tokens`` (exact, with the tokenizer in use);
* chunks cover the source in order: no gap, overlap only when asked and never more than asked;
* same input and configuration -> same chunks and ids (also in a fresh process).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cuad import cuad_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlmpipe.chunking import ChunkingConfig, chunk_blocks, chunk_text, get_tokenizer
from rlmpipe.chunking import engine
from rlmpipe.ingest.document import Block

CUAD = (cuad_dir() or Path("/nonexistent")) / "contracts"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "contracts"


def check_contract(source: str, chunks, config: ChunkingConfig) -> None:
    tokenizer = get_tokenizer(config.tokenizer)
    if not source:
        assert chunks == []
        return
    assert chunks, "non-empty text gives at least one chunk"
    assert chunks[0].char_start == 0
    assert chunks[-1].char_end == len(source)
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert chunk.text == source[chunk.char_start : chunk.char_end]
        assert chunk.char_end > chunk.char_start
        assert chunk.token_count == tokenizer.count(chunk.text), (chunk.text, chunk.token_count)
        assert chunk.token_count <= config.chunk_tokens
    for before, after in zip(chunks, chunks[1:]):
        assert after.char_start <= before.char_end, "no gap between consecutive chunks"
        assert after.char_start > before.char_start and after.char_end > before.char_end
        if config.overlap == 0:
            assert after.char_start == before.char_end
        else:
            shared = source[after.char_start : before.char_end]
            assert tokenizer.count(shared) <= config.overlap
    assert len({c.chunk_id for c in chunks}) == len(chunks)


# Text built from the characters that matter to tokenizers and boundaries: spaces of all kinds,
# line endings, digits, punctuation, clause markers, non-ASCII, emoji, combining marks, and text
# that looks like special tokens.
PIECES = [
    "a", "b", "The", " ", " ", "  ", "\n", "\n\n", "\r\n", "\t", ".", ",", ";", ":", "(", ")", "'s",
    "\"", "1", "12", "123456", "3.1", "(a) ", "(iv) ", "ARTICLE IV\n", "Section 5. ", "\n12. ",
    "é", "e\u0301", "€", "😀", "\u00a0", "\u2003", "中文", "/", "\n/", "<|endoftext|>", "<|fim_prefix|>",
    "-", "—", "#", "## Heading\n", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "\u200b", "\x0b", "\f",
]
texts = st.lists(st.sampled_from(PIECES), min_size=0, max_size=300).map("".join)
any_text = st.text(min_size=0, max_size=600)


@settings(max_examples=250, deadline=None)
@given(
    source=st.one_of(texts, any_text),
    strategy=st.sampled_from(["fixed", "structure"]),
    max_tokens=st.integers(min_value=8, max_value=120),
    overlap_share=st.floats(min_value=0, max_value=0.9),
    tokenizer=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_contract_holds_on_arbitrary_text(source, strategy, max_tokens, overlap_share, tokenizer):
    overlap = int(max_tokens * overlap_share) if overlap_share > 0.3 else 0
    config = ChunkingConfig(strategy=strategy, chunk_tokens=max_tokens, overlap=overlap, tokenizer=tokenizer)
    check_contract(source, chunk_text(source, config), config)


@pytest.mark.parametrize("strategy", ["fixed", "structure"])
def test_contract_holds_on_text_with_lone_surrogates(strategy):
    """A ``str`` may hold a lone surrogate (from ``surrogateescape`` or a careless decoder): chunked
    like any other character, not a UnicodeEncodeError."""
    source = "Fees are due. \ud800 (a) late fees\udfff apply.\n\n" * 40
    config = ChunkingConfig(strategy=strategy, chunk_tokens=16, overlap=4 if strategy == "fixed" else 0)
    check_contract(source, chunk_text(source, config), config)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    source=st.lists(st.sampled_from(PIECES), min_size=200, max_size=1500).map("".join),
    strategy=st.sampled_from(["fixed", "structure"]),
    max_tokens=st.integers(min_value=8, max_value=64),
    overlap=st.sampled_from([0, 5]),
)
def test_contract_holds_across_section_boundaries(source, strategy, max_tokens, overlap, monkeypatch_sections):
    """Tiny sections force every carry-over and uncut-run path of the streaming engine."""
    config = ChunkingConfig(strategy=strategy, chunk_tokens=max_tokens, overlap=overlap)
    blocks, position, sizes = [], 0, itertools.cycle((37, 5, 111, 64))  # uneven block sizes
    while position < len(source):
        size = next(sizes)
        blocks.append(Block(source[position : position + size], position))
        position += size
    check_contract(source, list(chunk_blocks(blocks, "doc", config)), config)


@pytest.fixture
def monkeypatch_sections():
    saved = engine.SECTION_CHARS, engine.MAX_UNCUT_CHARS
    engine.SECTION_CHARS, engine.MAX_UNCUT_CHARS = 300, 400
    yield
    engine.SECTION_CHARS, engine.MAX_UNCUT_CHARS = saved


def test_fixed_chunks_do_not_depend_on_block_or_section_sizes(monkeypatch):
    source = (EXAMPLES / "ip_agreement_msci.txt").open(encoding="utf-8", newline="").read()
    config = ChunkingConfig(strategy="fixed", chunk_tokens=100, overlap=20)
    whole = chunk_text(source, config, doc_id="d")
    monkeypatch.setattr(engine, "SECTION_CHARS", 1000)
    blocks = [Block(source[i : i + 77], i) for i in range(0, len(source), 77)]
    streamed = list(chunk_blocks(blocks, "d", config))
    assert [c.to_dict() for c in streamed] == [c.to_dict() for c in whole]


def test_long_run_without_spaces_is_cut_between_tokens_and_stays_exact():
    source = "x" * 5000 + " tail words here. " + "αβγδ" * 3000 + "😀" * 700
    for strategy in ("fixed", "structure"):
        config = ChunkingConfig(strategy=strategy, chunk_tokens=50)
        check_contract(source, chunk_text(source, config), config)


def test_special_token_text_is_counted_as_ordinary_text():
    source = "Before <|endoftext|> after <|im_start|>system\n" * 50
    config = ChunkingConfig(chunk_tokens=40)
    chunks = chunk_text(source, config)
    check_contract(source, chunks, config)


def test_overlap_not_smaller_than_chunk_tokens_is_rejected():
    with pytest.raises(ValueError, match="overlap \\(512\\) must be smaller than chunk_tokens \\(512\\)"):
        ChunkingConfig(strategy="fixed", chunk_tokens=512, overlap=512)
    with pytest.raises(ValueError, match="unknown strategy"):
        ChunkingConfig(strategy="semantic")


REAL = sorted(CUAD.glob("cuad_*.txt"))[::25] if CUAD.is_dir() else sorted(EXAMPLES.glob("*.txt"))


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
@pytest.mark.parametrize("strategy,max_tokens,overlap", [
    ("structure", 512, 0), ("structure", 256, 32), ("fixed", 512, 64), ("fixed", 1024, 0),
])
def test_contract_holds_on_real_contracts(path, strategy, max_tokens, overlap):
    source = path.open(encoding="utf-8", newline="").read()
    config = ChunkingConfig(strategy=strategy, chunk_tokens=max_tokens, overlap=overlap)
    chunks = chunk_text(source, config)
    check_contract(source, chunks, config)
    if overlap == 0:
        fill = sum(c.token_count for c in chunks[:-1]) / max(1, (len(chunks) - 1) * max_tokens)
        assert len(chunks) == 1 or fill > 0.5, "chunks are packed, not fragments"


def test_same_chunks_and_ids_in_a_new_process():
    path = EXAMPLES / "services_agreement_scoutcam.txt"
    program = (
        "import json, sys\n"
        "from rlmpipe.ingest import open_document\n"
        "from rlmpipe.chunking import ChunkingConfig, chunk_document\n"
        "for s in ('structure', 'fixed'):\n"
        "    for c in chunk_document(open_document(sys.argv[1]), ChunkingConfig(strategy=s, chunk_tokens=200)):\n"
        "        print(json.dumps(c.to_dict()))\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", program, str(path)], capture_output=True, text=True, check=True,
                       env={**__import__("os").environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    from rlmpipe.chunking import chunk_document
    from rlmpipe.ingest import open_document

    here = [
        json.dumps(c.to_dict())
        for s in ("structure", "fixed")
        for c in chunk_document(open_document(path), ChunkingConfig(strategy=s, chunk_tokens=200))
    ]
    assert runs[0].splitlines() == here


def test_chunk_ids_change_with_configuration_and_document():
    source = "1. Term. This Agreement lasts one year.\n\n2. Fees. Fees are due monthly.\n"
    base = chunk_text(source, ChunkingConfig(chunk_tokens=64), doc_id="a")[0].chunk_id
    assert chunk_text(source, ChunkingConfig(chunk_tokens=64), doc_id="b")[0].chunk_id != base
    assert chunk_text(source, ChunkingConfig(chunk_tokens=65), doc_id="a")[0].chunk_id != base
    assert chunk_text(source, ChunkingConfig(chunk_tokens=64, strategy="fixed"), doc_id="a")[0].chunk_id != base
    assert chunk_text(source, ChunkingConfig(chunk_tokens=64), doc_id="a")[0].chunk_id == base


@pytest.mark.parametrize("source", [
    "a " * 500_000,  # a million characters in one section
    "1 " * 150_000,  # 300,000 tokens
    "这是一个测试句子。\n" * 40_000,  # one token per character, with line breaks
])
@pytest.mark.parametrize("strategy", ["structure", "fixed"])
def test_sections_beyond_the_fast_tokenizers_limits(source, strategy, tmp_path):
    """bpe-openai refuses inputs of 1M characters or 200k tokens: long texts are encoded in pieces."""
    config = ChunkingConfig(strategy=strategy, chunk_tokens=512)
    check_contract(source, chunk_text(source, config), config)
    path = tmp_path / "doc.txt"
    path.write_text(source, encoding="utf-8")
    from rlmpipe.chunking import chunk_document
    from rlmpipe.ingest import open_document

    streamed = list(chunk_document(open_document(path), config))
    check_contract(source, streamed, config)


def test_an_unfinished_chunk_stream_closes_without_joining_threads(monkeypatch):
    """A chunk stream left unfinished is closed by the garbage collector, in any thread, perhaps inside
    threading's own locks: closing it must not join the tokenizer's threads (that deadlocked a Ray worker)."""
    import threading

    paragraph = "A line of contract text that goes on for a while.\n"
    source = paragraph * (3 * (1 << 18) // len(paragraph))  # several sections: the prefetch pool is in use
    stream = chunk_blocks([Block(source, 0)], "doc", ChunkingConfig(chunk_tokens=256, tokenizer="cl100k_base"))
    assert next(stream).text
    joined = []
    monkeypatch.setattr(threading.Thread, "join", lambda self, timeout=None: joined.append(self.name))
    stream.close()
    assert joined == []
