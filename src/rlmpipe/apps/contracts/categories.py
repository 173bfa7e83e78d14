"""The 41 CUAD clause categories (Hendrycks et al., 2021), with the question each one answers.

The first eight are *details* (what is the name, who are the parties, which law...); the other
33 are yes/no questions about whether the contract contains such a clause.
"""

from __future__ import annotations

import re

DETAILS: dict[str, str] = {
    "Document Name": "the name of the contract",
    "Parties": "the parties who signed the contract (names, and the short names they are given)",
    "Agreement Date": "the date the contract was signed",
    "Effective Date": "the date the contract takes effect",
    "Expiration Date": "when the initial term ends",
    "Renewal Term": "the renewal term after the initial term (automatic renewals included)",
    "Notice Period To Terminate Renewal": "the notice needed to stop a renewal",
    "Governing Law": "which state's or country's law governs the contract",
}

CLAUSES: dict[str, str] = {
    "Most Favored Nation": "a party gets terms at least as good as any third party gets",
    "Competitive Restriction Exception": "exceptions or carve-outs to non-compete, exclusivity or no-solicit",
    "Non-Compete": "a party may not compete, or operate in a market or with certain parties",
    "Exclusivity": "exclusive dealing, or a duty to buy/sell only from/to the counterparty",
    "No-Solicit Of Customers": "a party may not solicit the other's customers",
    "No-Solicit Of Employees": "a party may not solicit or hire the other's employees",
    "Non-Disparagement": "a party may not disparage the other",
    "Termination For Convenience": "a party may terminate without cause (at will, on notice)",
    "Rofr/Rofo/Rofn": "right of first refusal, first offer or first negotiation",
    "Change Of Control": "rights triggered by a merger, acquisition or change of control",
    "Anti-Assignment": "consent or notice is needed to assign the contract",
    "Revenue/Profit Sharing": "a party shares revenue or profit with the other",
    "Price Restrictions": "limits on raising or lowering prices",
    "Minimum Commitment": "a minimum order, purchase or payment amount",
    "Volume Restriction": "a cap or threshold on volume, usage or quantity",
    "Ip Ownership Assignment": "intellectual property is assigned to or owned by a party",
    "Joint Ip Ownership": "intellectual property is owned jointly",
    "License Grant": "a license is granted",
    "Non-Transferable License": "a license may not be transferred or sublicensed",
    "Affiliate License-Licensor": "a license covers the licensor's affiliates' IP",
    "Affiliate License-Licensee": "a license extends to the licensee's affiliates",
    "Unlimited/All-You-Can-Eat-License": "an unlimited-use or enterprise-wide license",
    "Irrevocable Or Perpetual License": "a license that is irrevocable or perpetual",
    "Source Code Escrow": "source code is deposited in escrow",
    "Post-Termination Services": "duties that continue after the contract ends (transition, wind-down)",
    "Audit Rights": "a party may audit the other's books, records or compliance",
    "Uncapped Liability": "liability that is not capped (e.g. carve-outs from a cap)",
    "Cap On Liability": "a cap or limit on liability",
    "Liquidated Damages": "a fixed amount or formula owed on breach or termination",
    "Warranty Duration": "how long a warranty lasts",
    "Insurance": "a duty to carry insurance",
    "Covenant Not To Sue": "a party agrees not to sue or challenge (e.g. IP validity)",
    "Third Party Beneficiary": "a non-party may enforce the contract",
}

CATEGORIES: dict[str, str] = {**DETAILS, **CLAUSES}
NAMES: tuple[str, ...] = tuple(CATEGORIES)

_KEY = re.compile(r"[^a-z]+")
_BY_KEY = {_KEY.sub("", name.lower()): name for name in NAMES}


_CODE = re.compile(r"\s*\[?\s*C(\d{1,2})\s*\]?\s*", re.I)


def code(name: str) -> str:
    """The short code of a category in the cascade's prompts (``C1`` .. ``C41``, CUAD's order): an
    excerpt names its suspected categories by code, a few tokens instead of a few words each."""
    return f"C{NAMES.index(name) + 1}"


def normalize_category(text: str) -> str | None:
    """The CUAD category a model meant ('non compete', 'NON-COMPETE' -> 'Non-Compete'; its code
    'C7' or '[C7]' -> the seventh), or None."""
    match = _CODE.fullmatch(text or "")
    if match:
        number = int(match.group(1))
        return NAMES[number - 1] if 1 <= number <= len(NAMES) else None
    return _BY_KEY.get(_KEY.sub("", (text or "").lower()))


def category_guide(names=None, *, codes: bool = False) -> str:
    """``- Name: what it means``, one line per category (all of them, or ``names`` in CUAD's order);
    with ``codes``, ``- [C7] Name: what it means``."""
    wanted = set(names) if names is not None else None
    return "\n".join(f"- {f'[{code(name)}] ' if codes else ''}{name}: {question}"
                     for name, question in CATEGORIES.items() if wanted is None or name in wanted)
