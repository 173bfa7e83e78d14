"""Scripted answers for the contract analyzer: quotes taken from the excerpt the model was shown
(plus one invented quote per excerpt, which evidence verification must reject). Answers the three
questions: a full read's extraction, the cascade's review of numbered excerpts, and the summary."""

from __future__ import annotations

import re

from rlmpipe.apps.contracts.categories import NAMES, code, normalize_category
from tests.support.replies import user_text
from tests.support.scripted_lm import chat_reply

INVENTED = "The Licensee shall pay one billion dollars on every full moon."
PATTERNS = {
    "Governing Law": r"[^.\n]*governed by[^.\n]*\.",
    "Anti-Assignment": r"[^.\n]*assign[^.\n]*\.",
    "Cap On Liability": r"[^.\n]*(?:in no event|limitation of liability|shall not exceed)[^.\n]*\.",
    "Insurance": r"[^.\n]*insurance[^.\n]*\.",
    "Termination For Convenience": r"[^.\n]*terminate[^.\n]*(?:convenience|without cause|for any reason)[^.\n]*\.",
}


def excerpt_of(request: dict) -> str:
    text = user_text(request)
    match = re.search(r"\[\[ ## excerpt ## \]\]\n(.*?)\n\n(?:Respond with|\[\[ ##)", text, re.S)
    return match.group(1) if match else text


EXCERPT = re.compile(r"^### Excerpt (\d+) \(suspected: ([^)\n]*)\)\n", re.M)


def review_excerpts(request: dict) -> list[tuple[int, list[str], str]]:
    """The cascade's excerpts in a review prompt: ``(number, suspected categories' names, text)``."""
    text = user_text(request)
    match = re.search(r"\[\[ ## excerpts ## \]\]\n(.*?)\n\n(?:Respond with|\[\[ ##)", text, re.S)
    body = match.group(1) if match else ""
    heads = list(EXCERPT.finditer(body))
    out = []
    for head, following in zip(heads, heads[1:] + [None]):
        end = following.start() if following else len(body)
        suspected = [normalize_category(c) or c.strip() for c in head.group(2).split(",")]  # codes -> names
        out.append((int(head.group(1)), suspected, body[head.end():end]))
    return out


def review_reply(request: dict) -> str:
    """The cascade's review: per excerpt, the suspected categories whose pattern matches there,
    one invented quote, and one clause of a category the excerpt was not asked about."""
    clauses, risks, obligations = [], [], []
    for number, suspected, excerpt in review_excerpts(request):
        for category, pattern in PATTERNS.items():
            match = re.search(pattern, excerpt, re.I)
            if match and category in suspected:  # (Insurance answered by its code, as a model may)
                clauses.append({"excerpt": number, "category": code(category) if category == "Insurance" else category,
                                "quote": " ".join(match.group(0).split())})
        clauses.append({"excerpt": number, "category": suspected[0], "quote": INVENTED})
        unasked = next(name for name in NAMES if name not in suspected)
        clauses.append({"excerpt": number, "category": unasked, "quote": " ".join(excerpt.split()[:8])})
    for clause in clauses:
        if clause["category"] == "Cap On Liability":
            risks.append({"excerpt": clause["excerpt"], "what": "capped exposure", "severity": "medium",
                          "why": "a cap", "quote": clause["quote"]})
        if clause["category"] == code("Insurance"):
            obligations.append({"excerpt": clause["excerpt"], "party": "Company", "action": "keep insurance",
                                "due": "", "quote": clause["quote"]})
    return chat_reply(clauses=clauses, risks=risks, obligations=obligations)


def extraction_reply(request: dict) -> str:
    text = user_text(request)
    if "[[ ## findings ## ]]" in text:  # the summary step
        return chat_reply(summary="A contract between the parties, with its main terms and risks.")
    if "[[ ## excerpts ## ]]" in text:  # the cascade's review
        return review_reply(request)
    excerpt = excerpt_of(request)
    clauses = []
    for category, pattern in PATTERNS.items():
        match = re.search(pattern, excerpt, re.I)
        if match:
            # re-wrapped, as models do: whitespace collapsed
            clauses.append({"category": category, "quote": " ".join(match.group(0).split())})
    clauses.append({"category": "License Grant", "quote": INVENTED})
    risks = [{"what": "uncapped exposure", "severity": "high", "why": "no cap", "quote": c["quote"]}
             for c in clauses if c["category"] == "Cap On Liability"]
    obligations = [{"party": "Company", "action": "keep insurance", "due": "", "quote": c["quote"]}
                   for c in clauses if c["category"] == "Insurance"]
    return chat_reply(clauses=clauses, risks=risks, obligations=obligations)
