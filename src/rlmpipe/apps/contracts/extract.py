"""The questions the analyzer asks a model: what is in this excerpt (a full read), are these suspected
clauses really there (the cascade), and what is the gist."""

from __future__ import annotations

import dspy

from rlmpipe.apps.contracts.categories import category_guide
from rlmpipe.apps.contracts.schema import (
    ClauseQuote,
    ObligationQuote,
    ReviewedClause,
    ReviewedObligation,
    ReviewedRisk,
    RiskQuote,
)

EXTRACT_INSTRUCTIONS = f"""You review one excerpt of a commercial contract for a lawyer.

List every clause in the excerpt that belongs to one of these categories (use the category names
exactly as written):
{category_guide()}

Also list the risks the excerpt creates for either party (severity low, medium or high) and the
obligations it places on a party (who must do what, by when or on what condition).

Every quote must be copied word for word from the excerpt: it is checked against the contract,
and a quote that is not found there is discarded. Quote the shortest passage that shows the
point. Return empty lists when the excerpt has nothing of a kind."""


class ExtractFindings(dspy.Signature):
    __doc__ = EXTRACT_INSTRUCTIONS

    excerpt: str = dspy.InputField(desc="a part of the contract")
    clauses: list[ClauseQuote] = dspy.OutputField()
    risks: list[RiskQuote] = dspy.OutputField()
    obligations: list[ObligationQuote] = dspy.OutputField()


REVIEW_INSTRUCTIONS = """You check excerpts of a commercial contract for a lawyer. A screening model
suspects some clause categories in each excerpt, named by their codes (C1, C2, ...); the categories
are listed below with their codes and explained.

For each excerpt, confirm each suspected category that the excerpt really contains, and only those
(leave out the ones it does not), quoting the shortest passage of that excerpt that shows it. Also
list the risks the excerpts create for either party (severity low, medium or high) and the
obligations they place on a party (who must do what, by when or on what condition).

Every quote must be copied word for word from the excerpt named with it: it is checked against the
contract, and a quote that is not found there is discarded."""


class ReviewExcerpts(dspy.Signature):
    __doc__ = REVIEW_INSTRUCTIONS

    categories: str = dspy.InputField(desc="each suspected category: its code, its name, what it means")
    excerpts: str = dspy.InputField(desc="numbered excerpts, each with the codes of the categories suspected in it")
    clauses: list[ReviewedClause] = dspy.OutputField()
    risks: list[ReviewedRisk] = dspy.OutputField()
    obligations: list[ReviewedObligation] = dspy.OutputField()


class SummarizeContract(dspy.Signature):
    """Write a short executive summary of a contract for a busy reader (at most 120 words): what it
    is, between whom, its term, the main obligations, and the main risks. Use only the findings
    given; do not invent anything."""

    title: str = dspy.InputField()
    findings: str = dspy.InputField(desc="verified clauses, risks and obligations, one per line")
    summary: str = dspy.OutputField()


class Extractor:
    """The DSPy programs of the analyzer (their signatures go into the run fingerprint)."""

    def __init__(self) -> None:
        self.extract = dspy.Predict(ExtractFindings)
        self.review = dspy.Predict(ReviewExcerpts)
        self.summarize = dspy.Predict(SummarizeContract)

    def findings(self, excerpt: str) -> dict:
        return _as_dicts(self.extract(excerpt=excerpt))

    def reviewed(self, categories: str, excerpts: str) -> dict:
        return _as_dicts(self.review(categories=categories, excerpts=excerpts))

    def summary(self, title: str, findings: str) -> dict:
        return {"summary": self.summarize(title=title, findings=findings).summary}


def _as_dicts(prediction) -> dict:
    """A prediction's findings as plain JSON-able lists (what a step stores)."""
    return {kind: [item.model_dump() for item in getattr(prediction, kind) or []]
            for kind in ("clauses", "risks", "obligations")}
