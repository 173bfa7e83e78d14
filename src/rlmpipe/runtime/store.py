"""The run store: SQLite in WAL mode, in a workspace folder (default ``./.rlmpipe/``).

What it holds: runs (configuration, fingerprint, status), documents of a run, steps (result,
usage, attempts, timings, error), LM calls (one row per attempt, written when it ends) and the call
journal (every answer a step received, written before the step's program sees it: a step run
again after a crash or a stop is served these instead of calling the model again; see
``lm/journal.py``). A step is *done* only once its row is committed; resume reads this table and
nothing else. One connection per thread (SQLite's rule), all closed
by :meth:`Store.close`; writes are short transactions, and WAL lets readers (``runs watch``) read
while a run writes. The schema is versioned (``PRAGMA user_version``): a workspace made by an
older rlmpipe is migrated forward in place, one made by a newer one is refused.

A workspace holds one running run at a time (:meth:`Store.run_lock`): two identical runs at once
would each pay for every call.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

from rlmpipe.lm.journal import Answer, Claim
from rlmpipe.lm.usage import FREE_OUTCOMES, LMCall, Usage
from rlmpipe.runtime.schema import FIRST_SCHEMA, SCHEMA_VERSION, WorkspaceTooNew, insert, migrate

__all__ = ["FIRST_SCHEMA", "SCHEMA_VERSION", "StepRow", "Store", "WorkspaceBusy", "WorkspaceTooNew", "find_workspace"]

WORKSPACE_NAME = ".rlmpipe"


def find_workspace(explicit: str | Path | None = None, start: str | Path | None = None) -> Path:
    """Where runs live, found the way git finds ``.git``: ``explicit`` (``--workspace``), else
    ``$RLMPIPE_WORKSPACE``, else the nearest ``.rlmpipe`` folder in the current folder or one of
    its parents, else ``./.rlmpipe`` (made by the first run). So every command run anywhere in a
    project sees the same runs, and projects do not share a lock or a database."""
    if explicit:
        return Path(explicit)
    if os.environ.get("RLMPIPE_WORKSPACE"):
        return Path(os.environ["RLMPIPE_WORKSPACE"])
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / WORKSPACE_NAME
        if (candidate / "runs.sqlite").is_file():
            return candidate if folder != here else Path(WORKSPACE_NAME)
    return Path(WORKSPACE_NAME)


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace; the message names it."""


@dataclass
class StepRow:
    step_key: str
    run_id: str
    doc_id: str | None
    chunk_id: str | None
    name: str
    depth: int
    status: str
    result: Any
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    calls: int
    attempts: int
    reasks: int
    error: str | None
    started: float | None
    finished: float | None
    worker: str | None
    extra: Any
    detail: str | None = None  # a failed step's traceback
    replayed: int = 0  # calls served from the call journal (answered in an earlier session)
    unused: int = 0  # journaled answers the step did not ask for again (its replay parted from them)


