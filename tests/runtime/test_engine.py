"""The run engine through the real client path (dspy.LM -> HTTP -> the loopback server):
faults and retries, budgets and resume, fatal errors, re-asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlmpipe.apps.summarize import SummarizePipeline
from rlmpipe.chunking import ChunkingConfig, chunk_text
from rlmpipe.lm.models import ModelChoice, make_lm
from rlmpipe.lm.recording import RetryPolicy
from rlmpipe.runtime.runner import RunOptions, execute
from rlmpipe.runtime.store import Store
from tests.support.replies import numbered_document, summary_reply

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "contracts"
SMALL_CHUNKS = ChunkingConfig(strategy="structure", chunk_tokens=32)
FAST_RETRY = RetryPolicy(max_attempts=12, initial_wait=0.01, max_wait=0.05, jitter=0.01, max_retry_after=0.1)


def server_lm(server, timeout: float = 5.0):
    return make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url), timeout=timeout)


def summarize(server, paths, workspace, *, timeout=5.0, chunking=SMALL_CHUNKS, **options):
    options.setdefault("retry", FAST_RETRY)
    return execute(SummarizePipeline(chunking, merge_input_tokens=200), [str(p) for p in paths],
                   server_lm(server, timeout), options=RunOptions(workspace=workspace, **options))


@pytest.fixture
def document_200(tmp_path) -> Path:
    path = tmp_path / "doc200.txt"
    path.write_text(numbered_document(200), encoding="utf-8")
    assert len(chunk_text(path.read_text(encoding="utf-8"), SMALL_CHUNKS)) == 200
    return path


@pytest.mark.slow
def test_200_chunks_with_30_percent_faults_complete_exactly_once(openai_server, document_200, tmp_path):
    openai_server.set_default(summary_reply)
    faults = [
        openai_server.fail("rate_limit", probability=0.10, seed=1, retry_after=0.05),
        openai_server.fail("server_error", probability=0.06, seed=2),
        openai_server.fail("unavailable", probability=0.06, seed=3),
        openai_server.fail("reset", probability=0.05, seed=4),
        openai_server.fail("timeout", probability=0.03, seed=5, delay=2.0),
    ]
    workspace = tmp_path / "ws"
    summary = summarize(openai_server, [document_200], workspace, timeout=0.8, concurrency=16)

    assert summary.status == "done", summary.reason
    assert summary.results[0]["result"]["chunks"] == 200
    store = Store(workspace)
    steps = [s for s in store.steps(summary.run_id) if s.name == "summarize"]
    assert len(steps) == 200 and all(s.status == "done" for s in steps)
    assert len({s.chunk_id for s in steps}) == 200
    calls = store.calls(summary.run_id)
    ok_per_step: dict[str, int] = {}
    for call in calls:
        if call["outcome"] == "ok":
            ok_per_step[call["step_key"]] = ok_per_step.get(call["step_key"], 0) + 1
    assert all(ok_per_step[s.step_key] == 1 for s in steps), "every chunk answered exactly once"
    fired = sum(fault.fired for fault in faults)
    errors = sum(1 for call in calls if call["outcome"] == "error")
    total_requests = len(openai_server.chat_calls)
    assert fired / total_requests > 0.2, "the faults really hit a large share of the calls"
    assert errors == fired, "every failed attempt is recorded"
    assert summary.usage["retries"] == errors, "each failure was retried once more"
    assert sum(s.attempts for s in store.steps(summary.run_id)) == len(calls)


def test_budget_stops_gracefully_and_a_larger_budget_resumes_without_repeating(openai_server, tmp_path):
    openai_server.set_default(summary_reply)
    workspace = tmp_path / "ws"
    paths = sorted(EXAMPLES.glob("*.txt"))
    first = summarize(openai_server, paths, workspace, max_run_tokens=3000, concurrency=2)
    assert first.status == "stopped" and first.reason.startswith("budget: token budget reached")
    assert first.resumable
    store = Store(workspace)
    done_before = {s.step_key: s.result for s in store.steps(first.run_id) if s.status == "done"}
    assert done_before, "work finished before the budget stop is saved"
    requests_before = len(openai_server.chat_calls)

    second = summarize(openai_server, paths, workspace, max_run_tokens=10_000_000, concurrency=2)
    assert second.run_id == first.run_id and second.status == "done" and second.session == 2
    new_calls = [c for c in store.calls(second.run_id) if c["session"] == 2]
    assert not {c["step_key"] for c in new_calls} & set(done_before), "no LM call for a step already done"
    replies = {summary_reply(c.body) for c in openai_server.chat_calls[requests_before:]}
    stored = {f"[[ ## summary ## ]]\n{r['summary']}\n\n[[ ## completed ## ]]" for r in done_before.values()}
    assert not replies & stored, "the server saw no request of a finished step again"
    assert len(second.results) == 3


def test_fatal_error_stops_the_run_fast_with_a_clear_message(openai_server, tmp_path):
    openai_server.fail("auth")
    paths = sorted(EXAMPLES.glob("*.txt"))
    summary = summarize(openai_server, paths, tmp_path / "ws", concurrency=4)
    assert summary.status == "failed"
    assert "LMAuthError" in summary.reason and "check the API key" in summary.reason
    assert len(openai_server.chat_calls) <= 8, "no retries of an authentication failure, no new work"


def test_output_that_does_not_parse_is_asked_again_with_the_error(openai_server, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("1. Term. The term is one year.\n", encoding="utf-8")
    openai_server.set_default(summary_reply)
    openai_server.fail("schema_violation", times=2, content="I am not following any format at all.")
    summary = summarize(openai_server, [path], tmp_path / "ws")
    assert summary.status == "done"
    step = next(s for s in Store(tmp_path / "ws").steps(summary.run_id) if s.name == "summarize")
    assert step.reasks >= 1
    last = openai_server.chat_calls[-1]
    assert "could not be used" in last.body["messages"][-1]["content"]


def test_same_command_twice_reuses_everything(openai_server, tmp_path):
    openai_server.set_default(summary_reply)
    paths = sorted(EXAMPLES.glob("*.txt"))
    first = summarize(openai_server, paths, tmp_path / "ws")
    count = len(openai_server.chat_calls)
    second = summarize(openai_server, paths, tmp_path / "ws")
    assert second.run_id == first.run_id and second.status == "done"
    assert len(openai_server.chat_calls) == count
    assert sorted(map(str, second.results)) == sorted(map(str, first.results))
    changed = summarize(openai_server, paths, tmp_path / "ws", chunking=ChunkingConfig(chunk_tokens=40))
    assert changed.run_id != first.run_id and any("configuration changed" in n for n in changed.notes)
    assert len(openai_server.chat_calls) > count
