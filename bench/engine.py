"""Run-engine benchmarks: throughput against a 200 ms loopback model, per-step overhead, and peak
memory summarizing 10 MB .. 1 GB with an instant model.

    python bench/engine.py            # full run (about 25-40 min on 2 shared cores), writes bench/RESULTS.md
    python bench/engine.py --quick    # smoke test (about 5 min): N=40 calls, K=200 steps, 1 MB and 10 MB

One section of bench/RESULTS.md: ``engine`` (``engine-quick`` for --quick, so a smoke test never
replaces the real numbers). The machine is shared and noisy: every comparison below is made side
by side in one run (interleaved repetitions, medians) and reported as a ratio; absolute seconds
are only context.

1. **Throughput vs workers.** N=200 independent LM calls, one per chunk of
   ``numbered_document(200)`` (``ChunkingConfig("structure", chunk_tokens=32)``: exactly 200 chunks;
   note that ``chunk_tokens=30`` gives 220, because 20 of the paragraphs are 31 tokens with their
   separator), each answered by the loopback ``OpenAIServer`` after 200 ms, through the real client
   path (``make_lm(ModelChoice("openai/test-model", ...))`` -> dspy.LM -> HTTP). Runners: the
   engine (``execute`` of a map-only pipeline: exactly N calls, no merge) at 1/4/16/64 workers; the
   summarize pipeline at 16/64 workers with a merge budget so large that its tree reduce makes a
   single merge call at the end (counted separately: its ideal time includes that one extra 200 ms
   call); the seed's sequential loop (a for-loop of the same ``dspy.Predict``); and
   ``dspy.Parallel`` at 4/16/64 threads. Ideal wall time = ceil(N / workers) x 0.2 s.
   The server runs in its own process (it is someone else's machine in real life, and in-process
   its handler threads would compete with the client for the GIL) with TCP_NODELAY on its sockets:
   as shipped, ``tests/support/openai_server.py`` writes the response head and body in two
   ``send()`` calls without TCP_NODELAY, so every request on a reused keep-alive connection waits
   for the client's delayed ACK (~40 ms on Linux). A small table shows both server variants.
2. **Engine overhead per step, checkpoint included.** K steps through ``Run.step`` (one durable
   SQLite transaction each, plus the event log) against an instant ScriptedLM, vs the same
   ``dspy.Predict`` calls in a plain loop with the same LM; and ``RecordingLM(ScriptedLM)`` vs the
   ScriptedLM alone (the recorder's own cost per call).
3. **Peak RSS summarizing 10 MB, 100 MB and 1 GB** (CUAD contracts repeated) with an instant
   scripted LM, chunks of 1024 tokens, 8 workers, each size in a fresh subprocess; VmHWM from
   /proc/self/status. The scripted LM's own request log is bounded here (ScriptedLM keeps every
   request it answered, by design, which at 250k calls would be the test double's memory, not
   rlmpipe's). Then what any growth is made of: the same runs with glibc's mmap threshold pinned,
   and with DSPy's trace and histories kept (``RunOptions(dspy_history=True)``), at the two
   smaller sizes; and tracemalloc snapshots at the end of a small and a larger run, compared.

The header of the section says whether the code measured changed while the benchmark ran (other
people commit here all the time): if it did, rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
WORK = CACHE / "engine"
CUAD = Path(os.environ.get("RLMPIPE_CUAD_DIR", "/work/shared/data/cuad")) / "contracts"
MB = 1e6
LATENCY = 0.2
MEASURED = ("src/rlmpipe/runtime", "src/rlmpipe/patterns", "src/rlmpipe/chunking", "src/rlmpipe/ingest",
            "src/rlmpipe/apps/summarize.py", "src/rlmpipe/lm/recording.py", "src/rlmpipe/lm/usage.py",
            "src/rlmpipe/lm/models.py", "src/rlmpipe/lm/context.py", "src/rlmpipe/lm/errors.py",
            "src/rlmpipe/lm/limits.py", "tests/support/openai_server.py", "tests/support/scripted_lm.py")
for _path in (str(REPO), str(BENCH)):  # tests.support.* (the loopback server, the scripted LM) and _results
    if _path not in sys.path:
        sys.path.insert(0, _path)

from rlmpipe.offline import configure_offline_defaults  # noqa: E402

configure_offline_defaults()  # first: offline defaults for litellm/tiktoken
from _results import cpu_model  # noqa: E402

# --------------------------------------------------------------------------------------------
# environment


def proc_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MB (10^6 bytes)."""
    found = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                found[key] = int(value.split()[0]) * 1024 / MB
    return found


def git_revision() -> str:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True).stdout.strip()
        return commit + (" + uncommitted changes under src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def src_state() -> str:
    """A short hash of the code measured here (whatever git says: the files' bytes)."""
    import hashlib

    digest = hashlib.sha256()
    for folder in MEASURED:
        for path in sorted((REPO / folder).rglob("*.py")) if (REPO / folder).is_dir() else [REPO / folder]:
            with contextlib.suppress(OSError):
                digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def machine() -> str:
    import dspy

    import rlmpipe

    cpu = cpu_model()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, Python {platform.python_version()}, "
            f"dspy {dspy.__version__}, rlmpipe {rlmpipe.__version__} at {git_revision()}, "
            f"{platform.system()} {platform.release()}")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def say(*parts) -> None:
    print(*parts, flush=True)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bounded_call_log(lm, size: int = 8) -> None:
    """ScriptedLM keeps every request it answered (tests read them); bound that log here."""
    script = getattr(lm, "script", None)
    if script is not None and isinstance(getattr(script, "_calls", None), list):
        script._calls = deque(maxlen=size)


# --------------------------------------------------------------------------------------------
# 1. throughput vs workers


