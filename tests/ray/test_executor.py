"""The Ray executor on a one-node cluster started once for this module (4 worker slots on 2 cores:
the work is LM calls to the loopback server, not computation)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rlmpipe.apps.summarize import SummarizePipeline
from rlmpipe.chunking import ChunkingConfig
from rlmpipe.lm.models import ModelChoice, make_lm
from rlmpipe.lm.recording import RetryPolicy
from rlmpipe.runtime.runner import RunOptions, execute
from rlmpipe.runtime.store import Store
from rlmpipe.sandbox import deno_available, pyodide_cached
from tests.support.kills import kill_after_steps
from tests.support.replies import numbered_document, summary_reply, user_text

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
CHUNKING = ChunkingConfig(strategy="structure", chunk_tokens=32)
FAST = RetryPolicy(max_attempts=6, initial_wait=0.01, max_wait=0.05, jitter=0.0, max_retry_after=0.2)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    made = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 4, "object_store_memory": 100 << 20, "include_dashboard": False})
    yield made
    ray.shutdown()
    made.shutdown()


@pytest.fixture
def documents(tmp_path) -> list[Path]:
    paths = []
    for index in range(6):
        path = tmp_path / "docs" / f"doc{index}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(numbered_document(12, label=f"Doc {index} paragraph"), encoding="utf-8")
        paths.append(path)
    return paths


def lm_for(server, **settings):
    return make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url), timeout=10, **settings)


def summarize(server, paths, workspace, lm=None, **options):
    options.setdefault("retry", FAST)
    return execute(SummarizePipeline(CHUNKING, merge_input_tokens=150), [str(p) for p in paths], lm or lm_for(server),
                   options=RunOptions(workspace=workspace, **options))


def excerpt_asks(server) -> Counter:
    """How many times each excerpt was asked for (prompts are unique per chunk)."""
    return Counter(user_text(call.body) for call in server.chat_calls
                   if call.served == "reply" and isinstance(call.body, dict) and "[[ ## excerpt ## ]]" in user_text(call.body))


def test_threads_and_ray_give_the_same_results_and_step_keys(cluster, openai_server, documents, tmp_path):
    openai_server.set_default(summary_reply)
    threads = summarize(openai_server, documents, tmp_path / "threads", concurrency=4)
    on_ray = summarize(openai_server, documents, tmp_path / "ray", concurrency=4, executor="ray")
    assert threads.status == on_ray.status == "done", on_ray.reason
    assert threads.run_id == on_ray.run_id
    assert [r["result"] for r in threads.results] == [r["result"] for r in on_ray.results]
    keys = {}
    for name in ("threads", "ray"):
        with Store(tmp_path / name) as store:
            keys[name] = sorted(s.step_key for s in store.steps(threads.run_id) if s.status == "done")
            run = store.get_run(threads.run_id)
    assert keys["threads"] == keys["ray"]
    executor = run["config"]["executor"]
    assert executor["name"] == "ray" and len(executor["nodes"]) == 1 and executor["nodes"][0]["alive"]
    shown = subprocess.run([sys.executable, "-m", "rlmpipe.cli", "runs", "show", threads.run_id, "--workspace",
                            str(tmp_path / "ray")], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert "executor ray (1 node" in shown.stdout, shown.stdout


def test_the_requests_per_minute_limit_holds_across_four_workers(cluster, openai_server, documents, tmp_path):
    openai_server.set_default(summary_reply)
    result = summarize(openai_server, documents, tmp_path / "ws", concurrency=4, executor="ray",
                       requests_per_minute=15, max_seconds=25)  # (worker processes take seconds to start)
    assert result.status == "stopped" and "time budget" in result.reason
    started = sorted(call.time for call in openai_server.chat_calls)
    assert len(started) == 15, f"{len(started)} requests within the minute for a limit of 15 per minute"


def test_a_budget_stop_reaches_every_worker_and_the_run_resumes(cluster, openai_server, documents, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_usage(count="chars/4")
    capped = lm_for(openai_server, max_output_tokens=64)  # each call's completion reserved at its cap
    first = summarize(openai_server, documents, tmp_path / "ws", capped, concurrency=4, executor="ray",
                      max_run_tokens=4000)
    assert first.status == "stopped" and first.reason.startswith("budget: token budget reached")
    billed = sum(c.prompt_tokens + c.completion_tokens for c in openai_server.chat_calls if c.served == "reply")
    assert billed <= 4000, "the global budget held across the workers"
    asked = excerpt_asks(openai_server)
    second = summarize(openai_server, documents, tmp_path / "ws", capped, concurrency=4, executor="ray")
    assert second.status == "done" and second.run_id == first.run_id
    again = excerpt_asks(openai_server)
    assert all(again[excerpt] == 1 for excerpt in asked), "no finished step was asked again"


def test_a_retry_after_seen_by_one_worker_pauses_them_all(cluster, openai_server, documents, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.fail("rate_limit", times=1, retry_after=2)
    result = summarize(openai_server, documents[:4], tmp_path / "ws", concurrency=4, executor="ray",
                       retry=RetryPolicy(max_attempts=6, initial_wait=0.01, max_wait=0.05, jitter=0.0,
                                         max_retry_after=5))
    assert result.status == "done"
    calls = sorted(openai_server.chat_calls, key=lambda c: c.time)
    refused = next(c for c in calls if c.served == "rate_limit")
    during = [c for c in calls if refused.time + 0.5 < c.time < refused.time + 1.8]  # (others see it within a poll)
    assert not during, f"{len(during)} requests went out while every worker should have been holding"


def test_a_worker_killed_mid_run_costs_only_the_steps_in_flight(cluster, openai_server, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_latency(0.05)
    path = tmp_path / "one.txt"
    path.write_text(numbered_document(80, label="Long paragraph"), encoding="utf-8")
    pids = tmp_path / "pids"

    class Recording(SummarizePipeline):
        def process(self, run, document):
            with open(pids, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            return super().process(run, document)

    import threading

    def kill_after(calls: int) -> None:
        while len(openai_server.chat_calls) < calls:
            time.sleep(0.01)
        os.kill(int(pids.read_text().split()[0]), signal.SIGKILL)

    killer = threading.Thread(target=kill_after, args=(20,), daemon=True)
    killer.start()
    result = execute(Recording(CHUNKING, merge_input_tokens=150), [str(path)], lm_for(openai_server),
                     options=RunOptions(workspace=tmp_path / "ws", concurrency=4, executor="ray", retry=FAST))
    killer.join(5)
    assert result.status == "done", result.reason
    assert len(set(pids.read_text().split())) == 2, "the document ran again in another worker"
    asked = excerpt_asks(openai_server)
    repeated = [excerpt for excerpt, n in asked.items() if n > 1]
    assert len(repeated) <= 4, f"{len(repeated)} steps were asked twice; only those in flight (4) may be"
    with Store(tmp_path / "ws") as store:
        done = [s for s in store.steps(result.run_id) if s.name == "summarize" and s.status == "done"]
    assert len(done) == len(asked)


def test_a_driver_killed_and_run_again_repeats_no_committed_step(cluster, openai_server, documents, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_latency(0.05)
    command = [sys.executable, "-m", "rlmpipe.cli", "summarize", *map(str, documents), "--lm", "openai/test-model",
               "--api-base", openai_server.base_url, "--chunk-tokens", "32", "--executor", "ray", "--ray-address",
               cluster.address, "--workspace", str(tmp_path / "ws"), "--quiet", "--out", str(tmp_path / "out.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    driver = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_id, committed = kill_after_steps(driver, tmp_path / "ws", 15)
    assert committed
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    with Store(tmp_path / "ws") as store:
        later = {c["step_key"] for c in store.calls(run_id) if c["session"] > 1 and c["outcome"] == "ok"}
        assert store.get_run(run_id)["sessions"] == 2
    assert not later & committed, "a committed step was called again after the driver's death"
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == len(documents)


@pytest.mark.skipif(not (deno_available() and pyodide_cached()), reason="the RLM's sandbox (Deno, Pyodide) is not here")
def test_a_worker_killed_mid_recursion_replays_its_journal_on_the_next_worker(cluster, openai_server, tmp_path):
    import threading

    from rlmpipe.apps.ask import AskPipeline
    from tests.support.recursion import expected_answer, journal_size, journaled_prompts, repeats, script

    script(openai_server, 12, "sequential", sub_latency=0.1)
    path = tmp_path / "docs" / "filing.txt"
    path.parent.mkdir()
    path.write_text("A supply agreement between two parties. " * 100, encoding="utf-8")
    pids, workspace = tmp_path / "pids", tmp_path / "ws"
    seen: dict = {}

    class Recording(AskPipeline):
        def process(self, run, document):
            with open(pids, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            return super().process(run, document)

    def kill_after(answers: int) -> None:
        while journal_size(workspace) < answers:
            time.sleep(0.01)
        seen["before"] = [call.prompt for call in openai_server.chat_calls]
        seen["journaled"] = journaled_prompts(workspace)
        os.kill(int(pids.read_text().split()[0]), signal.SIGKILL)

    killer = threading.Thread(target=kill_after, args=(6,), daemon=True)
    killer.start()
    result = execute(Recording("What are the items?", each=True), [str(path)], lm_for(openai_server),
                     options=RunOptions(workspace=workspace, concurrency=2, executor="ray", retry=FAST))
    killer.join(5)
    assert result.status == "done", result.reason
    assert len(set(pids.read_text().split())) == 2, "the document ran again in another worker"
    assert result.results[0]["result"]["answer"] == expected_answer(12)
    after = [call.prompt for call in openai_server.chat_calls[len(seen["before"]):]]
    paid_twice = repeats(seen["before"], after, seen["journaled"])
    assert paid_twice.only_in_flight and len(paid_twice.repeated) <= 1, paid_twice
    with Store(workspace) as store:
        step = next(s for s in store.steps(result.run_id) if s.name == "ask")
    assert step.status == "done" and step.replayed >= len(seen["journaled"])