class Store:
    """Thread-safe access to one workspace's database."""

    def __init__(self, workspace: str | Path | None = None):
        workspace = find_workspace(workspace)
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.path = self.workspace / "runs.sqlite"
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        with self._write_lock:
            migrate(self._connection(), self.workspace)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: survives a process crash
            connection.execute("PRAGMA busy_timeout=30000")
            connection.row_factory = sqlite3.Row
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        """Close every thread's connection (a thread that uses the store again gets a new one)."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            try:
                connection.close()
            except sqlite3.ProgrammingError:  # pragma: no cover - closed already
                pass
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def run_lock(self, holder: dict):
        """Hold the workspace for one run; :class:`WorkspaceBusy` (naming the holder) if another has it.

        An advisory ``flock`` on ``<workspace>/run.lock``: the system releases it when the holding
        process ends, however it ends (a SIGKILL leaves no stale lock behind)."""
        import fcntl  # POSIX only

        path = self.workspace / "run.lock"
        handle = open(path, "a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                try:
                    other = json.loads(handle.read() or "{}")
                except ValueError:
                    other = {}
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.get("since", 0))) if other else "?"
                raise WorkspaceBusy(
                    f"workspace {self.workspace} is in use by run {other.get('run_id', '?')} (pid {other.get('pid', '?')}, "
                    f"since {since}: {other.get('command', '?')}); wait for it to end, or use another --workspace"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({**holder, "pid": os.getpid(), "since": time.time()}))
            handle.flush()
            yield
        finally:
            handle.close()  # closing the descriptor releases the lock

    def _write(self, statements: Iterable[tuple[str, tuple]]) -> None:
        connection = self._connection()
        with self._write_lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    connection.execute(sql, params)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, params).fetchall()

    def _each(self, sql: str, params: tuple = ()) -> Iterator[dict]:
        """The rows one at a time, as dicts: for queries over every LM call of a run (hundreds of
        thousands of rows in a long run), whose rows held all at once would grow memory with the run."""
        cursor = self._connection().cursor()
        cursor.row_factory = None  # plain tuples, zipped with the names: faster than dict(sqlite3.Row)
        cursor.execute(sql, params)
        names = [column[0] for column in cursor.description]
        for row in cursor:
            yield dict(zip(names, row))

    # --- runs -----------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict | None:
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return _run_dict(rows[0]) if rows else None

    def find_runs(self, prefix: str) -> list[dict]:
        """The runs whose id starts with ``prefix`` (none for an empty one: it names no run); ``%`` and
        ``_`` in it are characters, not LIKE's wildcards."""
        if not prefix:
            return []
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._query("SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY created DESC",
                           (escaped + "%",))
        return [_run_dict(row) for row in rows]

    def list_runs(self, limit: int = 50) -> list[dict]:
        rows = self._query("SELECT * FROM runs ORDER BY updated DESC LIMIT ?", (limit,))
        return [_run_dict(row) for row in rows]

    def start_run(self, run_id: str, pipeline: str, fingerprint: str, model: str | None, config: dict, pid: int) -> int:
        """Create the run, or reopen it for another session; returns the session number (1, 2, ...)."""
        now = time.time()
        self._write([(
            "INSERT INTO runs (run_id, pipeline, fingerprint, model, config, status, created, updated, sessions, pid)"
            " VALUES (?, ?, ?, ?, ?, 'running', ?, ?, 1, ?)"
            " ON CONFLICT(run_id) DO UPDATE SET status='running', stop_reason=NULL, updated=excluded.updated,"
            " sessions=sessions+1, pid=excluded.pid, config=excluded.config, model=excluded.model",
            (run_id, pipeline, fingerprint, model, json.dumps(config, sort_keys=True), now, now, pid),
        )])
        return int(self._query("SELECT sessions FROM runs WHERE run_id = ?", (run_id,))[0]["sessions"])

    def finish_run(self, run_id: str, status: str, reason: str | None = None, totals: dict | None = None) -> None:
        self._write([(
            "UPDATE runs SET status = ?, stop_reason = ?, updated = ?, totals = ? WHERE run_id = ?",
            (status, reason, time.time(), json.dumps(totals) if totals is not None else None, run_id),
        )])

    # --- documents ------------------------------------------------------------------------------
    def set_document(self, run_id: str, doc_id: str, path: str, status: str, *, error: str | None = None,
                     result: Any = None, detail: str | None = None) -> None:
        now = time.time()
        self._write([(
            "INSERT INTO documents (run_id, doc_id, path, status, error, started, finished, result, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(run_id, doc_id, path) DO UPDATE SET status=excluded.status, error=excluded.error,"
            " finished=excluded.finished, result=COALESCE(excluded.result, result), detail=excluded.detail",
            (run_id, doc_id, path, status, error, now,
             now if status in ("done", "partial", "failed", "stopped") else None,
             json.dumps(result) if result is not None else None, detail),
        )])

    def documents(self, run_id: str) -> list[dict]:
        rows = self._query("SELECT * FROM documents WHERE run_id = ? ORDER BY started", (run_id,))
        return [{**dict(row), "result": json.loads(row["result"]) if row["result"] else None} for row in rows]

    # --- steps ----------------------------------------------------------------------------------
    def done_step(self, step_key: str) -> StepRow | None:
        rows = self._query("SELECT * FROM steps WHERE step_key = ? AND status = 'done'", (step_key,))
        return _step_row(rows[0]) if rows else None

    def done_steps_of(self, run_id: str, doc_id: str | None) -> dict[str, StepRow]:
        """Every done step of one document of a run, by key (one query instead of one per step)."""
        rows = self._query("SELECT * FROM steps WHERE run_id = ? AND doc_id IS ? AND status = 'done'", (run_id, doc_id))
        return {row["step_key"]: _step_row(row) for row in rows}

    def commit_step(self, row: StepRow, forget: Iterable[tuple[str, int]] | None = (),
                    forget_all: bool = False) -> None:
        """The step's row (its calls are stored as they end): done means stored. In the same transaction,
        journaled answers that no longer belong to the step are dropped: ``forget`` (the ones its replay
        parted from), or all of them (``forget_all``: a failure that the same answers would repeat)."""
        values = {**{name: getattr(row, name) for name in _STEP_COLUMNS},
                  "result": json.dumps(row.result) if row.result is not None else None,
                  "extra": json.dumps(row.extra) if row.extra is not None else None}
        statements = [(_STEP_INSERT, tuple(values[name] for name in _STEP_COLUMNS))]
        if forget_all:
            statements.append(("DELETE FROM journal WHERE step_key = ?", (row.step_key,)))
        statements.extend(("DELETE FROM journal WHERE step_key = ? AND request = ? AND occurrence = ?",
                           (row.step_key, request, occurrence)) for request, occurrence in forget or ())
        self._write(statements)

    def forget_answers(self, step_key: str, keys: Iterable[tuple[str, int]]) -> None:
        """Drop some of a step's journaled answers (those its replay parted from)."""
        statements = [("DELETE FROM journal WHERE step_key = ? AND request = ? AND occurrence = ?",
                       (step_key, request, occurrence)) for request, occurrence in keys]
        if statements:
            self._write(statements)

    def record_calls(self, calls: list[LMCall], session: int) -> None:
        """LM call attempts, as they end (their step need not be done: what was billed is kept)."""
        calls = [call for call in calls if not call.stored]
        if calls:
            self._write([_call_insert(call, session) for call in calls])

    # --- the call journal -----------------------------------------------------------------------
    def journal(self, step_key: str) -> dict[tuple[str, int], Answer]:
        """A step's journaled answers, by (request, occurrence)."""
        rows = self._query("SELECT request, occurrence, outputs, prompt_tokens, completion_tokens, cost FROM journal"
                           " WHERE step_key = ?", (step_key,))
        return {(row["request"], row["occurrence"]): Answer(json.loads(row["outputs"]), row["prompt_tokens"],
                                                             row["completion_tokens"], row["cost"]) for row in rows}

    def keep_answer(self, run_id: str, step_key: str, claim: Claim, outputs: str, call: LMCall | None,
                    preview: str, depth: int, parent: str | None, session: int) -> None:
        """One answer of a step, and the record of the call that got it, in one transaction: once this
        returns, a crash cannot make the step pay for it again."""
        answer = {"step_key": step_key, "request": claim.key, "occurrence": claim.occurrence, "run_id": run_id,
                  "seq": claim.seq, "depth": depth, "parent": parent,
                  "model": call.model if call is not None else "tool", "preview": preview, "outputs": outputs,
                  "prompt_tokens": call.prompt_tokens if call else 0,
                  "completion_tokens": call.completion_tokens if call else 0, "cost": call.cost if call else None,
                  "latency": call.latency if call else None, "answered": time.time(), "session": session}
        statements = [(insert("journal", answer, "INSERT OR REPLACE"), tuple(answer.values()))]
        if call is not None:
            statements.append(_call_insert(call, session))
        self._write(statements)

    def journal_entries(self, step_key: str) -> list[dict]:
        """A step's journaled answers as the trajectory view reads them (by their place in the step)."""
        return [dict(row) for row in self._query("SELECT * FROM journal WHERE step_key = ? ORDER BY seq, answered",
                                                 (step_key,))]

    def step_calls(self, step_key: str) -> list[dict]:
        """The LM calls of a step's last session (the trajectory view): one row per attempt."""
        return [dict(row) for row in self._query(
            "SELECT * FROM lm_calls WHERE step_key = ? AND session = (SELECT MAX(session) FROM lm_calls"
            " WHERE step_key = ?) ORDER BY seq, started, id", (step_key, step_key))]

    def steps(self, run_id: str) -> list[StepRow]:
        return [_step_row(row) for row in self._query(
            "SELECT * FROM steps WHERE run_id = ? ORDER BY started", (run_id,))]

    def each_step(self, run_id: str) -> Iterator[StepRow]:
        """The run's steps one at a time, in start order, without their results (the tables and the
        report read every step of a long run, and need none of its results)."""
        columns = ", ".join(f"NULL AS {c}" if c == "result" else c for c in _STEP_COLUMNS)
        for row in self._each(f"SELECT {columns} FROM steps WHERE run_id = ? ORDER BY started, rowid", (run_id,)):
            yield _step_row(row)

    def calls(self, run_id: str) -> list[dict]:
        return [dict(row) for row in self._query("SELECT * FROM lm_calls WHERE run_id = ? ORDER BY started", (run_id,))]

    def each_call(self, run_id: str, order: str = "started") -> Iterator[dict]:
        """The run's LM calls one at a time, by start time (``order="started"``) or by call and attempt
        (``"call"``): what the tables and the report read, so their memory does not grow with the run."""
        by = {"started": "started, id", "call": "call_id, attempt, id"}[order]
        yield from self._each(f"SELECT * FROM lm_calls WHERE run_id = ? ORDER BY {by}", (run_id,))

    def each_latency(self, run_id: str, by: str | None = None, outcome: str | None = None) -> Iterator[tuple]:
        """(group, latency, calls in the group) of every call that reached the model (or of one ``outcome``),
        grouped ``by`` a column ("step_name", "doc_id", "depth"; None: one group), sorted by group, then
        latency: percentiles in one pass, sorted by SQLite (which spills a large sort to disk)."""
        group = {None: "NULL", "step_name": "step_name", "doc_id": "doc_id", "depth": "depth"}[by]
        condition = "outcome = ?" if outcome else "outcome NOT IN (?, ?)"
        for row in self._each(f"SELECT {group} AS grp, latency, COUNT(*) OVER (PARTITION BY {group}) AS size"
                              f" FROM lm_calls WHERE run_id = ? AND {condition} ORDER BY grp, latency",
                              (run_id, outcome) if outcome else (run_id, *FREE_OUTCOMES)):
            yield row["grp"], row["latency"], row["size"]

    def step_counts(self, run_id: str) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) AS n FROM steps WHERE run_id = ? GROUP BY status", (run_id,))
        return {row["status"]: row["n"] for row in rows}

    def usage_totals(self, run_id: str) -> dict:
        """The run's LM usage, all sessions together (:meth:`rlmpipe.lm.usage.Usage.row`)."""
        usage = Usage()
        for row in self._each(f"SELECT {_USAGE_COLUMNS} FROM lm_calls WHERE run_id = ?", (run_id,)):
            usage.add(row)
        return usage.row()

    def usage_by_document(self, run_id: str) -> dict[str, dict]:
        """Per document of the run: its LM usage (as ``usage_totals``)."""
        groups: dict[str, Usage] = {}
        for row in self._each(f"SELECT doc_id, {_USAGE_COLUMNS} FROM lm_calls WHERE run_id = ?", (run_id,)):
            groups.setdefault(row["doc_id"], Usage()).add(row)
        return {doc_id: usage.row() for doc_id, usage in groups.items()}


