"""Shared helpers for the sandbox tests (no fixtures: those are in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlmpipe.sandbox import deno_available

REPO = Path(__file__).resolve().parents[2]

requires_deno = pytest.mark.skipif(
    not deno_available(),
    reason="Deno is not installed (pip install deno, or put `deno` on PATH): the sandbox runs Pyodide in Deno",
)


def process_gone(pid: int) -> bool:
    """True if ``pid`` no longer exists (and so is not a zombie either), or is now some other program."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return b"runner.js" not in cmdline and state != "Z"


def proc_status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM, VmData) in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)
