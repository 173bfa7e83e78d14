"""Documents and blocks: what every reader produces.

A reader turns a file into a stream of :class:`Block` s. Concatenating the texts of all blocks, in
order, gives the document's *extracted text*; every offset in rlmpipe (chunks, evidence) is a
character offset into that text. For ``.txt`` and ``.md`` the extracted text is exactly the file
decoded as UTF-8 with line endings kept (``open(path, encoding="utf-8", newline="").read()``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from rlmpipe.ingest.errors import (
    BinaryDocument,
    EmptyDocument,
    InvalidEncoding,
    LineTooLong,
    UnreadablePath,
)


@dataclass(frozen=True, slots=True)
class Block:
    """A run of extracted text with where it sits in the document."""

    text: str
    char_start: int
    page: int | None = None
    heading_path: tuple[str, ...] = ()
    kind: str = "text"  # "text" or "heading"

    @property
    def char_end(self) -> int:
        return self.char_start + len(self.text)


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Bounds that keep a reader's memory flat in document size."""

    window_bytes: int = 1 << 16  # bytes read at a time (1 MiB windows left glibc holding ~4x the file size in freed strings)
    max_block_chars: int = 1 << 16  # a longer paragraph is split at line ends
    max_line_bytes: int = 8 << 20  # a longer line means "not a text document"


@dataclass(frozen=True)
class Document:
    """A validated input file. ``blocks()`` streams its text; nothing is held in memory."""

    path: Path
    doc_id: str
    format: str
    size_bytes: int
    limits: ReadLimits = field(default_factory=ReadLimits)
    _reader: Callable[["Document"], Iterator[Block]] | None = field(default=None, repr=False, compare=False)

    def blocks(self) -> Iterator[Block]:
        assert self._reader is not None
        return self._reader(self)

    def text(self) -> str:
        """The whole extracted text. Loads it into memory: for tests and small documents."""
        return "".join(block.text for block in self.blocks())


def doc_id_from_digest(digest: "hashlib._Hash") -> str:
    """A document's id is a hash of its bytes (128 bits of SHA-256, hex)."""
    return digest.hexdigest()[:32]


def read_windows(path: Path, window_bytes: int) -> Iterator[bytes]:
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(window_bytes):
                yield chunk
    except OSError as exc:
        raise UnreadablePath(path, f"cannot read: {exc.strerror or exc}") from None


def hash_file(path: Path, limits: ReadLimits) -> tuple[str, int]:
    """Id and size of any file, reading it in bounded windows."""
    digest = hashlib.sha256()
    size = 0
    for chunk in read_windows(path, limits.window_bytes):
        digest.update(chunk)
        size += len(chunk)
    if size == 0:
        raise EmptyDocument(path, "file is empty")
    return doc_id_from_digest(digest), size


def scan_text_file(path: Path, limits: ReadLimits, encoding: str = "utf-8") -> tuple[str, int]:
    """First pass over a text file: id, size, and every reason to refuse it, before any block is read.

    Checking here (rather than while streaming) means a bad file fails before it produced any
    output, and chunk ids can be derived from the document id from the first chunk on.
    """
    import codecs

    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    size = 0
    line_run = 0  # bytes since the last line break
    has_text = False
    for chunk in read_windows(path, limits.window_bytes):
        digest.update(chunk)
        if b"\x00" in chunk:
            offset = size + chunk.index(b"\x00")
            raise BinaryDocument(path, f"binary file (NUL byte at byte {offset}), not text")
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise InvalidEncoding(
                path, f"invalid {encoding.upper()} at byte {size + exc.start} (is it {_guess_kind(chunk)}?)"
            ) from None
        first_break = chunk.find(b"\n")
        if first_break == -1:
            line_run += len(chunk)
        else:
            line_run += first_break
            if line_run <= limits.max_line_bytes:
                line_run = len(chunk) - chunk.rfind(b"\n") - 1
        if line_run > limits.max_line_bytes:
            raise LineTooLong(
                path,
                f"a line is longer than {limits.max_line_bytes:,} bytes (no line breaks): "
                "not a text document?",
            )
        if not has_text and chunk.strip():
            has_text = True
        size += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidEncoding(path, f"invalid {encoding.upper()}: file ends inside a character") from None
    if size == 0:
        raise EmptyDocument(path, "file is empty")
    if not has_text:
        raise EmptyDocument(path, "file contains only whitespace")
    return doc_id_from_digest(digest), size


def _guess_kind(chunk: bytes) -> str:
    if chunk.startswith(b"%PDF"):
        return "a PDF with the wrong extension"
    if chunk.startswith(b"PK\x03\x04"):
        return "a zip or Office file with the wrong extension"
    return "a different encoding, e.g. Latin-1 or UTF-16"


def decoded_windows(path: Path, limits: ReadLimits, encoding: str = "utf-8") -> Iterator[str]:
    """The file as text, a bounded window at a time (a character is never split across windows)."""
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        for chunk in read_windows(path, limits.window_bytes):
            text = decoder.decode(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:  # the file changed since it was scanned
        raise InvalidEncoding(path, f"invalid {encoding.upper()} ({exc.reason})") from None
    if tail:
        yield tail
