"""Killing a run with SIGKILL once part of it is committed, and reading what the store holds
afterwards: the shared half of every "kill -9, then resume" test."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from rlmpipe.runtime.store import Store


def kill_after_steps(process: subprocess.Popen, workspace: Path, steps: int, *, poll: float = 0.05,
                     timeout: float = 120) -> tuple[str, set[str]]:
    """Wait until the workspace's run has ``steps`` done steps (or ``timeout`` passed), SIGKILL the
    process, and return the run's id and the keys of its steps that were done at the kill."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workspace / "runs.sqlite").exists():
            with Store(workspace) as store:
                runs = store.list_runs()
                if runs and store.step_counts(runs[0]["run_id"]).get("done", 0) >= steps:
                    break
        time.sleep(poll)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    with Store(workspace) as store:
        run_id = store.list_runs()[0]["run_id"]
        return run_id, {s.step_key for s in store.steps(run_id) if s.status == "done"}


def later_calls(workspace: Path, run_id: str) -> list[dict]:
    """The run's LM calls made after its first session (by a resume)."""
    with Store(workspace) as store:
        return [c for c in store.calls(run_id) if c["session"] > 1]
