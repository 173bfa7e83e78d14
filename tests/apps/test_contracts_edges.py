"""The analyzer's edges a user meets (issue 28): a failed summary is loud, outputs are rebuilt from
what this session's inputs are, output files open for others, no temporary file outlives a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlmpipe.runtime.store import Store
from tests.support.cli import error_lines, rlmpipe
from tests.support.contract_replies import extraction_reply

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "examples" / "contracts"
SUMMARY_CALL = r"\[\[ ## findings ## \]\]"


def without_summary(summary: str) -> bool:
    """A summary replaced by why its call failed (not the note of a contract with nothing to summarise)."""
    from rlmpipe.apps.contracts.pipeline import NOTHING_TO_SUMMARIZE

    return summary.startswith("(no summary:") and summary != NOTHING_TO_SUMMARIZE


def clean_env(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "RLMPIPE_LM": "", "RLMPIPE_API_BASE": ""}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- item 1: a failed summary makes its contract partial, in every output -----------------------------------
def test_a_failed_summary_makes_its_contract_partial_everywhere(openai_server, tmp_path):
    """The summary call is refused (400) for every contract: each contract that had one to make is
    partial in its record, failed.jsonl, the report, the exit code and one stderr line each."""
    openai_server.set_default(extraction_reply)
    refused = openai_server.fail("bad_request", pattern=SUMMARY_CALL)
    out = tmp_path / "out"
    result = rlmpipe("contracts", "analyze", CONTRACTS, "--lm", "openai/test-model", "--api-base",
                     openai_server.base_url, "--out", out, "--quiet", "--workspace", tmp_path / "ws", cwd=tmp_path,
                     env=clean_env(tmp_path))
    assert refused.fired > 0, "some contract had findings to summarise"
    assert result.returncode == 1, result.stderr
    records = read_jsonl(out / "contracts.jsonl")
    missing = [r for r in records if without_summary(r["summary"])]
    assert len(missing) == refused.fired
    for record in missing:
        assert record["status"] == "partial" and "summary" in record["failed_chunks"], record
    failed = {Path(f["path"]).name: f for f in read_jsonl(out / "failed.jsonl")}
    errors = error_lines(result.stderr)
    for record in missing:
        name = Path(record["path"]).name
        assert failed[name]["status"] == "partial" and "the summary call failed" in failed[name]["error"]
        assert [line for line in errors if record["path"] in line and "the summary call failed" in line], errors
    assert len(errors) == len(missing), result.stderr
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count(">partial</span>") >= len(missing)


def _contracts_pipeline_run(server, tmp_path, read, paths=CONTRACTS, attempts=2, **options):
    import rlmpipe
    from rlmpipe.apps.contracts import ContractsPipeline
    from rlmpipe.lm.recording import RetryPolicy

    pipeline = ContractsPipeline(mode=read)
    options = rlmpipe.RunOptions(workspace=tmp_path / "ws", concurrency=2,
                                 retry=RetryPolicy(max_attempts=attempts, initial_wait=0.01, max_wait=0.01, jitter=0.0),
                                 **options)
    return rlmpipe.run(pipeline, paths, lm="openai/test-model", api_base=server.base_url, options=options)


@pytest.mark.parametrize("read", ["cascade", "full"])
def test_a_dropped_connection_on_the_summary_is_a_partial_contract_not_a_quiet_one(openai_server, tmp_path, read):
    """The issue's case: the connection fails only on the summary calls (after the reads went well),
    in a run too short for the circuit breaker (3 contracts x 2 attempts < 8 in a row)."""
    openai_server.set_default(extraction_reply)
    dropped = openai_server.fail("reset", pattern=SUMMARY_CALL)
    result = _contracts_pipeline_run(openai_server, tmp_path, read)
    assert result.status == "done" and dropped.fired > 0
    quiet = [d for d in result if d.status == "done" and without_summary(d.result["summary"])]
    assert quiet == [], "no contract without its summary is called done"
    partial = [d for d in result if d.status == "partial"]
    assert len(partial) == dropped.fired // 2
    for document in partial:
        assert document.result["status"] == "partial" and "the summary call failed" in document.error


@pytest.mark.parametrize("read", ["cascade", "full"])
def test_failed_summary_calls_count_toward_the_circuit_breaker_in_every_mode(openai_server, tmp_path, read):
    """Attempts of the summary call count toward the breaker like a full read's extraction calls: a
    provider that fails only those still stops the run, resumable. (One contract: its summary's
    attempts come after all of its reads, so they are in a row; with more contracts another one's
    successful read may come between them, as it should.)"""
    openai_server.set_default(extraction_reply)
    down = openai_server.fail("unavailable", pattern=SUMMARY_CALL)
    result = _contracts_pipeline_run(openai_server, tmp_path, read, CONTRACTS / "ip_agreement_msci.txt", attempts=10,
                                     breaker_failures=3, breaker_seconds=0.0)
    assert result.status == "stopped" and result.reason.startswith("provider unavailable"), result.reason
    assert down.fired == 3, "the breaker opened at the third failed attempt in a row"
    assert [d.status for d in result] == ["stopped"]


# -- item 3: outputs are rebuilt for this session's inputs ---------------------------------------------------
def _stop_when_queued(name: str):
    """(events, on_start) for a session that is stopped (as by Ctrl-C) the moment ``name`` is queued:
    the documents before it are analysed, it gets a "stopped" row, the ones after it are never read."""
    from rlmpipe.runtime.events import EventBus

    events, current = EventBus(), {}

    def listen(event):
        if event["type"] == "document_queued" and Path(event["path"]).name == name:
            current["run"].request_stop("interrupted")

    events.subscribe(listen)
    return events, lambda run: current.update(run=run)


@pytest.mark.parametrize("change", ["edited", "deleted"])
def test_a_document_changed_after_a_stop_leaves_no_ghost_failure(tmp_path, change):
    """A contract not yet analysed when the run stopped is edited (or deleted), and the run resumed:
    the outputs are those of the inputs as they are now, with no "not analysed ... (None)" left."""
    from rlmpipe import api

    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder)
    names = sorted(p.name for p in folder.glob("*.txt"))
    second, last = names[1], names[-1]
    events, on_start = _stop_when_queued(second)
    first = api.analyze_contracts(folder, tmp_path / "out", lm="none", workspace=tmp_path / "ws", events=events,
                                  on_start=on_start)
    assert first.status == "stopped"
    failed = {Path(f["path"]).name: f for f in read_jsonl(tmp_path / "out" / "failed.jsonl")}
    assert failed[second]["status"] == "stopped" and "(interrupted)" in failed[second]["error"]
    assert failed[last]["error"] == "not analysed: the run stopped (interrupted) before it was read; resume it to finish"

    if change == "edited":
        with open(folder / second, "a", encoding="utf-8") as handle:
            handle.write("\n\nAmended: this Agreement is governed by the laws of Delaware.\n")
    else:
        (folder / second).unlink()
    again = api.analyze_contracts(folder, tmp_path / "out", lm="none", workspace=tmp_path / "ws")
    assert again.run_id == first.run_id and again.status == "done"
    assert again.failed == [], [(d.path, d.status, d.error) for d in again.failed]
    assert (tmp_path / "out" / "failed.jsonl").read_text() == ""
    analysed = sorted(Path(r["path"]).name for r in read_jsonl(tmp_path / "out" / "contracts.jsonl"))
    assert analysed == sorted(p.name for p in folder.glob("*.txt"))
    with Store(tmp_path / "ws") as store:  # the earlier session's row is still in the store: only the outputs moved on
        assert any(row["status"] == "stopped" for row in store.documents(first.run_id))


# -- items 6 and 13: output files -----------------------------------------------------------------------------
def _analyze_offline(tmp_path: Path, out: Path):
    return rlmpipe("contracts", "analyze", CONTRACTS, "--out", out, "--quiet", "--workspace", tmp_path / "ws",
                   cwd=tmp_path, env=clean_env(tmp_path))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_are_created_with_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)  # the command inherits it, as from a shell
    try:
        result = _analyze_offline(tmp_path, tmp_path / "out")
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"contracts.jsonl", "contracts.schema.json", "clauses.csv", "failed.jsonl",
                                       "report.html"}
    assert len(files) > 5, "the contract pages too"
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, (path, oct(path.stat().st_mode))


def test_a_write_killed_before_its_rename_leaves_no_temporary_file_after_the_next_run(tmp_path):
    """SIGKILL in the middle of the first write of an output: the target is absent (never half
    written), its temporary file is left; the next run of the command removes it."""
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        from rlmpipe.atomic import open_atomic
        with open_atomic(sys.argv[1]) as handle:
            handle.write('{"half": ')
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """), str(out / "contracts.schema.json")], env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "contracts.schema.json").exists()
    assert [p.name for p in out.glob(".contracts.schema.json.*.tmp")], "the kill left its temporary file"

    result = _analyze_offline(tmp_path, out)
    assert result.returncode == 0, result.stderr
    assert list(out.rglob("*.tmp")) == []
    assert "properties" in json.loads((out / "contracts.schema.json").read_text())


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    from rlmpipe.atomic import open_atomic, write_text_atomic

    target = tmp_path / "report.html"
    with open_atomic(target) as slow:
        slow.write("the slow writer")
        write_text_atomic(target, "the quick writer")  # cleans up the abandoned ones only
        assert target.read_text() == "the quick writer"
    assert target.read_text() == "the slow writer"  # it replaced the target when it ended
    assert list(tmp_path.glob("*.tmp")) == []


