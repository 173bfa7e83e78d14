"""``runs list/show/watch`` and ``resume`` on real runs; the event log; totals equal the server's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rlmpipe.runtime.eventlog import read_events
from rlmpipe.runtime.store import Store
from tests.support.replies import summary_reply

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "examples" / "contracts"


def rlmpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "rlmpipe.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_budget_stop_resume_show_and_event_log(openai_server, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_usage(prompt_tokens=100, completion_tokens=10)
    openai_server.fail("rate_limit", times=2, retry_after=0.01)
    first = rlmpipe("summarize", str(CONTRACTS), "--lm", "openai/test-model", "--api-base", openai_server.base_url,
                    "--chunk-tokens", "256", "--max-tokens", "900", "--concurrency", "2", cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    run_id = first.stderr.split("rlmpipe resume ")[-1].split()[0]
    assert "token budget reached" in first.stderr

    listed = rlmpipe("runs", "list", cwd=tmp_path)
    assert run_id in listed.stdout and "stopped" in listed.stdout

    resumed = rlmpipe("resume", run_id[:6], "--max-tokens", "10000000", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len([line for line in resumed.stdout.splitlines() if line.startswith("{")]) == 3

    shown = rlmpipe("runs", "show", run_id, "--json", cwd=tmp_path)
    tables = json.loads(shown.stdout)
    ok_requests = [c for c in openai_server.chat_calls if c.served == "reply"]
    assert tables["totals"]["prompt_tokens"] == 100 * len(ok_requests)
    assert tables["totals"]["completion_tokens"] == 10 * len(ok_requests)
    # two 429s; a retry that the budget refused to admit is not an attempt (its step ran again on resume)
    assert tables["totals"]["errors"] == 2 and 1 <= tables["totals"]["retries"] <= 2
    assert tables["run"]["sessions"] == 2 and tables["run"]["status"] == "done"
    assert sum(row["calls"] for row in tables["depths"]) == tables["totals"]["calls"]
    assert {row["status"] for row in tables["documents"]} == {"done"}

    events = read_events(tmp_path / ".rlmpipe", run_id)
    kinds = [event["type"] for event in events]
    assert kinds.count("run_start") == 2 and kinds.count("run_end") == 2
    assert "run_stopping" in kinds and "step_reused" in kinds
    lm_events = [e for e in events if e["type"] == "lm_call" and e["outcome"] != "cached"]
    assert sum(e["prompt_tokens"] for e in lm_events) == tables["totals"]["prompt_tokens"]
    assert sum(1 for e in lm_events if e["outcome"] == "error") == 2

    watched = rlmpipe("runs", "watch", run_id, cwd=tmp_path)
    assert watched.returncode == 0 and f"run {run_id}: done" in watched.stderr

    human = rlmpipe("runs", "show", run_id, cwd=tmp_path)
    assert "by recursion depth" in human.stdout and "by document" in human.stdout


def test_runs_commands_explain_a_missing_run(tmp_path):
    result = rlmpipe("runs", "show", "nope", cwd=tmp_path)
    assert result.returncode == 2 and "no runs in .rlmpipe" in result.stderr and "Traceback" not in result.stderr


def test_a_killed_run_is_shown_as_interrupted(tmp_path):
    store = Store(tmp_path / ".rlmpipe")
    store.start_run("deadbeef0000", "summarize", "fp", "openai/x", {"inputs": []}, pid=2**22 + 12345)
    listed = rlmpipe("runs", "list", cwd=tmp_path)
    assert "interrupted (process gone" in listed.stdout


def test_cache_hits_cost_nothing_and_every_view_agrees(openai_server, tmp_path):
    """With DSPy's cache on, a second run (new fingerprint) is served from the cache: the store,
    runs show, the event log and the report count hits as hits, and no tokens."""
    import uuid

    from rlmpipe.apps.summarize import SummarizePipeline
    from rlmpipe.chunking import ChunkingConfig
    from rlmpipe.lm.models import ModelChoice, make_lm
    from rlmpipe.monitor.metrics import run_tables
    from rlmpipe.monitor.report import write_report
    from rlmpipe.runtime.runner import RunOptions, execute

    openai_server.set_default(summary_reply)
    openai_server.set_usage(prompt_tokens=40, completion_tokens=4)
    document = tmp_path / "doc.txt"
    document.write_text("".join(f"Clause {i} ({uuid.uuid4()}): the parties agree.\n\n" for i in range(12)))
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url), cache=True)
    pipeline = SummarizePipeline(ChunkingConfig(chunk_tokens=40))
    first = execute(pipeline, [str(document)], lm, options=RunOptions(workspace=tmp_path / "ws", fresh=True))
    served = len(openai_server.chat_calls)
    second = execute(pipeline, [str(document)], lm, options=RunOptions(workspace=tmp_path / "ws", fresh=True))
    assert second.run_id != first.run_id and len(openai_server.chat_calls) == served
    store = Store(tmp_path / "ws")
    one, two = run_tables(store, first.run_id)["totals"], run_tables(store, second.run_id)["totals"]
    assert one["calls"] == served and one["prompt_tokens"] == 40 * served and one["cached"] == 0
    assert two["calls"] == 0 and two["cached"] == served and two["tokens"] == 0
    events = [e for e in read_events(tmp_path / "ws", second.run_id) if e["type"] == "lm_call"]
    assert len(events) == served and {e["outcome"] for e in events} == {"cached"}
    report = write_report(store, second.run_id, tmp_path / "r.html").read_text()
    assert f'data-total="cached">{served}<' in report and 'data-total="calls">0<' in report
