"""Word .docx: paragraphs in order (tables included), each followed by a blank line; heading styles
give the path.

Written over ``zipfile`` + ``ElementTree.iterparse`` rather than python-docx because python-docx
builds the whole document tree in memory; this streams every XML part element by element, keeps
the tree empty behind it, and emits a long paragraph in bounded blocks while it is still being
read. A .docx is a zip: every part read is checked against the unpacked-size and ratio limits of
:class:`~rlmpipe.ingest.document.ReadLimits` first, so a zip bomb is refused before it unpacks,
and while it is parsed against the element-count and depth limits, so a part built to hurt
within the ratio is refused before it fills memory.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Iterator
from xml.etree import ElementTree

from rlmpipe.ingest.document import Block, Document, ReadLimits, open_regular
from rlmpipe.ingest.errors import CorruptDocument, NoExtractableText
from rlmpipe.ingest.markdown import HeadingPath

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
HEADING_NAME = re.compile(r"heading\s*([1-9])$", re.IGNORECASE)
DOCUMENT_PART, STYLES_PART = "word/document.xml", "word/styles.xml"


def open_docx(path: Path, limits: ReadLimits | None = None) -> zipfile.ZipFile:
    """The .docx's zip, after checking that the parts rlmpipe reads are there and not bombs."""
    limits = limits or ReadLimits()
    with open_regular(path):  # a regular file: never a FIFO, which zipfile would wait on forever
        pass
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        # an OLE file (password-protected, or a legacy .doc) never gets here: open_document refuses it first
        raise CorruptDocument(path, "corrupt .docx (not a zip archive)") from None
    try:
        names = set(archive.namelist())
        if DOCUMENT_PART not in names:
            raise CorruptDocument(path, "corrupt .docx (no word/document.xml)")
        for name in (DOCUMENT_PART, STYLES_PART):
            if name in names:
                _check_part(path, archive.getinfo(name), limits)
    except BaseException:
        archive.close()
        raise
    return archive


def _check_part(path: Path, info: zipfile.ZipInfo, limits: ReadLimits) -> None:
    """Refuse a part that unpacks to too much, or too much for its packed size (a zip bomb)."""
    mb = 1 << 20
    if info.file_size > limits.max_unpacked_bytes:
        raise CorruptDocument(path, f"{info.filename} unpacks to {info.file_size / mb:,.0f} MB "
                                    f"(limit {limits.max_unpacked_bytes / mb:,.0f} MB): refused as a zip bomb")
    ratio = info.file_size / max(1, info.compress_size)
    if info.file_size > mb and ratio > limits.max_unpack_ratio:
        raise CorruptDocument(path, f"{info.filename} unpacks to {ratio:,.0f} times its packed size "
                                    f"(limit {limits.max_unpack_ratio:g}x): refused as a zip bomb")


def _pruned_iterparse(stream, keep: frozenset[str], part: str, path: Path,
                      limits: ReadLimits) -> Iterator[tuple[str, ElementTree.Element, ElementTree.Element | None]]:
    """``("start" | "end", element, parent)``; after its end an element is removed from its parent,
    so the tree in memory is only the path from the root to the current element. Elements tagged
    ``keep`` (small ones that are read whole, like ``w:pPr``) keep their children until they end.

    Bounded whatever the part holds (:class:`ReadLimits`): its elements, its depth (the path kept)
    and the elements inside a kept one (a ``w:style`` with millions of children, under the ratio
    limit, held them all) are counted as they arrive, and a part past a bound is refused."""
    stack: list[ElementTree.Element] = []
    kept = 0  # how many `keep` elements are open
    inside_kept = 0  # elements inside the outermost open `keep` element
    elements = 0
    for event, element in ElementTree.iterparse(stream, events=("start", "end")):
        if event == "start":
            elements += 1
            if elements > limits.max_xml_elements:
                raise _hostile(path, part, f"more than {limits.max_xml_elements:,} XML elements")
            if len(stack) >= limits.max_xml_depth:
                raise _hostile(path, part, f"XML nested more than {limits.max_xml_depth} levels deep")
            if kept:
                inside_kept += 1
                if inside_kept > limits.max_xml_kept:
                    name = next(e for e in stack if e.tag in keep).tag.replace(W, "w:")
                    raise _hostile(path, part, f"a <{name}> holding more than {limits.max_xml_kept:,} elements")
            parent = stack[-1] if stack else None
            stack.append(element)
            kept += element.tag in keep
            yield event, element, parent
            continue
        stack.pop()
        parent = stack[-1] if stack else None
        yield event, element, parent
        if element.tag in keep:
            kept -= 1
            inside_kept = inside_kept if kept else 0
        elif kept:
            continue  # inside a kept element: it is read whole at its end
        element.clear()
        if parent is not None:
            parent.remove(element)


def _hostile(path: Path, part: str, what: str) -> CorruptDocument:
    return CorruptDocument(path, f"{part} has {what} (far more than Word writes): refused as a hostile file")


