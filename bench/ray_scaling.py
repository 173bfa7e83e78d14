"""The Ray executor against threads, side by side in one run, on the loopback OpenAI server.

    python bench/ray_scaling.py            # re-executes itself inside `unshare -n` (loopback only)

1. Throughput: 16 documents (about 200 LM calls) at 200 ms per call, with 4, 8 and 16 calls in flight:
   threads (``concurrency``) vs Ray on one node and on two nodes of one machine
   (``ray.cluster_utils.Cluster``; documents in flight x 4 step threads each).
2. Overhead per step: the same work at 0 ms per call, one call at a time: the time a step takes on
   Ray minus on threads (actor round trips: admission, rate window, breaker, commit).
3. What a kill costs: one document of 80 chunks on Ray, its worker SIGKILLed after 20 calls: calls
   repeated (counted at the server) and seconds added, against the same run undisturbed.
4. A cold start: the first run on a new cluster, its worker processes new, with the run model's price
   looked up once by the driver and sent to the workers (now), against each worker looking it up
   itself, importing litellm inside its first step (rlmpipe before; ``Pricing.resolved`` undone).

Ray is started inside a loopback-only network namespace: it probes the network at start-up even with
usage statistics off, and no benchmark may send a packet outside 127.0.0.0/8.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def in_loopback_namespace() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


if __name__ == "__main__" and not in_loopback_namespace():
    short = tempfile.mkdtemp(prefix="rlmray-", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": short, "HOME": short}
    code = subprocess.call(["unshare", "-n", "bash", "-c",
                            f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} {' '.join(sys.argv[1:])}"],
                           env=env)
    shutil.rmtree(short, ignore_errors=True)
    sys.exit(code)

from rlmpipe.offline import configure_offline_defaults  # noqa: E402

configure_offline_defaults()

from _results import machine, write_section  # noqa: E402

from rlmpipe.apps.summarize import SummarizePipeline  # noqa: E402
from rlmpipe.chunking import ChunkingConfig  # noqa: E402
from rlmpipe.lm.models import ModelChoice, make_lm  # noqa: E402
from rlmpipe.lm.recording import RetryPolicy  # noqa: E402
from rlmpipe.runtime.runner import RunOptions, execute  # noqa: E402
from tests.support.openai_server import OpenAIServer  # noqa: E402
from tests.support.replies import numbered_document, summary_reply, user_text  # noqa: E402

CHUNKING = ChunkingConfig(strategy="structure", chunk_tokens=32)
RETRY = RetryPolicy(max_attempts=6, initial_wait=0.01, max_wait=0.05, jitter=0.0)


def corpus(folder: Path, documents: int, paragraphs: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(documents):
        path = folder / f"doc{index:02d}.txt"
        path.write_text(numbered_document(paragraphs, label=f"Doc {index} paragraph"), encoding="utf-8")
        paths.append(str(path))
    return paths


def timed_run(server, paths, workspace, **options) -> tuple[float, int]:
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url), timeout=30)
    before = len(server.chat_calls)
    started = time.perf_counter()
    summary = execute(SummarizePipeline(CHUNKING, merge_input_tokens=150), paths, lm,
                      options=RunOptions(workspace=workspace, retry=RETRY, **options))
    seconds = time.perf_counter() - started
    assert summary.status == "done", summary.reason
    return seconds, len(server.chat_calls) - before


def ray_cluster(nodes: int):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 4 if nodes == 1 else 2, "object_store_memory": 100 << 20, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=2, object_store_memory=100 << 20)
    cluster.wait_for_nodes()
    return ray, cluster


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="rlmpipe-ray-bench-"))
    paths = corpus(scratch / "docs", 16, 12)
    in_flight = (4, 8, 16)
    throughput: dict[str, dict[int, tuple[float, int]]] = {}
    overhead: dict[str, float] = {}
    with OpenAIServer() as server:
        server.set_default(summary_reply)
        # 1. threads
        server.set_latency(0.2)
        throughput["threads"] = {}
        for calls in in_flight:
            throughput["threads"][calls] = timed_run(server, paths, scratch / f"t{calls}", concurrency=calls)
            print("threads", calls, throughput["threads"][calls], flush=True)
        server.set_latency(0.0)
        one = corpus(scratch / "one", 1, 100)
        seconds, calls = timed_run(server, one, scratch / "overhead-threads", concurrency=1)
        overhead["threads"] = seconds / calls
        # 2. Ray, one node then two
        for nodes in (1, 2):
            ray, cluster = ray_cluster(nodes)
            label = f"ray, {nodes} node{'s' if nodes > 1 else ''}"
            throughput[label] = {}
            server.set_latency(0.2)
            timed_run(server, paths[:2], scratch / f"warm{nodes}", concurrency=4, executor="ray")  # workers start
            for calls in in_flight:
                throughput[label][calls] = timed_run(server, paths, scratch / f"r{nodes}-{calls}", concurrency=4,
                                                     executor="ray", documents_in_flight=calls // 4)
                print(label, calls, throughput[label][calls], flush=True)
            if nodes == 1:
                server.set_latency(0.0)
                seconds, calls = timed_run(server, one, scratch / "overhead-ray", concurrency=1, executor="ray")
                overhead["ray"] = seconds / calls
                kill = kill_cost(server, scratch)
            ray.shutdown()
            cluster.shutdown()
        variants = (("looked up by each worker (rlmpipe before 8807958)", False),
                    ("looked up once by the driver, sent (now)", True))
        cold = {name: cold_start(server, scratch / f"cold{ship}", paths[:4], ship) for name, ship in variants}
    shutil.rmtree(scratch, ignore_errors=True)
    write_section("ray", report(throughput, in_flight, overhead, kill, cold))


def cold_start(server, scratch: Path, paths: list[str], ship_prices: bool) -> dict:
    """One run on a new one-node cluster: seconds to the first committed step, and in all."""
    import sqlite3

    from rlmpipe.lm.usage import Pricing

    server.set_latency(0.2)
    ray, cluster = ray_cluster(1)
    resolved = Pricing.resolved
    if not ship_prices:
        Pricing.resolved = lambda self, model: self  # as before: the workers get no looked-up prices
    first: list[float] = []
    started = time.perf_counter()

    def watch() -> None:
        database = scratch / "runs.sqlite"
        while not first:
            if database.exists():
                with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
                    if connection.execute("SELECT 1 FROM steps WHERE status = 'done' LIMIT 1").fetchone():
                        first.append(time.perf_counter() - started)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        seconds, calls = timed_run(server, paths, scratch, concurrency=4, executor="ray")
    finally:
        Pricing.resolved = resolved
        ray.shutdown()
        cluster.shutdown()
    watcher.join(5)
    print("cold", ship_prices, first, seconds, flush=True)
    return {"first_step": first[0] if first else float("nan"), "seconds": seconds, "calls": calls}


def kill_cost(server, scratch: Path) -> dict:
    """One long document on Ray, undisturbed and then with its worker SIGKILLed after 20 calls."""
    server.set_latency(0.05)
    long = corpus(scratch / "long", 1, 80)
    calm, calm_calls = timed_run(server, long, scratch / "calm", concurrency=4, executor="ray")
    pids = scratch / "pids"

    class Recording(SummarizePipeline):
        def process(self, run, document):
            with open(pids, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            return super().process(run, document)

    before = len(server.chat_calls)

    def kill_after(calls: int) -> None:
        while len(server.chat_calls) - before < calls or not pids.exists():
            time.sleep(0.005)
        os.kill(int(pids.read_text().split()[0]), signal.SIGKILL)

    killer = threading.Thread(target=kill_after, args=(20,), daemon=True)
    killer.start()
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url), timeout=30)
    started = time.perf_counter()
    summary = execute(Recording(CHUNKING, merge_input_tokens=150), long, lm,
                      options=RunOptions(workspace=scratch / "killed", concurrency=4, executor="ray", retry=RETRY))
    seconds = time.perf_counter() - started
    assert summary.status == "done", summary.reason
    asks = Counter(user_text(c.body) for c in server.chat_calls[before:] if c.served == "reply"
                   and isinstance(c.body, dict))
    return {"calm_seconds": calm, "calm_calls": calm_calls, "killed_seconds": seconds,
            "killed_calls": sum(asks.values()), "repeated": sum(n - 1 for n in asks.values() if n > 1)}


def report(throughput, in_flight, overhead, kill, cold) -> str:
    import ray

    lines = [
        "## Scale-out: the Ray executor vs threads", "",
        f"{time.strftime('%Y-%m-%d')}; {machine()}; Ray {ray.__version__}. Command: `python bench/ray_scaling.py` "
        "(it runs itself in a loopback-only network namespace, `unshare -n`).", "",
        "Workload: 16 documents of 12 paragraphs (`summarize`, 32-token chunks: 432 LM calls with the merges) "
        "against the loopback OpenAI server answering each call in 200 ms. Threads: `--concurrency N`. Ray: N/4 "
        "documents in flight (one Ray task each), 4 step threads per document; one node (4 worker slots), or two "
        "nodes of one machine (`ray.cluster_utils.Cluster`, 2 slots each). Wall time of `execute`, the Ray cluster "
        "already started and its workers warm.", "",
        "| calls in flight | " + " | ".join(f"{name}: calls/s" for name in throughput) + " | Ray (1 node) / threads |",
        "|---:|" + "---:|" * (len(throughput) + 1),
    ]
    for calls in in_flight:
        rates = {name: done / seconds for name, rows in throughput.items() for seconds, done in [rows[calls]]}
        lines.append(f"| {calls} | " + " | ".join(f"{rates[name]:.1f}" for name in throughput)
                     + f" | {rates['ray, 1 node'] / rates['threads']:.2f} |")
    ideal = {calls: calls / 0.2 for calls in in_flight}
    lines += ["", "The ideal at 200 ms per call is " + ", ".join(f"{ideal[c]:.0f} calls/s at {c}" for c in in_flight)
              + ".", "",
              f"Overhead per step (0 ms calls, one at a time, 100 chunks): threads {overhead['threads'] * 1000:.1f} ms, "
              f"Ray {overhead['ray'] * 1000:.1f} ms: **{(overhead['ray'] - overhead['threads']) * 1000:.1f} ms more per "
              "step on Ray** (actor round trips for admission, the rate window, the breaker and the commit).", "",
              "What a worker's death costs (one document, 80 chunks, 50 ms calls, 4 step threads; its worker SIGKILLed "
              "after 20 calls; Ray reruns the task, which replays its committed steps from the store):", "",
              "| run | LM calls | repeated calls | seconds |", "|---|---:|---:|---:|",
              f"| undisturbed | {kill['calm_calls']} | 0 | {kill['calm_seconds']:.1f} |",
              f"| worker killed after 20 calls | {kill['killed_calls']} | {kill['repeated']} | {kill['killed_seconds']:.1f} |",
              "", "A cold start (4 documents, 200 ms calls, on a new one-node cluster whose worker processes start "
              "with the run): until a step's result is stored, its finished LM call is lost with its worker.", "",
              "| the run model's price | first step stored after (s) | run (s) | LM calls |", "|---|---:|---:|---:|",
              *[f"| {name} | {row['first_step']:.1f} | {row['seconds']:.1f} | {row['calls']} |"
                for name, row in cold.items()],
              "", "What one 2-core machine cannot show: speed-ups from more CPUs (the work here is waiting on the "
              "model, so more workers only help up to what the server and two cores sustain); network latency and "
              "bandwidth between real nodes (the actors' round trips are loopback here); GPU nodes serving a local "
              "model (none here); failures of whole machines (a node here is a set of processes). The figures are "
              "ratios from one run on a shared machine."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
