"""PDF through pypdf, one page at a time: each page's text, then a blank line; blocks know their page
and the headings they are under (:mod:`rlmpipe.ingest.outline`).

pypdf reads pages lazily from the open file, so only the page being extracted is in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from rlmpipe.ingest.document import Block, Document
from rlmpipe.ingest.errors import CorruptDocument, EncryptedDocument, NoExtractableText
from rlmpipe.ingest.outline import Headings
from rlmpipe.ingest.text import paragraphs

logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf warns on every small defect


def open_pdf(path: Path):
    """A readable ``PdfReader``, or the typed error that says why not."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many "encrypted" PDFs have an empty user password
            except (DependencyError, NotImplementedError) as exc:
                raise EncryptedDocument(path, f"encrypted PDF that cannot be opened here ({exc})") from None
            if not opened:
                raise EncryptedDocument(path, "encrypted PDF: a password is required")
        pages = len(reader.pages)
    except (EncryptedDocument, CorruptDocument):
        raise
    except FileNotDecryptedError:
        raise EncryptedDocument(path, "encrypted PDF: a password is required") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise CorruptDocument(path, f"corrupt PDF ({type(exc).__name__}: {_short(exc)})") from None
    if pages == 0:
        raise CorruptDocument(path, "PDF has no pages")
    return reader


def read_pdf(document: Document) -> Iterator[Block]:
    reader = open_pdf(document.path)
    headings = Headings()  # the path carries over from page to page
    offset = 0
    found_text = False
    for number, page in enumerate(reader.pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception as exc:  # pypdf raises many types on malformed content streams
            raise CorruptDocument(
                document.path, f"page {number} cannot be read ({type(exc).__name__}: {_short(exc)})"
            ) from None
        text = text.replace("\x00", "")
        if text.strip():
            found_text = True
        text = text.rstrip() + "\n\n" if text.strip() else "\n"
        for start, paragraph in paragraphs(iter([text]), document.limits.max_block_chars):
            for inner, part, path in headings.split(paragraph):
                yield Block(part, offset + start + inner, page=number, heading_path=path)
        offset += len(text)
    if not found_text:
        raise NoExtractableText(
            document.path, f"no extractable text in {len(reader.pages)} page(s) (scanned? run OCR first)"
        )


def _short(exc: Exception) -> str:
    message = " ".join(str(exc).split())
    return message[:160] or "no detail"
