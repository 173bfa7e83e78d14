"""Readers: blocks are exact, contiguous pieces of the extracted text, with pages and headings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.cuad import cuad_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlmpipe.ingest import ReadLimits, open_document
from tests.support.documents import write_docx, write_pdf

CUAD = (cuad_dir() or Path("/nonexistent")) / "contracts"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "contracts"


def assert_contiguous(blocks, text: str) -> None:
    position = 0
    for block in blocks:
        assert block.char_start == position
        assert text[block.char_start : block.char_end] == block.text
        position = block.char_end
    assert position == len(text)


def test_txt_extracted_text_is_the_file_decoded_with_line_endings_kept(tmp_path):
    raw = "Title\r\n\r\nFirst paragraph,\r\nstill first.\n\n\n  Second — ünïcode ✓\n"
    path = tmp_path / "a.txt"
    path.write_bytes(raw.encode("utf-8"))
    document = open_document(path)
    blocks = list(document.blocks())
    assert "".join(b.text for b in blocks) == raw
    assert_contiguous(blocks, raw)
    small = list(open_document(path, ReadLimits(max_block_chars=16)).blocks())
    assert_contiguous(small, raw)
    assert [b.text for b in small][:2] == ["Title\r\n\r\n", "First paragraph,"]  # runs end at breaks


def test_document_id_is_a_hash_of_the_bytes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("same bytes\n", encoding="utf-8")
    copy = tmp_path / "b.md"
    copy.write_text("same bytes\n", encoding="utf-8")
    expected = hashlib.sha256(b"same bytes\n").hexdigest()[:32]
    assert open_document(path).doc_id == expected == open_document(copy).doc_id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(
        st.sampled_from(list("ab \n\r\t.é€😀\u00a0#-=") + ["\r\n", "\n\n", "# h\n", "```\n", "==\n"]),
        min_size=1,
        max_size=200,
    ).map("".join).filter(lambda t: t.strip()),
    window=st.integers(min_value=4, max_value=64),
    block=st.integers(min_value=8, max_value=64),
)
def test_streaming_txt_and_md_reassemble_exactly_with_tiny_windows(tmp_path, text, window, block):
    limits = ReadLimits(window_bytes=window, max_block_chars=block)
    for suffix in (".txt", ".md"):
        path = tmp_path / f"doc{suffix}"
        path.write_bytes(text.encode("utf-8"))
        blocks = list(open_document(path, limits).blocks())
        assert_contiguous(blocks, text)
        assert all(len(b.text) <= block for b in blocks if b.kind == "text") or suffix == ".md"


def test_markdown_headings_give_paths_and_fences_are_not_headings(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text(
        "# Agreement\n\nIntro.\n\n## 1. Term\n\nThe term.\n\n```\n# not a heading\n```\n\n"
        "## 2. Fees\n\nFees text.\n\nSetext Title\n============\n\nUnder setext.\n",
        encoding="utf-8",
    )
    document = open_document(path)
    blocks = list(document.blocks())
    assert_contiguous(blocks, path.read_text(encoding="utf-8"))
    by_text = {b.text.strip(): b.heading_path for b in blocks if b.text.strip()}
    assert by_text["Intro."] == ("Agreement",)
    assert by_text["The term."] == ("Agreement", "1. Term")
    assert by_text["Fees text."] == ("Agreement", "2. Fees")
    assert by_text["Under setext."] == ("Setext Title",)
    fenced = next(b for b in blocks if "not a heading" in b.text)
    assert fenced.kind == "text" and fenced.heading_path == ("Agreement", "1. Term")


def test_html_visible_text_blocks_and_heading_paths(tmp_path):
    path = tmp_path / "doc.html"
    path.write_text(
        "<html><head><title>T</title><style>p{}</style><script>var x=1;</script></head><body>"
        "<h1>Master   Agreement</h1><p>Parties &amp; recitals.</p><h2>Term</h2>"
        "<p>Lasts <b>two</b>\n years.</p><ul><li>one</li><li>two</li></ul></body></html>",
        encoding="utf-8",
    )
    document = open_document(path)
    blocks = list(document.blocks())
    text = document.text()
    assert_contiguous(blocks, text)
    assert text == (
        "Master Agreement\n\nParties & recitals.\n\nTerm\n\nLasts two years.\n\none\n\ntwo\n\n"
    )
    assert "var x" not in text and "p{}" not in text
    paths = {b.text.strip(): b.heading_path for b in blocks}
    assert paths["Lasts two years."] == ("Master Agreement", "Term")
    assert [b.kind for b in blocks][:2] == ["heading", "text"]


def test_html_declared_charset_is_honoured(tmp_path):
    path = tmp_path / "latin.html"
    path.write_bytes('<meta charset="iso-8859-1"><p>Café</p>'.encode("latin-1"))
    assert open_document(path).text() == "Café\n\n"


def test_pdf_page_by_page_with_page_numbers(tmp_path):
    path = write_pdf(tmp_path / "doc.pdf", ["First page line one\nline two", "Second page (b) text"])
    document = open_document(path)
    blocks = list(document.blocks())
    text = document.text()
    assert_contiguous(blocks, text)
    assert "First page line one" in text and "Second page (b) text" in text
    first = next(b for b in blocks if "First page" in b.text)
    second = next(b for b in blocks if "Second page" in b.text)
    assert (first.page, second.page) == (1, 2)


def test_docx_paragraphs_tables_and_heading_styles(tmp_path):
    pytest.importorskip("docx")
    path = write_docx(
        tmp_path / "doc.docx",
        [("h1", "Services Agreement"), ("p", "The parties agree."), ("h2", "Fees"),
         ("p", "Fees are due monthly."), ("table", "Item|Price;Hosting|$10")],
    )
    document = open_document(path)
    blocks = list(document.blocks())
    text = document.text()
    assert_contiguous(blocks, text)
    assert text.startswith("Services Agreement\n\nThe parties agree.\n\nFees\n\nFees are due monthly.\n\n")
    assert "Hosting" in text and "$10" in text
    paths = {b.text.strip(): b.heading_path for b in blocks}
    assert paths["Fees are due monthly."] == ("Services Agreement", "Fees")
    assert paths["Services Agreement"] == ("Services Agreement",)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.txt")))
def test_real_contracts_read_back_exactly(name):
    path = EXAMPLES / name
    blocks = list(open_document(path).blocks())
    assert_contiguous(blocks, path.open(encoding="utf-8", newline="").read())