class ServerProcess:
    """``tests.support.openai_server.OpenAIServer`` in a child process (``--serve``), answering
    every chat request with ``summary_reply`` after ``latency`` seconds. ``count()`` asks it how
    many chat requests it has received."""

    def __init__(self, latency: float, nodelay: bool = True):
        args = [sys.executable, str(Path(__file__).resolve()), "--serve", str(latency)]
        if not nodelay:
            args.append("--as-shipped")
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError(f"server did not start: {self.base_url!r}")

    def count(self) -> int:
        self.process.stdin.write("count\n")
        return int(self.process.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class InProcessServer:
    def __init__(self, latency: float, nodelay: bool = True):
        self.server = make_server(latency, nodelay)
        self.base_url = self.server.base_url

    def count(self) -> int:
        return len(self.server.chat_calls)

    def close(self) -> None:
        self.server.stop()


def make_server(latency: float, nodelay: bool):
    from tests.support import openai_server
    from tests.support.replies import summary_reply

    class NoDelayHTTPServer(openai_server._HTTPServer):
        def process_request(self, request, client_address):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().process_request(request, client_address)

    server = openai_server.OpenAIServer(latency=latency, default_reply=summary_reply)
    if nodelay:  # the same server, its sockets sending small writes at once (as real servers do)
        server._httpd = NoDelayHTTPServer(server, (server.host, 0))
        server._thread = threading.Thread(target=server._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                          daemon=True, name="openai-server")
        server._thread.start()
    else:
        server.start()
    return server


def serve_main(latency: float, nodelay: bool) -> None:
    server = make_server(latency, nodelay)
    print(server.base_url, flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(len(server.chat_calls), flush=True)
    server.stop()


def map_pipeline(chunking):
    import dspy

    from rlmpipe.apps.summarize import SummarizeExcerpt
    from rlmpipe.chunking import chunk_document
    from rlmpipe.patterns import map_chunks

    class MapPipeline:
        """The summarize pipeline's map step alone: one LM call per chunk, nothing else."""

        name = "bench-map"

        def __init__(self):
            self.summarize = dspy.Predict(SummarizeExcerpt)

        def config(self) -> dict:
            return {"chunking": chunking.key()}

        def programs(self) -> dict:
            return {"summarize": self.summarize}

        def process(self, run, document) -> dict:
            count = 0
            for _chunk, _key, _result in map_chunks(
                run, document.doc_id, chunk_document(document, chunking), "summarize",
                lambda chunk: {"summary": self.summarize(excerpt=chunk.text).summary},
            ):
                count += 1
            return {"chunks": count}

    return MapPipeline()


class ThroughputBench:
    def __init__(self, n: int, server, workdir: Path):
        import dspy

        from rlmpipe.apps.summarize import SummarizeExcerpt
        from rlmpipe.chunking import ChunkingConfig, chunk_text
        from rlmpipe.lm.models import ModelChoice, make_lm
        from tests.support.replies import numbered_document

        self.n, self.server, self.workdir = n, server, workdir
        self.chunking = ChunkingConfig(strategy="structure", chunk_tokens=32)
        self.document = workdir / f"numbered-{n}.txt"
        self.document.write_text(numbered_document(n), encoding="utf-8")
        self.chunks = [c.text for c in chunk_text(self.document.read_text(encoding="utf-8"), self.chunking)]
        if len(self.chunks) != n:
            raise SystemExit(f"numbered_document({n}) gave {len(self.chunks)} chunks, not {n}")
        self.lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url), timeout=60.0)
        self.predict = dspy.Predict(SummarizeExcerpt)
        self.runs = 0

    def _workspace(self) -> Path:
        self.runs += 1
        return self.workdir / f"ws-{self.runs}"  # fresh: nothing of an earlier run can be reused

    def engine(self, workers: int, pipeline: str = "map") -> tuple[float, int, dict]:
        from rlmpipe.apps.summarize import SummarizePipeline
        from rlmpipe.runtime.runner import RunOptions, execute

        program = (map_pipeline(self.chunking) if pipeline == "map"
                   else SummarizePipeline(self.chunking, merge_input_tokens=10**9))
        workspace = self._workspace()
        before = self.server.count()
        cpu, started = time.process_time(), time.perf_counter()
        summary = execute(program, [str(self.document)], self.lm,
                          options=RunOptions(workspace=workspace, concurrency=workers))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        calls = self.server.count() - before
        shutil.rmtree(workspace, ignore_errors=True)
        if summary.status != "done":
            raise RuntimeError(f"engine run {summary.status}: {summary.reason}")
        result = summary.results[0]["result"]
        if result["chunks"] != self.n:
            raise RuntimeError(f"engine saw {result['chunks']} chunks, not {self.n}")
        return wall, calls, cpu, result

    def sequential(self) -> tuple[float, int]:
        import dspy

        before = self.server.count()
        cpu, started = time.process_time(), time.perf_counter()
        with dspy.context(lm=self.lm):
            outputs = [self.predict(excerpt=text).summary for text in self.chunks]
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert all(outputs)
        return wall, self.server.count() - before, cpu

    def parallel(self, threads: int) -> tuple[float, int]:
        import dspy

        before = self.server.count()
        cpu, started = time.process_time(), time.perf_counter()
        with dspy.context(lm=self.lm):
            outputs = dspy.Parallel(num_threads=threads, disable_progress_bar=True, max_errors=0)(
                [(self.predict, {"excerpt": text}) for text in self.chunks])
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        if not all(output is not None and output.summary for output in outputs):
            raise RuntimeError("dspy.Parallel lost results")
        return wall, self.server.count() - before, cpu


def ideal_seconds(n: int, workers: int, extra_serial_calls: int = 0) -> float:
    return (math.ceil(n / workers) + extra_serial_calls) * LATENCY


