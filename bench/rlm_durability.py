"""Durable recursion: what a crash mid-RLM costs, and what the call journal costs.

    python bench/rlm_durability.py                  # all three parts
    python bench/rlm_durability.py kills|cost|replay  # one of them (the kills: about 10 minutes)

Each part writes its own section of bench/RESULTS.md (rlm-kills, rlm-journal-cost, rlm-replay).

1. **Kills.** ``rlmpipe ask`` over one document, with an RLM whose first iteration asks 16 or 64
   sub-questions, one after another or as one ``llm_query_batched``, against the loopback OpenAI
   server (50 ms a sub-call). Each trial SIGKILLs the process at a random moment of the recursion
   (uniform over the time its sub-calls take, from its first answer), then runs the same command again
   to the end. Counted: the sub-calls the server was
   asked again after the kill, and the ones that were in flight at the kill (seen by the server, not
   in the call journal): the target is that the first are among the second. And whether the answer is
   the uninterrupted run's, exactly.
2. **Cost of the journal.** A module making one call per step over 2,000 chunks with an instant
   scripted LM, the journal on and off (the runner without one), interleaved, median of 5: the time
   added per call, and the bytes the journal keeps per call.
3. **Replay.** One RLM step of 64 sequential sub-calls (200 ms each at the server), run live, then run
   again from its journal alone (its step row deleted): wall time of each.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "src"))

from rlmpipe.offline import configure_offline_defaults  # noqa: E402

configure_offline_defaults()

from _results import machine, write_section  # noqa: E402

from tests.support.openai_server import OpenAIServer  # noqa: E402
from tests.support.recursion import expected_answer, journal_size, journaled_prompts, repeats, script  # noqa: E402

QUESTION = "What are the items?"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def ask(server: OpenAIServer, document: Path, workspace: Path) -> list[str]:
    return [sys.executable, "-m", "rlmpipe.cli", "ask", str(document), QUESTION, "--lm", "openai/test-model",
            "--api-base", server.base_url, "--workspace", str(workspace), "--quiet", "--max-iters", "4",
            "--max-llm-calls", "100"]


def kill_trials(shape: str, n: int, trials: int, seed: int) -> dict:
    rng = random.Random(seed)
    outcome = {"shape": shape, "n": n, "trials": 0, "kills_mid_recursion": 0, "repeated": 0, "max_repeated": 0,
               "in_flight": 0, "max_in_flight": 0, "only_in_flight": 0, "answers_identical": 0,
               "journaled_at_kill": []}
    with tempfile.TemporaryDirectory(prefix="rlm-kill-") as folder, OpenAIServer() as server:
        folder = Path(folder)
        script(server, n, shape, sub_latency=0.05)
        document = folder / "doc.txt"
        document.write_text("A supply agreement between two parties. " * 300, encoding="utf-8")
        whole = subprocess.run(ask(server, document, folder / "whole"), capture_output=True, text=True,
                               env=ENV, timeout=600)  # an uninterrupted run: the answer to match
        assert whole.returncode == 0 and whole.stdout.splitlines()[0] == expected_answer(n), whole.stderr
        # how long the recursion's sub-calls take: one after another, or eight at a time (DSPy's pool)
        duration = 0.05 * (n if shape == "sequential" else -(-n // 8)) * 1.2
        for trial in range(trials):
            server.reset()
            script(server, n, shape, sub_latency=0.05)
            workspace = folder / f"ws{trial}"
            at = rng.uniform(0.0, 1.0) * duration
            process = subprocess.Popen(ask(server, document, workspace), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=ENV)
            while journal_size(workspace) < 1 and process.poll() is None:  # the recursion has begun
                time.sleep(0.005)
            time.sleep(at)
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
            before = [call.prompt for call in server.chat_calls]
            kept = journaled_prompts(workspace) if (workspace / "runs.sqlite").exists() else []
            resumed = subprocess.run(ask(server, document, workspace), capture_output=True, text=True, env=ENV,
                                     timeout=600)
            after = [call.prompt for call in server.chat_calls[len(before):]]
            paid = repeats(before, after, kept)
            outcome["trials"] += 1
            outcome["kills_mid_recursion"] += 0 < len(kept) < n + 2
            outcome["journaled_at_kill"].append(len(kept))
            outcome["repeated"] += len(paid.repeated)
            outcome["max_repeated"] = max(outcome["max_repeated"], len(paid.repeated))
            outcome["in_flight"] += len(paid.in_flight)
            outcome["max_in_flight"] = max(outcome["max_in_flight"], len(paid.in_flight))
            outcome["only_in_flight"] += paid.only_in_flight
            outcome["answers_identical"] += (resumed.returncode == 0
                                             and resumed.stdout.splitlines()[:1] == [expected_answer(n)])
            print(f"  {shape} {n}: kill {at:.2f}s into the recursion (~{duration:.2f}s), {len(kept)} journaled, "
                  f"{len(paid.repeated)} asked again, {len(paid.in_flight)} in flight", flush=True)
    return outcome


def journal_cost(steps: int = 2000, rounds: int = 5) -> dict:
    import dspy

    import rlmpipe
    from rlmpipe.runtime import runner
    from tests.support.scripted_lm import ScriptedLM, chat_reply

    class Note(dspy.Module):
        def __init__(self):
            super().__init__()
            self.note = dspy.Predict("text -> note")

        def forward(self, text):
            return self.note(text=text)

    original = runner.Run._journal
    timings: dict[str, list[float]] = {"on": [], "off": []}
    sizes: dict[str, int] = {}
    journal_bytes = 0
    with tempfile.TemporaryDirectory(prefix="rlm-journal-") as folder:
        folder = Path(folder)
        document = folder / "doc.txt"
        document.write_text("\n\n".join(f"Clause {i}. The supplier delivers item {i} on time." for i in range(steps)),
                            encoding="utf-8")
        for round_number in range(rounds):
            for mode in ("on", "off") if round_number % 2 == 0 else ("off", "on"):
                runner.Run._journal = original if mode == "on" else (lambda self, key, doc_id: None)
                lm = ScriptedLM(usage=(120, 6))
                lm.set_default(chat_reply(note="noted"))
                workspace = folder / f"{mode}{round_number}"
                started = time.perf_counter()
                result = rlmpipe.run(Note(), document, lm=lm, workspace=workspace, chunk_tokens=12, concurrency=1,
                                     strategy="fixed")
                timings[mode].append(time.perf_counter() - started)
                assert result.status == "done"
                calls = len(lm.calls)
                sizes[mode] = (workspace / "runs.sqlite").stat().st_size + sum(
                    p.stat().st_size for p in workspace.glob("runs.sqlite-*"))
                if mode == "on":
                    connection = sqlite3.connect(workspace / "runs.sqlite")
                    journal_bytes = connection.execute(
                        "SELECT SUM(LENGTH(outputs) + LENGTH(preview) + LENGTH(request) + LENGTH(step_key) + 80)"
                        " FROM journal").fetchone()[0] / calls
                    connection.close()
        runner.Run._journal = original
    on, off = statistics.median(timings["on"]), statistics.median(timings["off"])
    return {"calls": calls, "on_s": on, "off_s": off, "added_ms": (on - off) / calls * 1000,
            "per_call_on_ms": on / calls * 1000, "per_call_off_ms": off / calls * 1000,
            "journal_bytes": journal_bytes, "db_growth": (sizes["on"] - sizes["off"]) / calls}


def replay_time(n: int = 64) -> dict:
    with tempfile.TemporaryDirectory(prefix="rlm-replay-") as folder, OpenAIServer() as server:
        folder = Path(folder)
        script(server, n, "sequential", sub_latency=0.2)
        document = folder / "doc.txt"
        document.write_text("A supply agreement between two parties. " * 300, encoding="utf-8")
        workspace = folder / "ws"
        started = time.perf_counter()
        live = subprocess.run(ask(server, document, workspace), capture_output=True, text=True, env=ENV, timeout=600)
        live_s = time.perf_counter() - started
        assert live.returncode == 0, live.stderr
        calls = len(server.chat_calls)
        connection = sqlite3.connect(workspace / "runs.sqlite")
        connection.execute("DELETE FROM steps WHERE name = 'ask'")  # as if it had never been stored
        connection.commit()
        connection.close()
        started = time.perf_counter()
        again = subprocess.run(ask(server, document, workspace), capture_output=True, text=True, env=ENV,
                               timeout=600)
        replay_s = time.perf_counter() - started
        assert again.returncode == 0 and again.stdout == live.stdout, again.stderr
        return {"n": n, "live_s": live_s, "replay_s": replay_s, "calls_live": calls,
                "calls_replay": len(server.chat_calls) - calls, "journaled": journal_size(workspace)}


def main(parts: list[str]) -> None:
    def header(title: str, part: str) -> str:
        return (f"## Durable recursion: {title}\n\n{machine()}\n\nCommand: `python bench/rlm_durability.py {part}` "
                "(tests/support/recursion.py holds the scripted RLM programs; the loopback OpenAI server answers).\n")

    sections: dict[str, str] = {}
    if "kills" in parts:
        rows = []
        for index, (shape, n) in enumerate([("sequential", 16), ("batched", 16), ("sequential", 64),
                                            ("batched", 64)]):
            result = kill_trials(shape, n, 10, seed=index)
            rows.append(result)
        sections["rlm-kills"] = header("kill -9 mid-recursion, then the same command again", "kills") + (
            "\n### kill -9 at 10 random moments per program, then the same command again\n\n"
            "Each trial kills `rlmpipe ask` at a uniformly random moment of its recursion (from the first answer "
            "journaled, over the time its sub-calls take), then resumes it. *Asked again*: sub-calls the "
            "server was asked before the kill and again after it. *In flight*: sub-calls the server had been "
            "asked before the kill whose answer was not in the journal (being answered, or answered and not "
            "yet stored). Sub-calls take 50 ms at the server; a batch runs 8 at a time (DSPy's pool).\n\n"
            "| program | sub-calls | trials | killed mid-recursion | answers journaled at the kill | asked again "
            "(total, most in a trial) | in flight at the kill (total, most) | asked again ⊆ in flight | answer "
            "identical to an uninterrupted run |\n|---|---:|---:|---:|---|---:|---:|---:|---:|\n"
            + "".join(f"| {r['shape']} | {r['n']} | {r['trials']} | {r['kills_mid_recursion']} | "
                      f"{', '.join(map(str, sorted(r['journaled_at_kill'])))} | {r['repeated']}, {r['max_repeated']} "
                      f"| {r['in_flight']}, {r['max_in_flight']} | {r['only_in_flight']}/{r['trials']} | "
                      f"{r['answers_identical']}/{r['trials']} |\n" for r in rows))
    if "cost" in parts:
        cost = journal_cost()
        sections["rlm-journal-cost"] = header("what the call journal costs", "cost") + (
            "\n### What the journal costs per call\n\n"
            f"A `dspy.Predict` per chunk over {cost['calls']:,} chunks (one call each), instant scripted LM, one "
            "worker; the same run with the journal on and off, interleaved, median of 5 runs.\n\n"
            "| | journal on | journal off | added by the journal |\n|---|---:|---:|---:|\n"
            f"| run (s) | {cost['on_s']:.2f} | {cost['off_s']:.2f} | {cost['on_s'] - cost['off_s']:+.2f} |\n"
            f"| per call (ms) | {cost['per_call_on_ms']:.3f} | {cost['per_call_off_ms']:.3f} | "
            f"**{cost['added_ms']:+.3f}** |\n"
            f"| store bytes per call | | | {cost['db_growth']:,.0f} (file growth); {cost['journal_bytes']:,.0f} "
            "(the journal's row contents) |\n\n"
            f"Target: under 1 ms per call: **{'met' if cost['added_ms'] < 1 else 'NOT met'}**. The journal writes "
            "each answer, with its call's record, in one SQLite transaction before the program sees it.\n")
    if "replay" in parts:
        replay = replay_time()
        sections["rlm-replay"] = header("replaying a step from its journal", "replay") + (
            "\n### Replaying a 64-call step\n\n"
            f"One RLM step whose first iteration asks {replay['n']} sub-questions one after another, 200 ms each at "
            "the server; then the same step run again from its journal alone (its stored result deleted, the "
            "journal kept): the model's code runs again in a fresh sandbox against the journaled answers.\n\n"
            "| | wall time (s) | calls sent to the server |\n|---|---:|---:|\n"
            f"| live | {replay['live_s']:.1f} | {replay['calls_live']} |\n"
            f"| replayed from the journal | {replay['replay_s']:.1f} | {replay['calls_replay']} |\n\n"
            f"Both include starting the `rlmpipe` process and the sandbox (Deno + Pyodide, about 3 s). "
            f"{replay['journaled']} answers were journaled.\n")
    for name, markdown in sections.items():
        write_section(name, markdown.rstrip() + "\n")
        print(markdown)


if __name__ == "__main__":
    main(sys.argv[1:] or ["kills", "cost", "replay"])
