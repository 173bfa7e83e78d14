"""Markdown: the file's own characters (like plain text), with headings giving each block its path."""


from __future__ import annotations

import re
from typing import Iterator

from rlmpipe.ingest.document import Block, Document, decoded_windows
from rlmpipe.ingest.outline import HeadingPath
from rlmpipe.ingest.text import paragraphs

ATX_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+")  # the title is the rest, closing #s stripped (no regex:
# a lazy title before a trailing [ \t#]* run retried that run at every character: quadratic on long lines)
SETEXT_UNDERLINE = re.compile(r" {0,3}(=+|-+)[ \t]*\r?\n?$")
FENCE = re.compile(r" {0,3}(```|~~~)")


def read_markdown(document: Document) -> Iterator[Block]:
    headings = HeadingPath()
    in_fence = False
    windows = decoded_windows(document.path, document.limits, document.encoding)
    for start, text in paragraphs(windows, document.limits.max_block_chars):
        lines = text.splitlines(keepends=True)
        run_start = 0  # offset in `text` of lines not yet emitted
        position = 0
        index = 0
        while index < len(lines):
            line = lines[index]
            heading: tuple[int, str, int] | None = None  # level, title, chars it spans
            if FENCE.match(line):
                in_fence = not in_fence
            elif not in_fence:
                atx = ATX_HEADING.match(line)
                if atx:
                    heading = (len(atx.group(1)), _atx_title(line[atx.end():]), len(line))
                elif index + 1 < len(lines) and line.strip() and SETEXT_UNDERLINE.match(lines[index + 1]):
                    level = 1 if lines[index + 1].lstrip().startswith("=") else 2
                    heading = (level, line.strip(), len(line) + len(lines[index + 1]))
            if heading is None:
                position += len(line)
                index += 1
                continue
            level, title, span = heading
            if position > run_start:
                yield Block(text[run_start:position], start + run_start, heading_path=headings.path)
            path = headings.enter(level, title)
            yield Block(text[position : position + span], start + position, heading_path=path, kind="heading")
            position += span
            run_start = position
            index += 1 if span == len(line) else 2
        if position > run_start:
            yield Block(text[run_start:position], start + run_start, heading_path=headings.path)


def _atx_title(rest: str) -> str:
    """An ATX heading's text: the line after ``#... `` without its line break and closing ``#``s."""
    rest = rest.removesuffix("\n").removesuffix("\r")
    return rest.rstrip(" \t#")
