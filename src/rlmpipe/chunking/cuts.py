"""Where a text may be cut, how many tokens lie before each such place, and how good a place it is.

Chunks are cut only at *safe* positions: places where the tokenizer's pre-tokenizer always starts
a new piece, so that the token count of a chunk is exactly the number of tokens between its two
cuts in a single tokenization of the surrounding section. For the OpenAI encodings these are:

* a line start: after ``\\n``, before a non-space character other than ``/`` (or before the
  indentation of a line that has text);
* a word start: before a single space that has a non-space character on each side.

Each candidate is also checked against the section's real tokenization (it must fall on a token
boundary), so a rule that does not hold for some tokenizer costs a candidate, never exactness.
All of it is vectorised with numpy: this runs over every byte of every document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rlmpipe.ingest.outline import CLAUSE as CLAUSE_MARK
from rlmpipe.ingest.outline import HEADING as HEADING_MARK
from rlmpipe.ingest.outline import SECTION as SECTION_MARK
from rlmpipe.ingest.outline import SUBCLAUSE as SUBCLAUSE_MARK
from rlmpipe.ingest.outline import TITLE as TITLE_MARK
from rlmpipe.ingest.outline import marks

if TYPE_CHECKING:  # tokenizers.py splits long texts with line_start below
    from rlmpipe.chunking.tokenizers import Tokenizer

# Strength of a boundary: the structure strategy prefers to cut at the strongest one it can.
WORD, PHRASE, SENTENCE, LINE, PARAGRAPH, SUBCLAUSE, CLAUSE, SECTION, HEADING = range(1, 10)

_UNICODE_SPACES = np.array(
    [0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000], dtype=np.uint32
)
_SPACE_TABLE = np.zeros(256, dtype=bool)
_SPACE_TABLE[[9, 10, 11, 12, 13, 32, 0x85, 0xA0]] = True

# Every pattern here runs over every byte of every document, so each must be linear in the input:
# runs of spaces are matched possessively (``*+``, ``++``: never given back, so no alternative is
# retried at every position inside a long run) and every lookahead is bounded.
# tests/chunking/test_adversarial.py checks the work per MB on shapes that broke earlier versions.
_INDENTED_LINE = re.compile(r"\n[ \t]++(?=\S)")
_PARAGRAPH_START = re.compile(r"\n[ \t\f\v\r]*+\n(?=[ \t]*+\S)")
# What the outline's marks are worth as cut points (rlmpipe.ingest.outline: the one place for them).
_MARK_LEVELS = {HEADING_MARK: HEADING, TITLE_MARK: HEADING, SECTION_MARK: SECTION, CLAUSE_MARK: CLAUSE,
                SUBCLAUSE_MARK: SUBCLAUSE}
#: a line break after one of these ends a line of its own; after anything else it is a wrapped line
_LINE_ENDERS = np.array([ord(c) for c in ".!?;:)\"'\u201d\u2019"], dtype=np.uint32)


@dataclass(slots=True)
class Cuts:
    """Safe cut positions of one section of text.

    ``chars[k]`` is a character offset in the section, ``tokens[k]`` the number of tokens before
    it, ``strength[k]`` how natural a boundary it is. ``chars[0] == 0``; when the section is the
    end of the document the last entry is its end.
    """

    chars: np.ndarray
    tokens: np.ndarray
    strength: np.ndarray
    ids: np.ndarray  # the section's token ids (the carried-over tail reuses them)


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # lone ones too


def utf8_widths(points: np.ndarray) -> np.ndarray:
    """The UTF-8 byte length of each character, from its code point."""
    return 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)


def line_start(text: str, low: int, high: int) -> int:
    """The last safe line start (after ``\\n``, before a non-space other than ``/``) whose ``\\n`` lies
    in ``text[low:high]``, or 0 if there is none: where a long text can be split so that its parts,
    tokenized apart, add up to the whole."""
    position = high
    while (position := text.rfind("\n", low, position)) != -1:
        following = text[position + 1 : position + 2]
        if following.strip() and following != "/":
            return position + 1
    return 0


def _is_space(points: np.ndarray) -> np.ndarray:
    space = _SPACE_TABLE[np.minimum(points, 255)]
    high = np.flatnonzero(points > 255)
    if high.size:
        space[high] = np.isin(points[high], _UNICODE_SPACES)
    return space


def find_cuts(
    text: str,
    tokenizer: Tokenizer,
    *,
    final: bool,
    structure: bool = False,
    headings: np.ndarray | None = None,
    token_ids: np.ndarray | None = None,
) -> Cuts:
    """Safe cuts of ``text`` (a section that starts at a safe position).

    ``final``: the text ends the document, so its end is a cut. Otherwise positions in the last
    two characters are left out (what follows them is not known yet). ``token_ids``: the text's
    tokens when they are already known (tokenized ahead, in another thread). ``structure``: grade each
    cut by the boundary it sits on. ``headings``: where the reader found headings (in formats that
    mark them, like HTML or Word), graded as headings where they are safe cuts.
    """
    n = len(text)
    if n == 0:
        empty = np.zeros(1, dtype=np.int64)
        return Cuts(empty, empty.copy(), np.full(1, HEADING, dtype=np.int8), np.zeros(0, dtype=np.int64))
    points = _codepoints(text)
    space = _is_space(points)
    newline = points == 10
    nonspace = ~space

    candidate = np.zeros(n + 1, dtype=bool)
    # line start before text: after "\n", before a non-space that is not "/"
    candidate[1:n] |= newline[:-1] & nonspace[1:] & (points[1:] != 47)
    # line start before indentation, when the line has text after its indentation
    if "\n " in text or "\n\t" in text:
        candidate[[m.start() + 1 for m in _INDENTED_LINE.finditer(text)]] = True
    # word start: a single space between two non-space characters
    if n > 2:
        candidate[1 : n - 1] |= (points[1:-1] == 32) & nonspace[:-2] & nonspace[2:]
    if not final:
        candidate[max(0, n - 2) :] = False
    candidate[0] = False
    positions = np.flatnonzero(candidate)

    if token_ids is None:
        token_ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    token_ends = np.cumsum(tokenizer.token_byte_lengths()[token_ids])
    if text.isascii():
        byte_positions = positions
    else:
        byte_at = np.concatenate(([0], np.cumsum(utf8_widths(points))))
        byte_positions = byte_at[positions]
    index = np.searchsorted(token_ends, byte_positions, side="left")
    inside = index < len(token_ends)
    aligned = np.zeros(len(positions), dtype=bool)
    aligned[inside] = token_ends[index[inside]] == byte_positions[inside]
    chars = np.concatenate(([0], positions[aligned]))
    tokens = np.concatenate(([0], index[aligned] + 1))
    if final and (len(chars) == 1 or chars[-1] != n):
        chars = np.append(chars, n)
        tokens = np.append(tokens, len(token_ids))

    strength = np.ones(len(chars), dtype=np.int8)
    strength[0] = HEADING
    if structure and len(chars) > 1:
        _grade(text, points, chars, strength, headings)
    if final:
        strength[-1] = HEADING
    return Cuts(chars.astype(np.int64), tokens.astype(np.int64), strength, token_ids)


def _grade(text: str, points: np.ndarray, chars: np.ndarray, strength: np.ndarray, headings) -> None:
    n = len(text)
    inner = chars[1:]
    inner = inner[inner < n]
    if inner.size == 0:
        return
    k = np.arange(1, 1 + inner.size)
    before = points[inner - 1]
    line = before == 10
    # a line break ends a line of its own after a sentence or list punctuation; after a word it is a
    # wrapped line (PDF text, hard-wrapped .txt): no stronger than the space it stands for
    ender = points[np.maximum(inner - 2, 0)]
    ender = np.where(ender == 13, points[np.maximum(inner - 3, 0)], ender)
    strength[k[line & np.isin(ender, _LINE_ENDERS)]] = LINE
    word = ~line
    sentence_end = np.isin(before, (46, 33, 63))  # . ! ?
    closing = np.isin(before, (41, 34, 39, 0x201D, 0x2019))  # ) " ' closing quotes
    two_back = points[np.maximum(inner - 2, 0)]
    sentence_end |= closing & np.isin(two_back, (46, 33, 63))
    strength[k[word & sentence_end]] = SENTENCE
    strength[k[word & ~sentence_end & np.isin(before, (59, 58))]] = PHRASE  # ; :

    def mark(positions, level: int) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        where = np.searchsorted(chars, positions)
        ok = where < len(chars)
        where, positions = where[ok], positions[ok]
        hit = where[chars[where] == positions]
        if hit.size:
            strength[hit] = np.maximum(strength[hit], level)

    mark([m.end() for m in _PARAGRAPH_START.finditer(text)], PARAGRAPH)
    by_level: dict[int, list[int]] = {}
    for found in marks(text):
        at = found.offset
        if found.inline:
            at -= text[at - 1] == " "  # the cut is before the space, which starts the label's token
        else:
            at = text.rfind("\n", 0, at) + 1  # the line start, before any indentation
        by_level.setdefault(_MARK_LEVELS[found.kind], []).append(at)
    for level, positions in by_level.items():
        mark(positions, level)
    if headings is not None:
        mark(headings, HEADING)
