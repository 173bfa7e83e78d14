"""Files written whole or not at all: a crash (even SIGKILL) while an output is rewritten leaves
the previous version in place, never a truncated file. The text goes to a temporary file in the
same folder, is flushed to disk, and replaces the target in one ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, newline: str | None = None) -> Iterator[IO[str]]:
    """A text file to write that appears at ``path`` only when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with open_atomic(path) as handle:
        handle.write(text)
    return Path(path)
