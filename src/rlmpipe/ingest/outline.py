"""The outline of a text: where its headings, numbered sections and lettered items begin.

One set of rules, used by the readers (a block's ``heading_path`` in .txt and .pdf), the structure
chunker (how strong a cut point is: :mod:`rlmpipe.chunking.cuts`) and the contract finder's passages
(a passage starts at a section and never spans two). Plain text marks structure only by how lines
and sentences begin, so the rules look at that and at the line before:

* a **heading**: "ARTICLE IV", "Section 5", "EXHIBIT A", a Markdown "#";
* a **title**: a short line in capitals ("GOVERNING LAW") after a blank line or a sentence end;
* a **section** "12." and a **clause** "12.3", at a line start or after a sentence end ("... as
  follows: 1. Services. The Company ..."), followed by a capital or alone on its line: "30 days"
  and "2.5 million" are not sections;
* a **subclause** "(a)", "(iv)", "a)", "A." at a line start.

A line start counts only after a line that ends a unit (blank, or ending in ``.:;!?``, or a
heading-like line without lower-case letters), so a line that a PDF wrapped in mid-sentence
("... AND THE" / "PARTIES EXPRESSLY EXCLUDE") is not a title, and "Section 5.2 of the" wrapped to
the start of a line is not a heading. Every pattern is linear in the text (possessive runs,
bounded look-arounds); each match is checked by looking at most ``LOOK_BACK`` characters back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

#: kinds, strongest first (the chunker grades cuts by them)
HEADING, TITLE, SECTION, CLAUSE, SUBCLAUSE = "heading", "title", "section", "clause", "subclause"
#: how far back a match looks for the end of the line before it
LOOK_BACK = 200
#: the longest title or heading text kept
TITLE_CHARS = 100

_KEYWORDS = ("ARTICLE|Article|SECTION|Section|PART|Part|EXHIBIT|Exhibit|SCHEDULE|Schedule|ANNEX|Annex|"
             "APPENDIX|Appendix|ADDENDUM|Addendum")
# What a line starts with. Led by a literal "\n" (which the regex engine scans for quickly); the
# text's own start is matched by prefixing a "\n" (see ``line_marks``).
_LINE_START = re.compile(
    r"\n[ \t]*+(?:"
    r"(?P<markdown>#{1,6}[ \t])"
    rf"|(?P<heading>(?:{_KEYWORDS})[ \t]++(?:\d{{1,3}}(?:\.\d{{1,3}})*+|[IVXLC]{{1,7}}|[A-Z])\b)"
    r"|(?P<clause>\d{1,3}(?:\.\d{1,3})++\.?(?=[ \t]++[^a-z\s]|[ \t]*+\r?$))"
    r"|(?P<section>\d{1,3}(?:\.(?=[ \t]++[^a-z\s]|[ \t]*+\r?$)|(?=[ \t]++[A-Z(\"'\u201c])))"
    r"|(?P<subclause>(?:\([a-zA-Z]{1,2}\)|\([ivxlcIVXLC]{1,6}\)|[a-z]\)|[A-Z]\.)(?=[ \t]))"
    r"|(?P<title>(?=[^a-z\n]{0,97}[A-Z]{3})[^a-z\n]{3,100}$)"
    r")",
    re.MULTILINE,
)
# A section number after a sentence end, in running text: "... notice. 6. Reimbursement. The ..."
# (a single number needs its period; a dotted one may go without: "1.3 The term ...").
_INLINE = re.compile(
    r"[.:;!?][\"'\u201d\u2019)\]]?[ \t]{1,6}+"
    r"(?P<label>\d{1,3}(?:\.\d{1,3})++\.?|\d{1,3}\.)(?=[ \t]{1,4}+[A-Z(\"\u201c])"
)
_ENDS_UNIT = frozenset(".:;!?")
_CLOSERS = frozenset("\"')]\u201d\u2019")
_CONTINUES = frozenset("AND OR THE OF TO A AN IN FOR WITH BY ON AT ANY ALL SUCH THAT WHICH IS ARE BE SHALL "
                       "NOT NO AS FROM OTHER ITS THEIR".split())
_TITLE_END = re.compile(r"[.:](?=\s)|[ \t]{3}|\n")


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a unit of the outline starts: ``offset`` is its label's first character."""

    offset: int
    kind: str  # HEADING, TITLE, SECTION, CLAUSE or SUBCLAUSE
    label: str  # "ARTICLE IV", "12.", "12.3", "(a)", or the title itself
    inline: bool = False  # found after a sentence end, not at a line start

    @property
    def level(self) -> int:
        """Depth in a heading path: articles and titles 1, sections 2 ("12.", "Section 12"), clauses
        3 and deeper ("12.3", "12.3.1"), a Markdown heading its number of "#"."""
        if self.label.startswith("#"):
            return len(self.label)
        number = self.label.rstrip(".")
        if self.kind == HEADING and number[:7].lower() == "section":
            return 2 + number.count(".")
        if self.kind in (HEADING, TITLE):
            return 1
        if self.kind == SUBCLAUSE:
            return 9
        return 2 + number.count(".")


