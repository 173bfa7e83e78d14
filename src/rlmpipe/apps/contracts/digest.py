"""A contract's summary made only of its own words, for an analysis without a language model.

What the clause finder found, in a fixed order: the document's name, the parties, the dates, the
governing law, the term and its renewal, then which notable clauses are present. Every part quotes
a finding as the finder narrowed it (the sentences, or the date, that make the clause; clipped with
"..." past ``SNIPPET_CHARS``), so nothing is invented.
"""

from __future__ import annotations

from rlmpipe.apps.contracts.categories import CLAUSES
from rlmpipe.apps.contracts.schema import Clause

PARTS = (
    ("Parties", "Parties"),
    ("Agreement Date", "Dated"),
    ("Effective Date", "Effective"),
    ("Governing Law", "Governing law"),
    ("Expiration Date", "Term"),
    ("Renewal Term", "Renewal"),
    ("Notice Period To Terminate Renewal", "Notice to end a renewal"),
)
SNIPPET_CHARS = 300
NOTE = "(Composed from the contract's own words by the clause finder; no language model was used.)"


def compose_summary(title: str, clauses: list[Clause]) -> str:
    best: dict[str, Clause] = {}
    for clause in clauses:  # each category's highest-scoring passage
        kept = best.get(clause.category)
        if kept is None or (clause.score or 0) > (kept.score or 0):
            best[clause.category] = clause
    lines = [f"{title}." if title and not title.endswith(".") else title]
    shown: set[int] = set()
    for category, label in PARTS:
        clause = best.get(category)
        if clause is None or clause.evidence.char_start in shown:  # one passage may hold several details
            continue
        same = [c for c in clauses if c.category == category and c.passage is not None and clause.passage is not None
                and c.passage.char_start == clause.passage.char_start] or [clause]  # each party of the passage
        shown.update(c.evidence.char_start for c in same)
        lines.append(f"{label}: " + ", ".join(f"\u201c{_snippet(c.evidence.quote)}\u201d" for c in same))
    notable = [name for name in CLAUSES if name in best]
    if notable:
        lines.append("Clauses found: " + ", ".join(notable) + ".")
    else:
        lines.append("No clause of the 33 CUAD clause categories was found.")
    lines.append(NOTE)
    return " ".join(line for line in lines if line)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= SNIPPET_CHARS:
        return text
    cut = text.rfind(" ", 0, SNIPPET_CHARS)
    return text[: cut if cut > SNIPPET_CHARS // 2 else SNIPPET_CHARS] + " ..."
