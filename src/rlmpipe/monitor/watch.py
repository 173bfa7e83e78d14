"""``runs watch``: the live progress of a run started elsewhere, by following its event log."""

from __future__ import annotations

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


def watch_run(workspace: Path, run_id: str, store: Store, interval: float = 1.0, stream=None) -> RunProgress:
    import sys

    stream = stream or sys.stderr
    progress = RunProgress()
    path = event_log_path(workspace, run_id)
    position = follow(path, progress, 0)
    live = stream.isatty()
    reporter = LiveReporter(progress) if live else None
    if reporter:
        reporter.__enter__()
    try:
        while True:
            position = follow(path, progress, position)
            run = store.get_run(run_id)
            if not live:
                print(f"[{run_id}] {progress.line()}", file=stream, flush=True)
            if run is None or run_state(run) != "running":
                position = follow(path, progress, position)
                break
            time.sleep(interval)
    finally:
        if reporter:
            reporter.__exit__(None, None, None)
    run = store.get_run(run_id) or {}
    print(f"run {run_id}: {run_state(run) if run else 'unknown'}"
          + (f" ({run['stop_reason']})" if run.get("stop_reason") else "")
          + f", elapsed {duration(time.time() - progress.started)}", file=stream)
    return progress
