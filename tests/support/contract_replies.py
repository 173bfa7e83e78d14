"""Scripted answers for the contract analyzer: quotes taken from the excerpt the model was shown
(plus one invented quote per excerpt, which evidence verification must reject)."""

from __future__ import annotations

import re

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


def extraction_reply(request: dict) -> str:
    text = user_text(request)
    if "[[ ## findings ## ]]" in text:  # the summary step
        return chat_reply(summary="A contract between the parties, with its main terms and risks.")
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
