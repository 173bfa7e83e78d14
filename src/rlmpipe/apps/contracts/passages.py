"""Passages: the units the clause finder scores, cut from a stream of blocks.

A passage is a paragraph (text between blank lines, stripped of surrounding whitespace); a paragraph
longer than ``max_chars`` is cut greedily from its start at the last line break, else sentence end,
else space that leaves at least half the limit. Cuts depend only on the text, never on where the
reader's blocks happen to end, so any blocking of the same text gives the same passages; and memory
stays bounded by one block plus ``max_chars``, whatever the document's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

#: CUAD clauses are mostly one paragraph; longer paragraphs (run-together text) are cut near this.
MAX_CHARS = 2000

_BLANK_LINE = re.compile(r"\n[ \t\f\v\r]*\n")
_SENTENCE_END = re.compile(r"[.;:!?][\"')\]]*\s+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Passage:
    """A run of the document's text: ``text == document_text[char_start:char_end]``."""

    char_start: int
    char_end: int
    text: str


def passages(blocks: Iterable, *, max_chars: int = MAX_CHARS) -> Iterator[Passage]:
    """The passages of a document given as blocks (anything with ``.text`` and ``.char_start``,
    whose texts concatenate to the document), lazily: a passage is yielded as soon as the text
    after it shows where it ends."""
    if max_chars < 2:
        raise ValueError("max_chars must be at least 2")
    pending = ""  # text not yet cut into passages
    base = None  # document offset of pending[0]
    for block in blocks:
        if base is None:
            base = block.char_start
        elif block.char_start != base + len(pending):
            raise ValueError(f"blocks are not contiguous: one starts at {block.char_start}, "
                             f"expected {base + len(pending)}")
        pending += block.text
        pos = 0
        for match in _BLANK_LINE.finditer(pending):
            # a blank line ends the paragraph before it, even if more blank lines follow in the next block
            yield from _cut(pending, pos, match.start(), base, max_chars, final=True)
            pos = match.end()
        # what is left has no blank line: cut it only where it is already longer than the limit
        pos = yield from _cut(pending, pos, len(pending), base, max_chars, final=False)
        pending = pending[pos:]
        base += pos
    if pending:
        yield from _cut(pending, 0, len(pending), base, max_chars, final=True)


def _cut(text: str, start: int, end: int, base: int, max_chars: int, *, final: bool):
    """Yield the passages of ``text[start:end]``; return where the uncut rest begins.

    ``final``: the paragraph ends at ``end``, so all of it is yielded. Otherwise only the passages
    whose cut is already certain are: while the rest (without trailing space) fits in ``max_chars``
    it may still turn out to be a whole paragraph, and waits for more text.
    """
    while True:
        while start < end and text[start].isspace():
            start += 1
        stop = end
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        if stop - start <= max_chars:
            if not final:
                return start
            if stop > start:
                yield Passage(base + start, base + stop, text[start:stop])
            return end
        cut = _cut_point(text, start, start + max_chars)
        stop = cut
        while text[stop - 1].isspace():
            stop -= 1
        yield Passage(base + start, base + stop, text[start:stop])
        start = cut


def _cut_point(text: str, start: int, limit: int) -> int:
    """Where to end a passage that would run past ``limit``: the last line break, sentence end or
    space in the second half of the window (in that order of preference), else at the limit."""
    low = start + (limit - start) // 2
    newline = text.rfind("\n", low, limit)
    if newline != -1:
        return newline + 1
    best = -1
    for match in _SENTENCE_END.finditer(text, low, limit):
        best = match.end()
    if best != -1:
        return best
    space = -1
    for match in _SPACE.finditer(text, low, limit):
        space = match.end()
    return space if space != -1 else limit
