"""The engine keeps its promises in the corners a round of attacks found: budgets are caps whatever the
provider reports, a dead provider stops the run, one run holds a workspace, the same input is paid
once, outputs never say less than the truth, resume is safe, failures keep their traceback, and the
store is versioned. Through the CLI where a user meets it, on the loopback server."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlmpipe.runtime.store import FIRST_SCHEMA, SCHEMA_VERSION, Store, WorkspaceTooNew
from tests.support.cli import ROOT, error_lines, rlmpipe, start
from tests.support.contract_replies import extraction_reply
from tests.support.replies import summary_reply

CONTRACTS = ROOT / "examples" / "contracts"


@pytest.fixture
def contracts(tmp_path) -> Path:
    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder)
    return folder


def run_of(workspace: Path) -> dict:
    with Store(workspace) as store:
        return store.list_runs()[0]


def calls_of(workspace: Path) -> list[dict]:
    with Store(workspace) as store:
        return store.calls(run_of(workspace)["run_id"])


def summarize_args(server, paths, *extra):
    return ["summarize", *map(str, paths), "--lm", "openai/test-model", "--api-base", server.base_url, "--quiet",
            *extra]


# --- budgets ------------------------------------------------------------------------------------------------
def test_a_reply_without_usage_is_counted_with_the_tokenizer_and_the_budget_holds(openai_server, contracts, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_usage(omit=True, count="chars/4")
    result = rlmpipe(*summarize_args(openai_server, [contracts], "--chunk-tokens", "128", "--max-run-tokens", "6000",
                                     "--concurrency", "8"), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    billed = int(re.search(r"token budget reached \(([\d,]+) tokens billed of 6,000\)", result.stderr)[1]
                 .replace(",", ""))
    calls = calls_of(tmp_path / ".rlmpipe")
    answered = [c for c in calls if c["outcome"] == "ok"]
    assert answered and all(c["estimated"] for c in answered), "counted here, and marked so"
    assert billed == sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls) <= 6000
    chunks = sum(1 for _ in __import__("rlmpipe").chunk(contracts / "ip_agreement_msci.txt", chunk_tokens=128))
    assert len(answered) < 3 * chunks, "the budget stopped the run (it used to make every call, 'tokens 0')"
    server_counted = sum(c.prompt_tokens + c.completion_tokens for c in openai_server.chat_calls if c.served == "reply")
    assert 0.7 < billed / server_counted < 1.3, "our count is the provider's, near enough"


def test_many_calls_at_once_do_not_overshoot_a_token_budget(openai_server, contracts, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_usage(count="chars/4")
    cap = 8_000
    result = rlmpipe(*summarize_args(openai_server, [contracts], "--chunk-tokens", "128", "--max-run-tokens", str(cap),
                                     "--concurrency", "8", "--max-output-tokens", "64"), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    reported = sum(c.prompt_tokens + c.completion_tokens for c in openai_server.chat_calls if c.served == "reply")
    assert reported <= cap, f"the provider billed {reported} tokens for a cap of {cap} (concurrency 8 billed 66,103 for 50,000)"
    assert f"tokens billed of {cap:,}" in result.stderr


def test_a_cost_cap_needs_a_price_and_then_holds(openai_server, contracts, tmp_path):
    openai_server.set_default(summary_reply)
    refused = rlmpipe(*summarize_args(openai_server, [contracts], "--max-cost", "0.01"), cwd=tmp_path)
    assert refused.returncode == 2
    assert error_lines(refused.stderr) == [
        "error: --max-cost needs the price of openai/test-model, which litellm does not know: give it with "
        "--price INPUT,OUTPUT (USD per million tokens), or cap tokens with --max-run-tokens instead"]
    assert not openai_server.chat_calls, "nothing was sent"

    openai_server.set_usage(count="chars/4")
    priced = rlmpipe(*summarize_args(openai_server, [contracts], "--chunk-tokens", "128", "--max-cost", "0.01",
                                     "--price", "1000,1000", "--concurrency", "8", "--max-output-tokens", "64"),
                     cwd=tmp_path)
    assert priced.returncode == 3, priced.stderr
    billed = float(re.search(r"cost budget reached \(\$([\d.]+) billed of \$0.01\)", priced.stderr)[1])
    reported = sum(c.prompt_tokens + c.completion_tokens for c in openai_server.chat_calls if c.served == "reply")
    assert billed <= 0.01 and reported * 1000 / 1e6 <= 0.01 + 1e-9


def test_a_known_models_cost_cap_is_a_cap(openai_server, contracts, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_usage(count="chars/4")
    result = rlmpipe("summarize", contracts, "--lm", "openai/gpt-4o-mini", "--api-base", openai_server.base_url,
                     "--chunk-tokens", "128", "--max-cost", "0.0005", "--concurrency", "8", "--max-output-tokens", "64",
                     "--quiet", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    billed = float(re.search(r"cost budget reached \(\$([\d.]+) billed of \$0.0005\)", result.stderr)[1])
    prompt = sum(c.prompt_tokens for c in openai_server.chat_calls if c.served == "reply")
    completion = sum(c.completion_tokens for c in openai_server.chat_calls if c.served == "reply")
    assert 0 < billed <= 0.0005
    assert prompt * 0.15e-6 + completion * 0.6e-6 <= 0.0005  # gpt-4o-mini's price, at the server's count


def test_a_dead_provider_stops_the_run_with_the_reason_and_it_resumes(openai_server, contracts, tmp_path):
    import rlmpipe
    from rlmpipe.lm.recording import RetryPolicy

    openai_server.set_default(summary_reply)
    dead = openai_server.fail("unavailable")
    options = rlmpipe.RunOptions(workspace=tmp_path / "ws", breaker_failures=4, breaker_seconds=0.3,
                                 retry=RetryPolicy(max_attempts=50, initial_wait=0.05, max_wait=0.1, jitter=0.0))
    from rlmpipe.apps.summarize import SummarizePipeline

    first = rlmpipe.run(SummarizePipeline(), contracts, lm="openai/test-model", api_base=openai_server.base_url,
                        options=options)
    assert first.status == "stopped" and first.reason.startswith("provider unavailable: the provider failed")
    assert dead.fired < 40, "stopped after a few failures in a row, not after every retry of every call"
    openai_server.clear_faults()
    second = rlmpipe.run(SummarizePipeline(), contracts, lm="openai/test-model", api_base=openai_server.base_url,
                         options=options)
    assert second.run_id == first.run_id and second.status == "done"


# --- one run, one payment -------------------------------------------------------------------------------------
def test_two_runs_at_once_in_one_workspace_the_second_is_refused_naming_the_first(openai_server, contracts, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_latency(0.3)
    args = summarize_args(openai_server, [contracts], "--chunk-tokens", "128", "--concurrency", "2")
    first = start(*args, cwd=tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and not openai_server.chat_calls:
        time.sleep(0.05)
    second = rlmpipe(*args, cwd=tmp_path)
    assert second.returncode == 2
    [line] = error_lines(second.stderr)
    run_id = run_of(tmp_path / ".rlmpipe")["run_id"]
    assert line.startswith(f"error: workspace .rlmpipe is in use by run {run_id} (pid {first.pid}, since "), line
    assert ": rlmpipe summarize)" in line
    assert "wait for it to end, or use another --workspace" in line
    first.communicate(timeout=300)
    assert first.returncode == 0
    keys = [c["step_key"] for c in calls_of(tmp_path / ".rlmpipe") if c["outcome"] == "ok"]
    assert len(keys) == len(set(keys)), "every step was paid once"


def test_a_folder_named_twice_and_a_duplicate_file_are_analysed_once(openai_server, contracts, tmp_path):
    openai_server.set_default(extraction_reply)
    shutil.copy(contracts / "ip_agreement_msci.txt", contracts / "copy_of_msci.txt")
    result = rlmpipe("contracts", "analyze", contracts, contracts, "--lm", "openai/test-model", "--api-base",
                     openai_server.base_url, "--out", tmp_path / "out", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "contracts.jsonl").read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == sorted(
        [p.name for p in CONTRACTS.glob("*.txt")] + ["copy_of_msci.txt"])
    assert [line for line in result.stderr.splitlines() if "the same content as" in line] == [
        f"note: {contracts / 'ip_agreement_msci.txt'}: the same content as {contracts / 'copy_of_msci.txt'}: "
        "analysed once (its steps are shared)"]
    keys = [c["step_key"] for c in calls_of(tmp_path / ".rlmpipe")]
    assert len(keys) == len(set(keys)), "the duplicate's chunks were not asked again"


# --- outputs that tell the truth ------------------------------------------------------------------------------
@pytest.mark.slow
def test_chunks_that_run_out_of_retries_make_their_contract_partial(openai_server, contracts, tmp_path):
    openai_server.set_default(extraction_reply)
    openai_server.fail("server_error", pattern=r"(?i)governed by")  # these chunks never get an answer
    result = rlmpipe("contracts", "analyze", contracts, "--lm", "openai/test-model", "--api-base",
                     openai_server.base_url, "--out", tmp_path / "out", "--read", "all", "--chunk-tokens", "256",
                     "--quiet", cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "contracts.jsonl").read_text().splitlines()]
    partial = [r for r in records if r["status"] == "partial"]
    assert partial and all(r["failed_chunks"] for r in partial)
    failed = [json.loads(line) for line in (tmp_path / "out" / "failed.jsonl").read_text().splitlines()]
    assert {f["path"] for f in failed if f["status"] == "partial"} == {r["path"] for r in partial}
    for record in partial:
        assert any(line.startswith(f"error: {record['path']}: the LM failed on") for line in result.stderr.splitlines())
    report = (tmp_path / "out" / "report.html").read_text()
    assert "partial (some chunks failed)" in report and ">partial</span>" in report


def test_a_budget_stopped_run_writes_what_was_done_and_says_the_outputs_are_partial(openai_server, contracts, tmp_path):
    openai_server.set_default(extraction_reply)
    openai_server.set_usage(count="chars/4")
    first_contract = sorted(contracts.glob("*.txt"))[0]  # contracts are analysed in name order
    reference = rlmpipe("contracts", "analyze", first_contract, "--lm", "openai/test-model",
                        "--api-base", openai_server.base_url, "--out", tmp_path / "ref", "--workspace",
                        tmp_path / "ref-ws", "--quiet", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    one_contract = sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls_of(tmp_path / "ref-ws"))
    # contracts one at a time; budget for the first and a little of the second
    result = rlmpipe("contracts", "analyze", contracts, "--lm", "openai/test-model", "--api-base",
                     openai_server.base_url, "--out", tmp_path / "out", "--concurrency", "1", "--max-run-tokens",
                     str(int(one_contract * 1.3)), "--quiet", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    records = (tmp_path / "out" / "contracts.jsonl").read_text().splitlines()
    failed = [json.loads(line) for line in (tmp_path / "out" / "failed.jsonl").read_text().splitlines()]
    assert records, "the contracts finished before the stop are written"
    assert failed and all(f["status"] == "stopped" and "resume it to finish" in f["error"] for f in failed)
    assert len(records) + len(failed) == 3
    report = (tmp_path / "out" / "report.html").read_text()
    assert "This run stopped before it finished" in report and "these outputs are partial" in report


def test_a_kill_while_the_outputs_are_rewritten_leaves_a_complete_file(tmp_path):
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from rlmpipe.apps.contracts.outputs import write_outputs
        from rlmpipe.apps.contracts.categories import NAMES
        out = Path(sys.argv[1])
        record = {"doc_id": "d" * 32, "path": "", "title": "t", "chunks": 1, "clauses": [], "risks": [],
                  "obligations": [], "summary": "s" * 400, "risk_score": 20, "risk_breakdown": [],
                  "evidence": {"proposed": 0, "verified": 0, "rejected": 0},
                  "categories": [{"category": n, "present": False, "clauses": 0} for n in NAMES]}
        records = [dict(record, path=f"/contracts/{i:04d}.txt") for i in range(300)]
        while True:
            write_outputs(records, [], out)
    """)
    rng = random.Random(16)
    env = {"PYTHONPATH": str(ROOT / "src")}
    for trial in range(8):
        out = tmp_path / f"out{trial}"
        process = subprocess.Popen([sys.executable, "-c", script, str(out)], env={**__import__("os").environ, **env})
        deadline = time.time() + 60
        while not (out / "report.html").exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        lines = (out / "contracts.jsonl").read_text().splitlines()
        assert len(lines) == 300 and all(json.loads(line)["summary"] for line in lines), f"trial {trial}"
        assert len((out / "clauses.csv").read_text().splitlines()) == 1 + 300 * 41


