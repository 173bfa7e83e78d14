"""Passages: the units the clause finder scores, cut from a stream of blocks along the contract's
structure.

A passage starts at a paragraph (after a blank line) and at every mark of the outline
(:mod:`rlmpipe.ingest.outline`: "ARTICLE IV", a title line, "12.", "12.3", "(a)" at a line start,
a section number after a sentence end, a heading block of a .docx or .html); so it never spans two
numbered sections. A unit that is only a label or a heading ("2.1", "GOVERNING LAW") joins the body
text that follows it (a section number stays with its heading), unless that text starts a unit of
its own. A unit longer than ``max_chars`` is cut at its last sentence end that fits
(:mod:`.sentences`; never after a section label such as "9."), else at a semicolon, a comma or a
space.

Cuts depend only on the text (and the readers' heading blocks), never on where blocks happen to
end: each is decided once ``LOOKAHEAD`` characters after it are known, so any blocking of the same
text gives the same passages, and memory stays bounded by one block plus ``max_chars`` and the
look-ahead, whatever the document's size. Each passage knows the headings it sits under
(``heading``: its article, section and clause titles; scoring them did not help the finder in
cross-validation, bench/RESULTS.md "finder", so the shipped model reads only the passage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from rlmpipe.apps.contracts.sentences import sentence_starts
from rlmpipe.ingest.outline import (
    HEADING,
    LOOK_BACK,
    SUBCLAUSE,
    TITLE_CHARS,
    HeadingPath,
    Mark,
    marks,
    title,
)

#: the longest passage (characters): longer units are cut at sentence ends (chosen by bench/finder_cv.py)
MAX_CHARS = 1000
#: characters after a boundary that decide it (a title's line and the next one, a sentence's start)
LOOKAHEAD = 2 * LOOK_BACK
#: a label or heading joins the text after it only when that text starts within this many characters
JOIN_GAP = LOOK_BACK
#: the buffer is cut again when it has grown by this many characters
CUT_EVERY = 2048

_BLANK_LINE = re.compile(r"\n[ \t\f\v\r]*+\n")
_LABEL_ONLY = re.compile(r"[\W_]*+")
_SOFT = (re.compile(r"[;:][ \t\r\n]+"), re.compile(r",[ \t\r\n]+"), re.compile(r"\s+"))


@dataclass(frozen=True, slots=True)
class Passage:
    """A run of the document's text: ``text == document_text[char_start:char_end]``; ``heading``:
    the titles of the article, section and clause it is in (its own included), outermost first."""

    char_start: int
    char_end: int
    text: str
    heading: tuple[str, ...] = ()


@dataclass(slots=True)
class _Unit:
    start: int  # buffer offsets of its text (without surrounding white space)
    end: int
    bound: int  # where the next unit or the paragraph's blank line starts (its end is certain before it)
    mark: Mark | None  # the mark it starts with (None: a plain paragraph)
    bodiless: bool = False  # only a label or a heading line: it joins the text after it


def passages(blocks: Iterable, *, max_chars: int = MAX_CHARS) -> Iterator[Passage]:
    """The passages of a document given as blocks (anything with ``.text`` and ``.char_start``, and
    optionally ``.kind``, whose texts concatenate to the document), lazily: a passage is yielded
    as soon as the text after it shows where it ends."""
    if max_chars < 2:
        raise ValueError("max_chars must be at least 2")
    cutter = _Cutter(max_chars)
    for block in blocks:
        yield from cutter.feed(block.text, block.char_start, getattr(block, "kind", "text") == "heading")
    yield from cutter.finish()


class _Cutter:
    """The text not yet cut (``buffer``, from document offset ``base``) and what decides its cuts."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.buffer = ""
        self.base: int | None = None
        self.before = ""  # the text just before the buffer (what its first line follows)
        self.heading_blocks: list[int] = []  # buffer offsets where a reader's heading block starts
        self.headings = HeadingPath()
        self.next_cut = CUT_EVERY

    def feed(self, text: str, start: int, heading: bool) -> Iterator[Passage]:
        if self.base is None:
            self.base = start
        elif start != self.base + len(self.buffer):
            raise ValueError(f"blocks are not contiguous: one starts at {start}, "
                             f"expected {self.base + len(self.buffer)}")
        if heading and text.strip():
            self.heading_blocks.append(len(self.buffer) + len(text) - len(text.lstrip()))
        self.buffer += text
        if len(self.buffer) >= self.next_cut:
            yield from self._cut(final=False)
            self.next_cut = len(self.buffer) + CUT_EVERY

    def finish(self) -> Iterator[Passage]:
        if self.buffer:
            yield from self._cut(final=True)

    # -- cutting -----------------------------------------------------------------------------------

    def _cut(self, final: bool) -> Iterator[Passage]:
        """Yield every passage decided by the buffer; keep the rest."""
        text = self.buffer
        horizon = len(text) if final else len(text) - LOOKAHEAD
        units = self._units(text, final)
        done = 0  # buffer offset up to which everything is yielded
        index = 0
        while index < len(units):
            unit = units[index]
            if unit.start >= horizon:
                break
            closed = unit.bound < horizon or final
            if unit.bodiless and closed:
                following = units[index + 1] if index + 1 < len(units) else None
                if following is not None and following.start - unit.end <= JOIN_GAP:
                    if following.start >= horizon and not final:
                        break  # whether it joins the next unit is not known yet
                    if following.mark is None:
                        following.start, following.mark = unit.start, unit.mark
                        index += 1
                        continue
            if not closed:  # the last unit, still open: only its pieces that are already certain
                done = yield from self._pieces(text, unit, horizon, final=False)
                break
            done = yield from self._pieces(text, unit, unit.end, final=True)
            index += 1
        else:
            done = len(text)
        self._drop(done)

    def _units(self, text: str, final: bool) -> list[_Unit]:
        """The buffer's units: paragraphs, cut again at every mark of the outline."""
        found = {m.offset: m for m in marks(text, before=self.before)}
        for offset in self.heading_blocks:
            line_end = text.find("\n", offset)
            label = text[offset:line_end if line_end != -1 else len(text)].strip()[:TITLE_CHARS]
            found[offset] = Mark(offset, HEADING, label)
        paragraphs = []  # (start, end) of each paragraph's text
        at = 0
        for match in _BLANK_LINE.finditer(text):
            paragraphs.append((at, match.start()))
            at = match.end()
        paragraphs.append((at, len(text)))
        starts = sorted(found)
        units: list[_Unit] = []
        cursor = 0
        for start, end in paragraphs:
            inner = []
            while cursor < len(starts) and starts[cursor] < end:
                if starts[cursor] >= start:
                    inner.append(found[starts[cursor]])
                cursor += 1
            bounds = [start] + [m.offset for m in inner if m.offset > start] + [end]
            lead = found.get(_skip_space(text, start, end))
            for (left, bound), mark in zip(zip(bounds, bounds[1:]), [lead] + [m for m in inner if m.offset > start]):
                left = _skip_space(text, left, bound)
                right = _trim_right(text, left, bound)
                if right > left:
                    units.append(_Unit(left, right, bound, mark, _bodiless(text, left, right, mark)))
        return units

    def _pieces(self, text: str, unit: _Unit, limit: int, final: bool):
        """Yield ``unit`` cut to at most ``max_chars`` each (all of it when ``final``, else the pieces
        whose window ends before ``limit``); return the buffer offset where what is left begins."""
        start, end = unit.start, unit.end
        self._enter(text, unit)
        while True:
            start = _skip_space(text, start, end)
            if start >= end:
                return end
            if end - start <= self.max_chars and final:
                yield self._passage(text, start, end)
                return end
            if start + self.max_chars >= limit and not final:
                return start
            cut = _cut_point(text, start, min(end, start + self.max_chars))
            yield self._passage(text, start, _trim_right(text, start, cut))
            start = cut

    def _enter(self, text: str, unit: _Unit) -> None:
        """Update the heading path with the unit's own mark (a lettered item is not a heading)."""
        mark = unit.mark
        if mark is not None and mark.kind != SUBCLAUSE:
            self.headings.enter(mark.level, title(text, mark))

    def _passage(self, text: str, start: int, end: int) -> Passage:
        return Passage(self.base + start, self.base + end, text[start:end], self.headings.path)

    def _drop(self, done: int) -> None:
        self.before = (self.before + self.buffer[:done])[-LOOK_BACK - 1:]
        self.buffer = self.buffer[done:]
        self.base += done
        self.heading_blocks = [offset - done for offset in self.heading_blocks if offset >= done]


def _skip_space(text: str, start: int, end: int) -> int:
    while start < end and text[start].isspace():
        start += 1
    return start


def _trim_right(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _bodiless(text: str, start: int, end: int, mark: Mark | None) -> bool:
    """Only a label ("2.1", "ARTICLE IV") or a heading line ("GOVERNING LAW", "11. Governing Law",
    "ARTICLE 2. PURCHASE ORDERS"): nothing a clause could be."""
    if mark is None:
        return False
    if _LABEL_ONLY.fullmatch(text, mark.offset + len(mark.label), end):
        return True
    line = text[start:end]
    return "\n" not in line and len(line) <= TITLE_CHARS and " ".join(line.split()) == title(text, mark)


def _cut_point(text: str, start: int, limit: int) -> int:
    """Where to end a piece that would run past ``limit``: the last sentence end in the second half
    of the window, else the last semicolon or colon, comma, space there, else at the limit."""
    low = start + (limit - start) // 2
    ends = [s for s in sentence_starts(text[start:limit]) if s + start >= low]
    if ends:
        return start + ends[-1]
    for pattern in _SOFT:
        best = -1
        for match in pattern.finditer(text, low, limit):
            best = match.end()
        if best != -1:
            return best
    return limit
