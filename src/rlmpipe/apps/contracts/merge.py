"""Verify the findings of each chunk against the contract, then merge them across chunks.

Chunks overlap or cut clauses, so one clause is often reported twice. Findings are the same when
they have the same kind and key (a clause's category; a risk's or obligation's normalised text)
and their evidence overlaps: they merge into one whose evidence is the union of both spans, so a
merge never loses text that either finding had.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlmpipe.apps.contracts.categories import normalize_category
from rlmpipe.apps.contracts.evidence import NormalizedText, locate
from rlmpipe.apps.contracts.schema import Clause, Evidence, EvidenceStats, Obligation, Risk

SEVERITY_ORDER = {"low": 0, "medium": 1, "high": 2}


@dataclass
class Verified:
    """Findings located in the contract, in document offsets."""

    clauses: list[dict] = field(default_factory=list)
    risks: list[dict] = field(default_factory=list)
    obligations: list[dict] = field(default_factory=list)
    stats: EvidenceStats = field(default_factory=lambda: EvidenceStats(proposed=0, verified=0, rejected=0))


def verify_chunk(findings: dict, chunk_text: str, chunk_start: int, verified: Verified) -> None:
    """Locate each quote of one chunk's findings (a language model's) in that chunk; keep what is
    found (with its real offsets; a clause kept is LM-confirmed), count what is not."""
    source = NormalizedText(chunk_text)
    stats = verified.stats
    for kind, target in (("clauses", verified.clauses), ("risks", verified.risks),
                         ("obligations", verified.obligations)):
        for item in findings.get(kind) or []:
            stats.proposed += 1
            if kind == "clauses":
                category = normalize_category(item.get("category", ""))
                if category is None:
                    stats.unknown_category += 1
                    continue
                item = {**item, "category": category, "confirmed": True}
            span = locate(item.get("quote", ""), source)
            if span is None:
                stats.rejected += 1
                continue
            stats.verified += 1
            start, end = chunk_start + span.start, chunk_start + span.end
            target.append({**item, "quote": chunk_text[span.start:span.end], "start": start, "end": end})


def _key(kind: str, item: dict) -> str:
    if kind == "clauses":
        return item["category"]
    if kind == "risks":
        return " ".join(item.get("what", "").lower().split())
    return " ".join(item.get("party", "").lower().split())


def _merge_group(kind: str, items: list[dict]) -> list[dict]:
    """Union overlapping findings with the same key (items sorted by start)."""
    merged: list[dict] = []
    for item in sorted(items, key=lambda i: (i["start"], -i["end"])):
        if merged and _key(kind, merged[-1]) == _key(kind, item) and item["start"] < merged[-1]["end"]:
            last = merged[-1]
            if item["end"] > last["end"]:
                last["end"] = item["end"]
            if item.get("score") is not None:
                last["score"] = max(item["score"], last.get("score") or 0.0)
            if kind == "risks" and SEVERITY_ORDER.get(item.get("severity"), 0) > SEVERITY_ORDER.get(last.get("severity"), 0):
                last["severity"], last["why"] = item["severity"], item.get("why", last.get("why", ""))
            continue
        merged.append(dict(item))
    return merged


def merge_findings(verified: Verified, text_of) -> tuple[list[Clause], list[Risk], list[Obligation]]:
    """De-duplicated findings in document order; ``text_of(start, end)`` gives the contract's text."""
    out: dict[str, list[dict]] = {}
    for kind, items in (("clauses", verified.clauses), ("risks", verified.risks), ("obligations", verified.obligations)):
        groups: dict[str, list[dict]] = {}
        for item in items:
            groups.setdefault(_key(kind, item), []).append(item)
        out[kind] = sorted((m for group in groups.values() for m in _merge_group(kind, group)),
                           key=lambda i: (i["start"], i["end"]))

    def evidence(item: dict) -> Evidence:
        return Evidence(quote=text_of(item["start"], item["end"]), char_start=item["start"], char_end=item["end"])

    clauses = [Clause(category=i["category"], evidence=evidence(i), score=i.get("score"), confirmed=i.get("confirmed"))
               for i in out["clauses"]]
    risks = [Risk(what=i.get("what", ""), severity=i.get("severity", "low"), why=i.get("why", ""),
                  evidence=evidence(i)) for i in out["risks"]]
    obligations = [Obligation(party=i.get("party", ""), action=i.get("action", ""), due=i.get("due", "") or "",
                              evidence=evidence(i)) for i in out["obligations"]]
    return clauses, risks, obligations