def bench_throughput(quick: bool) -> tuple[str, dict]:
    n = 40 if quick else 200
    worker_counts = (1, 4, 16, 64)
    thread_counts = (4, 16, 64)
    repetitions = 1 if quick else 3
    workdir = Path(tempfile.mkdtemp(prefix="throughput-", dir=WORK))
    server = ServerProcess(LATENCY)
    say(f"\n== 1. throughput: N={n} calls, {LATENCY * 1000:.0f} ms each, server pid {server.process.pid}")
    results: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    calls: dict[str, int] = {}
    merges: dict[str, int] = {}
    try:
        bench = ThroughputBench(n, server, workdir)
        # warm-up, not counted: first run of the process (connections, lazy imports in the step path)
        cold, cold_calls, _, _ = bench.engine(16)
        say(f"   cold start: first engine run at 16 workers {cold:.2f} s ({cold_calls} calls)")
        bench.parallel(16)
        plan: list[tuple[str, callable]] = []
        for workers in worker_counts:
            plan.append((f"engine:{workers}", lambda w=workers: bench.engine(w)))
        for workers in (16, 64):
            plan.append((f"summarize:{workers}", lambda w=workers: bench.engine(w, "summarize")))
        plan.append(("seq:1", bench.sequential))
        for threads in thread_counts:
            plan.append((f"parallel:{threads}", lambda t=threads: bench.parallel(t)))
        for repetition in range(repetitions):
            for label, run in plan:
                outcome = run()
                wall, count, cpu = outcome[0], outcome[1], outcome[2]
                results.setdefault(label, []).append(wall)
                cpus.setdefault(label, []).append(cpu / count)
                calls[label] = count
                if len(outcome) > 3:
                    merges[label] = outcome[3].get("merges", 0)
                say(f"   {label:14s} rep {repetition + 1}: {wall:7.3f} s, {count} calls, client CPU "
                    f"{cpu / count * 1e3:.2f} ms/call   (load {load()})")
        # the server as shipped (no TCP_NODELAY), and in-process, at 16 workers
        variants = {}
        for name, factory in (("own process, TCP_NODELAY (the tables above)", None),
                              ("own process, as shipped (no TCP_NODELAY)", lambda: ServerProcess(LATENCY, False)),
                              ("in the client's process, TCP_NODELAY", lambda: InProcessServer(LATENCY, True))):
            other = factory() if factory else None
            try:
                variant = ThroughputBench(n, other, workdir) if other else bench
                variant.parallel(16)  # warm the connections
                engine_wall = statistics.median(variant.engine(16)[0] for _ in range(repetitions))
                parallel_wall = statistics.median(variant.parallel(16)[0] for _ in range(repetitions))
                variants[name] = (engine_wall, parallel_wall)
                say(f"   server {name}: engine {engine_wall:.3f} s, dspy.Parallel {parallel_wall:.3f} s")
            finally:
                if other is not None:
                    other.close()
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    target = None
    order = ([("seq:1", "seed's sequential loop (for-loop of dspy.Predict)", 1, 0)]
             + [(f"parallel:{t}", "dspy.Parallel", t, 0) for t in thread_counts]
             + [(f"engine:{w}", "rlmpipe engine, map only", w, 0) for w in worker_counts]
             + [(f"summarize:{w}", "rlmpipe engine, SummarizePipeline (map + 1 merge)", w, 1) for w in (16, 64)])
    for label, name, workers, serial in order:
        wall = statistics.median(results[label])
        ideal = ideal_seconds(n, workers, serial)
        count = calls[label]
        percent = 100 * ideal / wall
        extra = f" ({n} map + {merges[label]} merge)" if label.startswith("summarize") else ""
        rows.append([name, workers, f"{count}{extra}", len(results[label]), f"{wall:.3f}", f"{count / wall:.1f}",
                     f"{ideal:.1f}", f"{percent:.0f}%", f"{statistics.median(cpus[label]) * 1e3:.2f}"])
        if label == "engine:16":
            target = percent
    by_workers = []
    for workers in thread_counts:
        engine_wall = statistics.median(results[f"engine:{workers}"])
        parallel_wall = statistics.median(results[f"parallel:{workers}"])
        by_workers.append([workers, f"{parallel_wall / engine_wall:.2f}x"])
    seq_vs_engine1 = statistics.median(results["seq:1"]) / statistics.median(results["engine:1"])
    verdict = "PASS" if target is not None and target >= 85 else "FAIL"
    variant_rows = [[name, f"{e:.3f}", f"{100 * ideal_seconds(n, 16) / e:.0f}%", f"{p:.3f}",
                     f"{100 * ideal_seconds(n, 16) / p:.0f}%"] for name, (e, p) in variants.items()]
    text = (
        f"### 1. Throughput vs workers (N={n} calls, {LATENCY * 1000:.0f} ms each)\n\n"
        + markdown_table(["runner", "workers", "LM calls", "runs", "wall s (median)", "calls/s", "ideal s",
                          "% of ideal", "client CPU ms/call"], rows)
        + f"\n\nIdeal = ceil(N / workers) x {LATENCY} s (+ {LATENCY} s for the summarize pipeline's one merge, "
        "which can only start after the last map call). Engine runs use `execute()` end to end (store, "
        "fingerprint, document hashing, chunking, checkpoints, event log) with a fresh workspace each. "
        f"The first engine run of the process (16 workers, {cold:.2f} s) is a warm-up and not counted (the "
        "tokenizer and litellm were already loaded by the set-up's `chunk_text` and `make_lm`). \"Client CPU ms/call\": CPU time of the benchmark "
        "process (all its threads; the server is another process) per LM call: on 2 cores, with one GIL, "
        "1000 / that is about the most calls per second the client can drive, whatever the width.\n\n"
        f"Engine vs dspy.Parallel at the same width (dspy.Parallel wall / engine wall): "
        + ", ".join(f"{w} workers {r}" for w, r in by_workers)
        + f"; engine at 1 worker vs the seed's loop: {seq_vs_engine1:.2f}x.\n\n"
        f"**Target >= 85% of ideal at 16 workers: {verdict}** (rlmpipe engine, map only: {target:.0f}%).\n\n"
        "Server variants at 16 workers (same client, median of "
        f"{repetitions}):\n\n"
        + markdown_table(["loopback server", "engine wall s", "engine % of ideal", "dspy.Parallel wall s",
                          "dspy.Parallel % of ideal"], variant_rows)
    )
    return text, {"target_percent": target, "verdict": verdict}


