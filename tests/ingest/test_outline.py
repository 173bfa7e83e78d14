"""The outline of a text (headings, numbered sections, lettered items), the one place the readers'
heading paths, the structure chunker's cut strengths and the finder's passages take it from."""

from __future__ import annotations

import re

from rlmpipe.chunking import ChunkingConfig, chunk_document
from rlmpipe.ingest import open_document
from rlmpipe.ingest.outline import CLAUSE, HEADING, SUBCLAUSE, TITLE, Headings, marks, title
from tests.support.documents import write_pdf

CONTRACT = """MASTER SERVICES AGREEMENT

ARTICLE 1. DEFINITIONS

1.1 Terms. In this Agreement the following terms have the meanings below:
(a) "Services" means the services; and
(b) "Fees" means the fees.

ARTICLE 2. TERM AND TERMINATION

2.1 Term. This Agreement starts on the Effective Date and lasts 30 days
unless ended earlier. 2.2 Termination. Either party may end it on notice.

GOVERNING LAW

This Agreement is governed by the laws of New York.
"""


def kinds(text: str) -> list[tuple[str, str]]:
    return [(m.kind, m.label) for m in marks(text)]


def test_headings_sections_and_items_are_found_at_line_starts_and_after_sentence_ends():
    assert kinds(CONTRACT) == [
        (TITLE, "MASTER SERVICES AGREEMENT"), (HEADING, "ARTICLE 1"), (CLAUSE, "1.1"), (SUBCLAUSE, "(a)"),
        (SUBCLAUSE, "(b)"), (HEADING, "ARTICLE 2"), (CLAUSE, "2.1"), (CLAUSE, "2.2"), (TITLE, "GOVERNING LAW")]
    inline = [m for m in marks(CONTRACT) if m.inline]
    assert [m.label for m in inline] == ["2.2"]
    by_label = {m.label: title(CONTRACT, m) for m in marks(CONTRACT)}
    assert by_label["ARTICLE 2"] == "ARTICLE 2. TERM AND TERMINATION"
    assert by_label["2.1"] == "2.1 Term." and by_label["(a)"] == "(a)"


def test_running_text_numbered_inline_gives_its_sections():
    text = ("the parties agree as follows: 1. Services. The Company retains Maimon. 2. Duties. He serves "
            "as CEO for $1,000. 5 days later he may resign. 13. Governing Law; Jurisdiction. New York law governs.")
    sections = [(m.label, title(text, m)) for m in marks(text)]
    assert sections == [("1.", "1. Services."), ("2.", "2. Duties."),
                        ("13.", "13. Governing Law; Jurisdiction.")]  # "5 days" is not a section


def test_a_wrapped_line_is_not_a_heading_a_section_or_a_title():
    """What a PDF's line wrapping puts at a line start, in mid-sentence."""
    text = ("IN NO EVENT SHALL EITHER PARTY BE LIABLE FOR ANY INDIRECT DAMAGES, AND THE\n"
            "PARTIES EXPRESSLY EXCLUDE ALL IMPLIED WARRANTIES.\n"
            "Payment is due within\n30 Business Days of the invoice, as set out in Section\n"
            "5.2 of the Agreement and in\nSection 7 of the Schedule.\n")
    assert kinds(text) == []


def test_the_line_before_decides_even_across_pieces():
    assert [m.label for m in marks("5.2 of the Agreement", before="as set out in Section\n")] == []
    assert [m.label for m in marks("5.2 Fees. Paid monthly.", before="End of a sentence.\n")] == ["5.2"]
    assert [m.label for m in marks("GOVERNING LAW\n\nText.", before="")] == ["GOVERNING LAW"]


def test_txt_and_pdf_blocks_carry_their_heading_path(tmp_path):
    txt = tmp_path / "contract.txt"
    txt.write_text(CONTRACT, encoding="utf-8")
    pdf = write_pdf(tmp_path / "contract.pdf", [CONTRACT])
    for path in (txt, pdf):
        blocks = list(open_document(path).blocks())
        path_of = {}
        for block in blocks:
            for phrase in ("meanings below", "lasts 30 days", "end it on notice", "laws of New York"):
                if phrase in block.text:
                    path_of[phrase] = block.heading_path
        assert path_of == {
            "meanings below": ("ARTICLE 1. DEFINITIONS", "1.1 Terms."),
            "lasts 30 days": ("ARTICLE 2. TERM AND TERMINATION", "2.1 Term."),
            "end it on notice": ("ARTICLE 2. TERM AND TERMINATION", "2.2 Termination."),
            "laws of New York": ("GOVERNING LAW",),
        }, path.suffix


def test_headings_split_pieces_the_same_however_the_text_arrives():
    whole = list(Headings().split(CONTRACT))
    pieces = Headings()
    cut = CONTRACT.index("\n", 200) + 1  # readers hand out whole lines
    parts = [part for half in (CONTRACT[:cut], CONTRACT[cut:]) for part in pieces.split(half)]
    assert "".join(p for _, p, _ in parts) == CONTRACT
    assert {path for _, _, path in parts} == {path for _, _, path in whole}


def test_structure_chunks_of_a_wrapped_pdf_end_at_sentences_not_at_wrapped_lines(tmp_path):
    """A line a PDF wrapped in mid-sentence is no boundary: with sentence ends in reach, a chunk ends
    at one ("... AND THE" / "PARTIES EXPRESSLY EXCLUDE" was a chunk's end)."""
    sentence = ("THE LICENSOR MAKES NO WARRANTY OF ANY KIND AND THE PARTIES EXPRESSLY EXCLUDE ALL IMPLIED "
                "WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE.")
    text = " ".join(sentence for _ in range(12))
    lines = re.findall(r".{1,70}(?:\s|$)", text)
    pdf = write_pdf(tmp_path / "wrapped.pdf", ["\n".join(line.rstrip() for line in lines)])
    txt = tmp_path / "wrapped.txt"
    txt.write_text("\n".join(line.rstrip() for line in lines) + "\n", encoding="utf-8")
    for path in (pdf, txt):
        chunks = list(chunk_document(open_document(path), ChunkingConfig(strategy="structure", chunk_tokens=80)))
        assert len(chunks) > 3
        for chunk in chunks[:-1]:
            assert chunk.text.rstrip().endswith("."), (path.suffix, chunk.text[-60:])
