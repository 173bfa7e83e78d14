"""Typed errors for input that cannot be read.

Every error names the file and says in one line what is wrong with it, so that a corpus run can
report it and go on with the other documents.
"""

from __future__ import annotations

from pathlib import Path


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``...): always one line on a terminal.

    A file name may contain a line break or an escape sequence; printed raw, it could split an
    error line in two or forge a line of its own."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


class DocumentError(Exception):
    """A document could not be read. ``str(err)`` is one line: ``<path>: <problem>``."""

    kind = "unreadable"

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(printable(f"{self.path}: {problem}"))


class UnreadablePath(DocumentError):
    kind = "unreadable"


class UnsupportedFormat(DocumentError):
    kind = "unsupported"


class EmptyDocument(DocumentError):
    kind = "empty"


class BinaryDocument(DocumentError):
    kind = "binary"


class InvalidEncoding(DocumentError):
    kind = "encoding"


class LineTooLong(DocumentError):
    kind = "line-too-long"


class EncryptedDocument(DocumentError):
    kind = "encrypted"


class CorruptDocument(DocumentError):
    kind = "corrupt"


class NoExtractableText(DocumentError):
    kind = "no-text"