class HeadingPath:
    """The stack of open headings; a heading of level n closes every heading of level >= n."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> tuple[str, ...]:
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, " ".join(title.split())))
        return self.path

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self._stack)


def line_marks(text: str, *, before: str = "") -> Iterator[Mark]:
    """The marks at line starts in ``text``, in order, with offsets into ``text``. ``before``: the
    text just before it ("" at a document's start): its last line decides whether ``text``'s first
    line may start a unit, and whether ``text`` starts a line at all."""
    context = before[-LOOK_BACK - 1:] if before else "\n"  # each line start sees LOOK_BACK characters back
    source = context + text
    shift = len(context)
    newline = context.rfind("\n")
    first = newline if newline != -1 and not context[newline + 1:].strip(" \t") else shift
    for match in _LINE_START.finditer(source, first):
        kind = match.lastgroup
        newline = match.start()
        label_at = match.start(kind)
        if label_at < shift:
            continue
        label = match.group(kind)
        if kind == "markdown":
            yield Mark(label_at - shift, HEADING, label.strip())
            continue
        ending = _line_end_before(source, newline)
        if kind == "title":
            label = label.strip()
            if ending in ("", "stop") and _standalone_title(label, source, match.end()):
                yield Mark(label_at - shift, TITLE, label)
            continue
        if ending == "open" or (ending == "caps" and kind == "subclause"):
            if not (kind == "subclause" and _lists_on(source, newline)):
                continue
        yield Mark(label_at - shift, kind, label)


def inline_marks(text: str, *, before: str = "") -> Iterator[Mark]:
    """Section numbers after a sentence end inside running text, in order (offsets into ``text``;
    ``before``: the text just before it, where that sentence end may be)."""
    context = before[-8:]
    for match in _INLINE.finditer(context + text, max(0, len(context) - 8)):
        if match.start("label") < len(context):
            continue
        label = match.group("label")
        kind = CLAUSE if "." in label.rstrip(".") else SECTION
        yield Mark(match.start("label") - len(context), kind, label, inline=True)


def marks(text: str, *, before: str = "") -> list[Mark]:
    """Every mark in ``text`` (line starts and inline sections), by offset."""
    found = {m.offset: m for m in inline_marks(text, before=before)}
    found.update((m.offset, m) for m in line_marks(text, before=before))  # a line start wins
    return [found[offset] for offset in sorted(found)]


def title(text: str, mark: Mark) -> str:
    """The heading a mark gives its unit, for a heading path: a title line itself; a heading or a
    section's label with the short title after it ("11. Entire Agreement; Amendments."), if the
    words after the label look like a title (not a sentence: "1.2 The term ... means")."""
    if mark.kind == TITLE:
        return " ".join(mark.label.split())[:TITLE_CHARS]
    start = mark.offset + len(mark.label)
    rest = text[start:start + TITLE_CHARS]
    lead = len(rest) - len(rest.lstrip(" \t.:-\u2013\u2014"))
    stop = _TITLE_END.search(rest, lead)
    if stop is None:
        return mark.label
    end = stop.end() if stop.group() in (".", ":") else stop.start()
    if end > lead and _title_like(rest[lead:end]):
        return " ".join(text[mark.offset:start + end].split())[:TITLE_CHARS]
    return mark.label


_SMALL_WORDS = frozenset("of and or the to for in on a an by with".split())


def _title_like(words: str) -> bool:
    """Every word capitalized or a small word, the first capitalized ("Entire Agreement; Amendments."
    yes, "The term Affiliate means" no)."""
    items = re.findall(r"[A-Za-z][\w'-]*", words)
    if not items or len(items) > 12 or not items[0][0].isupper():
        return False
    return all(w[0].isupper() or w.lower() in _SMALL_WORDS for w in items)


def _line_end_before(source: str, newline: int) -> str:
    """How the line that ends at ``source[newline]`` (a "\\n") ends: "" (blank, or nothing
    before), "stop" (a sentence or list punctuation), "caps" (a heading-like line without
    lower-case letters) or "open" (anything else: the line goes on)."""
    window = source[max(0, newline - LOOK_BACK):newline]
    line = window[window.rfind("\n") + 1:].rstrip()
    if not line:
        return ""
    last = line[-1]
    if last in _ENDS_UNIT or (last in _CLOSERS and len(line) > 1 and line[-2] in _ENDS_UNIT):
        return "stop"
    if len(window) - window.rfind("\n") < LOOK_BACK and not any(c.islower() for c in line):
        return "caps"
    return "open"


def _lists_on(source: str, newline: int) -> bool:
    """Whether the line before a lettered item ends as a list goes on: with a comma, "and" or "or"."""
    window = source[max(0, newline - LOOK_BACK):newline]
    line = window[window.rfind("\n") + 1:].rstrip()
    return line.endswith((",", " and", " or", " and/or"))


def _standalone_title(label: str, source: str, end: int) -> bool:
    """A capitals line is a title when it does not end mid-phrase ("... AND THE") and the next line
    does not carry on in lower case."""
    words = label.split()
    if not words or words[-1].rstrip(",-").upper() in _CONTINUES or label.endswith((",", "-")):
        return False
    following = source[end:end + LOOK_BACK].lstrip("\r\n \t")
    return not following[:1].islower()


class Headings:
    """The heading path of a plain text read piece by piece (.txt, .pdf): each piece is split where
    an article, title, section or clause starts, and each part carries the path in effect there."""

    def __init__(self) -> None:
        self.path = HeadingPath()
        self.before = ""

    def split(self, text: str) -> Iterator[tuple[int, str, tuple[str, ...]]]:
        """``(offset in text, part, heading path)`` for the parts of ``text``, in order."""
        cuts: list[tuple[int, Mark]] = []
        for mark in marks(text, before=self.before):
            if mark.kind == SUBCLAUSE:
                continue
            at = mark.offset if mark.inline else text.rfind("\n", 0, mark.offset) + 1
            if not cuts or at > cuts[-1][0]:
                cuts.append((at, mark))
        position = 0
        for at, mark in cuts:
            if at > position:
                yield position, text[position:at], self.path.path
                position = at
            self.path.enter(mark.level, title(text, mark))
        if position < len(text):
            yield position, text[position:], self.path.path
        self.before = (self.before + text)[-LOOK_BACK - 1:]