# --- resume --------------------------------------------------------------------------------------------------
def test_resume_refuses_a_run_made_by_another_version_unless_forced(openai_server, contracts, tmp_path):
    openai_server.set_default(summary_reply)
    first = rlmpipe(*summarize_args(openai_server, [contracts], "--max-run-tokens", "2000"), cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    run_id = run_of(tmp_path / ".rlmpipe")["run_id"]
    database = sqlite3.connect(tmp_path / ".rlmpipe" / "runs.sqlite")  # as if made by rlmpipe 0.1.9
    config = json.loads(database.execute("SELECT config FROM runs").fetchone()[0])
    config["fingerprint_parts"]["versions"] = "older"
    config["described"]["versions"]["rlmpipe"] = "0.1.9"
    database.execute("UPDATE runs SET config = ?, fingerprint = 'older'", (json.dumps(config),))
    database.commit()
    database.close()

    refused = rlmpipe("resume", run_id, "--max-run-tokens", "10000000", cwd=tmp_path)
    assert refused.returncode == 2
    [line] = error_lines(refused.stderr)
    assert f"run {run_id} was made with another configuration (rlmpipe 0.1.9 -> " in line
    assert "pass --force-resume to reuse them anyway" in line

    forced = rlmpipe("resume", run_id, "--max-run-tokens", "10000000", "--force-resume", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert f"note: resuming run {run_id} although its configuration changed (rlmpipe 0.1.9 -> " in forced.stderr


def test_another_model_or_api_base_is_a_new_run_unless_forced_and_forcing_says_so(openai_server, contracts, tmp_path):
    openai_server.set_default(extraction_reply)

    def analyze(model: str, *extra: str):
        return rlmpipe("contracts", "analyze", contracts / "ip_agreement_msci.txt", "--lm", model, "--api-base",
                       openai_server.base_url, "--out", tmp_path / "out", "--quiet", *extra, cwd=tmp_path)

    assert analyze("openai/model-a").returncode == 0
    first = run_of(tmp_path / ".rlmpipe")["run_id"]
    other = analyze("openai/model-b")
    assert other.returncode == 0
    assert f"note: configuration changed since run {first} (model openai/model-a -> openai/model-b): starting a new run" \
        in other.stderr
    forced = analyze("openai/model-c", "--force-resume")
    assert "although its configuration changed (model openai/model-" in forced.stderr and "(--force-resume)" in forced.stderr
    listed = rlmpipe("runs", "list", cwd=tmp_path).stdout
    assert re.search(r"openai/model-[ab], openai/model-c", listed), listed

    with __import__("tests.support.openai_server", fromlist=["OpenAIServer"]).OpenAIServer() as elsewhere:
        elsewhere.set_default(extraction_reply)
        moved = rlmpipe("contracts", "analyze", contracts / "ip_agreement_msci.txt", "--lm", "openai/model-a",
                        "--api-base", elsewhere.base_url, "--out", tmp_path / "out", "--quiet", cwd=tmp_path)
        assert moved.returncode == 0
        assert "api_base " in moved.stderr and "starting a new run" in moved.stderr
        assert elsewhere.chat_calls, "the results of another server were not reused"


# --- failures keep their reasons; the store is versioned and tidy -----------------------------------------------
class Buggy:
    name = "buggy"

    def config(self):
        return {}

    def programs(self):
        return {}

    def process(self, run, document):
        return {"ratio": 1 / (len(document.path.name) - len(document.path.name))}


def test_a_pipeline_bug_keeps_its_traceback_and_runs_show_prints_it(tmp_path):
    import rlmpipe
    from tests.support.scripted_lm import ScriptedLM

    result = rlmpipe.run(Buggy(), CONTRACTS / "ip_agreement_msci.txt", lm=ScriptedLM(), workspace=tmp_path / "ws")
    assert result[0].status == "failed" and "ZeroDivisionError" in result[0].error
    shown = cli_show(result.run_id, tmp_path / "ws")
    assert "Traceback (most recent call last)" in shown and "in process" in shown and "ZeroDivisionError" in shown


class HalfDone(Buggy):
    name = "half-done"

    def process(self, run, document):
        from rlmpipe.runtime.runner import Partial

        return Partial({"pages": 1}, problem="")  # no reason given


def test_a_partial_result_without_a_reason_is_kept_as_partial_with_a_stand_in_reason(tmp_path):
    import rlmpipe
    from tests.support.scripted_lm import ScriptedLM

    result = rlmpipe.run(HalfDone(), CONTRACTS / "ip_agreement_msci.txt", lm=ScriptedLM(), workspace=tmp_path / "ws")
    assert result.status == "done" and result[0].status == "partial"
    assert result[0].result == {"pages": 1} and result[0].error == "only partly done"


def cli_show(run_id: str, workspace: Path) -> str:
    result = rlmpipe("runs", "show", run_id, "--workspace", workspace, cwd=workspace.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_an_old_workspace_is_migrated_and_a_newer_one_refused(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    database = sqlite3.connect(old / "runs.sqlite")
    database.executescript(FIRST_SCHEMA)  # the first schema, as rlmpipe 0.1 left it (user_version 0)
    database.execute("INSERT INTO runs (run_id, pipeline, fingerprint, model, config, status, created, updated) "
                     "VALUES ('r1', 'summarize', 'f', 'm', '{}', 'done', 1, 1)")
    database.commit()
    database.close()
    with Store(old) as store:
        assert store.get_run("r1")["status"] == "done"
    database = sqlite3.connect(old / "runs.sqlite")
    assert database.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    columns = {row[1] for row in database.execute("PRAGMA table_info(lm_calls)")}
    assert {"queued", "estimated", "request", "occurrence", "seq", "parent"} <= columns
    assert {"replayed", "unused"} <= {row[1] for row in database.execute("PRAGMA table_info(steps)")}
    assert database.execute("SELECT COUNT(*) FROM journal").fetchone()[0] == 0  # the call journal is there
    database.execute("PRAGMA user_version = 99")
    database.commit()
    database.close()
    with pytest.raises(WorkspaceTooNew, match="written by a newer rlmpipe"):
        Store(old)
    listed = rlmpipe("runs", "list", "--workspace", old, cwd=tmp_path)
    assert listed.returncode == 2 and "written by a newer rlmpipe (store schema 99" in listed.stderr


def test_a_run_leaves_no_database_connection_open(openai_server, contracts, tmp_path):
    import os

    import rlmpipe

    openai_server.set_default(summary_reply)
    rlmpipe.summarize(contracts, lm="openai/test-model", api_base=openai_server.base_url, workspace=tmp_path / "ws",
                      concurrency=8)
    database = str(tmp_path / "ws" / "runs.sqlite")
    open_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                  if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [path for path in open_files if path.startswith(database)], open_files
