"""What the analyzer asks the model for, and what it writes (one ``ContractRecord`` per contract).

``contracts.jsonl`` holds one ``ContractRecord`` per line; its JSON Schema is
``ContractRecord.model_json_schema()`` (written next to the outputs as ``contracts.schema.json``).
Every piece of evidence carries character offsets into the contract's extracted text (for
``.txt``: the file's characters), so it can be shown in place and checked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Severity = Literal["low", "medium", "high"]


# --- what the model returns for one excerpt ---------------------------------------------------------
class ClauseQuote(BaseModel):
    category: str = Field(description="one of the category names, exactly as listed")
    quote: str = Field(description="the exact words of the excerpt that make up the clause")


class RiskQuote(BaseModel):
    what: str = Field(description="the risk, in a few words")
    severity: Severity
    why: str = Field(description="why it is a risk, in one sentence")
    quote: str = Field(description="the exact words of the excerpt it comes from")


class ObligationQuote(BaseModel):
    party: str = Field(description="who must act")
    action: str = Field(description="what they must do")
    due: str = Field(default="", description="by when, or on what condition (empty if not stated)")
    quote: str = Field(description="the exact words of the excerpt it comes from")


class ReviewedClause(BaseModel):
    excerpt: int = Field(description="the number of the excerpt it is in")
    category: str = Field(description="the name of one of the excerpt's suspected categories, as written in the list")
    quote: str = Field(description="the shortest passage of that excerpt that shows it, copied word for word")


class ReviewedRisk(RiskQuote):
    excerpt: int = Field(description="the number of the excerpt the quote is from")


class ReviewedObligation(ObligationQuote):
    excerpt: int = Field(description="the number of the excerpt the quote is from")


# --- what the analyzer writes -------------------------------------------------------------------------
class Evidence(BaseModel):
    quote: str = Field(description="the text of the contract at [char_start, char_end)")
    char_start: int
    char_end: int


class Clause(BaseModel):
    category: str
    evidence: Evidence = Field(description="the clause: the sentences (or words) that make it")
    score: float | None = Field(None, description="the clause finder's score for this passage and category (0-1)")
    passage: Evidence | None = Field(
        None, description="the clause finder's passage (section or paragraph) the clause was narrowed from, as "
                          "context; null when a language model quoted the clause")
    confirmed: bool | None = Field(
        None, description="true: a language model found or confirmed it; null: found by the clause finder alone")


class Risk(BaseModel):
    what: str
    severity: Severity
    why: str
    evidence: Evidence


class Obligation(BaseModel):
    party: str
    action: str
    due: str = ""
    evidence: Evidence


class CategoryResult(BaseModel):
    category: str
    present: bool
    clauses: int = Field(description="how many verified clauses of this category")


class ScoreItem(BaseModel):
    rule: str = Field(description="the rubric line that applied")
    points: int


class EvidenceStats(BaseModel):
    proposed: int = Field(description="quotes the model gave")
    verified: int = Field(description="quotes found in the contract")
    rejected: int = Field(description="quotes not found in the contract (invented or altered): dropped")
    unknown_category: int = Field(0, description="clauses with a category name that is not a CUAD category: dropped")
    not_asked: int = Field(0, description="cascade: clauses of a category the excerpt was not asked about: dropped")


class ContractRecord(BaseModel):
    """One analysed contract."""

    doc_id: str = Field(description="hash of the file's bytes")
    path: str
    title: str = ""
    chunks: int = Field(description="LM calls that read the contract: chunks (full read) or batches of excerpts "
                                    "(cascade); 0 without an LM")
    clauses: list[Clause]
    categories: list[CategoryResult] = Field(description="all 41 CUAD categories, present or absent")
    risks: list[Risk]
    obligations: list[Obligation]
    summary: str
    risk_score: int = Field(ge=0, le=100)
    risk_breakdown: list[ScoreItem] = Field(description="the rubric lines behind the score")
    evidence: EvidenceStats
    failed_chunks: list[str] = Field(default_factory=list, description="chunks whose extraction failed")
    status: Literal["complete", "partial"] = Field(
        "complete", description="partial: some chunks could not be analysed (see failed_chunks): findings may be missing")
    mode: Literal["finder", "cascade", "full"] = Field(
        "full", description="finder: the trained clause finder alone, no LM; cascade: the finder, then an LM on the "
                            "passages it flagged; full: an LM read every chunk")
    needs_lm: list[str] = Field(default_factory=list,
                                description="what this analysis left empty because no LM was used (risks, obligations)")
