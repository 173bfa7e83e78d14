"""Ingestion: files in, validated :class:`Document` s out, their text streamed as :class:`Block` s.

``open_document(path)`` checks a file completely (readable, known type, not empty/binary/corrupt,
valid encoding) and derives its id from its bytes before a single block is produced; every
problem is a :class:`DocumentError` whose message is one line naming the file.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from rlmpipe.ingest.document import Block, Document, ReadLimits, bom_encoding, hash_file, read_head, scan_text_file
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
    printable,
)

FORMATS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html",
           ".htm": "html", ".pdf": "pdf", ".docx": "docx"}

__all__ = [
    "Block", "Document", "ReadLimits", "DocumentError", "UnreadablePath", "UnsupportedFormat",
    "EmptyDocument", "BinaryDocument", "InvalidEncoding", "LineTooLong", "EncryptedDocument",
    "CorruptDocument", "NoExtractableText", "FORMATS", "Notice", "SkippedFiles", "open_document", "expand_paths",
    "open_documents", "format_note", "printable", "NoDocuments", "check_inputs",
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
    """Validate ``path`` and return its :class:`Document`; raise a :class:`DocumentError` if unusable.

    What the file *is* comes from its content: a PDF or a Word file is read as such whatever its
    name, and a text file named ``.pdf`` is read as text (``document.format`` says which, and
    :func:`format_note` says when that differs from the name). A UTF-16/32 file with a byte-order
    mark is text. Only regular files are opened (a FIFO would block forever).
    """
    path = Path(path)
    limits = limits or ReadLimits()
    named = FORMATS.get(path.suffix.lower())
    if named is None:
        if path.is_dir():
            raise UnreadablePath(path, "is a directory (pass it as a folder to scan, or pick a file)")
        if not path.exists() and not path.is_symlink():
            raise UnreadablePath(path, "no such file")
        known = ", ".join(sorted(set(FORMATS)))
        shown = path.suffix or "(no extension)"
        raise UnsupportedFormat(path, f"unsupported file type {shown} (supported: {known})")
    head = read_head(path)
    fmt = _content_format(path, head, named)
    encoding = "utf-8"
    if fmt in ("txt", "md", "html"):
        from rlmpipe.ingest.html import sniff_charset

        encoding = sniff_charset(head) if fmt == "html" else bom_encoding(head) or "utf-8"
        doc_id, size = scan_text_file(path, limits, encoding=encoding)
    else:
        doc_id, size = hash_file(path, limits)
        if fmt == "pdf":
            from rlmpipe.ingest.pdf import open_pdf

            open_pdf(path)
        else:
            from rlmpipe.ingest.docx import open_docx

            open_docx(path, limits).close()
    return Document(path=path, doc_id=doc_id, format=fmt, size_bytes=size, limits=limits, _reader=_reader(fmt),
                    encoding=encoding)


def _content_format(path: Path, head: bytes, named: str) -> str:
    """The reader for what the bytes are; ``named`` (from the extension) only chooses among text formats."""
    if b"%PDF-" in head[:1024]:  # the PDF header may follow a little junk (PDF 1.7, section 7.5.2)
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "docx"  # any other zip gets its error from the .docx reader (no word/document.xml)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):  # OLE: a legacy .doc or an encrypted Office file
        raise EncryptedDocument(path, "not a .docx zip: password-protected, or a legacy .doc file "
                                      "(save it as .docx or PDF)")
    if named in ("pdf", "docx"):
        return "txt"  # named as a binary format but without its signature: the text scan decides
    return named


def format_note(document: Document) -> str | None:
    """One line when the file's content is not what its name says (it was read as what it is)."""
    named = FORMATS.get(document.path.suffix.lower())
    if named is None or named == document.format or {named, document.format} <= {"txt", "md"}:
        return None
    what = {"txt": "plain text", "pdf": "a PDF", "docx": "a Word .docx file", "html": "HTML", "md": "Markdown"}
    return printable(f"{document.path}: the file is {what[document.format]}, not {what[named]} "
                     f"as its name says: read as {what[document.format]}")


@dataclass(frozen=True)
class Notice:
    """Something worth one line to the user that is not an error (nothing was lost)."""

    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class SkippedFiles(Notice):
    """Files under a folder that were passed over because rlmpipe does not read their type."""

    folder: Path = Path()
    suffixes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, folder: Path, suffixes: dict[str, int]) -> "SkippedFiles":
        kinds = ", ".join(f"{suffix} x{count}" for suffix, count in sorted(suffixes.items()))
        return cls(printable(f"{folder}: skipped {sum(suffixes.values())} file(s) of unsupported types ({kinds})"),
                   folder, suffixes)


def expand_paths(paths: Iterable[str | os.PathLike]) -> Iterator[Path | SkippedFiles | DocumentError]:
    """Files named, and supported files under folders named (sorted, hidden ones skipped).

    A file named explicitly is always yielded (so that an unsupported type gets its error); files
    of unsupported types found inside a folder are summarised in one :class:`SkippedFiles`. A file
    reached twice (a folder named twice, a file named and inside a named folder, a symlink to one)
    is yielded once. A folder that cannot be listed is a :class:`DocumentError`, not silence.
    """
    seen: set[str] = set()
    unreadable: list[OSError] = []

    def first_time(path: Path) -> bool:
        key = os.path.realpath(path)
        if key in seen:
            return False
        seen.add(key)
        return True

    def unreadable_folders(where: str | Path) -> Iterator[UnreadablePath]:
        while unreadable:
            error = unreadable.pop()
            yield UnreadablePath(error.filename or where, f"cannot read folder: {error.strerror or error}")

    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            if first_time(path):
                yield path
            continue
        skipped: Counter[str] = Counter()
        for root, dirs, files in os.walk(path, onerror=unreadable.append):
            yield from unreadable_folders(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                suffix = Path(name).suffix.lower()
                if suffix in FORMATS:
                    if first_time(Path(root) / name):
                        yield Path(root) / name
                else:
                    skipped[suffix or "(no extension)"] += 1
        yield from unreadable_folders(path)
        if skipped:
            yield SkippedFiles.of(path, dict(skipped))


def open_documents(
    paths: Iterable[str | os.PathLike], limits: ReadLimits | None = None
) -> Iterator[Document | DocumentError | Notice]:
    """Each input as a Document, or the DocumentError that explains why it cannot be one.

    Errors are yielded, not raised, so that one bad file never stops the others; a
    :class:`Notice` (files skipped, a file whose content is not what its name says) comes before
    the document it concerns.
    """
    for path in expand_paths(paths):
        if isinstance(path, (Notice, DocumentError)):
            yield path
            continue
        try:
            document = open_document(path, limits)
        except DocumentError as error:
            yield error
            continue
        note = format_note(document)
        if note:
            yield Notice(note)
        yield document


class NoDocuments(ValueError):
    """The inputs hold no file to read: an empty folder, or one of files of other types."""


def check_inputs(paths: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`NoDocuments` when ``paths`` hold no file to read (a file that cannot be read is
    not this: it gets its own error when it is opened). Stops at the first file found."""
    paths = list(paths)
    skipped: list[str] = []
    for item in expand_paths(paths):
        if isinstance(item, SkippedFiles):
            skipped.append(str(item))
            continue
        return
    named = ", ".join(printable(str(path)) for path in paths) or "no path given"
    kinds = ", ".join(sorted(set(FORMATS)))
    raise NoDocuments(f"no documents to read in {named} (rlmpipe reads {kinds} files)"
                      + (f"; {'; '.join(skipped)}" if skipped else ""))
