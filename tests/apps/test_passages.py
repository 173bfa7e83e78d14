"""Passages follow the contract's structure, whatever the format and however the blocks arrive;
sentences do not end at a section's number."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from rlmpipe.apps.contracts.passages import passages
from rlmpipe.apps.contracts.sentences import sentences
from rlmpipe.ingest import Block, open_document
from tests.support.cuad import cuad_dir
from tests.support.documents import write_docx, write_pdf

ROOT = Path(__file__).resolve().parents[2]
CUAD = cuad_dir()

CONTRACT = """SERVICES AGREEMENT

This Services Agreement is made on April 1, 2019 between Alpha Inc. and Beta LLC.

ARTICLE 1. SERVICES

1.1 Scope. Alpha shall provide the services described in Exhibit A. Alpha shall use skilled staff.
1.2 Fees. Beta shall pay the fees within 30 days of each invoice.
(a) Late fees accrue at 1% a month.
(b) Disputed amounts are paid when resolved.

ARTICLE 2. TERM

2.1 Term. This Agreement starts on the Effective Date and lasts two years. 2.2 Renewal. It renews for one year \
unless either party gives notice.

11.

Entire Agreement. This Agreement is the whole agreement of the parties.

GOVERNING LAW

This Agreement is governed by the laws of New York. 12. Notices. Notices must be in writing.
"""


def texts(blocks) -> list[str]:
    return [" ".join(p.text.split()) for p in passages(blocks)]


def blocks_of(text: str, sizes=(65536,), seed: int = 0):
    rng = random.Random(seed)
    at = 0
    while at < len(text):
        n = rng.choice(sizes)
        yield Block(text[at : at + n], at)
        at += n


def test_a_passage_starts_at_every_section_heading_and_item_and_never_spans_two_sections():
    found = texts([Block(CONTRACT, 0)])
    assert found == [
        "SERVICES AGREEMENT This Services Agreement is made on April 1, 2019 between Alpha Inc. and Beta LLC.",
        "ARTICLE 1. SERVICES",
        "1.1 Scope. Alpha shall provide the services described in Exhibit A. Alpha shall use skilled staff.",
        "1.2 Fees. Beta shall pay the fees within 30 days of each invoice.",
        "(a) Late fees accrue at 1% a month.",
        "(b) Disputed amounts are paid when resolved.",
        "ARTICLE 2. TERM",
        "2.1 Term. This Agreement starts on the Effective Date and lasts two years.",
        "2.2 Renewal. It renews for one year unless either party gives notice.",
        "11. Entire Agreement. This Agreement is the whole agreement of the parties.",  # the number stays with it
        "GOVERNING LAW This Agreement is governed by the laws of New York.",  # a title joins its text
        "12. Notices. Notices must be in writing.",
    ]


def test_passages_know_the_headings_they_are_under():
    by_start = {p.text.split()[0]: p.heading for p in passages([Block(CONTRACT, 0)])}
    assert by_start["(a)"] == ("ARTICLE 1. SERVICES", "1.2 Fees.")
    assert by_start["2.2"] == ("ARTICLE 2. TERM", "2.2 Renewal.")


def test_the_same_contract_as_txt_docx_and_pdf_gives_the_same_passages(tmp_path):
    txt = tmp_path / "contract.txt"
    txt.write_text(CONTRACT, encoding="utf-8")
    paragraphs = [p.strip() for p in CONTRACT.split("\n\n") if p.strip()]
    docx = write_docx(tmp_path / "contract.docx", [("p", p) for p in paragraphs])
    styled = write_docx(tmp_path / "styled.docx",
                        [("h1" if p.isupper() or p.startswith("ARTICLE") else "p", p) for p in paragraphs])
    pdf = write_pdf(tmp_path / "contract.pdf", [CONTRACT])
    expected = texts(open_document(txt).blocks())
    for path in (docx, styled, pdf):
        assert texts(open_document(path).blocks()) == expected, path.name


@pytest.mark.parametrize("max_chars", [1000, 300, 40])
def test_passages_are_the_documents_text_whatever_the_blocks(max_chars):
    source = CONTRACT + "\n\n" + "word " * 900 + "end.\n\n\n" + "x" * 5000 + "\n \n(a) last"
    whole = list(passages([Block(source, 0)], max_chars=max_chars))
    for sizes in [(1,), (1, 2, 3, 5, 8), (97, 1000), (65536,)]:
        assert list(passages(blocks_of(source, sizes), max_chars=max_chars)) == whole
    for p in whole:
        assert source[p.char_start : p.char_end] == p.text
        assert p.text == p.text.strip() and 0 < len(p.text) <= max_chars
    covered = set()
    for p in whole:
        covered.update(range(p.char_start, p.char_end))
    assert all(source[i].isspace() for i in range(len(source)) if i not in covered)


@pytest.mark.skipif(CUAD is None, reason="CUAD data not on this machine (set RLMPIPE_CUAD_DIR)")
@pytest.mark.parametrize("name", ["cuad_000.txt", "cuad_050.txt", "cuad_240.txt", "cuad_314.txt"])
def test_real_contracts_cut_the_same_whatever_the_blocks(name):
    with open(CUAD / "contracts" / name, encoding="utf-8", newline="") as handle:
        text = handle.read()
    whole = list(passages([Block(text, 0)]))
    assert list(passages(blocks_of(text, (1, 7, 50, 700, 5000), seed=3))) == whole
    assert all(text[p.char_start : p.char_end] == p.text for p in whole)


def test_a_long_section_is_cut_at_sentence_ends_never_after_its_number():
    body = " ".join(f"The supplier shall deliver lot {n} on time." for n in range(60))
    text = f"9. Delivery. {body}"
    found = list(passages([Block(text, 0)], max_chars=300))
    assert len(found) > 3 and found[0].text.startswith("9. Delivery. The supplier")
    assert all(p.text.endswith(".") for p in found)


def test_sentences_do_not_end_at_a_section_number_an_abbreviation_or_an_initial():
    text = ("as follows: 9. Governing Law. This Agreement is governed by U.S. law and signed by J. Smith of "
            "Alpha Inc. in New York. See Exhibit A. The parties agree: (a) to pay; and\n(b) to deliver.")
    assert [text[s:e] for s, e in sentences(text)] == [
        "as follows:", "9. Governing Law.",
        "This Agreement is governed by U.S. law and signed by J. Smith of Alpha Inc. in New York.",
        "See Exhibit A.", "The parties agree: (a) to pay; and", "(b) to deliver."]


def test_the_scoutcam_example_has_a_passage_per_section():
    """The README's example without blank lines: its "13. Governing Law" section is a passage of its
    own, not the end of a 941-character one that starts at "11. Entire Agreement"."""
    text = (ROOT / "examples" / "contracts" / "services_agreement_scoutcam.txt").read_text(encoding="utf-8")
    found = {re.match(r"\d+\.", p.text).group(): p.text for p in passages([Block(text, 0)])
             if re.match(r"\d+\. [A-Z]", p.text)}
    assert [f"{n}." for n in range(1, 16)] == sorted(found, key=lambda label: int(label[:-1]))
    assert found["13."].startswith("13. Governing Law; Consent to Jurisdiction. This Agreement shall be governed")
    assert "Entire Agreement" not in found["13."]
