"""Evidence verification: a quote counts only where it is found in the contract's own words.

Models re-wrap lines, collapse spaces and straighten quotation marks; they also invent text.
``locate`` finds a quote in the source tolerating exactly the first three (whitespace, line
breaks, typographic quotes and dashes) and returns the real character offsets; an ellipsis
("...") in a quote joins pieces that must appear in order, close together. Anything else is not
found, and the finding is dropped and counted, never shown as evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# One character for one, so offsets survive: typographic quotes and dashes to plain ones.
_FOLD = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                       "\u2014": "-", "\u2212": "-"})
_ELLIPSIS = re.compile(r"\s*(?:\.\s?\.\s?\.|\u2026|\[\.\.\.\])\s*")
#: A quote shorter than this (after normalising) is too short to be evidence of anything (CUAD marks
#: two-letter party names such as "MA").
MIN_QUOTE_CHARS = 2
#: Pieces of an elided quote must lie within this many characters of each other.
MAX_GAP = 2000


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int


class NormalizedText:
    """A text with whitespace runs collapsed to one space and typography folded, keeping for each
    character of the normalised text the offset of the source character it came from."""

    def __init__(self, text: str):
        chars: list[str] = []
        origin: list[int] = []
        previous_space = True
        for index, char in enumerate(text.translate(_FOLD)):
            if char.isspace():
                if not previous_space:
                    chars.append(" ")
                    origin.append(index)
                previous_space = True
            else:
                chars.append(char)
                origin.append(index)
                previous_space = False
        self.text = "".join(chars)
        self.origin = origin

    def source_span(self, start: int, end: int) -> Span:
        return Span(self.origin[start], self.origin[end - 1] + 1)


def normalize(text: str) -> str:
    return " ".join(text.translate(_FOLD).split())


def clip(text: str, limit: int) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters with "..."."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def locate(quote: str, source: NormalizedText) -> Span | None:
    """The span of ``source`` (in source offsets) that ``quote`` quotes, or None."""
    pieces = [normalize(piece) for piece in _ELLIPSIS.split(quote or "")]
    pieces = [piece.strip(" \"'") if len(pieces) > 1 else piece for piece in pieces]
    pieces = [piece for piece in pieces if piece]
    if not pieces or sum(len(piece) for piece in pieces) < MIN_QUOTE_CHARS:
        return None
    haystack = source.text
    first = pieces[0]
    start = haystack.find(first)
    while start != -1:
        position, ok = start + len(first), True
        for piece in pieces[1:]:
            found = haystack.find(piece, position)
            if found == -1 or found - position > MAX_GAP:
                ok = False
                break
            position = found + len(piece)
        if ok:
            return source.source_span(start, position)
        start = haystack.find(first, start + 1)
    if len(pieces) == 1 and (stripped := first.strip(" \"'.,;:")) != first and len(stripped) >= MIN_QUOTE_CHARS:
        found = haystack.find(stripped)  # the model added quotation marks or end punctuation
        if found != -1:
            return source.source_span(found, found + len(stripped))
    return None
