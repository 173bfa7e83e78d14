"""A real ``rlmpipe summarize`` process, interrupted: Ctrl-C leaves a resumable run; SIGKILL at random
points loses nothing committed, and the resumed run repeats no committed LM call and ends with the
same output as a run that was never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlmpipe.runtime.store import Store
from tests.support.replies import numbered_document, summary_reply

ROOT = Path(__file__).resolve().parents[2]


def command(server, paths, workspace, out, concurrency=4):
    return [sys.executable, "-m", "rlmpipe.cli", "summarize", *map(str, paths), "--lm", "openai/test-model",
            "--api-base", server.base_url, "--workspace", str(workspace), "--chunk-tokens", "30",
            "--concurrency", str(concurrency), "--quiet", "--out", str(out)]


def start(args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def wait_for_steps(workspace: Path, n: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        database = workspace / "runs.sqlite"
        if database.exists():
            try:
                store = Store(workspace)
                runs = store.list_runs()
                if runs and store.step_counts(runs[0]["run_id"]).get("done", 0) >= n:
                    return
            except Exception:
                pass
        time.sleep(0.05)
    raise AssertionError(f"{n} steps were not done within {timeout}s")


def wait_for_calls(server, n: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the server has received ``n`` chat calls (or the process ended)."""
    deadline = time.time() + timeout
    while len(server.chat_calls) < n and process.poll() is None:
        assert time.time() < deadline, f"{n} calls were not made within {timeout}s"
        time.sleep(0.005)


def committed(workspace: Path) -> dict[str, dict]:
    if not (workspace / "runs.sqlite").exists():
        return {}
    store = Store(workspace)
    return {s.step_key: s.result for run in store.list_runs() for s in store.steps(run["run_id"]) if s.status == "done"}


def stored_reply(result: dict) -> str:
    return f"[[ ## summary ## ]]\n{result['summary']}\n\n[[ ## completed ## ]]"


@pytest.fixture
def documents(tmp_path) -> list[Path]:
    paths = []
    for index, size in enumerate((60, 25, 40)):
        path = tmp_path / f"doc{index}.txt"
        path.write_text(numbered_document(size, label=f"Doc {index} paragraph"), encoding="utf-8")
        paths.append(path)
    return paths


def test_ctrl_c_stops_cleanly_and_the_run_resumes(openai_server, documents, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_latency(0.2)
    workspace, out = tmp_path / "ws", tmp_path / "out.jsonl"
    process = start(command(openai_server, documents, workspace, out, concurrency=2))
    wait_for_steps(workspace, 4)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    assert "stopping: nothing new starts" in stderr
    assert "resume with: rlmpipe resume" in stderr and "Traceback" not in stderr
    store = Store(workspace)
    run = store.list_runs()[0]
    assert run["status"] == "stopped" and run["stop_reason"] == "interrupted"
    done = committed(workspace)
    before = len(openai_server.chat_calls)

    openai_server.set_latency(0.0)
    process = start(command(openai_server, documents, workspace, out))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    replies = {summary_reply(call.body) for call in openai_server.chat_calls[before:] if isinstance(call.body, dict)}
    assert not replies & {stored_reply(result) for result in done.values()}
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_and_repeats_nothing(openai_server, documents, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_latency(0.03)
    reference_out = tmp_path / "reference.jsonl"
    first = len(openai_server.chat_calls)
    process = start(command(openai_server, documents, tmp_path / "reference-ws", reference_out))
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    calls = len(openai_server.chat_calls) - first  # what one whole run asks
    reference = reference_out.read_text()
    assert len(reference.splitlines()) == 3

    rng = random.Random(20261126)
    trials, killed_mid_run = 20, 0
    for trial in range(trials):
        workspace, out = tmp_path / f"ws{trial}", tmp_path / f"out{trial}.jsonl"
        started_with = len(openai_server.chat_calls)
        process = start(command(openai_server, documents, workspace, out))
        # a random point of the run's progress (not of the clock: start-up time varies with the load),
        # anywhere within a call's 30 ms
        wait_for_calls(openai_server, started_with + rng.randint(1, calls - 1), process)
        time.sleep(rng.uniform(0.0, 0.03))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        done = committed(workspace)
        killed_mid_run += 0 < len(done) and process.returncode == -signal.SIGKILL
        before = len(openai_server.chat_calls)

        resumed = start(command(openai_server, documents, workspace, out))
        _, stderr = resumed.communicate(timeout=180)
        assert resumed.returncode == 0, f"trial {trial}: {stderr}"
        # a request cut off by the SIGKILL has no body (the server logged it half-read): not an answer
        replies = {summary_reply(call.body) for call in openai_server.chat_calls[before:] if isinstance(call.body, dict)}
        repeated = replies & {stored_reply(result) for result in done.values()}
        assert not repeated, f"trial {trial}: {len(repeated)} committed steps were asked again"
        store = Store(workspace)
        run_id = store.list_runs()[0]["run_id"]
        later = {c["step_key"] for c in store.calls(run_id) if c["session"] > 1}
        assert not later & set(done), f"trial {trial}: the store shows calls for committed steps"
        assert out.read_text() == reference, f"trial {trial}: output differs from the uninterrupted run"
    assert killed_mid_run >= 3 * trials // 4, f"only {killed_mid_run} of {trials} kills landed mid-run"
