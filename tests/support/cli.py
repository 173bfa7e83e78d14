"""Running the ``rlmpipe`` command as a user types it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rlmpipe(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    environment.pop("RLMPIPE_WORKSPACE", None) if "RLMPIPE_WORKSPACE" not in (env or {}) else None
    return subprocess.run([sys.executable, "-m", "rlmpipe.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=environment, timeout=timeout, input=input)


def start(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "rlmpipe.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=environment)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]
