"""Documents and blocks: what every reader produces.

A reader turns a file into a stream of :class:`Block` s. Concatenating the texts of all blocks, in
order, gives the document's *extracted text*; every offset in rlmpipe (chunks, evidence) is a
character offset into that text. For ``.txt`` and ``.md`` the extracted text is exactly the file
decoded as UTF-8 with line endings kept (``open(path, encoding="utf-8", newline="").read()``).
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
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
    """Bounds that keep a reader's memory and work flat in document size, whatever the input."""

    window_bytes: int = 1 << 16  # bytes read at a time (1 MiB windows left glibc holding ~4x the file size in freed strings)
    max_block_chars: int = 1 << 16  # a longer paragraph is split at line ends
    max_line_bytes: int = 8 << 20  # a longer line means "not a text document"
    # Containers (.docx): a part that unpacks to more than this, or more than this many times its
    # packed size, is a zip bomb (Word's own XML packs 5-20x; a 41 KB bomb unpacked to 3 M tokens).
    max_unpacked_bytes: int = 512 << 20
    max_unpack_ratio: float = 100.0
    # Every XML part of a container is bounded by what it holds as well as by its bytes: a part
    # under the ratio limit can still be built to hurt (one style with millions of children packed
    # at 91x took 3.7 GB). Word writes parts far inside these: a 1,000-page document.xml has about
    # 2 M elements, nesting stays under 100 levels, a style or a paragraph's properties under 100.
    max_xml_elements: int = 20_000_000  # elements in one part
    max_xml_depth: int = 256  # levels of nesting
    max_xml_kept: int = 10_000  # elements inside one element that is read whole (a style, a w:pPr)


@dataclass(frozen=True)
class Document:
    """A validated input file. ``blocks()`` streams its text; nothing is held in memory.

    ``format`` is what the file's content is (``txt``, ``md``, ``html``, ``pdf``, ``docx``), which
    may differ from what its name says; ``encoding`` is how a text format is decoded.
    """

    path: Path
    doc_id: str
    format: str
    size_bytes: int
    limits: ReadLimits = field(default_factory=ReadLimits)
    _reader: Callable[["Document"], Iterator[Block]] | None = field(default=None, repr=False, compare=False)
    encoding: str = "utf-8"

    def blocks(self) -> Iterator[Block]:
        assert self._reader is not None
        return self._reader(self)

    def text(self) -> str:
        """The whole extracted text. Loads it into memory: for tests and small documents."""
        return "".join(block.text for block in self.blocks())


def doc_id_from_digest(digest: "hashlib._Hash") -> str:
    """A document's id is a hash of its bytes (128 bits of SHA-256, hex)."""
    return digest.hexdigest()[:32]


def open_regular(path: Path):
    """``path`` opened for reading in binary, only if it is a regular file.

    A FIFO would block ``open()`` forever (and a device may never end): the file is opened without
    blocking and checked on its descriptor, so nothing can swap it in between.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise UnreadablePath(path, "no such file") from None
    except OSError as exc:
        raise UnreadablePath(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise UnreadablePath(path, "is a directory (pass it as a folder to scan, or pick a file)")
        if not stat.S_ISREG(mode):
            raise UnreadablePath(path, f"not a regular file ({_file_kind(mode)}): not read")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def read_windows(path: Path, window_bytes: int) -> Iterator[bytes]:
    handle = open_regular(path)
    try:
        with handle:
            while chunk := handle.read(window_bytes):
                yield chunk
    except OSError as exc:
        raise UnreadablePath(path, f"cannot read: {exc.strerror or exc}") from None


def read_head(path: Path, size: int = 4096) -> bytes:
    """The first ``size`` bytes (what the file type and a text encoding are told from)."""
    try:
        with open_regular(path) as handle:
            return handle.read(size)
    except OSError as exc:
        raise UnreadablePath(path, f"cannot read: {exc.strerror or exc}") from None


#: Byte-order marks of the encodings read as text. A UTF-8 mark stays in the text (as U+FEFF), so
#: that ``open(path, encoding="utf-8")`` and rlmpipe agree on offsets; UTF-16/32 decoders drop theirs.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
         (b"\xfe\xff", "utf-16"))


def bom_encoding(head: bytes) -> str | None:
    """UTF-16 or UTF-32 when the file starts with their byte-order mark, else None."""
    for mark, encoding in _BOMS:
        if head.startswith(mark):
            return encoding
    return None


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
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    wide = encoding in ("utf-16", "utf-32")  # NUL bytes are part of every character: check characters
    size = 0
    line_run = 0  # bytes (characters, for UTF-16/32) since the last line break
    has_text = False
    for chunk in read_windows(path, limits.window_bytes):
        digest.update(chunk)
        if not wide and b"\x00" in chunk:
            offset = size + chunk.index(b"\x00")
            raise BinaryDocument(path, f"binary file (NUL byte at byte {offset}), not text")
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise InvalidEncoding(
                path, f"invalid {encoding.upper()} at byte {size + exc.start} "
                "(is it a different encoding, e.g. Latin-1 or Windows-1252?)"
            ) from None
        if wide and "\x00" in text:
            raise BinaryDocument(path, f"binary file (NUL character in {encoding.upper()} text), not text")
        unit = text if wide else chunk
        first_break = unit.find("\n" if wide else b"\n")
        if first_break == -1:
            line_run += len(unit)
        else:
            line_run += first_break
            if line_run <= limits.max_line_bytes:
                line_run = len(unit) - unit.rfind("\n" if wide else b"\n") - 1
        if line_run > limits.max_line_bytes:
            raise LineTooLong(
                path,
                f"a line is longer than {limits.max_line_bytes:,} {'characters' if wide else 'bytes'} "
                "(no line breaks): not a text document?",
            )
        if not has_text and (text.strip() if wide else chunk.strip()):
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


def decoded_windows(path: Path, limits: ReadLimits, encoding: str = "utf-8") -> Iterator[str]:
    """The file as text, a bounded window at a time (a character is never split across windows)."""
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
