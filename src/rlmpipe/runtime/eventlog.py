"""The event log: one JSON Lines file per run (``<workspace>/runs/<run_id>/events.jsonl``).

Every event the engine emits (run start/end, document and step start/end, LM call, retry, re-ask,
error, budget stop) is appended as one line, in the order emitted. A resumed run appends to the
same file, so the file tells the whole story of a run across sessions.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from rlmpipe.runtime.events import event_from_dict


def event_log_path(workspace: str | Path, run_id: str) -> Path:
    return Path(workspace) / "runs" / run_id / "events.jsonl"


class EventLogWriter:
    """An event-bus listener appending to the run's file (opened on the first event of a run)."""

    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace)
        self._handle = None
        self._run_id: str | None = None
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        run_id = event.get("run_id")
        line = json.dumps(event.to_dict(), ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if run_id and run_id != self._run_id:
                self._open(run_id)
            if self._handle is not None:
                self._handle.write(line)
                self._handle.flush()  # `runs watch` follows this file from another process

    def _open(self, run_id: str) -> None:
        if self._handle is not None:
            self._handle.close()
        path = event_log_path(self.workspace, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8", buffering=1 << 16)
        self._run_id = run_id

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


def read_events(workspace: str | Path, run_id: str, kinds: set[str] | None = None) -> list:
    """The run's events (only those of ``kinds``, if given), typed by
    :func:`rlmpipe.runtime.events.event_from_dict`; a line cut off by a crash is skipped."""
    path = event_log_path(workspace, run_id)
    if not path.exists():
        return []
    events = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if kinds is None or record.get("type") in kinds:
                events.append(event_from_dict(record))
    return events
