"""``runs show`` and ``runs report`` over long runs: memory and time, the code now vs an earlier commit.

    python bench/report_memory.py                    # vs 6dabcff; 25,000 and 100,000 calls; writes RESULTS.md
    python bench/report_memory.py --baseline REV

Until 2026-12-05 the run's tables (``run_tables``, what ``runs show`` prints) and its HTML report read
every LM call and every step of the run into memory at once, so their memory grew with the run
(about 1.4 KB per call, plus each step's stored result). They now stream both from SQLite and keep
only what they show: sums per group, the ten slowest and costliest steps, at most ``MAX_TIMELINE_BARS``
timeline bars, fixed histogram bins; percentiles are read from SQLite's sorted rows.

Both codes run side by side on the same stores (one run, 100 documents, half as many steps as LM
calls, each step with a 600-character result): the earlier commit from a ``git worktree``, each
measurement in a fresh process (seconds, then peak Python allocations by tracemalloc), interleaved.
The bench also checks that both give the same tables and the same page (but for its timestamp).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = (25_000, 100_000)
REPEATS = 2
RUN_ID = "bench"


def fill(workspace: Path, calls: int) -> None:
    from rlmpipe.lm.usage import LMCall
    from rlmpipe.runtime.store import StepRow, Store

    with Store(workspace) as store:
        store.start_run(RUN_ID, "summarize", "fp", "scripted/test-model", {}, 0)
        for doc in range(100):
            store.set_document(RUN_ID, f"doc-{doc}", f"/data/contract-{doc}.txt", "done")
        summary = ("The parties agree that the licensee shall pay the fees set out in Schedule B. " * 8)[:600]
        for step in range(calls // 2):
            started = 1e9 + step * 2
            row = StepRow(step_key=f"step-{step}", run_id=RUN_ID, doc_id=f"doc-{step % 100}", chunk_id=f"c{step}",
                          name="summarize_chunk" if step % 7 else "combine", depth=step % 3,
                          status="failed" if step % 500 == 3 else "done",
                          result=None if step % 500 == 3 else {"summary": summary}, prompt_tokens=1800,
                          completion_tokens=80, cost=2.6e-4, calls=2, attempts=2, reasks=0,
                          error="server: 503" if step % 500 == 3 else None, started=started,
                          finished=started + 0.4 + (step % 13) / 10, worker=f"rlmpipe-step_{step % 8}", extra=None)
            batch = [LMCall(model="scripted/test-model", prompt_tokens=900 + index % 97, completion_tokens=40,
                            cost=None if index % 50 == 0 else 1.3e-4, latency=0.05 + (index % 89) / 100,
                            started=started + (index % 2) * 0.5,
                            outcome="cached" if index % 31 == 0 else ("ok" if index % 20 else "error"),
                            attempt=1 + (index % 20 == 1), run_id=RUN_ID, step_key=row.step_key,
                            step_name=row.name, doc_id=row.doc_id, depth=row.depth, worker=row.worker,
                            call_id=f"c{index - (index % 20 == 1)}",
                            error_type="server" if index % 20 == 0 else None,
                            error="HTTP 503 from the provider" if index % 20 == 0 else None)
                     for index in (2 * step, 2 * step + 1)]
            store.record_calls(batch, 1 + (step * 4 >= calls))  # two sessions
            store.commit_step(row)


def measure(workspace: str, what: str) -> dict:
    """In a fresh process: the time of one command's work, then, run again under tracemalloc (which
    slows allocations down), the peak of its Python allocations."""
    import gc
    import tracemalloc

    from rlmpipe.monitor.metrics import run_tables
    from rlmpipe.monitor.report import render_report
    from rlmpipe.runtime.store import Store

    def work(store: Store) -> str:
        if what == "show":
            tables = run_tables(store, RUN_ID)
            tables.pop("calls", None)  # the earlier code also returned every call; runs show dropped them
            return json.dumps(tables, sort_keys=True, default=str)
        return re.sub(r"Written by rlmpipe on [^<]* from", "", render_report(store, RUN_ID))

    with Store(Path(workspace)) as store:
        store.get_run(RUN_ID)  # the connection is opened outside the measurement
        started = time.perf_counter()
        output = work(store)
        seconds = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; SQLite's memory too
        gc.collect()
        tracemalloc.start()
        work(store)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {"peak_mb": peak / 1e6, "rss_mb": rss, "seconds": seconds, "output": output}


def run_measure(src: Path, workspace: Path, what: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, __file__, "--measure", str(workspace), what], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="6dabcff")
    parser.add_argument("--measure", nargs=2, metavar=("WORKSPACE", "WHAT"))
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    baseline = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                              capture_output=True, text=True).stdout.strip()
    now = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), baseline], check=True,
                       capture_output=True)
        try:
            codes = {f"{baseline} (before)": old / "src", "now": ROOT / "src"}
            for calls in SIZES:
                workspace = Path(folder) / f"ws-{calls}"
                fill(workspace, calls)
                for what in ("show", "report"):
                    results: dict[str, list[dict]] = {name: [] for name in codes}
                    for _ in range(REPEATS):
                        for name, src in codes.items():
                            results[name].append(run_measure(src, workspace, what))
                    outputs = {r["output"] for runs in results.values() for r in runs}
                    assert len(outputs) == 1, f"{what} at {calls:,} calls: the two codes disagree"
                    before = statistics.median(r["seconds"] for r in results[f"{baseline} (before)"])
                    for name, runs in results.items():
                        peak = statistics.median(r["peak_mb"] for r in runs)
                        rss = statistics.median(r["rss_mb"] for r in runs)
                        seconds = statistics.median(r["seconds"] for r in runs)
                        rows.append(f"| {calls:,} | runs {what} | {name} | {peak:.1f} | {rss:.0f} | {seconds:.2f} | "
                                    f"{seconds / before:.2f}x |")
                        print(rows[-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    markdown = (
        "## Run tables and report over long runs: memory\n\n"
        f"- machine: {machine()}\n- command: `python bench/report_memory.py --baseline {baseline}` (at {now})\n\n"
        "`run_tables` (what `runs show` prints) and `render_report` (`runs report`) on the same stores, one "
        "run of 100 documents with half as many steps as LM calls (each step's result 600 characters): "
        f"time, then peak Python allocations (tracemalloc, a second run), each in a fresh process, median of "
        f"{REPEATS} interleaved runs. {baseline} read every call and step of the run at once; now both stream them "
        "from SQLite. Peak RSS is the whole process's (Python, its imports and SQLite, whose sorts spill to "
        "disk), after the timed run. The bench checks that both codes give the same tables and the same page.\n\n"
        "| LM calls | command | code | peak Python MB | peak RSS MB | seconds | time vs before |\n"
        "|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n\n"
        "Streamed, memory stays flat as the run grows; before, it grew by about 2.4 KB per call. The report "
        "reads the calls once per figure (sessions, timeline, latency, failures, error types), which costs "
        "time: compare the last column.\n"
    )
    write_section("report-memory", markdown)


if __name__ == "__main__":
    main()
