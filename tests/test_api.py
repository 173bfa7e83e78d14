"""The public API: a DSPy user's own module run over a folder by the engine (results, resume, the
patterns, what is stored), through the real client path and the loopback server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dspy
import pytest

import rlmpipe
from rlmpipe.lm.recording import RetryPolicy
from rlmpipe.runtime.store import Store
from tests.sandbox.helpers import requires_deno
from tests.support.kills import kill_after_steps, later_calls
from tests.support.replies import any_reply
from tests.support.scripted_lm import ScriptedLM, chat_reply

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "examples" / "contracts"
FAST = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=0.02, jitter=0.0)


@pytest.fixture
def folder(tmp_path) -> Path:
    target = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, target)
    return target


def served(server) -> int:
    return len([c for c in server.chat_calls if c.served == "reply"])


def test_a_plain_module_over_a_folder_and_the_same_call_again_makes_no_lm_call(openai_server, folder, tmp_path):
    openai_server.set_default(any_reply)
    summarize = dspy.ChainOfThought("text -> summary")
    common = dict(lm="openai/test-model", api_base=openai_server.base_url, chunk_tokens=512,
                  workspace=tmp_path / "ws", concurrency=4)
    result = rlmpipe.run(summarize, folder, **common)

    assert result.status == "done", result.reason
    assert [Path(d.path).name for d in result] == sorted(p.name for p in CONTRACTS.glob("*.txt"))
    chunks = [chunk for document in result for chunk in document.chunks]
    assert chunks and all(set(chunk) == {"reasoning", "summary"} for chunk in chunks)
    assert all(chunk["summary"].startswith("summary-") for chunk in chunks)
    assert served(openai_server) == len(chunks), "one call per chunk"
    assert sum(d.usage["prompt_tokens"] for d in result) == result.usage["prompt_tokens"] > 0

    again = rlmpipe.run(summarize, folder, **common)
    assert served(openai_server) == len(chunks), "the second identical call made no LM call"
    assert again.run_id == result.run_id and again.status == "done"
    assert [d.result for d in again] == [d.result for d in result]


def test_the_input_field_is_detected_or_asked_for(openai_server, folder, tmp_path):
    openai_server.set_default(any_reply)

    class Custom(dspy.Module):
        def __init__(self):
            super().__init__()
            self.predict = dspy.Predict("passage -> gist")

        def forward(self, passage):
            return self.predict(passage=passage)

    result = rlmpipe.run(Custom(), folder / "ip_agreement_msci.txt", lm="openai/test-model",
                         api_base=openai_server.base_url, workspace=tmp_path / "ws")
    assert result.status == "done" and all("gist" in c for c in result[0].chunks)
    with pytest.raises(ValueError, match="input_field="):
        rlmpipe.run(dspy.Predict("question, answer_key -> grade"), folder, lm="openai/test-model",
                    api_base=openai_server.base_url, workspace=tmp_path / "ws")
    named = rlmpipe.run(dspy.Predict("question, answer_key -> grade"), folder / "ip_agreement_msci.txt",
                        input_field="answer_key", lm="openai/test-model", api_base=openai_server.base_url,
                        workspace=tmp_path / "ws")
    assert named.status == "done"
    assert all("[[ ## answer_key ## ]]" in c.prompt for c in openai_server.chat_calls[-len(named[0].chunks):])


def test_a_prediction_is_stored_as_json_and_read_back_the_same(openai_server, folder, tmp_path):
    openai_server.set_default(any_reply)
    module = dspy.Predict("text -> summary, parties: list[str]")
    options = dict(lm="openai/test-model", api_base=openai_server.base_url, workspace=tmp_path / "ws")
    first = rlmpipe.run(module, folder / "ip_agreement_msci.txt", **options)
    chunk = first[0].chunks[0]
    assert isinstance(chunk["parties"], list) and isinstance(chunk["summary"], str)
    with Store(tmp_path / "ws") as store:
        stored = [s.result for s in store.steps(first.run_id) if s.name == "map"]
    assert sorted(stored, key=json.dumps) == sorted(first[0].chunks, key=json.dumps)  # (steps run in parallel)
    assert rlmpipe.run(module, folder / "ip_agreement_msci.txt", **options)[0].chunks == first[0].chunks


def test_a_result_that_is_not_json_fails_naming_the_step_and_the_other_documents_finish(folder, tmp_path):
    class Careless(dspy.Module):
        def __init__(self):
            super().__init__()
            self.predict = dspy.Predict("text -> summary")

        def forward(self, text):
            prediction = self.predict(text=text)
            if "MSCI" in text:
                return {"summary": prediction.summary, "when": object()}  # not JSON
            return prediction

    lm = ScriptedLM(default=chat_reply(summary="ok"))
    result = rlmpipe.run(Careless(), folder, lm=lm, workspace=tmp_path / "ws", chunk_tokens=100_000)
    by_name = {Path(d.path).name: d for d in result}
    broken = by_name["ip_agreement_msci.txt"]
    assert broken.status == "failed"
    assert "step map failed" in broken.error and "cannot be stored as JSON" in broken.error, broken.error
    assert "['when']" in broken.error
    assert {d.status for name, d in by_name.items() if name != "ip_agreement_msci.txt"} == {"done"}
    with Store(tmp_path / "ws") as store:
        calls = store.calls(result.run_id)
        failed_step = [s for s in store.steps(result.run_id) if s.status == "failed"]
    assert len(calls) == len(lm.calls), "the failing step's LM call is recorded, not lost"
    assert failed_step and failed_step[0].calls == 1


def test_a_dspy_lm_with_its_own_retries_is_retried_by_rlmpipe_once_not_twice(openai_server, folder, tmp_path):
    openai_server.set_default(any_reply)
    openai_server.fail("server_error", times=2)
    lm = dspy.LM("openai/test-model", api_base=openai_server.base_url, api_key="test", cache=False, num_retries=5)
    options = rlmpipe.RunOptions(workspace=tmp_path / "ws", retry=FAST, concurrency=1)
    result = rlmpipe.run(dspy.Predict("text -> summary"), folder / "ip_agreement_msci.txt", lm=lm, options=options)
    assert result.status == "done"
    requests = len(openai_server.chat_calls)
    assert requests == len(result[0].chunks) + 2, "each failure retried once, by rlmpipe alone"
    with Store(tmp_path / "ws") as store:
        assert len(store.calls(result.run_id)) == requests, "every attempt recorded once"
    assert lm.num_retries == 5, "the caller's LM is left as it was"


class ReadOn(dspy.Signature):
    """Read the next part of a long document, knowing what the earlier parts said."""

    text: str = dspy.InputField()
    context: str = dspy.InputField(desc="notes on the earlier parts")
    notes: str = dspy.OutputField()
    new_context: str = dspy.OutputField(desc="notes on everything so far")


def test_the_window_carries_a_bounded_context_from_call_to_call(folder, tmp_path):
    huge = "remember this " * 5000  # the model returns far more context than allowed
    lm = ScriptedLM(default=chat_reply(notes="n", new_context=huge))
    result = rlmpipe.run(dspy.Predict(ReadOn), folder / "ip_agreement_msci.txt", lm=lm, pattern="window",
                         window_tokens=64, chunk_tokens=256, workspace=tmp_path / "ws")
    assert result.status == "done" and len(result[0].chunks) >= 3
    tokenizer = rlmpipe.ChunkingConfig().tokenizer
    from rlmpipe.chunking import get_tokenizer

    count = get_tokenizer(tokenizer).count
    contexts = [call.prompt.split("[[ ## context ## ]]\n")[-1].split("\n\nRespond with")[0] for call in lm.calls]
    assert contexts[0] == "" and all(0 < count(c) <= 64 for c in contexts[1:])
    assert count(result[0].output["context"]) <= 64


def test_map_then_reduce_with_a_second_module_as_a_tree(openai_server, folder, tmp_path):
    openai_server.set_default(any_reply)
    merge = dspy.Predict("summaries: list[str] -> summary")
    result = rlmpipe.run(dspy.Predict("text -> summary"), folder, lm="openai/test-model", pattern="map_reduce",
                         reduce=merge, reduce_tokens=60, chunk_tokens=256, api_base=openai_server.base_url,
                         workspace=tmp_path / "ws")
    assert result.status == "done"
    for document in result:
        assert document.output["summary"].startswith("summary-")
    merges = [c for c in openai_server.chat_calls if "[[ ## summaries ## ]]" in c.prompt]
    assert len(merges) > len(result), "small merge inputs: a tree of merges, not one per document"


def test_importing_rlmpipe_loads_nothing_heavy_and_starts_nothing():
    code = ("import sys, threading; before = threading.active_count(); import rlmpipe; "
            "assert 'dspy' not in sys.modules and 'litellm' not in sys.modules, 'heavy imports'; "
            "assert threading.active_count() == before; print(len(rlmpipe.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 10


SCRIPT = textwrap.dedent("""
    import json, sys
    import dspy, rlmpipe
    folder, workspace, base, out = sys.argv[1:5]
    result = rlmpipe.run(dspy.Predict("text -> summary"), folder, lm="openai/test-model", api_base=base,
                         chunk_tokens=64, workspace=workspace, concurrency=2)
    with open(out, "w") as handle:
        json.dump([[d.path, d.status, d.chunks] for d in result], handle)
