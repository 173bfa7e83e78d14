"""Shared helper for the benchmarks: each one owns a named section of bench/RESULTS.md.

    from _results import machine, write_section
    write_section("chunking", f"## Chunking\n\n{machine()}\n\n| ... |")

replaces everything between ``<!-- BEGIN chunking -->`` and ``<!-- END chunking -->`` (markers kept),
or appends the section at the end of the file when it is not there yet. Other sections are left
byte-for-byte as they are, so several benchmarks can share the file.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# rlmpipe benchmark results\n\n"
    "Each section below is written by one script under `bench/` (see the command in it); "
    "rerun that script to refresh its section. Do not edit between the BEGIN/END markers by hand.\n"
)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what the platform module knows)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def machine() -> str:
    """One line describing this machine, for the header of a results table."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
        memory_text = f", {memory:.0f} GiB RAM"
    except (ValueError, OSError):
        memory_text = ""
    return (f"{os.cpu_count()} cores ({cpu_model()}){memory_text}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def write_section(name: str, markdown: str, path: str | os.PathLike | None = None) -> Path:
    """Replace (or append) the section ``name`` of RESULTS.md with ``markdown``; return the file."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"section name must be letters, digits, '_', '.' or '-' (got {name!r})")
    target = Path(path) if path is not None else RESULTS
    # two benchmarks finishing at once must not lose each other's section: lock the folder
    # (flock on a directory works on Linux and leaves no lock file behind)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        return _write_locked(target, name, markdown)
    finally:
        os.close(folder)  # releases the lock


def _write_locked(target: Path, name: str, markdown: str) -> Path:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    current = target.read_text(encoding="utf-8") if target.exists() else HEADER
    start = current.find(begin)
    stop = current.find(end, start + len(begin)) if start != -1 else -1
    if start != -1 and stop != -1:
        updated = current[:start] + block + current[stop + len(end):]
    elif start != -1 or end in current:
        raise ValueError(f"{target}: section {name!r} has only one of its BEGIN/END markers; fix it by hand")
    else:
        updated = current.rstrip("\n") + "\n\n" + block + "\n"
    # write atomically so an interrupted run never leaves half a file
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=".RESULTS.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(updated)
        # mkstemp makes the file 0600: give it the mode a plain open() would (0644 under umask 022)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    return target