# -- item 14: clauses.csv says what contracts.jsonl says ---------------------------------------------------------
def test_clauses_csv_has_the_score_and_says_present_as_the_json_does(tmp_path):
    import csv

    out = tmp_path / "out"
    result = _analyze_offline(tmp_path, out)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "clauses.csv").open(encoding="utf-8", newline="")))
    records = {r["path"]: r for r in read_jsonl(out / "contracts.jsonl")}
    assert len(rows) == 41 * len(records)
    for row in rows:
        record = records[row["path"]]
        category = next(c for c in record["categories"] if c["category"] == row["category"])
        assert row["present"] == json.dumps(category["present"])  # true / false, as in the JSON
        scores = [c["score"] for c in record["clauses"] if c["category"] == row["category"]]
        assert row["score"] == (str(max(scores)) if scores else "")
    assert any(row["score"] for row in rows)


# -- item 10: --out names the run ---------------------------------------------------------------------------------
def test_another_out_folder_is_another_run_that_repeats_no_call_and_resume_writes_where_each_run_said(
        openai_server, tmp_path):
    openai_server.set_default(extraction_reply)
    env = clean_env(tmp_path)

    def analyze(out: str):
        return rlmpipe("contracts", "analyze", CONTRACTS, "--lm", "openai/test-model", "--api-base",
                       openai_server.base_url, "--out", out, "--quiet", cwd=tmp_path, env=env)

    first = analyze("A")
    assert first.returncode == 0, first.stderr
    calls = len(openai_server.chat_calls)
    second = analyze("B")
    assert second.returncode == 0, second.stderr
    assert len(openai_server.chat_calls) == calls, "the second run reused every finished step"
    with Store(tmp_path / ".rlmpipe") as store:
        runs = {Path(r["config"]["command"]["outputs"]["out"]).name: r["run_id"] for r in store.list_runs()}
    assert set(runs) == {"A", "B"} and runs["A"] != runs["B"], "two runs, one per output folder"
    assert f"run {runs['A']} of this command writes elsewhere: this is run {runs['B']}" in second.stderr

    for folder in ("A", "B"):
        shutil.rmtree(tmp_path / folder)
    resumed = rlmpipe("resume", runs["A"], "--quiet", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "A" / "contracts.jsonl").is_file() and not (tmp_path / "B").exists()
    assert len(openai_server.chat_calls) == calls
