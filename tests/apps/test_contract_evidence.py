"""Evidence verification, merging and the risk score: the deterministic half of the analyzer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rlmpipe.apps.contracts.evidence import NormalizedText, locate, normalize
from rlmpipe.apps.contracts.merge import Verified, merge_findings, verify_chunk
from rlmpipe.apps.contracts.risk import MAX_RISK_POINTS, risk_score, rubric_markdown
from rlmpipe.apps.contracts.schema import Clause, Evidence, Risk

SOURCE = ("12.3 Governing Law.\nThis Agreement shall be governed by the laws of the\n"
          "State of  New York, without regard to its conflict of laws principles.\n\n"
          "13. Assignment. Neither party may assign this Agreement without the other\u2019s prior written consent.")


def test_quotes_are_found_despite_rewrapped_lines_spaces_and_typography():
    source = NormalizedText(SOURCE)
    span = locate("governed by the laws of the State of New York", source)
    assert SOURCE[span.start:span.end] == "governed by the laws of the\nState of  New York"
    span = locate("without the other's prior written consent", source)  # straight apostrophe
    assert SOURCE[span.start:span.end] == "without the other\u2019s prior written consent"


def test_elided_quotes_match_their_pieces_in_order():
    span = locate("This Agreement shall be governed ... conflict of laws principles.", NormalizedText(SOURCE))
    assert SOURCE[span.start:span.end].startswith("This Agreement") and SOURCE[span.end - 1] == "."
    assert locate("conflict of laws principles ... This Agreement shall be governed", NormalizedText(SOURCE)) is None


def test_invented_or_altered_quotes_are_not_found():
    source = NormalizedText(SOURCE)
    assert locate("This Agreement shall be governed by the laws of the State of Delaware", source) is None
    assert locate("the Licensee shall pay royalties", source) is None
    assert locate("", source) is None and locate("a", source) is None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_real_passage_is_found_at_its_own_offsets_after_whitespace_changes(data):
    words = data.draw(st.lists(st.sampled_from(["alpha", "beta", "gamma,", "delta.", "\u201cx\u201d", "(a)", "12.3"]),
                               min_size=3, max_size=40))
    seps = data.draw(st.lists(st.sampled_from([" ", "  ", "\n", " \n ", "\t"]), min_size=len(words), max_size=len(words)))
    source_text = "".join(w + s for w, s in zip(words, seps))
    i = data.draw(st.integers(0, len(words) - 2))
    j = data.draw(st.integers(i + 1, len(words)))
    quote = " ".join(words[i:j])
    span = locate(quote, NormalizedText(source_text))
    assert span is not None
    assert normalize(source_text[span.start:span.end]) == normalize(quote)


def test_findings_from_overlapping_chunks_merge_into_one_with_the_union_of_their_evidence():
    verified = Verified()
    first, second = SOURCE[:120], SOURCE[60:]
    verify_chunk({"clauses": [{"category": "governing law", "quote": "governed by the laws of the State of New York"}]},
                 first, 0, verified)
    verify_chunk({"clauses": [{"category": "Governing Law", "quote": "State of New York, without regard to its conflict"},
                              {"category": "Anti-Assignment", "quote": "Neither party may assign this Agreement"},
                              {"category": "Nonsense Category", "quote": "This Agreement"}],
                  "risks": [{"what": "X", "severity": "low", "why": "w", "quote": "no such words here"}]},
                 second, 60, verified)
    assert (verified.stats.proposed, verified.stats.verified, verified.stats.rejected,
            verified.stats.unknown_category) == (5, 3, 1, 1)
    clauses, risks, obligations = merge_findings(verified, lambda s, e: SOURCE[s:e])
    assert [c.category for c in clauses] == ["Governing Law", "Anti-Assignment"]
    law = clauses[0].evidence
    assert SOURCE[law.char_start:law.char_end] == law.quote
    assert law.quote.startswith("governed by") and law.quote.endswith("conflict")
    assert risks == [] and obligations == []


def test_risk_score_is_a_function_of_the_findings():
    def clause(category):
        return Clause(category=category, evidence=Evidence(quote="q", char_start=0, char_end=1))

    none_score, none_items = risk_score([], [])
    assert none_score == 10 + 4 + 3 + 2 + 1  # every protection missing
    protected = [clause(c) for c in ("Cap On Liability", "Governing Law", "Insurance", "Audit Rights", "Warranty Duration")]
    assert risk_score(protected, [])[0] == 0
    risky = protected + [clause("Uncapped Liability"), clause("Non-Compete")]
    risks = [Risk(what="r", severity="high", why="w", evidence=Evidence(quote="q", char_start=0, char_end=1))] * 10
    score, items = risk_score(risky, risks)
    assert score == 15 + 8 + MAX_RISK_POINTS
    assert risk_score(list(reversed(risky)), risks)[0] == score  # order does not matter
    assert any(item.rule == "has Uncapped Liability" for item in items)
    assert "| has Uncapped Liability | +15 |" in rubric_markdown()
