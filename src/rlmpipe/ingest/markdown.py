"""Markdown: the file's own characters (like plain text), with headings giving each block its path."""

from __future__ import annotations

import re
from typing import Iterator

from rlmpipe.ingest.document import Block, Document, decoded_windows
from rlmpipe.ingest.text import paragraphs

ATX_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+")  # the title is the rest, closing #s stripped (no regex:
# a lazy title before a trailing [ \t#]* run retried that run at every character: quadratic on long lines)
SETEXT_UNDERLINE = re.compile(r" {0,3}(=+|-+)[ \t]*\r?\n?$")
FENCE = re.compile(r" {0,3}(```|~~~)")


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
