"""Sentences of a passage: the units a finding is narrowed to, and where a long passage is cut.

A sentence ends at ``.``, ``!`` or ``?`` (and any closing quote or bracket) before white space and a
capital, a digit, a bracket or a quote, except after an abbreviation ("Inc.", "U.S.", "No."), an
initial ("J. Smith") or a section label ("9." of "9. Governing Law" labels the section, it ends
nothing). A new sentence also starts at every mark of the outline (:mod:`rlmpipe.ingest.outline`:
a numbered section, a lettered item at a line start, a title) and, where ``semicolons``, after a
semicolon that ends a list item ("...; (b)" or "; and" at a line end): contract clauses are often
one item of a list.
"""

from __future__ import annotations

import re

from rlmpipe.ingest.outline import marks

_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*+\s++(?=[A-Z0-9(\"'\u201c\[])")
_SEMICOLON = re.compile(r";(?:[ \t]++(?:and|or|and/or))?(?:[ \t]*+\r?\n\s*+|[ \t]++(?=\([a-zA-Z0-9]{1,5}\)))")
_WORD_BEFORE = re.compile(r"[\w.&'-]{1,20}$")
ABBREVIATIONS = frozenset(
    "inc ltd co corp no nos sec secs art arts st mr mrs ms dr jr sr vs v e.g i.e etc u.s u.k n.a l.p l.l.c "
    "llc s.a n.v b.v id cf approx para paras ex exh sch p pp fig cl ch dept est min max viz al ave blvd "
    "rev u.s.a p.c s.p.a a.g g.m.b.h gmbh plc pty bhd".split())


_LETTERED = frozenset("exhibit schedule annex appendix attachment section article part clause item paragraph "
                      "class series".split())


def sentence_starts(text: str, *, semicolons: bool = True, outline: bool = True) -> list[int]:
    """The offsets in ``text`` where a sentence starts after the first (sorted, without 0)."""
    labels: set[int] = set()  # where a section label's period is: not a sentence end
    starts: set[int] = set()
    if outline:
        for mark in marks(text):
            if mark.offset > 0:
                starts.add(mark.offset)
            labels.add(mark.offset + len(mark.label) - 1)
    for match in _END.finditer(text):
        at = match.start()
        if text[at] == "." and (at in labels or _abbreviation(text, at)):
            continue
        starts.add(match.end())
    if semicolons:
        starts.update(match.end() for match in _SEMICOLON.finditer(text))
    return sorted(s for s in starts if 0 < s < len(text))


def sentences(text: str, **options) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text``, without surrounding white space."""
    bounds = [0, *sentence_starts(text, **options), len(text)]
    out = []
    for start, end in zip(bounds, bounds[1:]):
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            out.append((start, end))
    return out


def _abbreviation(text: str, period: int) -> bool:
    """Whether the period at ``text[period]`` ends an abbreviation or an initial, not a sentence."""
    match = _WORD_BEFORE.search(text, max(0, period - 20), period)
    if not match:
        return False
    word = match.group().lstrip("'&-").lower()
    if len(word) == 1 and word.isalpha():  # an initial ("John A. Smith"), not "Exhibit A. The ..."
        previous = _WORD_BEFORE.search(text, max(0, match.start() - 21), max(0, match.start() - 1))
        return not (previous and previous.group().lower() in _LETTERED)
    return word in ABBREVIATIONS or word.rstrip(".") in ABBREVIATIONS
