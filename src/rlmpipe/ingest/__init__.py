"""Ingestion: files in, validated :class:`Document` s out, their text streamed as :class:`Block` s.

``open_document(path)`` checks a file completely (readable, known type, not empty/binary/corrupt,
valid encoding) and derives its id from its bytes before a single block is produced; every
problem is a :class:`DocumentError` whose message is one line naming the file.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from rlmpipe.ingest.document import Block, Document, ReadLimits, hash_file, scan_text_file
from rlmpipe.ingest.errors import (
    BinaryDocument,
    CorruptDocument,
    DocumentError,
    EmptyDocument,
    EncryptedDocument,
    InvalidEncoding,
    LineTooLong,
    NoExtractableText,
    UnreadablePath,
    UnsupportedFormat,
)

FORMATS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html",
           ".htm": "html", ".pdf": "pdf", ".docx": "docx"}

__all__ = [
    "Block", "Document", "ReadLimits", "DocumentError", "UnreadablePath", "UnsupportedFormat",
    "EmptyDocument", "BinaryDocument", "InvalidEncoding", "LineTooLong", "EncryptedDocument",
    "CorruptDocument", "NoExtractableText", "FORMATS", "SkippedFiles", "open_document", "expand_paths", "open_documents",
]


def _reader(fmt: str):
    if fmt == "txt":
        from rlmpipe.ingest.text import read_text as reader
    elif fmt == "md":
        from rlmpipe.ingest.markdown import read_markdown as reader
    elif fmt == "html":
        from rlmpipe.ingest.html import read_html as reader
    elif fmt == "pdf":
        from rlmpipe.ingest.pdf import read_pdf as reader
    else:
        from rlmpipe.ingest.docx import read_docx as reader
    return reader


def open_document(path: str | os.PathLike, limits: ReadLimits | None = None) -> Document:
    """Validate ``path`` and return its :class:`Document`; raise a :class:`DocumentError` if unusable."""
    path = Path(path)
    limits = limits or ReadLimits()
    fmt = FORMATS.get(path.suffix.lower())
    if path.is_dir():
        raise UnreadablePath(path, "is a directory (pass it as a folder to scan, or pick a file)")
    if not path.exists():
        raise UnreadablePath(path, "no such file")
    if fmt is None:
        known = ", ".join(sorted(set(FORMATS)))
        shown = path.suffix or "(no extension)"
        raise UnsupportedFormat(path, f"unsupported file type {shown} (supported: {known})")
    if fmt in ("txt", "md"):
        doc_id, size = scan_text_file(path, limits)
    elif fmt == "html":
        from rlmpipe.ingest.html import sniff_charset

        with open(path, "rb") as handle:
            encoding = sniff_charset(handle.read(4096))
        doc_id, size = scan_text_file(path, limits, encoding=encoding)
    else:
        doc_id, size = hash_file(path, limits)
        if fmt == "pdf":
            from rlmpipe.ingest.pdf import open_pdf

            open_pdf(path)
        else:
            from rlmpipe.ingest.docx import open_docx

            open_docx(path).close()
    return Document(path=path, doc_id=doc_id, format=fmt, size_bytes=size, limits=limits, _reader=_reader(fmt))


@dataclass(frozen=True)
class SkippedFiles:
    """Files under a folder that were passed over because rlmpipe does not read their type."""

    folder: Path
    suffixes: dict[str, int]

    def __str__(self) -> str:
        kinds = ", ".join(f"{suffix} x{count}" for suffix, count in sorted(self.suffixes.items()))
        return f"{self.folder}: skipped {sum(self.suffixes.values())} file(s) of unsupported types ({kinds})"


def expand_paths(paths: Iterable[str | os.PathLike]) -> Iterator[Path | SkippedFiles]:
    """Files named, and supported files under folders named (sorted, hidden ones skipped).

    A file named explicitly is always yielded (so that an unsupported type gets its error); files
    of unsupported types found inside a folder are summarised in one :class:`SkippedFiles`.
    """
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        skipped: Counter[str] = Counter()
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                suffix = Path(name).suffix.lower()
                if suffix in FORMATS:
                    yield Path(root) / name
                else:
                    skipped[suffix or "(no extension)"] += 1
        if skipped:
            yield SkippedFiles(path, dict(skipped))


def open_documents(
    paths: Iterable[str | os.PathLike], limits: ReadLimits | None = None
) -> Iterator[Document | DocumentError | SkippedFiles]:
    """Each input as a Document, or the DocumentError that explains why it cannot be one.

    Errors are yielded, not raised, so that one bad file never stops the others.
    """
    for path in expand_paths(paths):
        if isinstance(path, SkippedFiles):
            yield path
            continue
        try:
            yield open_document(path, limits)
        except DocumentError as error:
            yield error
