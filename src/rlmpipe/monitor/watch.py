"""``runs watch``: the live progress of a run started elsewhere, by following its event log."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from rlmpipe.monitor.formats import duration
from rlmpipe.monitor.progress import LiveReporter, RunProgress
from rlmpipe.monitor.render import run_state
from rlmpipe.runtime.eventlog import event_log_path
from rlmpipe.runtime.events import event_from_dict
from rlmpipe.runtime.store import Store


def follow(path: Path, progress: RunProgress, position: int) -> int:
    """Feed the events appended since ``position``; returns the new position."""
    import json

    if not path.exists():
        return position
    with open(path, encoding="utf-8") as handle:
        handle.seek(position)
        while True:
            line = handle.readline()
            if not line or not line.endswith("\n"):  # nothing more, or a line still being written
                return position
            position += len(line.encode("utf-8"))
            progress.update(event_from_dict(json.loads(line)))


def watch_run(store: Store, run_id: str, interval: float = 1.0) -> RunProgress:
    """Show the progress of ``run_id`` (of ``store``'s workspace) until it ends: the live panel on a
    terminal, else a line every ``interval`` seconds; then how it ended."""
    progress = RunProgress()
    path = event_log_path(store.workspace, run_id)
    position = follow(path, progress, 0)
    live = sys.stderr.isatty()
    with LiveReporter(progress) if live else contextlib.nullcontext():
        while True:
            position = follow(path, progress, position)
            run = store.get_run(run_id)
            if not live:
                print(f"[{run_id}] {progress.line()}", file=sys.stderr, flush=True)
            if run is None or run_state(run) != "running":
                follow(path, progress, position)
                break
            time.sleep(interval)
    run = store.get_run(run_id) or {}
    print(f"run {run_id}: {run_state(run) if run else 'unknown'}"
          + (f" ({run['stop_reason']})" if run.get("stop_reason") else "")
          + f", elapsed {duration(progress.elapsed)}", file=sys.stderr)
    return progress