# --------------------------------------------------------------------------------------------
# 2. overhead per step and per LM call


def overhead_breakdown(k: int) -> list[list]:
    """The pieces of a step's bookkeeping, each timed alone k times on one thread (microseconds)."""
    from rlmpipe.lm.usage import LMCall, UsageRecorder
    from rlmpipe.runtime.eventlog import EventLogWriter
    from rlmpipe.runtime.events import EventBus, StepDone
    from rlmpipe.runtime.fingerprint import step_key
    from rlmpipe.runtime.runner import StepRow
    from rlmpipe.runtime.store import Store

    workdir = Path(tempfile.mkdtemp(prefix="breakdown-", dir=WORK))
    store = Store(workdir)
    bus = EventBus()
    log = EventLogWriter(workdir)
    bus.subscribe(log)
    recorder = UsageRecorder()
    now = time.time()

    def call(i: int) -> LMCall:
        return LMCall(model="scripted/test-model", prompt_tokens=120, completion_tokens=6, cost=None, latency=0.001,
                      started=now, outcome="ok", run_id="run", step_key=f"key-{i}", step_name="summarize",
                      doc_id="doc", worker="rlmpipe-step_0", call_id=f"{i:016x}")

    def row(i: int) -> StepRow:
        return StepRow(step_key=f"key-{i}", run_id="run", doc_id="doc", chunk_id=str(i), name="summarize", depth=0,
                       status="done", result={"summary": "s"}, prompt_tokens=120, completion_tokens=6, cost=None,
                       calls=1, attempts=1, reasks=0, error=None, started=now, finished=now, worker="w", extra=None)

    pieces = [
        ("step key: `step_key()` (JSON + SHA-256)", lambda i: step_key("f" * 32, "doc", f"chunk-{i}", "summarize")),
        ("resume lookup: `Store.done_step()` (a miss)", lambda i: store.done_step(f"absent-{i}")),
        ("checkpoint: `Store.record_calls()` then `Store.commit_step()` (1 call row, then 1 step row: two "
         "transactions, as a step of one call is stored since the call journal)",
         lambda i: (store.record_calls([call(i)], 1), store.commit_step(row(i)))),
        ("one event to events.jsonl (`EventBus.emit` + `EventLogWriter`, 3 per step)",
         lambda i: bus.emit(StepDone(run_id="run", step_key=f"key-{i}", name="summarize", doc_id="doc",
                                     chunk_id=str(i), depth=0, prompt_tokens=120, completion_tokens=6, cost=None,
                                     seconds=0.001, worker="w"))),
        ("`LMCall.to_dict()` for the lm_call event (`dataclasses.asdict`)", lambda i: call(i).to_dict()),
        ("`UsageRecorder.record()` (no listeners)", lambda i: recorder.record(call(i))),
    ]
    rows = []
    for name, piece in pieces:
        for i in range(min(50, k)):  # warm
            piece(-i - 1)
        started = time.perf_counter()
        for i in range(k):
            piece(i)
        rows.append([name, f"{(time.perf_counter() - started) / k * 1e6:.0f}"])
    log.close()
    store.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return rows


