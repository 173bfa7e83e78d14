"""The store's shape (the SQLite schema of a workspace) and how each version of it came to be.

Each version is a named migration, applied in order to a new workspace (all of them) or to one an
older rlmpipe made (those it lacks); ``PRAGMA user_version`` records how far a workspace is. So a new
workspace and a migrated one have the same shape by construction (``tests/runtime/test_store_schema.py``
pins it). A version is never edited once released: a change is a new migration at the end.

The columns a row is written with come from the dataclasses the store reads and writes (``StepRow``,
``LMCall``): :func:`insert` makes the statement from their fields.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable


def v1_first_schema(db: sqlite3.Connection) -> None:
    """Runs, their documents, steps and LM calls (rlmpipe 0.1)."""
    for statement in FIRST_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def v2_queue_estimates_tracebacks(db: sqlite3.Connection) -> None:
    """The time a call waited before the model, tokens counted here when the provider sent none, and a
    failure's traceback (of a document, of a step)."""
    db.execute("ALTER TABLE lm_calls ADD COLUMN queued REAL NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE lm_calls ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE documents ADD COLUMN detail TEXT")
    db.execute("ALTER TABLE steps ADD COLUMN detail TEXT")


def v3_call_journal(db: sqlite3.Connection) -> None:
    """The call journal (every answer a step received, kept to be replayed), and each call's key in it and
    place in its step and recursion."""
    db.execute("ALTER TABLE lm_calls ADD COLUMN request TEXT")       # the request's content digest
    db.execute("ALTER TABLE lm_calls ADD COLUMN occurrence INTEGER")  # the n-th time its step made it
    db.execute("ALTER TABLE lm_calls ADD COLUMN seq INTEGER")         # its place among its step's requests
    db.execute("ALTER TABLE lm_calls ADD COLUMN parent TEXT")         # the RLM code execution that made it
    db.execute("ALTER TABLE steps ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0")  # calls served from the journal
    db.execute("ALTER TABLE steps ADD COLUMN unused INTEGER NOT NULL DEFAULT 0")    # answers not asked again
    db.execute("""CREATE TABLE journal (
        step_key TEXT NOT NULL,
        request TEXT NOT NULL,         -- the request's content digest
        occurrence INTEGER NOT NULL,   -- the n-th time the step made this request
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,          -- its place among the step's requests when it was answered
        depth INTEGER NOT NULL DEFAULT 0,
        parent TEXT,                   -- the RLM code execution that made it
        model TEXT,                    -- 'tool' for a host value the program asked for
        preview TEXT,                  -- the request's last message, clipped
        outputs TEXT NOT NULL,         -- JSON: the answer, as the LM returned it
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL,
        latency REAL,
        answered REAL NOT NULL,
        session INTEGER,
        PRIMARY KEY (step_key, request, occurrence)
    )""")


#: every version of the schema, in order: a workspace at version n has had the first n applied
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    v1_first_schema,
    v2_queue_estimates_tracebacks,
    v3_call_journal,
]
SCHEMA_VERSION = len(MIGRATIONS)


class WorkspaceTooNew(RuntimeError):
    """The workspace was written by a newer rlmpipe."""


def migrate(db: sqlite3.Connection, workspace: object) -> None:
    """Bring the database to SCHEMA_VERSION, in one transaction (a newer one is refused)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise WorkspaceTooNew(
                f"{workspace} was written by a newer rlmpipe (store schema {version}, this one knows "
                f"{SCHEMA_VERSION}): upgrade rlmpipe, or use another --workspace")
        if version == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            version = 1  # rlmpipe 0.1 made the first schema and did not number it
        for step in MIGRATIONS[version:]:
            step(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def insert(table: str, columns: Iterable[str], verb: str = "INSERT") -> str:
    """The statement writing one row of ``table`` with these columns, values as ``?`` in their order."""
    names = list(columns)
    return f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


#: rlmpipe 0.1's schema, as it made it (version 1; the migrations after it add to it)
FIRST_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model TEXT,
    config TEXT NOT NULL,          -- JSON: everything needed to run it again (inputs included)
    status TEXT NOT NULL,          -- running | done | stopped | failed
    stop_reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    sessions INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    totals TEXT                     -- JSON: documents/steps counts at the last update
);
CREATE TABLE IF NOT EXISTS documents (
    run_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    path TEXT NOT NULL,
    status TEXT NOT NULL,          -- pending | running | done | failed | stopped
    error TEXT,
    chunks INTEGER,
    steps_total INTEGER,
    started REAL,
    finished REAL,
    result TEXT,                   -- JSON: the document's final output
    PRIMARY KEY (run_id, doc_id, path)
);
CREATE TABLE IF NOT EXISTS steps (
    step_key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    doc_id TEXT,
    chunk_id TEXT,
    name TEXT NOT NULL,
    depth INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,          -- done | failed | stopped (only done is final)
    result TEXT,                   -- JSON
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL,                     -- NULL: some call had an unknown price
    calls INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    reasks INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    started REAL,
    finished REAL,
    worker TEXT,
    extra TEXT                     -- JSON: pattern-specific detail (e.g. an RLM trajectory)
);
CREATE INDEX IF NOT EXISTS steps_by_run ON steps(run_id, status);
CREATE TABLE IF NOT EXISTS lm_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT,
    step_key TEXT,
    step_name TEXT,
    doc_id TEXT,
    depth INTEGER NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL,
    latency REAL NOT NULL,
    started REAL NOT NULL,
    outcome TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error_type TEXT,
    error TEXT,
    worker TEXT,
    call_id TEXT,
    session INTEGER
);
CREATE INDEX IF NOT EXISTS calls_by_run ON lm_calls(run_id);
"""
