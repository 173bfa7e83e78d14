"""HTML: visible text, one block per block-level element, headings (h1-h6) giving the path.

The extracted text is each block's whitespace-collapsed text followed by a blank line. The standard
library's incremental ``HTMLParser`` is fed a bounded window at a time, so memory stays flat.
"""

from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser
from typing import Iterator

from rlmpipe.ingest.document import Block, Document, bom_encoding, decoded_windows
from rlmpipe.ingest.markdown import HeadingPath

BLOCK_TAGS = frozenset(
    "address article aside blockquote body br dd details dialog div dl dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tbody td tfoot th "
    "thead tr ul caption title".split()
)
SKIP_TAGS = frozenset("script style noscript template head svg math".split())
HEADINGS = {f"h{level}": level for level in range(1, 7)}
SPACES = re.compile(r"\s+")


class _BlockParser(HTMLParser):
    def __init__(self, max_block_chars: int) -> None:
        super().__init__(convert_charrefs=True)
        self.max_block_chars = max_block_chars
        self.ready: list[tuple[str, str, int]] = []  # (kind, text, heading level or 0)
        self._parts: list[str] = []
        self._size = 0
        self._skip_depth = 0
        self._pre_depth = 0
        self._heading_level = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in SKIP_TAGS:
            self._skip_depth += 1
        elif tag in BLOCK_TAGS:
            self._flush()
            if tag in HEADINGS:
                self._heading_level = HEADINGS[tag]
            if tag == "pre":
                self._pre_depth += 1

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in BLOCK_TAGS:
            self._flush()
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size > self.max_block_chars:
            self._flush()

    def _flush(self) -> None:
        if self._parts:
            raw = "".join(self._parts)
            text = raw.strip("\n") if self._pre_depth else SPACES.sub(" ", raw).strip()
            if text:
                level = self._heading_level
                self.ready.append(("heading" if level else "text", text, level))
        self._parts = []
        self._size = 0
        self._heading_level = 0

    def close(self) -> None:
        super().close()
        self._flush()


def read_html(document: Document) -> Iterator[Block]:
    parser = _BlockParser(document.limits.max_block_chars)
    headings = HeadingPath()
    offset = 0

    def drain() -> Iterator[Block]:
        nonlocal offset
        for kind, text, level in parser.ready:
            path = headings.enter(level, text) if level else headings.path
            text += "\n\n"
            yield Block(text, offset, heading_path=path, kind=kind)
            offset += len(text)
        parser.ready.clear()

    for window in decoded_windows(document.path, document.limits, encoding=document.encoding):
        parser.feed(window)
        yield from drain()
    parser.close()
    yield from drain()


def sniff_charset(head: bytes) -> str:
    """The encoding an HTML file declares in its first bytes (BOM or <meta charset>), else UTF-8."""
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if encoding := bom_encoding(head):
        return encoding
    match = re.search(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_\-:.]+)""", head, re.IGNORECASE)
    if match:
        try:
            return codecs.lookup(match.group(1).decode("ascii").lower()).name
        except LookupError:
            pass
    return "utf-8"

