"""The risk score: 0-100, computed from the verified findings only, by a fixed rubric.

The same findings always give the same score (no model is asked for a number). The rubric reads
a contract from the point of view of a reviewer deciding how much attention it needs: clauses
that restrict a party or expose it add points, protections that are missing add points, and the
risks the model identified (each backed by verified evidence) add points by severity, capped so
that a long list of small risks cannot dominate. README.md prints this table.
"""

from __future__ import annotations

from rlmpipe.apps.contracts.schema import Clause, Risk, ScoreItem

#: Clauses whose presence adds points: they restrict a party or widen its exposure.
PRESENT: dict[str, int] = {
    "Uncapped Liability": 15,
    "Non-Compete": 8,
    "Exclusivity": 6,
    "Liquidated Damages": 6,
    "Change Of Control": 5,
    "Most Favored Nation": 5,
    "Minimum Commitment": 5,
    "Ip Ownership Assignment": 5,
    "Termination For Convenience": 4,
    "Rofr/Rofo/Rofn": 4,
    "Covenant Not To Sue": 4,
    "Joint Ip Ownership": 4,
    "Volume Restriction": 3,
    "Price Restrictions": 3,
    "Irrevocable Or Perpetual License": 3,
    "Renewal Term": 3,
    "Anti-Assignment": 2,
    "No-Solicit Of Customers": 2,
    "No-Solicit Of Employees": 2,
    "Non-Disparagement": 2,
    "Third Party Beneficiary": 2,
    "Unlimited/All-You-Can-Eat-License": 2,
}
#: Protections whose absence adds points.
ABSENT: dict[str, int] = {
    "Cap On Liability": 10,
    "Governing Law": 4,
    "Insurance": 3,
    "Audit Rights": 2,
    "Warranty Duration": 1,
}
SEVERITY_POINTS = {"high": 8, "medium": 4, "low": 1}
MAX_RISK_POINTS = 30


def risk_score(clauses: list[Clause], risks: list[Risk]) -> tuple[int, list[ScoreItem]]:
    present = {clause.category for clause in clauses}
    items = [ScoreItem(rule=f"has {name}", points=points) for name, points in PRESENT.items() if name in present]
    items += [ScoreItem(rule=f"no {name}", points=points) for name, points in ABSENT.items() if name not in present]
    risk_points = sum(SEVERITY_POINTS.get(risk.severity, 0) for risk in risks)
    if risk_points:
        counts = {level: sum(1 for r in risks if r.severity == level) for level in ("high", "medium", "low")}
        described = ", ".join(f"{n} {level}" for level, n in counts.items() if n)
        items.append(ScoreItem(rule=f"risks found: {described} (capped at {MAX_RISK_POINTS})",
                               points=min(MAX_RISK_POINTS, risk_points)))
    return min(100, sum(item.points for item in items)), items


def rubric_markdown() -> str:
    """The rubric as a Markdown table (for the README)."""
    rows = ["| finding | points |", "|---|---|"]
    rows += [f"| has {name} | +{points} |" for name, points in PRESENT.items()]
    rows += [f"| no {name} | +{points} |" for name, points in ABSENT.items()]
    rows += [f"| each {level}-severity risk | +{points} |" for level, points in SEVERITY_POINTS.items()]
    rows.append(f"| risks, in total, at most | +{MAX_RISK_POINTS} |")
    rows.append("| the score is the sum, at most | 100 |")
    return "\n".join(rows)
