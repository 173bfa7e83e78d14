"""The store's shape, pinned: a new workspace has exactly these tables and columns, one made by every older
rlmpipe migrates to the same shape, and the rows the engine writes are its dataclasses' fields."""

from __future__ import annotations

import sqlite3
from dataclasses import fields

from rlmpipe.lm.usage import LMCall
from rlmpipe.runtime.schema import FIRST_SCHEMA, MIGRATIONS, SCHEMA_VERSION
from rlmpipe.runtime.store import StepRow, Store

#: table -> its columns (name type notnull primary-key-position), as PRAGMA table_info tells them
SCHEMA = {
    "runs": ["run_id TEXT 0 1", "pipeline TEXT 1 0", "fingerprint TEXT 1 0", "model TEXT 0 0", "config TEXT 1 0",
             "status TEXT 1 0", "stop_reason TEXT 0 0", "created REAL 1 0", "updated REAL 1 0",
             "sessions INTEGER 1 0", "pid INTEGER 0 0", "totals TEXT 0 0"],
    "documents": ["run_id TEXT 1 1", "doc_id TEXT 1 2", "path TEXT 1 3", "status TEXT 1 0", "error TEXT 0 0",
                  "chunks INTEGER 0 0", "steps_total INTEGER 0 0", "started REAL 0 0", "finished REAL 0 0",
                  "result TEXT 0 0", "detail TEXT 0 0"],
    "steps": ["step_key TEXT 0 1", "run_id TEXT 1 0", "doc_id TEXT 0 0", "chunk_id TEXT 0 0", "name TEXT 1 0",
              "depth INTEGER 1 0", "status TEXT 1 0", "result TEXT 0 0", "prompt_tokens INTEGER 1 0",
              "completion_tokens INTEGER 1 0", "cost REAL 0 0", "calls INTEGER 1 0", "attempts INTEGER 1 0",
              "reasks INTEGER 1 0", "error TEXT 0 0", "started REAL 0 0", "finished REAL 0 0", "worker TEXT 0 0",
              "extra TEXT 0 0", "detail TEXT 0 0", "replayed INTEGER 1 0", "unused INTEGER 1 0"],
    "lm_calls": ["id INTEGER 0 1", "run_id TEXT 0 0", "step_key TEXT 0 0", "step_name TEXT 0 0", "doc_id TEXT 0 0",
                 "depth INTEGER 1 0", "model TEXT 1 0", "prompt_tokens INTEGER 1 0", "completion_tokens INTEGER 1 0",
                 "cost REAL 0 0", "latency REAL 1 0", "started REAL 1 0", "outcome TEXT 1 0", "attempt INTEGER 1 0",
                 "error_type TEXT 0 0", "error TEXT 0 0", "worker TEXT 0 0", "call_id TEXT 0 0",
                 "session INTEGER 0 0", "queued REAL 1 0", "estimated INTEGER 1 0", "request TEXT 0 0",
                 "occurrence INTEGER 0 0", "seq INTEGER 0 0", "parent TEXT 0 0"],
    "journal": ["step_key TEXT 1 1", "request TEXT 1 2", "occurrence INTEGER 1 3", "run_id TEXT 1 0",
                "seq INTEGER 1 0", "depth INTEGER 1 0", "parent TEXT 0 0", "model TEXT 0 0", "preview TEXT 0 0",
                "outputs TEXT 1 0", "prompt_tokens INTEGER 1 0", "completion_tokens INTEGER 1 0", "cost REAL 0 0",
                "latency REAL 0 0", "answered REAL 1 0", "session INTEGER 0 0"],
}
INDEXES = {"steps_by_run", "calls_by_run"}


def shape(path) -> tuple[dict, set, int]:
    db = sqlite3.connect(path)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                               "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        columns = {table: [f"{name} {kind} {notnull} {pk}" for _, name, kind, notnull, _, pk
                           in db.execute(f"PRAGMA table_info({table})")] for table in tables}
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                "AND name NOT LIKE 'sqlite_%'")}
        return columns, indexes, db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_new_workspace_has_the_pinned_schema(tmp_path):
    Store(tmp_path / "ws").close()
    columns, indexes, version = shape(tmp_path / "ws" / "runs.sqlite")
    assert columns == SCHEMA and indexes == INDEXES and version == SCHEMA_VERSION == len(MIGRATIONS)


def test_a_workspace_of_every_older_version_migrates_to_the_same_schema(tmp_path):
    for version in range(0, SCHEMA_VERSION):
        path = tmp_path / f"v{version}" / "runs.sqlite"
        path.parent.mkdir()
        db = sqlite3.connect(path, isolation_level=None)
        if version == 0:  # rlmpipe 0.1: the first schema, not numbered
            db.executescript(FIRST_SCHEMA)
        else:
            for migration in MIGRATIONS[:version]:
                migration(db)
            db.execute(f"PRAGMA user_version = {version}")
        db.close()
        Store(path.parent).close()
        assert shape(path) == (SCHEMA, INDEXES, SCHEMA_VERSION), f"from version {version}"


def test_rows_are_written_from_the_dataclasses_fields():
    assert [column.split()[0] for column in SCHEMA["steps"]] == [field.name for field in fields(StepRow)]
    stored = {field.name for field in fields(LMCall)} - {"stored"}  # (whether it is stored already)
    assert stored | {"id", "session"} == {column.split()[0] for column in SCHEMA["lm_calls"]}
