"""Files written whole or not at all: a crash (even SIGKILL) while an output is rewritten leaves
the previous version in place, never a truncated file. The text goes to a temporary file in the
same folder, is flushed to disk, and replaces the target in one ``os.replace``.

The temporary file is created like any file the user's programs create: mode 0666 less the
umask (0644 under the usual 022), so a report shared or served opens for others as the user
expects (``tempfile.mkstemp`` would make it 0600). While it is written it holds an exclusive
``flock``; a writer killed before its ``os.replace`` leaves its temporary file behind, unlocked,
and the next write of the same target removes it (a temporary file that is still locked belongs
to a live writer and is left alone).
"""

from __future__ import annotations

import contextlib
import fcntl  # POSIX only, as the store's workspace lock
import os
import secrets
from pathlib import Path
from typing import IO, Iterator


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_abandoned(path: Path) -> None:
    """Delete the temporary files of ``path`` whose writer died (none holds their lock)."""
    prefix = _temporary_prefix(path)
    try:
        names = [name for name in os.listdir(path.parent) if name.startswith(prefix) and name.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        candidate = path.parent / name
        try:
            descriptor = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone already, or not a file we may touch
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(OSError):
                os.unlink(candidate)
        except OSError:
            pass  # a live writer holds it
        finally:
            os.close(descriptor)


def _create_locked(path: Path) -> tuple[int, Path]:
    """A new temporary file beside ``path`` (mode 0666 less the umask), locked; its descriptor and path."""
    while True:
        temporary = path.parent / f"{_temporary_prefix(path)}{secrets.token_hex(6)}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except FileExistsError:
            continue
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:  # another writer's clean-up may have removed it between its creation and the lock
            if os.stat(temporary, follow_symlinks=False).st_ino == os.fstat(descriptor).st_ino:
                return descriptor, temporary
        except FileNotFoundError:
            pass
        os.close(descriptor)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, newline: str | None = None) -> Iterator[IO[str]]:
    """A text file to write that appears at ``path`` only when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    descriptor, temporary = _create_locked(path)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(temporary, path)  # still locked: no clean-up can take it in between
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with open_atomic(path) as handle:
        handle.write(text)
    return Path(path)
