"""RLM through the run engine: a needle in a long document, depth tagging and limits, budgets with a
partial answer, the trajectory in the store, and `rlmpipe ask` through the real client path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlmpipe.apps.ask import AskPipeline
from rlmpipe.monitor.metrics import run_tables
from rlmpipe.runtime.runner import RunOptions, execute
from rlmpipe.runtime.store import Store
from tests.sandbox.helpers import requires_deno
from tests.support.scripted_lm import ScriptedLM, chat_reply

pytestmark = [requires_deno, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
NEEDLE = "The termination fee is 4,250,000 dollars."


def action(iteration: int) -> str:
    return rf"\[\[ ## iteration ## \]\]\n{iteration}/"


@pytest.fixture
def haystack(tmp_path) -> Path:
    pages = [f"Page {i}. The parties agree to cooperate in good faith on all matters. " * 8 for i in range(600)]
    pages[431] = pages[431] + NEEDLE
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "long.txt").write_text("\n\n".join(pages), encoding="utf-8")
    (folder / "short.txt").write_text("A short note with nothing relevant.\n", encoding="utf-8")
    return folder


def needle_script(lm: ScriptedLM, *, nested: bool = False) -> None:
    step1 = ("```python\n"
             "at = documents.find('termination fee')\n"
             "reply = llm_query('SUBQUERY: what is the fee in: ' + documents[at - 20: at + 60])\n"
             "print(at > 0, reply)\n```")
    step2 = "```python\nSUBMIT(answer=reply, sources=['long.txt'])\n```"
    if nested:
        step2 = ("```python\ninner = llm_query_batched(['SUBQUERY: again ' + reply, 'SUBQUERY: once more'])\n"
                 "SUBMIT(answer=reply, sources=['long.txt'])\n```")
    lm.reply(action(1), chat_reply(reasoning="Find it.", code=step1))
    lm.reply(action(2), chat_reply(reasoning="Submit.", code=step2))
    lm.reply(r"^SUBQUERY:", "4,250,000 dollars")


def test_needle_found_sub_calls_at_depth_one_trajectory_stored_and_resume_is_free(haystack, tmp_path, pyodide_cache):
    lm = ScriptedLM(usage=(100, 10))
    needle_script(lm)
    options = RunOptions(workspace=tmp_path / "ws")
    summary = execute(AskPipeline("What is the termination fee?"), [str(haystack)], lm, options=options)
    assert summary.status == "done", summary.reason
    assert summary.final["answer"] == "4,250,000 dollars" and summary.final["sources"] == ["long.txt"]
    store = Store(tmp_path / "ws")
    step = next(s for s in store.steps(summary.run_id) if s.name == "ask")
    codes = [entry["code"] for entry in step.extra["trajectory"]]
    assert any("llm_query" in code for code in codes)
    depths = {row["depth"]: row for row in run_tables(store, summary.run_id)["depths"]}
    assert depths[0]["calls"] == 2 and depths[1]["calls"] == 1  # two REPL rounds, one sub-query
    assert depths[1]["prompt_tokens"] == 100
    sub_call = next(c for c in lm.calls if c.rule == r"^SUBQUERY:")
    assert NEEDLE[:-1] in sub_call.prompt  # the slice the sandbox cut from the 600-page document
    calls = len(lm.calls)
    again = execute(AskPipeline("What is the termination fee?"), [str(haystack)], lm, options=options)
    assert again.final == summary.final and len(lm.calls) == calls


def test_max_depth_refuses_sub_calls_and_the_model_goes_on(haystack, tmp_path, pyodide_cache):
    lm = ScriptedLM()
    step1 = "```python\ntry:\n    llm_query('SUBQUERY: x')\nexcept Exception as e:\n    print('refused:', e)\n```"
    lm.reply(action(1), chat_reply(reasoning="Try a sub-call.", code=step1))
    lm.reply(action(2), chat_reply(reasoning="Answer with code.", code="```python\nSUBMIT(answer='no sub-calls', sources=[])\n```"))
    summary = execute(AskPipeline("q?", max_depth=0), [str(haystack)], lm, options=RunOptions(workspace=tmp_path / "ws"))
    assert summary.final["answer"] == "no sub-calls"
    assert not [c for c in lm.calls if c.rule == r"^SUBQUERY:"]
    step = next(s for s in Store(tmp_path / "ws").steps(summary.run_id) if s.name == "ask")
    assert "maximum recursion depth 0 reached" in step.extra["trajectory"][0]["output"]


def test_sub_call_budget_across_depths(haystack, tmp_path, pyodide_cache):
    lm = ScriptedLM()
    needle_script(lm, nested=True)
    lm.reply(action(3), chat_reply(reasoning="No more sub-calls: answer with what I have.",
                                   code="```python\nSUBMIT(answer=reply, sources=['long.txt'])\n```"))
    summary = execute(AskPipeline("What is the termination fee?"), [str(haystack)], lm,
                      options=RunOptions(workspace=tmp_path / "ws", max_sub_calls=1))
    assert summary.status == "done" and summary.final["answer"] == "4,250,000 dollars"
    assert len([c for c in lm.calls if c.rule == r"^SUBQUERY:"]) == 1  # the batch of two was refused
    step = next(s for s in Store(tmp_path / "ws").steps(summary.run_id) if s.name == "ask")
    assert "sub-call budget reached" in json.dumps(step.extra["trajectory"])


def test_token_budget_ends_with_the_best_partial_answer_and_resumes(haystack, tmp_path, pyodide_cache):
    lm = ScriptedLM(usage=(400, 50))
    needle_script(lm)
    # admission: the first call (its prompt ~1,650 tokens) and the sub-call fit, the second iteration does not
    options = RunOptions(workspace=tmp_path / "ws", max_run_tokens=2000)
    summary = execute(AskPipeline("What is the termination fee?"), [str(haystack)], lm, options=options)
    assert summary.status == "stopped" and "token budget reached" in summary.reason
    step = next(s for s in Store(tmp_path / "ws").steps(summary.run_id) if s.name == "ask")
    assert step.status == "stopped"
    assert "4,250,000 dollars" in step.result["partial_answer"] and step.result["status"].startswith("stopped")
    resumed = execute(AskPipeline("What is the termination fee?"), [str(haystack)], lm,
                      options=RunOptions(workspace=tmp_path / "ws", max_run_tokens=100_000))
    assert resumed.status == "done" and resumed.final["answer"] == "4,250,000 dollars"


def test_ask_command_through_the_loopback_server(haystack, tmp_path, openai_server, pyodide_cache):
    step1 = ("```python\nat = documents.find('termination fee')\n"
             "reply = llm_query('SUBQUERY: fee in: ' + documents[at: at + 50])\nprint(reply)\n```")
    openai_server.reply(r"\[\[ ## iteration ## \]\]\n1/", chat_reply(reasoning="look", code=step1))
    openai_server.reply(r"\[\[ ## iteration ## \]\]\n2/", chat_reply(
        reasoning="done", code="```python\nSUBMIT(answer=reply, sources=['long.txt'])\n```"))
    openai_server.reply(r"SUBQUERY:", "4,250,000 dollars")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "rlmpipe.cli", "ask", str(haystack), "What is the fee?",
                             "--lm", "openai/test-model", "--api-base", openai_server.base_url, "--quiet"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "4,250,000 dollars"
    assert "sources: long.txt" in result.stdout
    shown = subprocess.run([sys.executable, "-m", "rlmpipe.cli", "runs", "show",
                            Store(tmp_path / ".rlmpipe").list_runs()[0]["run_id"], "--json"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    depths = {row["depth"]: row["calls"] for row in json.loads(shown.stdout)["depths"]}
    assert depths == {0: 2, 1: 1}


def test_trajectory_shows_in_runs_show_and_the_report(haystack, tmp_path, pyodide_cache):
    from rlmpipe.monitor.report import write_report

    lm = ScriptedLM(usage=(100, 10))
    needle_script(lm)
    summary = execute(AskPipeline("What is the termination fee?"), [str(haystack)], lm,
                      options=RunOptions(workspace=tmp_path / "ws"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    shown = subprocess.run([sys.executable, "-m", "rlmpipe.cli", "runs", "show", summary.run_id, "--workspace",
                            str(tmp_path / "ws")], capture_output=True, text=True, env=env, timeout=120)
    assert "RLM trajectory of step ask (done)" in shown.stdout and "llm_query" in shown.stdout
    report = write_report(Store(tmp_path / "ws"), summary.run_id, tmp_path / "report.html").read_text()
    assert "RLM trajectory: step ask" in report
    assert "documents.find(&#39;termination fee&#39;)" in report  # escaped, as every value from the store is
