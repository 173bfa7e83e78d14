"""Word .docx: paragraphs in order (tables included), each followed by a blank line; heading styles
give the path.

Written over ``zipfile`` + ``ElementTree.iterparse`` rather than python-docx because python-docx
builds the whole document tree in memory; this streams ``word/document.xml`` element by element.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Iterator
from xml.etree import ElementTree

from rlmpipe.ingest.document import Block, Document
from rlmpipe.ingest.errors import CorruptDocument, EncryptedDocument, NoExtractableText
from rlmpipe.ingest.markdown import HeadingPath
from rlmpipe.ingest.text import paragraphs

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
HEADING_NAME = re.compile(r"heading\s*([1-9])$", re.IGNORECASE)


def open_docx(path: Path) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as handle:
            head = handle.read(8)
        if head.startswith(b"\xd0\xcf\x11\xe0"):  # OLE container: password-protected or legacy .doc
            raise EncryptedDocument(path, "not a .docx zip: password-protected, or a legacy .doc file") from None
        raise CorruptDocument(path, "corrupt .docx (not a zip archive)") from None
    if "word/document.xml" not in archive.namelist():
        archive.close()
        raise CorruptDocument(path, "corrupt .docx (no word/document.xml)")
    return archive


def _heading_styles(archive: zipfile.ZipFile) -> dict[str, int]:
    """styleId -> heading level, from styles.xml (names like 'heading 2', or an outline level)."""
    levels: dict[str, int] = {}
    if "word/styles.xml" not in archive.namelist():
        return levels
    root = ElementTree.fromstring(archive.read("word/styles.xml"))
    for style in root.iter(f"{W}style"):
        style_id = style.get(f"{W}styleId")
        name = style.find(f"{W}name")
        name_value = name.get(f"{W}val", "") if name is not None else ""
        match = HEADING_NAME.match(name_value)
        outline = style.find(f"{W}pPr/{W}outlineLvl")
        if match:
            levels[style_id] = int(match.group(1))
        elif name_value.lower() == "title":
            levels[style_id] = 1
        elif outline is not None and outline.get(f"{W}val", "9").isdigit() and int(outline.get(f"{W}val")) < 9:
            levels[style_id] = int(outline.get(f"{W}val")) + 1
    return levels


def _paragraph_text(paragraph: ElementTree.Element) -> str:
    parts: list[str] = []
    for node in paragraph.iter():
        if node.tag == f"{W}t" and node.text:
            parts.append(node.text)
        elif node.tag == f"{W}tab":
            parts.append("\t")
        elif node.tag in (f"{W}br", f"{W}cr"):
            parts.append("\n")
    return "".join(parts)


def _paragraph_level(paragraph: ElementTree.Element, styles: dict[str, int]) -> int:
    properties = paragraph.find(f"{W}pPr")
    if properties is None:
        return 0
    outline = properties.find(f"{W}outlineLvl")
    if outline is not None and outline.get(f"{W}val", "9").isdigit() and int(outline.get(f"{W}val")) < 9:
        return int(outline.get(f"{W}val")) + 1
    style = properties.find(f"{W}pStyle")
    return styles.get(style.get(f"{W}val", ""), 0) if style is not None else 0


def read_docx(document: Document) -> Iterator[Block]:
    headings = HeadingPath()
    offset = 0
    with open_docx(document.path) as archive:
        try:
            styles = _heading_styles(archive)
            with archive.open("word/document.xml") as stream:
                stack: list[ElementTree.Element] = []
                for event, element in ElementTree.iterparse(stream, events=("start", "end")):
                    if event == "start":
                        stack.append(element)
                        continue
                    stack.pop()
                    if element.tag != f"{W}p":
                        continue
                    text = _paragraph_text(element).strip()
                    level = _paragraph_level(element, styles) if text else 0
                    element.clear()
                    if stack:
                        stack[-1].remove(element)
                    if not text:
                        continue
                    path = headings.enter(level, text) if level else headings.path
                    text += "\n\n"
                    for start, part in paragraphs(iter([text]), document.limits.max_block_chars):
                        yield Block(part, offset + start, heading_path=path, kind="heading" if level else "text")
                    offset += len(text)
        except (ElementTree.ParseError, zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
            raise CorruptDocument(document.path, f"corrupt .docx ({type(exc).__name__}: {exc})") from None
    if offset == 0:
        raise NoExtractableText(document.path, "the .docx contains no text")
