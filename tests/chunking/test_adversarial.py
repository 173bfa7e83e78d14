"""No input shape makes reading and chunking superlinear.

A regex with a backtracking quantifier before a lookahead once made structure chunking quadratic on
one line of spaces followed by a lowercase letter (20 KB: 9 s, 1 MB: hours, holding the GIL). Each
shape below is read from a file and chunked; the work is the process's CPU time per MB, compared
with real contract text measured in the same test (a ratio, never an absolute time), at two sizes
(a quadratic cost shows as a per-MB cost that grows with the size).
"""

from __future__ import annotations

import base64
import random
import time
from pathlib import Path

import pytest

from rlmpipe.chunking import ChunkingConfig, chunk_document
from rlmpipe.ingest import open_document

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "contracts"

SMALL, LARGE = 512 * 1024, 2 * 1024 * 1024  # both span several 256K-character sections
#: per-MB cost of a shape, at most this many times that of contract text (measured: 1-12x)
MAX_RATIO_TO_TEXT = 40
#: per-MB cost at LARGE over per-MB cost at SMALL (4x the size: ~1 when linear, ~4 when quadratic)
MAX_GROWTH = 2.5


def _repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _shapes(size: int) -> dict[str, str]:
    rnd = random.Random(7)
    return {
        "spaces then a lowercase letter": "x\n" + " " * size + "a\n",
        "spaces and tabs": "\n" + _repeat(" \t", size) + "a",
        "lines of spaces then a letter": _repeat("\n" + " " * 900 + "a", size),
        "base64 on one line": "\n" + base64.b64encode(rnd.randbytes(size * 3 // 4)).decode() + "\n",
        "1.1.1... on one line": "\n" + _repeat("1.", size) + "\n",
        "long A1 lines": _repeat("\n" + "A1" * 5000, size),
        "capitals on one line": "\n" + _repeat("ABC ", size) + "\n",
        "capitals and digits, no lowercase": _repeat("\nAB12 CD34 " * 30, size),
        "numbered clauses": _repeat("\n1.2.3.4.5.6.7.8.9 x", size),
        "lettered items": _repeat("\n(a) (b) (iv) A. b) ", size),
        "headings": _repeat("\nARTICLE IV SECTION 5 ", size),
        "markdown hashes": "# " + _repeat(" #", size) + "x\n",
        "blank lines": "x" + _repeat("\n \n\t\n", size),
        "carriage returns": "x" + _repeat("\r\n\r\n \r", size),
        "unicode spaces": _repeat("\u00a0\u2003\u3000a", size),
        "special-token text": _repeat("<|endoftext|>", size),
    }


def _cost(path: Path, config: ChunkingConfig) -> float:
    """CPU seconds per MB to open and chunk ``path`` (best of two runs)."""
    best = float("inf")
    for _ in range(2):
        started = time.process_time()
        for _chunk in chunk_document(open_document(path), config):
            pass
        best = min(best, time.process_time() - started)
    return best / (path.stat().st_size / 1e6)


@pytest.fixture(scope="module")
def text_cost(tmp_path_factory) -> dict[int, float]:
    """Per-MB cost of real contract text at each size (the yardstick)."""
    contracts = "".join(p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.txt")))
    folder = tmp_path_factory.mktemp("text")
    costs = {}
    for size in (SMALL, LARGE):
        path = folder / f"text-{size}.txt"
        path.write_text(_repeat(contracts, size), encoding="utf-8")
        _cost(path, ChunkingConfig(strategy="structure", chunk_tokens=512))  # warm up (tokenizer load)
        costs[size] = _cost(path, ChunkingConfig(strategy="structure", chunk_tokens=512))
    return costs


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "suffix"), [("structure", ".txt"), ("structure", ".md"), ("fixed", ".txt")])
@pytest.mark.parametrize("shape", sorted(_shapes(16)))
def test_no_shape_is_superlinear(shape, strategy, suffix, tmp_path, text_cost):
    config = ChunkingConfig(strategy=strategy, chunk_tokens=512)
    costs = {}
    for size in (SMALL, LARGE):
        path = tmp_path / f"shape-{size}{suffix}"
        path.write_text(_shapes(size)[shape], encoding="utf-8")
        costs[size] = _cost(path, config)
    floor = 0.05  # CPU s/MB below which timing noise dominates: treat as this much
    ratio = max(costs[LARGE], floor) / max(text_cost[LARGE], floor)
    growth = max(costs[LARGE], floor) / max(costs[SMALL], floor)
    assert ratio <= MAX_RATIO_TO_TEXT, f"{shape}: {ratio:.1f}x the cost of contract text per MB ({costs})"
    assert growth <= MAX_GROWTH, f"{shape}: cost per MB grows {growth:.1f}x from 0.5 MB to 2 MB ({costs})"


def test_a_huge_run_of_spaces_in_one_string_is_chunked():
    """tiktoken's Rust regex overflows its stack (a PanicException, not an Exception) on about a
    million spaces in one call; chunk_text cuts a long string into bounded blocks first."""
    from rlmpipe.chunking import chunk_text, get_tokenizer

    source = "x\n" + " " * 1_500_000 + "a\n"
    chunks = chunk_text(source, ChunkingConfig(strategy="structure", chunk_tokens=512))
    assert "".join(c.text for c in chunks) == source
    tokenizer = get_tokenizer("cl100k_base")
    assert all(c.token_count == tokenizer.count(c.text) <= 512 for c in chunks)