_USAGE_COLUMNS = "outcome, attempt, prompt_tokens, completion_tokens, cost, latency, queued, estimated"


def _call_insert(call: LMCall, session: int) -> tuple[str, tuple]:
    values = {**{name: getattr(call, name) for name in _CALL_FIELDS}, "estimated": int(call.estimated),
              "session": session}
    return _CALL_INSERT, tuple(values[name] for name in _CALL_COLUMNS)


def _run_dict(row: sqlite3.Row) -> dict:
    record = dict(row)
    record["config"] = json.loads(record["config"])
    record["totals"] = json.loads(record["totals"]) if record.get("totals") else None
    return record


_STEP_COLUMNS = [field.name for field in fields(StepRow)]  # a step row is a StepRow
_STEP_INSERT = insert("steps", _STEP_COLUMNS, "INSERT OR REPLACE")
#: a call row is an LMCall (what it says of itself) and the session that made it
_CALL_FIELDS = [field.name for field in fields(LMCall) if field.name != "stored"]
_CALL_COLUMNS = [*_CALL_FIELDS, "session"]
_CALL_INSERT = insert("lm_calls", _CALL_COLUMNS)


def _step_row(row: sqlite3.Row | dict) -> StepRow:
    record = dict(row)
    record["result"] = json.loads(record["result"]) if record["result"] is not None else None
    record["extra"] = json.loads(record["extra"]) if record["extra"] is not None else None
    return StepRow(**record)