def bench_overhead(quick: bool) -> tuple[str, dict]:
    import dspy

    from rlmpipe.apps.summarize import SummarizeExcerpt
    from rlmpipe.lm.recording import RecordingLM
    from rlmpipe.lm.usage import UsageRecorder, price
    from rlmpipe.runtime.runner import RunOptions, execute
    from tests.support.scripted_lm import ScriptedLM, chat_reply

    k = 200 if quick else 2000
    repetitions = 3 if quick else 5
    say(f"\n== 2. overhead: K={k} steps, {repetitions} interleaved repetitions")
    workdir = Path(tempfile.mkdtemp(prefix="overhead-", dir=WORK))
    lm = ScriptedLM(default=chat_reply(summary="s"))
    bounded_call_log(lm)
    predict = dspy.Predict(SummarizeExcerpt)
    texts = [f"Clause {i}. The supplier shall deliver {i} units by day {i % 28 + 1}; late units cost "
             f"{i % 7 + 1}% each." for i in range(k)]
    document = workdir / "doc.txt"
    document.write_text("one document; the steps below are the pipeline's own\n", encoding="utf-8")
    price(lm.model, 1, 1)  # litellm's import (once per process) is not a per-call cost

    class StepPipeline:
        name = "bench-steps"
        inner = 0.0

        def config(self) -> dict:
            return {"k": k}

        def programs(self) -> dict:
            return {"summarize": predict}

        def process(self, run, doc) -> dict:
            started = time.perf_counter()
            for index, text in enumerate(texts):
                run.step("summarize", lambda text=text: {"summary": predict(excerpt=text).summary},
                         doc_id=doc.doc_id, chunk_id=str(index))
            self.inner = time.perf_counter() - started
            return {"steps": k}

    gc_time = [0.0, 0.0, 0]  # seconds in the collector, start of the current collection, full collections

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_time[1] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - gc_time[1]
            gc_time[2] += info["generation"] == 2

    def timed(run) -> tuple[float, float, int]:
        """(seconds, seconds of it in Python's cyclic garbage collector, full collections)"""
        gc_time[0], gc_time[2] = 0.0, 0
        started = time.perf_counter()
        run()
        return time.perf_counter() - started, gc_time[0], gc_time[2]

    def plain(model, lists_off: bool = False) -> None:
        quiet = {"trace": None, "disable_history": True} if lists_off else {}
        with dspy.context(lm=model, **quiet):
            for text in texts:
                predict(excerpt=text).summary  # noqa: B018

    counter = [0]
    inner_seconds = [0.0]

    def engine() -> None:
        counter[0] += 1
        pipeline = StepPipeline()
        workspace = workdir / f"ws-{counter[0]}"
        summary = execute(pipeline, [str(document)], lm, options=RunOptions(workspace=workspace, concurrency=1))
        shutil.rmtree(workspace, ignore_errors=True)
        if summary.status != "done" or summary.steps.get("done") != k:
            raise RuntimeError(f"step run {summary.status}: {summary.steps}")
        inner_seconds[0] = pipeline.inner

    recorded = RecordingLM(lm, UsageRecorder())
    loops = {  # name: (what, how)
        "plain": ("plain loop: `dspy.Predict` with the ScriptedLM (DSPy's defaults)", lambda: plain(lm)),
        "plain-quiet": ("the same, DSPy's trace and LM history off (as `Run.step` runs them)",
                        lambda: plain(lm, True)),
        "recorded": ("plain loop with `RecordingLM(ScriptedLM)` (DSPy's defaults)", lambda: plain(recorded)),
        "recorded-quiet": ("the same, DSPy's trace and LM history off", lambda: plain(recorded, True)),
        "engine": ("`Run.step` per call (SQLite commit + event log), concurrency 1", engine),
    }
    for _name, (_what, run) in loops.items():  # warm-up
        run()
    samples: dict[str, list[float]] = {name: [] for name in [*loops, "execute"]}
    in_gc: dict[str, list[float]] = {name: [] for name in loops}
    full: dict[str, int] = {name: 0 for name in loops}
    gc.callbacks.append(on_gc)
    try:
        for repetition in range(repetitions):
            for name, (_what, run) in loops.items():
                seconds, collecting, collections = timed(run)
                if name == "engine":
                    samples["execute"].append(seconds / k)
                    seconds = inner_seconds[0]
                samples[name].append(seconds / k)
                in_gc[name].append(collecting / k)
                full[name] += collections
            say(f"   rep {repetition + 1}: " + ", ".join(
                f"{name} {samples[name][-1] * 1e3:.3f} ms (GC {in_gc[name][-1] * 1e3:.3f})" for name in loops)
                + f" per call   (load {load()})")
    finally:
        gc.callbacks.remove(on_gc)
    shutil.rmtree(workdir, ignore_errors=True)
    pieces = overhead_breakdown(k)

    med = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    gc_med = {name: statistics.median(values) * 1e3 for name, values in in_gc.items()}

    def over(name: str, base: str) -> tuple[float, float, float]:
        """(difference of medians, median of paired differences, the same without GC time), ms"""
        paired = statistics.median((x - y) * 1e3 for x, y in zip(samples[name], samples[base]))
        no_gc = statistics.median(((x - gx) - (y - gy)) * 1e3 for x, gx, y, gy in
                                  zip(samples[name], in_gc[name], samples[base], in_gc[base]))
        return med[name] - med[base], paired, no_gc

    step_overhead, _, _ = over("engine", "plain")
    recorder_overhead, _, _ = over("recorded", "plain")
    step_verdict = "PASS" if step_overhead < 2.0 else "FAIL"
    recorder_verdict = "PASS" if recorder_overhead < 0.5 else "FAIL"
    baseline = {"plain": None, "plain-quiet": None, "recorded": "plain", "recorded-quiet": "plain-quiet",
                "engine": "plain"}
    rows = []
    for name, (what, _run) in loops.items():
        cells = [f"`{name}`: {what}", f"{med[name]:.3f}", f"{gc_med[name]:.3f}", f"{full[name]}"]
        bases = [baseline[name]] + (["plain-quiet"] if name == "engine" else [])
        for base in bases:
            if base is None:
                rows.append(cells + ["-", "-", "-", "-"])
                continue
            difference, paired, no_gc = over(name, base)
            rows.append((cells if base == bases[0] else ["", "", "", ""])
                        + [f"`{base}`", f"{difference:.3f}", f"{paired:.3f}", f"{no_gc:.3f}"])
    rows.append(["whole `execute()` / K (adds run set-up and finish)", f"{med['execute']:.3f}", "", "", "`plain`",
                 f"{med['execute'] - med['plain']:.3f}", "-", "-"])
    text = (
        f"### 2. Engine overhead per step (K={k} steps, instant ScriptedLM, median of {repetitions} interleaved runs)\n\n"
        + markdown_table(["loop", "ms per call", "of which in the GC", f"full GCs ({repetitions} runs)",
                          "compared with", "overhead ms (median difference)", "overhead ms (median of paired "
                          "differences)", "overhead ms without GC time"], rows)
        + f"\n\n**Target < 2 ms engine overhead per step: {step_verdict}** ({step_overhead:.3f} ms). "
        f"**Target < 0.5 ms recorder overhead per LM call: {recorder_verdict}** ({recorder_overhead:.3f} ms). "
        "Both verdicts compare with the plain loop under DSPy's defaults (what the seed's loop runs); the rows "
        "against `plain-quiet` compare like with like.\n\n"
        "GC: time in Python's cyclic garbage collector (`gc.callbacks`) during each loop. Every RecordingLM "
        "call leaves a reference cycle behind (the `tenacity.Retrying` it builds per call: ~15 objects), so "
        "young collections run often and now and then a full one, whose cost is proportional to everything "
        "alive: with DSPy's defaults that is mostly DSPy's own module-level lists (`dspy.settings.trace`, "
        "`GLOBAL_HISTORY`, each LM's and module's `history`, up to 10,000 entries each, full after the first "
        "10,000 calls of the process), a few hundred ms per full collection.\n\n"
        "Each step is one `BEGIN IMMEDIATE ... COMMIT` (WAL, `synchronous=NORMAL`: durable across a process "
        "crash, not across power loss) holding the step row and its LM-call rows, preceded by a lookup of "
        "the step key, plus three events (step_start, lm_call, step_done) appended to the run's events.jsonl "
        "(flushed at every event, so `runs watch` can follow it).\n\n"
        f"Where the bookkeeping goes: each piece alone, {k} times on one thread:\n\n"
        + markdown_table(["piece", "µs each"], pieces)
    )
    return text, {"step_overhead_ms": step_overhead, "recorder_overhead_ms": recorder_overhead,
                  "verdicts": (step_verdict, recorder_verdict)}


