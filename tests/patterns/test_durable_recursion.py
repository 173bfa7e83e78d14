"""A recursion that survives a crash: ``rlmpipe ask`` killed with SIGKILL in the middle of an RLM, then
run again, asks the model only what was in flight at the kill and answers as an uninterrupted run
does; a user's own module making several calls per chunk, the same; a changed program replays up to
its first difference and says so; budgets see replayed calls as made but free.

Kills wait for what the store holds (answers in the journal), never for a time; nothing here is timed."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dspy
import pytest

import rlmpipe
from rlmpipe.apps.ask import AskPipeline
from rlmpipe.monitor.metrics import run_tables
from rlmpipe.runtime.runner import RunOptions, execute
from rlmpipe.runtime.store import Store
from tests.sandbox.helpers import requires_deno
from tests.support.cli import ROOT, start
from tests.support.cli import rlmpipe as run_cli
from tests.support.recursion import (expected_answer, journal_size, journaled_prompts, journaled_requests, repeats,
                                     script)
from tests.support.scripted_lm import ScriptedLM, chat_reply

QUESTION = "What are the items?"


def wait_for_journal(process, workspace: Path, answers: int, timeout: float = 240.0) -> None:
    """Until ``answers`` answers are journaled (the process must still be running then)."""
    deadline = time.monotonic() + timeout
    while journal_size(workspace) < answers:
        assert process.poll() is None, f"the run ended before {answers} answers: {process.communicate()}"
        assert time.monotonic() < deadline, f"{answers} answers were not journaled within {timeout}s"
        time.sleep(0.01)


def kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


@pytest.fixture
def document(tmp_path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text("A supply agreement between two parties. " * 200, encoding="utf-8")
    return path


def ask_args(server, document: Path, workspace: Path) -> list[str]:
    return ["ask", str(document), QUESTION, "--lm", "openai/test-model", "--api-base", server.base_url,
            "--workspace", str(workspace), "--quiet"]


@requires_deno
@pytest.mark.slow
@pytest.mark.parametrize("shape, n, kill_at", [("sequential", 16, 10), ("batched", 16, 7), ("nested", 12, 6)])
def test_an_rlm_killed_mid_recursion_resumes_paying_only_for_the_calls_in_flight(
        shape, n, kill_at, document, tmp_path, openai_server, pyodide_cache):
    script(openai_server, n, shape, sub_latency=0.15)
    workspace = tmp_path / "ws"
    process = start(*ask_args(openai_server, document, workspace), cwd=tmp_path)
    wait_for_journal(process, workspace, kill_at)
    kill(process)
    before = [call.prompt for call in openai_server.chat_calls]
    journaled = journaled_prompts(workspace)
    assert len(journaled) >= kill_at

    resumed = run_cli(*ask_args(openai_server, document, workspace), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[0] == expected_answer(n)  # as an uninterrupted run answers
    after = [call.prompt for call in openai_server.chat_calls[len(before):]]
    paid_twice = repeats(before, after, journaled)
    assert paid_twice.only_in_flight, paid_twice
    with Store(workspace) as store:
        run_id = store.list_runs()[0]["run_id"]
        second = [c for c in store.calls(run_id) if c["session"] == 2]
        step = next(s for s in store.steps(run_id) if s.name == "ask")
    replayed = [c for c in second if c["outcome"] == "replayed"]
    assert len(replayed) == len(journaled) == step.replayed  # every kept answer served, none asked again
    assert all(c["prompt_tokens"] == 0 and c["cost"] == 0 for c in replayed)
    assert step.status == "done" and step.unused == 0
    if shape == "nested":
        assert {c["depth"] for c in replayed} >= {1, 2}
    shown = run_cli("runs", "show", run_id, "--workspace", workspace, "--json", cwd=tmp_path)
    totals = json.loads(shown.stdout)["totals"]
    assert totals["replayed"] == len(journaled) and totals["cached"] == 0


MODULE = textwrap.dedent('''
    import sys
    import dspy
    import rlmpipe

    class FiveNotes(dspy.Module):
        """Five questions about each chunk, one after another."""

        def __init__(self):
            super().__init__()
            self.note = dspy.Predict("text, aspect -> note")

        def forward(self, text):
            return dspy.Prediction(notes=[self.note(text=text, aspect=f"ASPECT {i}").note for i in range(5)])

    result = rlmpipe.run(FiveNotes(), sys.argv[1], lm="openai/test-model", api_base=sys.argv[2],
                         workspace=sys.argv[3], chunk_tokens=40, concurrency=2)
    print(result.status, sum(len(d.chunks) for d in result))
''')


@pytest.mark.slow
def test_a_module_making_five_calls_per_chunk_killed_mid_chunk_repeats_only_calls_in_flight(tmp_path, openai_server):
    def note(request: dict) -> str:
        text = json.dumps(request)
        return chat_reply(note=f"noted {text.count('ASPECT')}")

    openai_server.reply(r"ASPECT \d", note, latency=0.1)
    document = tmp_path / "doc.txt"
    document.write_text("\n\n".join(f"Clause {i}. The supplier shall deliver the goods on time." * 3
                                    for i in range(8)), encoding="utf-8")
    program = tmp_path / "five.py"
    program.write_text(MODULE, encoding="utf-8")
    workspace = tmp_path / "ws"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, str(program), str(document), openai_server.base_url, str(workspace)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env=env)
    wait_for_journal(process, workspace, 8)  # some chunks part-way through their five calls
    kill(process)
    before = [call.prompt for call in openai_server.chat_calls]
    with Store(workspace) as store:
        run_id = store.list_runs()[0]["run_id"]
        done_at_kill = store.step_counts(run_id).get("done", 0)
    kept = journaled_requests(workspace)
    second = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[0] == "done"
    after = openai_server.chat_calls[len(before):]
    # every request is unique (its chunk and aspect): one asked again was in flight at the kill, not journaled
    asked_again = [call.prompt for call in after if call.prompt in before]
    with Store(workspace) as store:
        calls = store.calls(run_id)
        steps = store.steps(run_id)
    answered = {c["request"] for c in calls if c["session"] == 1 and c["outcome"] == "ok" and c["request"]}
    assert kept == answered  # every answered call was journaled with its record
    in_flight = len(before) - len(answered)
    assert len(asked_again) <= in_flight <= 2  # at most one call per step thread (concurrency 2)
    assert done_at_kill < len(steps)  # the kill did interrupt chunks
    assert sum(s.replayed for s in steps) == sum(1 for c in calls if c["outcome"] == "replayed") > 0
    assert all(s.status == "done" for s in steps)


class Questions(dspy.Module):
    """Asks about each chunk in the order ``aspects`` gives (changed between two runs of the same run)."""

    def __init__(self, aspects):
        super().__init__()
        self.aspects = aspects
        self.note = dspy.Predict("text, aspect -> note")

    def forward(self, text):
        return dspy.Prediction(notes=[self.note(text=text, aspect=aspect).note for aspect in self.aspects])


class Gate:
    """A model that answers ``opened`` calls, then refuses the key (a fatal error: the run stops there)."""

    def __init__(self, opened: int):
        self.opened = opened

    def __call__(self, request: dict) -> str:
        if self.opened <= 0:
            raise dspy.lm15.AuthError("the key was revoked")
        self.opened -= 1
        return chat_reply(note="ok")


def gated_lm(opened: int) -> tuple[ScriptedLM, Gate]:
    gate = Gate(opened)
    lm = ScriptedLM(usage=(50, 5))
    lm.reply(r"aspect", gate)
    return lm, gate


@pytest.fixture
def short(tmp_path) -> Path:
    document = tmp_path / "short.txt"
    document.write_text("One short clause about delivery.", encoding="utf-8")
    return document


def test_a_changed_program_replays_up_to_its_first_difference_then_runs_live_and_says_so(tmp_path, short):
    from rlmpipe.runtime.events import EventBus

    lm, gate = gated_lm(3)
    workspace = tmp_path / "ws"
    first = rlmpipe.run(Questions(["A0", "A1", "A2", "A3", "A4"]), short, lm=lm, workspace=workspace)
    assert first.status == "failed" and len(lm.calls) == 4  # three answered, the fourth refused
    gate.opened = 100
    events: list = []
    bus = EventBus()
    bus.subscribe(events.append)
    # the same run (same signatures), its program changed: A0 as before, then something new
    second = rlmpipe.run(Questions(["A0", "NEW", "A1", "A2", "A3"]), short, lm=lm, workspace=workspace, events=bus)
    assert second.status == "done" and second.run_id == first.run_id
    live = [call.messages[-1]["content"] for call in lm.calls[4:]]
    assert len(live) == 4 and not any("A0" in text for text in live)  # A0 replayed; A1, A2 asked again, live
    with Store(workspace) as store:
        step = store.steps(second.run_id)[0]
        tables = run_tables(store, second.run_id)
    assert (step.replayed, step.unused) == (1, 2)
    notes = [e["message"] for e in events if e["type"] == "note"]
    assert any("parted from the call journal after 1 replayed call" in n and "2 earlier answer(s)" in n
               for n in notes), notes
    assert tables["replay"] == {"replayed": 1, "parted_steps": 1, "unused": 2}


def test_budgets_count_replayed_calls_as_made_but_free(tmp_path, short):
    from rlmpipe.lm.tokens import count_prompt

    def questions():
        return Questions([f"A{i}" for i in range(6)])

    whole_lm, _ = gated_lm(100)
    whole = rlmpipe.run(questions(), short, lm=whole_lm, workspace=tmp_path / "whole")
    assert whole.status == "done"
    lm, gate = gated_lm(4)
    workspace = tmp_path / "ws"
    assert rlmpipe.run(questions(), short, lm=lm, workspace=workspace).status == "failed"
    gate.opened = 100
    # a budget that holds what was billed and the two calls left, not the four answered ones a second time
    prompt = max(count_prompt(lm.model, None, call.messages) for call in whole_lm.calls)
    budget = 4 * 55 + 2 * 55 + prompt + 20
    resumed = rlmpipe.run(questions(), short, lm=lm, workspace=workspace, max_run_tokens=budget)
    assert resumed.status == "done", resumed.reason
    assert len(lm.calls) == 5 + 2  # four answered and one refused, then the two left, live
    billed = resumed.usage["prompt_tokens"] + resumed.usage["completion_tokens"]
    assert billed == whole.usage["prompt_tokens"] + whole.usage["completion_tokens"]  # once, over both sessions
    assert resumed.usage["replayed"] == 4 and resumed[0].result == whole[0].result


@requires_deno
@pytest.mark.slow
def test_the_sub_call_budget_sees_replayed_sub_calls_as_made(tmp_path, pyodide_cache):
    lm = ScriptedLM(usage=(400, 50))
    script(lm, 8, "sequential")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "doc.txt").write_text("Some contract text. " * 100, encoding="utf-8")
    workspace = tmp_path / "ws"
    first = execute(AskPipeline(QUESTION), [str(docs)], lm, options=RunOptions(workspace=workspace,
                                                                               max_run_tokens=2900))
    assert first.status == "stopped"
    sub_calls_before = sum(1 for c in lm.calls if c.rule == r"SUBQUERY \d+")
    assert 2 < sub_calls_before < 8
    # resumed with a sub-call cap of 2: the third replayed sub-call is refused, as it would be live
    resumed = execute(AskPipeline(QUESTION), [str(docs)], lm, options=RunOptions(workspace=workspace,
                                                                                 max_sub_calls=2))
    assert sum(1 for c in lm.calls if c.rule == r"SUBQUERY \d+") == sub_calls_before  # none made live
    with Store(workspace) as store:
        step = next(s for s in store.steps(resumed.run_id) if s.name == "ask")
        replayed_sub_calls = [c for c in store.calls(resumed.run_id)
                              if c["session"] == 2 and c["outcome"] == "replayed" and c["depth"] == 1]
    assert len(replayed_sub_calls) == 2
    assert "sub-call budget reached" in json.dumps(step.extra["trajectory"])


@requires_deno
@pytest.mark.slow
def test_ask_each_runs_one_recursion_per_document_and_a_bad_file_fails_alone(tmp_path, openai_server, pyodide_cache):
    from tests.support.documents import write_encrypted_pdf
    from tests.support.recursion import iteration

    read = ("```python\nname = index.split('\\t')[0]\nfirst = documents.split('\\n')[1]\n"
            "checked = llm_query('SUBQUERY 1: is this a contract? ' + first)\nprint(name, first, checked)\n```")
    openai_server.reply(iteration(1), chat_reply(reasoning="Read the first line.", code=read))
    openai_server.reply(iteration(2), chat_reply(
        reasoning="Answer.", code="```python\nSUBMIT(answer=first, sources=[name])\n```"))
    openai_server.reply(r"SUBQUERY", "yes")
    folder = tmp_path / "filings"
    folder.mkdir()
    for name, title in (("alpha.txt", "ALPHA SUPPLY AGREEMENT"), ("beta.txt", "BETA LICENSE"),
                        ("gamma.md", "GAMMA LEASE")):
        (folder / name).write_text(f"{title}\nThe parties agree to terms.\n", encoding="utf-8")
    write_encrypted_pdf(folder / "locked.pdf", ["secret terms"])
    workspace = tmp_path / "ws"
    args = ["ask", str(folder), QUESTION, "--each", "--lm", "openai/test-model", "--api-base", openai_server.base_url,
            "--workspace", str(workspace), "--quiet", "--concurrency", "3"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # one document failed, the others were answered
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "locked.pdf" in errors[0] and "encrypted" in errors[0]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(line["path"]).name: line for line in lines}
    assert set(by_name) == {"alpha.txt", "beta.txt", "gamma.md", "locked.pdf"}
    for name, title in (("alpha.txt", "ALPHA SUPPLY AGREEMENT"), ("beta.txt", "BETA LICENSE"),
                        ("gamma.md", "GAMMA LEASE")):
        assert by_name[name]["status"] == "done" and by_name[name]["answer"] == title
        assert by_name[name]["sources"] == [name]
    assert by_name["locked.pdf"]["status"] == "failed" and "encrypted" in by_name["locked.pdf"]["error"]
    with Store(workspace) as store:
        run_id = store.list_runs()[0]["run_id"]
        steps = [s for s in store.steps(run_id) if s.name == "ask"]
    assert len(steps) == 3 and len({s.doc_id for s in steps}) == 3  # a durable step per document
    calls = len(openai_server.chat_calls)
    again = run_cli(*args, cwd=tmp_path)  # the same command again: every answer reused, no call made
    assert again.stdout == result.stdout and len(openai_server.chat_calls) == calls


@requires_deno
@pytest.mark.slow
def test_the_code_asks_what_is_left_of_its_budgets_and_a_replay_sees_what_the_first_run_saw(tmp_path, pyodide_cache):
    from rlmpipe.patterns.rlm import BUDGET_INSTRUCTIONS
    from tests.support.recursion import iteration

    lm = ScriptedLM(usage=(400, 50))
    plan = ("```python\nleft = budget_left()\nprint('LEFT', sorted(left.items()))\n"
            "notes = [llm_query(f'SUBQUERY {i}: note') for i in range(3)]\n```")
    lm.reply(iteration(1), chat_reply(reasoning="See what is left.", code=plan))
    lm.reply(iteration(2), chat_reply(reasoning="Done.", code="```python\nSUBMIT(answer=str(left), sources=[])\n```"))
    lm.reply(r"SUBQUERY \d+", "noted")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "doc.txt").write_text("Some contract text. " * 100, encoding="utf-8")
    workspace = tmp_path / "ws"
    first = execute(AskPipeline(QUESTION, max_depth=2, max_llm_calls=9), [str(docs)], lm,
                    options=RunOptions(workspace=workspace, max_run_tokens=3200, max_sub_calls=5))
    assert first.status == "stopped"  # the second iteration did not fit the token budget
    prompt = next(c.prompt for c in lm.calls if c.rule == iteration(1))
    assert BUDGET_INSTRUCTIONS.strip() in " ".join(prompt.split())  # the tool is named in the instructions
    with Store(workspace) as store:
        step = next(s for s in store.steps(first.run_id) if s.name == "ask")
    seen = next(e["output"] for e in step.extra["trajectory"] if "LEFT" in e["output"])
    assert "('depth', 2)" in seen and "('llm_calls', 9)" in seen and "('sub_calls', 5)" in seen
    tokens_left = int(re.search(r"\('tokens', (\d+)\)", seen).group(1))
    assert 0 < tokens_left < 3200 - 400  # the first call was billed before the code asked
    resumed = execute(AskPipeline(QUESTION, max_depth=2, max_llm_calls=9), [str(docs)], lm,
                      options=RunOptions(workspace=workspace, max_run_tokens=50_000, max_sub_calls=5))
    assert resumed.status == "done"
    first_seen = dict(ast.literal_eval(seen.split("LEFT ", 1)[1].strip()))
    assert ast.literal_eval(resumed.final["answer"]) == first_seen  # replayed: what the first run saw, not now
