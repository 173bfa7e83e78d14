"""Plain text: the file's own characters, split into blocks as it streams by; each block knows the
headings it is under (articles, titles, numbered sections: :mod:`rlmpipe.ingest.outline`)."""

from __future__ import annotations

import re
from typing import Iterator

from rlmpipe.ingest.document import Block, Document, decoded_windows
from rlmpipe.ingest.outline import Headings

# One or more blank lines end a paragraph; the separator stays with the paragraph before it.
PARAGRAPH_BREAK = re.compile(r"\r?\n(?:[ \t\f\v]*\r?\n)+")


def paragraphs(windows: Iterator[str], max_block_chars: int) -> Iterator[tuple[int, str]]:
    """(char_start, text) runs that together are exactly the concatenated windows.

    A run ends after a blank-line separator; a paragraph longer than ``max_block_chars`` is cut at
    its last line break (or, for a single long line, at the limit), so memory stays bounded.
    """
    pending = ""
    offset = 0  # char offset of pending[0]
    for window in windows:
        pending += window
        start = 0
        for match in PARAGRAPH_BREAK.finditer(pending):
            if match.end() == len(pending):
                break  # the separator may continue in the next window
            yield from _bounded(offset + start, pending[start : match.end()], max_block_chars)
            start = match.end()
        pending = pending[start:]
        offset += start
        while len(pending) > max_block_chars:
            cut = _soft_cut(pending, max_block_chars)
            yield offset, pending[:cut]
            pending = pending[cut:]
            offset += cut
    if pending:
        yield from _bounded(offset, pending, max_block_chars)


def _bounded(start: int, text: str, limit: int) -> Iterator[tuple[int, str]]:
    position = 0  # by offset, not by slicing off the front (that copied a 100 MB paragraph 1,600 times)
    while len(text) - position > limit:
        cut = _soft_cut(text, limit, position)
        yield start + position, text[position:cut]
        position = cut
    if position < len(text):
        yield start + position, text[position:]


def _soft_cut(text: str, limit: int, start: int = 0) -> int:
    """Where to cut an over-long run that begins at ``start``: after its last line break within the
    limit, else at the limit."""
    newline = text.rfind("\n", start, start + limit)
    if newline > start:
        return newline + 1
    cut = start + limit
    if "\ud800" <= text[cut - 1] <= "\udbff":  # never split a surrogate pair (only from odd decoders)
        cut -= 1
    return cut


def runs(windows: Iterator[str], max_block_chars: int) -> Iterator[tuple[int, str]]:
    """(char_start, text) runs of up to ``max_block_chars`` that end at a paragraph break when
    there is one (else a line break): the cheapest split for plain text, which has no structure
    beyond its lines for a reader to report."""
    pending = ""
    offset = 0
    for window in windows:
        pending += window
        while len(pending) > max_block_chars:
            cut = pending.rfind("\n\n", 0, max_block_chars) + 2
            if cut < max_block_chars // 4:
                cut = _soft_cut(pending, max_block_chars)
            yield offset, pending[:cut]
            pending = pending[cut:]
            offset += cut
    if pending:
        yield offset, pending


def read_text(document: Document) -> Iterator[Block]:
    """The file's text in runs, each split where a heading or numbered section starts, so every block
    carries its heading path (:class:`~rlmpipe.ingest.outline.Headings`)."""
    windows = decoded_windows(document.path, document.limits, document.encoding)
    headings = Headings()
    for start, text in runs(windows, document.limits.max_block_chars):
        for offset, part, path in headings.split(text):
            yield Block(text=part, char_start=start + offset, heading_path=path)