# --------------------------------------------------------------------------------------------
# 3. peak RSS vs document size


def make_text(size_bytes: int, path: Path) -> Path:
    """CUAD contracts, in name order, each followed by a blank line, repeated until >= size_bytes
    (whole contracts: the file is valid UTF-8 and the same bytes every time)."""
    if path.exists() and path.stat().st_size >= size_bytes:
        return path
    files = sorted(CUAD.glob("*.txt"))
    if not files:
        raise SystemExit(f"no CUAD contracts under {CUAD} (set RLMPIPE_CUAD_DIR)")
    texts = [f.read_bytes().rstrip(b"\n") + b"\n\n" for f in files]
    partial = path.with_suffix(".partial")
    written = 0
    with open(partial, "wb") as out:
        while written < size_bytes:
            for text in texts:
                out.write(text)
                written += len(text)
                if written >= size_bytes:
                    break
    partial.rename(path)
    return path


VARIANTS = {
    "default": "as a user runs it (`RunOptions()`; since 2d806b1 steps run with DSPy's trace and LM history off)",
    "pinned-malloc": "`MALLOC_MMAP_THRESHOLD_=131072` in the environment (glibc's dynamic mmap threshold off)",
    "dspy-history": "`RunOptions(dspy_history=True)`: DSPy's trace and histories kept during steps "
                    "(DSPy's defaults; what every run did before 2d806b1)",
}