""")


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_call_resumes_without_repeating_a_finished_call(openai_server, folder, tmp_path):
    openai_server.set_default(any_reply)
    openai_server.set_latency(0.05)
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}

    def start(workspace, out):
        return subprocess.Popen([sys.executable, str(script), str(folder), str(workspace), openai_server.base_url,
                                 str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reference = start(tmp_path / "ref-ws", tmp_path / "ref.json")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    expected = json.loads((tmp_path / "ref.json").read_text())

    workspace = tmp_path / "ws"
    run_id, done = kill_after_steps(start(workspace, tmp_path / "out.json"), workspace, 10)
    assert done, "the kill came after some steps were committed"

    resumed = start(workspace, tmp_path / "out.json")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    later = later_calls(workspace, run_id)
    assert not {c["step_key"] for c in later} & done, "no committed step was called again"
    assert json.loads((tmp_path / "out.json").read_text()) == expected, "the same output as an uninterrupted run"


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_window_chain_then_the_same_command_repeats_no_finished_call(openai_server,
                                                                                             folder, tmp_path):
    """``summarize --pattern window``: each call carries the previous one's context, so a resume
    must replay the chain from the store exactly (the same prompts, hence the same output)."""
    openai_server.set_default(any_reply)
    openai_server.set_latency(0.05)
    document = folder / "ip_agreement_msci.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def start(workspace, out):
        return subprocess.Popen([sys.executable, "-m", "rlmpipe.cli", "summarize", str(document), "--pattern", "window",
                                 "--chunk-tokens", "64", "--window-tokens", "48", "--lm", "openai/test-model",
                                 "--api-base", openai_server.base_url, "--workspace", str(workspace), "--out",
                                 str(out), "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path)

    reference = start(tmp_path / "ref-ws", tmp_path / "ref.jsonl")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    expected = (tmp_path / "ref.jsonl").read_text()
    links = json.loads(expected)["result"]["chunks"]
    assert links >= 10, "a chain long enough to cut in the middle"

    workspace = tmp_path / "ws"
    run_id, done = kill_after_steps(start(workspace, tmp_path / "out.jsonl"), workspace, 4, poll=0.02)
    assert 0 < len(done) < links, "the kill came in the middle of the chain"

    resumed = start(workspace, tmp_path / "out.jsonl")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    later = later_calls(workspace, run_id)
    assert later, "the rest of the chain was asked"
    assert not {c["step_key"] for c in later} & done, "no committed step of the chain was called again"
    assert (tmp_path / "out.jsonl").read_text() == expected, "the same output as an uninterrupted run"


# --- resume: the command record --------------------------------------------------------------------
def test_resume_runs_a_command_with_the_options_it_was_given(openai_server, folder, tmp_path, monkeypatch):
    """The record a built-in command keeps has every option resume must restore (the executor and
    its cluster, the sub-call cap, the rate limits, concurrency); the budgets come from the run's
    stored options and may be raised. (The engine is replaced: what resume passes it is the point.)"""
    from rlmpipe.runtime import runner

    sessions = []

    def execute(pipeline, paths, lm, *, options, store, events, run_config, on_start):
        sessions.append(options)
        if options.resume_run_id is None:  # the first session: stored as the engine stores a run
            stored = {"concurrency": options.concurrency, "max_run_tokens": options.max_run_tokens,
                      "max_cost": options.max_cost, "max_seconds": options.max_seconds,
                      "prices": options.prices}
            config = {**run_config, "options": stored}
            store.start_run("run000000001", pipeline.name, "fp", lm.model, config, 0)
            store.finish_run("run000000001", "stopped", "budget: token budget reached")
        return runner.RunSummary("run000000001", "stopped", "budget", {}, {}, {}, 1, [], [])

    monkeypatch.setattr(runner, "execute", execute)
    given = dict(executor="ray", ray_address="ray://head:10001", max_sub_calls=3, requests_per_minute=60,
                 tokens_per_minute=50_000, concurrency=2)
    rlmpipe.ask(folder, "What is the fee?", lm="openai/test-model", api_base=openai_server.base_url,
                max_run_tokens=1000, max_seconds=30.0, workspace=tmp_path / "ws", **given)
    rlmpipe.resume("run000000001", workspace=tmp_path / "ws", max_run_tokens=5000)
    first, resumed = sessions
    assert resumed.resume_run_id == "run000000001"
    assert {name: getattr(first, name) for name in given} == given
    assert {name: getattr(resumed, name) for name in given} == given
    assert (resumed.max_run_tokens, resumed.max_seconds) == (5000, 30.0), "one budget raised, one as stored"


@requires_deno
@pytest.mark.slow
def test_a_resumed_ask_keeps_its_sub_call_cap(openai_server, tmp_path, pyodide_cache):
    """`ask` stopped by its token budget, resumed with a larger one: the resumed session runs the
    question again under the same --max-sub-calls (1); the first round's sub-query is replayed from the
    call journal (not asked again) and counts as made, so the second round's batch of two sub-queries
    is refused, as it would have been in one session."""
    folder = tmp_path / "docs"
    folder.mkdir()
    pages = [f"Page {i}. The parties agree to cooperate in good faith on all matters. " * 8
             for i in range(60)]
    pages[31] += "The termination fee is 4,250,000 dollars."
    (folder / "long.txt").write_text("\n\n".join(pages), encoding="utf-8")
    step1 = ("```python\nat = documents.find('termination fee')\n"
             "reply = llm_query('SUBQUERY: the fee in: ' + documents[at - 20: at + 60])\nprint(reply)\n```")
    step2 = ("```python\ninner = llm_query_batched(['SUBQUERY: again ' + reply, 'SUBQUERY: once more'])\n"
             "SUBMIT(answer=reply, sources=['long.txt'])\n```")
    step3 = "```python\nSUBMIT(answer=reply, sources=['long.txt'])\n```"
    for iteration, code in enumerate((step1, step2, step3), start=1):
        openai_server.reply(rf"\[\[ ## iteration ## \]\]\n{iteration}/",
                            chat_reply(reasoning="go", code=code))
    openai_server.reply(r"^SUBQUERY:", "4,250,000 dollars")
    openai_server.set_usage(400, 50)
    # admission: the first round's call and its sub-query fit in 2,000 tokens, the second round does not
    first = rlmpipe.ask(folder, "What is the termination fee?", lm="openai/test-model",
                        api_base=openai_server.base_url, max_sub_calls=1, max_run_tokens=2000,
                        workspace=tmp_path / "ws")
    assert first.status == "stopped" and "token budget" in first.reason
    before = openai_server.count(r"^SUBQUERY:")
    resumed = rlmpipe.resume(first.run_id, workspace=tmp_path / "ws", max_run_tokens=100_000)
    assert resumed.status == "done" and resumed.final["answer"] == "4,250,000 dollars"
    assert openai_server.count(r"^SUBQUERY:") - before == 0, "replayed, and the batch of two refused: the cap holds"
    with Store(tmp_path / "ws") as store:
        step = next(s for s in store.steps(resumed.run_id) if s.name == "ask")
    assert step.replayed >= 2  # the first round's call and its sub-query
    assert "sub-call budget reached" in json.dumps(step.extra["trajectory"])