def _heading_styles(archive: zipfile.ZipFile, path: Path, limits: ReadLimits) -> dict[str, int]:
    """styleId -> heading level, from styles.xml (names like 'heading 2', or an outline level)."""
    levels: dict[str, int] = {}
    if STYLES_PART not in archive.namelist():
        return levels
    with archive.open(STYLES_PART) as stream:
        for event, element, _parent in _pruned_iterparse(stream, frozenset({f"{W}style"}), STYLES_PART, path, limits):
            if event != "end" or element.tag != f"{W}style":
                continue
            style_id = element.get(f"{W}styleId")
            name = element.find(f"{W}name")
            name_value = name.get(f"{W}val", "") if name is not None else ""
            match = HEADING_NAME.match(name_value)
            if match:
                levels[style_id] = int(match.group(1))
            elif name_value.lower() == "title":
                levels[style_id] = 1
            elif level := _outline_level(element.find(f"{W}pPr/{W}outlineLvl")):
                levels[style_id] = level
            if len(levels) > limits.max_xml_kept:  # the one thing kept from the part: bounded too
                raise _hostile(path, STYLES_PART, f"more than {limits.max_xml_kept:,} heading styles")
    return levels


def _outline_level(outline: ElementTree.Element | None) -> int:
    """The heading level a ``w:outlineLvl`` gives (0: none, or body text)."""
    value = outline.get(f"{W}val", "9") if outline is not None else "9"
    return int(value) + 1 if value.isascii() and value.isdigit() and int(value) < 9 else 0  # not "²"


def _properties_level(properties: ElementTree.Element, styles: dict[str, int]) -> int:
    """A paragraph's heading level (0: body text) from its ``w:pPr``."""
    if level := _outline_level(properties.find(f"{W}outlineLvl")):
        return level
    style = properties.find(f"{W}pStyle")
    return styles.get(style.get(f"{W}val", ""), 0) if style is not None else 0


class _Paragraph:
    """The text of one ``w:p`` as it streams in, handed out in blocks of at most ``limit`` characters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.level = 0
        self.parts: list[str] = []
        self.size = 0
        self.started = False  # some text was already handed out (leading whitespace is dropped once)

    def add(self, text: str) -> Iterator[str]:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * self.limit:
            pending = "".join(self.parts)
            if not self.started:
                pending = pending.lstrip()
            position = 0  # by offset: one 100 MB run of text must not be copied once per block
            while len(pending) - position > self.limit:
                low, high = position + self.limit // 2, position + self.limit
                space = max(pending.rfind("\n", low, high), pending.rfind(" ", low, high))
                cut = space + 1 if space >= 0 else high
                self.started = True
                yield pending[position:cut]
                position = cut
            pending = pending[position:]
            self.parts, self.size = [pending], len(pending)

    def finish(self) -> str:
        text = "".join(self.parts)
        text = text.rstrip() if self.started else text.strip()
        return text + "\n\n" if text or self.started else ""


def read_docx(document: Document) -> Iterator[Block]:
    headings = HeadingPath()
    offset = 0
    limit = document.limits.max_block_chars
    with open_docx(document.path, document.limits) as archive:
        try:
            styles = _heading_styles(archive, document.path, document.limits)
            with archive.open(DOCUMENT_PART) as stream:
                open_paragraphs: list[_Paragraph] = []  # a text box's paragraphs nest inside a paragraph

                def emit(text: str, paragraph: _Paragraph) -> Iterator[Block]:
                    nonlocal offset
                    level = paragraph.level
                    path = headings.path
                    if level and not paragraph.started:
                        path = headings.enter(level, text)
                    for start in range(0, len(text), limit):
                        yield Block(text[start:start + limit], offset + start, heading_path=path,
                                    kind="heading" if level else "text")
                    offset += len(text)

                for event, element, parent in _pruned_iterparse(stream, frozenset({f"{W}pPr"}), DOCUMENT_PART,
                                                                 document.path, document.limits):
                    tag = element.tag
                    if event == "start":
                        if tag == f"{W}p":
                            open_paragraphs.append(_Paragraph(limit))
                        continue
                    if not open_paragraphs:
                        continue
                    paragraph = open_paragraphs[-1]
                    text = None
                    if tag == f"{W}t":
                        text = element.text or ""
                    elif tag == f"{W}tab":
                        text = "\t"
                    elif tag in (f"{W}br", f"{W}cr"):
                        text = "\n"
                    elif tag == f"{W}pPr" and parent is not None and parent.tag == f"{W}p":
                        paragraph.level = _properties_level(element, styles)
                    elif tag == f"{W}p":
                        open_paragraphs.pop()
                        final = paragraph.finish()
                        if final:
                            yield from emit(final, paragraph)
                    if text:
                        for part in paragraph.add(text):
                            yield from emit(part, paragraph)
        except (ElementTree.ParseError, zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
            raise CorruptDocument(document.path, f"corrupt .docx ({type(exc).__name__}: {exc})") from None
    if offset == 0:
        raise NoExtractableText(document.path, "the .docx contains no text")