def malloc_stats() -> dict[str, float]:
    """glibc's view of the C heap (all arenas): bytes in use vs free but kept from the OS, in MB."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Mallinfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"malloc_in_use": (info.uordblks + info.hblkhd) / MB, "malloc_free_kept": info.fordblks / MB}


def memory_child(path: str, workspace: str, variant: str, snapshot: str | None) -> None:
    """One summarize run in this (fresh) process; prints one JSON line."""
    started = time.perf_counter()
    if snapshot:
        import tracemalloc

        tracemalloc.start(1)

    from rlmpipe.apps.summarize import SummarizePipeline
    from rlmpipe.chunking import ChunkingConfig
    from rlmpipe.runtime.events import EventBus
    from rlmpipe.runtime.runner import RunOptions, execute
    from tests.support.scripted_lm import ScriptedLM, chat_reply

    options = {}
    if variant == "dspy-history" and "dspy_history" in RunOptions.__dataclass_fields__:
        options["dspy_history"] = True
    after_imports = proc_status()
    lm = ScriptedLM(default=chat_reply(summary="s"))
    bounded_call_log(lm)
    marks: list[tuple[int, float, float]] = []  # (steps done, seconds, VmRSS MB) every 250 steps
    done = [0]
    lock = threading.Lock()

    def on_event(event: dict) -> None:
        if event["type"] == "step_done":
            with lock:
                done[0] += 1
                if done[0] % 250 == 0:
                    marks.append((done[0], time.perf_counter() - started, proc_status()["VmRSS"]))

    bus = EventBus()
    bus.subscribe(on_event)
    summary = execute(SummarizePipeline(ChunkingConfig(strategy="structure", chunk_tokens=1024)), [path], lm,
                      options=RunOptions(workspace=Path(workspace), concurrency=8, **options), events=bus)
    wall = time.perf_counter() - started
    end = proc_status()
    heap = malloc_stats()
    if snapshot:
        import gc

        gc.collect()  # only what is still reachable (some per-call objects die in reference cycles)
        tracemalloc.take_snapshot().dump(snapshot)  # DSPy's module-level lists are still alive here
    result = summary.results[0]["result"] if summary.results else {}
    print(json.dumps({
        "status": summary.status, "reason": summary.reason, "chunks": result.get("chunks"),
        "merges": result.get("merges"), "steps": summary.steps, "wall": wall,
        "rss_after_imports": after_imports["VmRSS"], "hwm": end["VmHWM"], "rss_end": end["VmRSS"],
        "marks": marks, **heap,
    }), flush=True)


def run_memory_child(path: Path, variant: str = "default", snapshot: Path | None = None) -> dict:
    workspace = Path(tempfile.mkdtemp(prefix="memory-ws-", dir=WORK))
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if variant.startswith("pinned-malloc"):
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    args = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(path), str(workspace), variant]
    if snapshot is not None:
        args += ["--snapshot", str(snapshot)]
    try:
        completed = subprocess.run(args, capture_output=True, text=True, cwd=str(REPO), env=env)
    finally:
        store_bytes = sum(f.stat().st_size for f in workspace.rglob("*") if f.is_file())
        shutil.rmtree(workspace, ignore_errors=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"memory child failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    record = json.loads(lines[-1])
    if record["status"] != "done":
        raise RuntimeError(f"memory child run {record['status']}: {record['reason']}")
    record["store_bytes"] = store_bytes
    record["bytes"] = path.stat().st_size
    return record


def growth_per_10k_steps(marks: list, skip_steps: int = 0) -> float | None:
    """Least-squares slope of VmRSS (MB) over steps done, per 10,000 steps, from ``skip_steps`` on."""
    points = [(s, r) for s, _t, r in marks if s > skip_steps]
    if len(points) < 3:
        return None
    mean_s = statistics.fmean(s for s, _ in points)
    mean_r = statistics.fmean(r for _, r in points)
    var = sum((s - mean_s) ** 2 for s, _ in points)
    return 1e4 * sum((s - mean_s) * (r - mean_r) for s, r in points) / var if var else None


def steady_rate(record: dict) -> float | None:
    """MB/s after the first 20% of steps (leaves out start-up: imports, tokenizer, first checkpoint)."""
    marks = record["marks"]
    total = record["steps"].get("done", 0)
    if len(marks) < 3 or not total:
        return None
    first = marks[len(marks) // 5]
    steps, seconds = total - first[0], record["wall"] - first[1]
    return record["bytes"] * steps / total / MB / seconds if seconds > 0 else None


def tracemalloc_growth(small: Path, large: Path, top: int = 8) -> list[list]:
    import tracemalloc

    before, after = tracemalloc.Snapshot.load(str(small)), tracemalloc.Snapshot.load(str(large))
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    rows = []
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        where = frame.filename
        for marker in ("site-packages/", "/src/"):
            if marker in where:
                where = where.split(marker, 1)[1]
                break
        else:
            where = Path(where).name
        line = ""
        with contextlib.suppress(OSError, IndexError):
            line = Path(frame.filename).read_text(encoding="utf-8").splitlines()[frame.lineno - 1].strip()
        rows.append([f"`{where}:{frame.lineno}`", f"`{line[:70]}`", f"{stat.size / MB:.1f}", f"{stat.size_diff / MB:+.1f}",
                     f"{stat.count_diff:+,}"])
    totals = (sum(s.size for s in before.statistics("filename")) / MB,
              sum(s.size for s in after.statistics("filename")) / MB)
    rows.append(["all traced Python allocations", "", f"{totals[1]:.1f}", f"{totals[1] - totals[0]:+.1f}", ""])
    return rows


def bench_memory(quick: bool, keep_files: bool) -> tuple[str, dict]:
    sizes = (1 * 10**6, 10 * 10**6) if quick else (10 * 10**6, 100 * 10**6, 1000 * 10**6)
    attribution_sizes = sizes[:2]
    trace_sizes = (1 * 10**6, 4 * 10**6) if quick else (2 * 10**6, 10 * 10**6)
    say(f"\n== 3. peak RSS: summarize {', '.join(f'{s / MB:g} MB' for s in sizes)} "
        "(instant LM, 1024-token chunks, 8 workers)")
    CACHE.mkdir(exist_ok=True)
    paths = {size: CACHE / f"engine-cuad-{size // 10**6}MB.txt" for size in {*sizes, *trace_sizes}}
    records: dict[tuple[str, int], dict] = {}

    def measure(size: int, variant: str = "default") -> dict:
        path = make_text(size, paths[size])
        say(f"   {size / MB:g} MB ({path.stat().st_size:,} bytes), {variant}: running ...   (load {load()})")
        record = run_memory_child(path, variant)
        records[(variant, size)] = record
        say(f"   -> {record['chunks']:,} chunks + {record['merges']} merges in {record['wall']:.1f} s, peak RSS "
            f"{record['hwm']:.0f} MB (after imports {record['rss_after_imports']:.0f} MB; malloc in use "
            f"{record.get('malloc_in_use', 0):.0f} MB, free but kept {record.get('malloc_free_kept', 0):.0f} MB)")
        return record

    try:
        for size in sizes[:-1]:
            measure(size)
        per_byte = records[("default", sizes[-2])]["wall"] / records[("default", sizes[-2])]["bytes"]
        estimate = per_byte * sizes[-1]
        say(f"   the {sizes[-1] / MB:g} MB run should take about {estimate / 60:.0f} min "
            f"(extrapolated from the {sizes[-2] / MB:g} MB run)")
        for variant in list(VARIANTS)[1:]:  # what the growth is made of
            for size in attribution_sizes:
                measure(size, variant)
        snapshots = []
        for size in trace_sizes:
            path = make_text(size, paths[size])
            snapshot = WORK / f"tracemalloc-{size // 10**6}MB.snapshot"
            say(f"   tracemalloc snapshot at the end of a {size / MB:g} MB run ...   (load {load()})")
            run_memory_child(path, "default", snapshot)
            snapshots.append(snapshot)
        growth_rows = tracemalloc_growth(*snapshots)
        for snapshot in snapshots:
            snapshot.unlink(missing_ok=True)
        last = measure(sizes[-1])
        if sizes[-1] not in attribution_sizes and last["hwm"] >= 1.5 * records[("default", sizes[0])]["hwm"]:
            measure(sizes[-1], "pinned-malloc")  # not flat: is it glibc keeping freed memory?
    finally:
        if not keep_files:
            for path in paths.values():
                if path.exists() and path.stat().st_size > 20 * 10**6:
                    path.unlink()

    smallest = records[("default", sizes[0])]["hwm"]
    rows = []
    for size in sizes:
        r = records[("default", size)]
        growth = growth_per_10k_steps(r["marks"], skip_steps=12_000)
        steady = steady_rate(r)
        rows.append([
            f"{size / MB:g} MB ({r['bytes']:,} B)", f"{r['chunks']:,}", f"{r['merges']}", f"{r['wall']:.1f}",
            f"{r['bytes'] / MB / r['wall']:.2f}", f"{steady:.2f}" if steady else "-",
            f"{r['rss_after_imports']:.0f}", f"**{r['hwm']:.0f}**", f"{r['hwm'] / smallest:.2f}x",
            f"{growth:+.1f}" if growth is not None else "-",
            f"{r.get('malloc_in_use', 0):.0f} / {r.get('malloc_free_kept', 0):.0f}", f"{r['store_bytes'] / MB:.0f}",
        ])
    largest = records[("default", sizes[-1])]["hwm"]
    flat = largest < 1.5 * smallest
    verdict = "flat" if flat else "NOT flat"
    columns = sorted({size for (_variant, size) in records})
    attribution = []
    for variant, meaning in VARIANTS.items():
        cells = [f"{variant}: {meaning}"]
        for size in columns:
            r = records.get((variant, size))
            cells += [f"{r['hwm']:.0f}", f"{r.get('malloc_free_kept', 0):.0f}", f"{r['wall']:.1f}"] if r else ["-"] * 3
        peaks = [records[(variant, size)]["hwm"] for size in columns if (variant, size) in records]
        cells.append(f"{peaks[-1] / peaks[0]:.2f}x")
        attribution.append(cells)
    names = [f"{size / MB:g} MB" for size in columns]
    header = ["variant"] + [f"{name} {what}" for name in names for what in ("peak", "free kept", "wall")] + [
        "largest peak / smallest peak"]
    slope = growth_per_10k_steps(records[("default", sizes[-1])]["marks"], skip_steps=12_000)
    text = (
        f"### 3. Peak RSS summarizing {', '.join(f'{s / MB:g} MB' for s in sizes)} (instant LM)\n\n"
        + markdown_table(["document", "chunks", "merges", "wall s", "MB/s overall", "MB/s steady",
                          "RSS after imports MB", "peak RSS MB (VmHWM)", "peak vs smallest",
                          "RSS slope MB / 10k steps (after 12k steps)", "malloc in use / free but kept MB",
                          "store + event log MB"], rows)
        + f"\n\n**Peak RSS {verdict} in document size**: {sizes[-1] / MB:g} MB peak = "
        f"{largest / smallest:.2f}x the {sizes[0] / MB:g} MB peak (criterion: < 1.5x). "
        f"Before the {sizes[-1] / MB:g} MB run, extrapolating the {sizes[-2] / MB:g} MB run's time predicted "
        f"{estimate / 60:.0f} min."
        + (f" In the largest run, RSS rose {slope:+.1f} MB per 10,000 steps after the first 12,000 steps "
           "(a plateau, not a leak: see below)." if slope is not None else "")
        + "\n\n"
        "SummarizePipeline, `ChunkingConfig(strategy=\"structure\", chunk_tokens=1024)`, default merge budget "
        "(3000 tokens), `RunOptions(concurrency=8)`, a ScriptedLM answering `chat_reply(summary=\"s\")` at once "
        "(its request log bounded), each size in a fresh process; inputs are the CUAD contracts in name order, "
        "each followed by a blank line, repeated. \"MB/s steady\" leaves out the first 20% of steps. "
        "\"RSS after imports\" is the process before any work; the tokenizer (~100 MB) and litellm (~170 MB, "
        "imported at the first priced call) load after it.\n\n"
        "What the growth is made of (peak RSS MB, glibc malloc's free-but-kept MB, wall s; the default row "
        "repeats the runs above):\n\n"
        + markdown_table(header, attribution)
        + f"\n\ntracemalloc (1 frame), live Python allocations at the end of a {trace_sizes[0] / MB:g} MB run vs a "
        f"{trace_sizes[1] / MB:g} MB run (default variant), largest growth first:\n\n"
        + markdown_table(["allocated at", "code", f"{trace_sizes[1] / MB:g} MB run: MB", "growth MB", "growth in blocks"],
                         growth_rows)
        + "\n\nWith DSPy's trace and histories kept (`dspy-history`), what grows is DSPy's: its history entries "
        "(`GLOBAL_HISTORY`, the LM's and the Predict module's `history`) keep every prompt "
        "(`dspy/adapters/chat_adapter.py`), and `dspy.settings.trace` keeps every call's inputs "
        "(`dspy/predict/predict.py`: `trace.append((self, {**kwargs}, pred))`, i.e. the chunk text); each list "
        "is capped at 10,000 entries, so that part stops after 10,000 calls. \"Free but kept\" is not live "
        "data: glibc keeps freed heap memory once its dynamic mmap threshold has risen, which pinning the "
        "threshold (or `malloc_trim`) prevents."
    )
    return text, {"records": {f"{v}:{s}": r for (v, s), r in records.items()}, "flat": flat, "estimate": estimate}


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: N=40, K=200, 1 MB and 10 MB")
    parser.add_argument("--only", default="throughput,overhead,memory",
                        help="comma-separated parts to run (throughput, overhead, memory); "
                             "RESULTS.md is written only when all three run")
    parser.add_argument("--keep-files", action="store_true", help="keep the generated 100 MB / 1 GB inputs")
    parser.add_argument("--serve", type=float, metavar="LATENCY", help=argparse.SUPPRESS)
    parser.add_argument("--as-shipped", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=3, metavar=("PATH", "WORKSPACE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve_main(args.serve, not args.as_shipped)
    if args.memory_child:
        return memory_child(*args.memory_child, args.snapshot)

    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    command = "python bench/engine.py" + (" --quick" if args.quick else "") + (
        f" --only {args.only}" if set(parts) != {"throughput", "overhead", "memory"} else "")
    WORK.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (big inputs, workspaces) when killed
    state = src_state()
    started = _dt.datetime.now(_dt.timezone.utc)
    start_load = load()
    say(f"{command}\n{machine()}\nload average at start: {start_load}")
    sections, facts = [], {}
    clock = time.perf_counter()
    if "throughput" in parts:
        text, facts["throughput"] = bench_throughput(args.quick)
        sections.append(text)
        say("\n" + text)
    if "overhead" in parts:
        text, facts["overhead"] = bench_overhead(args.quick)
        sections.append(text)
        say("\n" + text)
    if "memory" in parts:
        text, facts["memory"] = bench_memory(args.quick, args.keep_files)
        sections.append(text)
        say("\n" + text)
    minutes = (time.perf_counter() - clock) / 60
    changed = src_state() != state
    if changed:
        say("\nWARNING: the code measured changed while the benchmark ran: its tables mix two versions")
    header = (
        "## Run engine" + (" (quick smoke test)" if args.quick else "") + "\n\n"
        f"- date: {started:%Y-%m-%d %H:%M} UTC; took {minutes:.0f} min\n"
        f"- machine: {machine()}\n"
        f"- load average (1/5/15 min) at start {start_load}, at end {load()} (the machine is shared: "
        "compare rows within a table, not with other runs)\n"
        f"- command: `{command}`\n"
        + ("- **WARNING: the code measured (engine, patterns, chunking, ingest, LM layer, test doubles) changed during this run; rerun before trusting it**\n" if changed else "")
    )
    markdown = header + "\n" + "\n\n".join(sections) + "\n"
    (WORK / ("last-quick.json" if args.quick else "last.json")).write_text(json.dumps(facts, indent=1, default=str))
    if set(parts) == {"throughput", "overhead", "memory"}:
        from _results import write_section

        target = write_section("engine-quick" if args.quick else "engine", markdown)
        say(f"\nwrote section {'engine-quick' if args.quick else 'engine'} of {target}")


if __name__ == "__main__":
    main()
