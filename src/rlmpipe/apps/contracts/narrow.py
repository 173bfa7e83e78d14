"""Narrowing a finding to the clause: the sentence or sentences of its passage that make it.

A finding's passage is a whole section or paragraph; the clause the experts mark is usually one or
two of its sentences (median about 200 characters). Each sentence of the passage
(:mod:`.sentences`) is scored for the finding's category by the finder's sentence scorer; the span
is the best sentence, grown over each neighbour whose score is within the category's ``margin`` of
the best (a clause that runs over two sentences keeps both). For categories whose clause is a few
words inside a sentence (a date, a document's name, a party's name), the span is narrowed further to
those words when the sentence has them (:func:`words_of`); which categories do is chosen by
cross-validation.
"""

from __future__ import annotations

import re

import numpy as np

from rlmpipe.apps.contracts.sentences import sentences

_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December|"
          r"Jan\.?|Feb\.?|Mar\.?|Apr\.?|Jun\.?|Jul\.?|Aug\.?|Sept?\.?|Oct\.?|Nov\.?|Dec\.?)")
_DATE = re.compile(
    rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+day\s+of\s+{_MONTH},?\s+\d{{4}}"  # 8th day of May, 2014
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?\s*,?\s+\d{{4}}"  # May 8, 2014
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH},?\s+\d{{4}}"  # 8 May 2014
    r"|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4})",  # 05/08/2014
    re.IGNORECASE)
_NAME = re.compile(
    r"((?:[A-Z][\w&'.-]*,?[ \t]+){0,7}?(?:AGREEMENT|Agreement|CONTRACT|Contract|LICENSE|License|LEASE|Lease"
    r"|AMENDMENT|Amendment|ADDENDUM|Addendum|PLAN|Plan)\b)")
_PARTY = re.compile(
    r"(?:(?:[A-Z][\w&'.-]*|&),?[ \t]+){1,8}?(?:Inc|INC|Incorporated|INCORPORATED|Corporation|CORPORATION|Corp|CORP"
    r"|LLC|L\.L\.C|Ltd|LTD|Limited|LIMITED|LP|L\.P|LLP|Co|CO|Company|COMPANY|GmbH|AG|S\.A|N\.V|B\.V|plc|PLC|Trust"
    r"|TRUST|Bank|BANK)\b\.?(?:,?[ \t]+(?:Incorporated|INCORPORATED|Inc|INC|LLC|Ltd|LTD|Limited|LP|L\.P)\b\.?)?")
_DEFINED = re.compile(r"\(\s*(?:hereinafter(?:\s+referred\s+to)?(?:\s+as)?\s+|the\s+|each\s+|collectively,?\s+)?"
                      r"(?:a\s+)?[\"\u201c]([A-Z][^\"\u201d\n]{0,40}?)[\"\u201d]")
#: a person named right after "between", "and" or "among" (whose short name follows in parentheses)
_NAMED = re.compile(r"(?:\bbetween|\band|\bamong|,)\s+(?:[A-Z][\w.&'-]*,?\s+){1,5}$")
#: defined terms of a preamble that are not parties
NOT_PARTIES = frozenset(("agreement", "effective date", "amendment", "contract", "parties", "party", "term",
                         "territory", "product", "products", "services", "affiliate", "affiliates", "closing date"))
#: what a category's clause can be narrowed to inside its sentence, when the sentence has it: a date,
#: the document's name, the parties' names
WORDS = {"Agreement Date": _DATE, "Effective Date": _DATE, "Expiration Date": _DATE, "Document Name": _NAME,
         "Parties": _PARTY}


def cut_to_words(category: str, text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The spans a ``category`` clause in ``text[start:end]`` is cut to: every party's name for
    Parties (:func:`names_of`), else its words (:func:`words_of`); ``[(start, end)]`` when there
    are none."""
    if category == "Parties":
        return names_of(text, start, end) or [(start, end)]
    return [words_of(category, text, start, end)]


def spans(text: str) -> list[tuple[int, int]]:
    """The sentences of a passage's text, as ``(start, end)`` offsets into it."""
    return sentences(text) or [(0, len(text))]


def grow(logits: np.ndarray, margin: float) -> tuple[int, int]:
    """The indexes ``[first, last]`` of the best sentence and the neighbours around it whose logit is
    within ``margin`` of the best (contiguous)."""
    best = int(np.argmax(logits))
    first = last = best
    floor = logits[best] - margin
    while first > 0 and logits[first - 1] >= floor:
        first -= 1
    while last + 1 < len(logits) and logits[last + 1] >= floor:
        last += 1
    return first, last


def words_of(category: str, text: str, start: int, end: int) -> tuple[int, int]:
    """``text[start:end]`` narrowed to the words that make a ``category`` clause (its first date,
    the document's name, a party's name), or unchanged when it has none or the category has no such
    words."""
    pattern = WORDS.get(category)
    if pattern is None:
        return start, end
    match = pattern.search(text, start, end)
    if match is None:
        return start, end
    words = match.group(0).split()
    if category == "Document Name":  # "This Services Agreement" -> "Services Agreement"
        skip = 0
        while skip < len(words) - 1 and words[skip].lower().strip(",") in ("this", "the", "exhibit", "an", "a"):
            skip += 1
        if len(words) - skip < 2:
            return start, end
        at = match.start()
        for word in words[:skip]:
            at = text.index(word, at) + len(word)
        while text[at].isspace():
            at += 1
        return at, match.end()
    return match.start(), match.end()


def names_of(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The parties named in ``text[start:end]``: each company name ("Intellisense Solutions, Inc.")
    and each short name defined in parentheses right after a party ('..., Inc., a Nevada
    corporation (the "Company")', 'between Idan Maimon ("Maimon")'), in order; empty when there is
    none. A Parties finding is one per name: the experts mark the names."""
    companies = [(m.start(), m.end()) for m in _PARTY.finditer(text, start, end)]
    found = list(companies)
    for match in _DEFINED.finditer(text, start, end):
        term = match.group(1).strip()
        before = text[max(start, match.start() - 80):match.start()]
        after_party = any(match.start() - 80 <= e <= match.start() for _, e in companies) or _NAMED.search(before)
        if after_party and term.lower() not in NOT_PARTIES:
            found.append((match.start(1), match.end(1)))
    found.sort()
    out: list[tuple[int, int]] = []
    for span in found:
        if not out or span[0] >= out[-1][1]:
            out.append(span)
    return out
