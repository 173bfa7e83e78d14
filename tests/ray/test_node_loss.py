"""A two-node Ray cluster on one machine (ray.cluster_utils.Cluster): the node doing most of the work is
removed mid-run; its documents run again on the other node, replaying their committed steps (none of
them runs again), and the output is the same as a run that lost nothing."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing

import pytest

from rlmpipe.apps.summarize import SummarizePipeline
from rlmpipe.chunking import ChunkingConfig
from rlmpipe.lm.models import ModelChoice, make_lm
from rlmpipe.lm.recording import RetryPolicy
from rlmpipe.runtime.runner import RunOptions, execute
from rlmpipe.runtime.store import Store
from tests.support.replies import numbered_document, summary_reply

pytestmark = pytest.mark.ray
CHUNKING = ChunkingConfig(strategy="structure", chunk_tokens=32)


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    made = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 100 << 20, "include_dashboard": False})
    worker = made.add_node(num_cpus=3, object_store_memory=100 << 20)
    made.wait_for_nodes()
    yield made, worker
    ray.shutdown()
    made.shutdown()


def test_losing_a_node_mid_run_ends_with_the_same_output(two_nodes, openai_server, tmp_path):
    cluster, worker = two_nodes
    openai_server.set_default(summary_reply)
    openai_server.set_latency(0.03)
    paths = []
    for index in range(6):
        path = tmp_path / "docs" / f"doc{index}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(numbered_document(15, label=f"Doc {index} paragraph"), encoding="utf-8")
        paths.append(str(path))
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url), timeout=10)
    retry = RetryPolicy(max_attempts=6, initial_wait=0.01, max_wait=0.05, jitter=0.0)

    reference = execute(SummarizePipeline(CHUNKING, merge_input_tokens=150), paths, lm,
                        options=RunOptions(workspace=tmp_path / "reference", concurrency=4, retry=retry))
    assert reference.status == "done"
    served_before = len(openai_server.chat_calls)

    committed: dict[str, float] = {}  # the steps done when the node is lost: step key -> start time

    def remove_worker_node() -> None:
        while len(openai_server.chat_calls) - served_before < 25 or len(committed) < 8:
            time.sleep(0.02)
            committed.update(done_steps(tmp_path / "ws" / "runs.sqlite"))
        cluster.remove_node(worker, allow_graceful=False)

    killer = threading.Thread(target=remove_worker_node, daemon=True)
    killer.start()
    result = execute(SummarizePipeline(CHUNKING, merge_input_tokens=150), paths, lm,
                     options=RunOptions(workspace=tmp_path / "ws", concurrency=4, retry=retry, executor="ray"))
    killer.join(10)
    assert result.status == "done", result.reason
    assert [r["result"] for r in result.results] == [r["result"] for r in reference.results]
    with Store(tmp_path / "ws") as store:
        run = store.get_run(result.run_id)
        done = [s for s in store.steps(result.run_id) if s.status == "done"]
    nodes = run["config"]["executor"]["nodes"]
    assert len(nodes) == 2, nodes
    from tests.ray.test_executor import excerpt_asks

    # the promise: a step done before the loss is never run again (its stored row is the first one)
    final = done_steps(tmp_path / "ws" / "runs.sqlite")
    rerun = [key for key, started in committed.items() if final[key] != started]
    assert not rerun, f"{len(rerun)} steps done before the node was lost ran again"
    asks = excerpt_asks(openai_server)  # the reference run asked each excerpt once, this run once more
    assert all(n >= 2 for n in asks.values())
    assert len([s for s in done if s.name == "summarize"]) == len(asks)
    # what may be asked again: the steps in flight on the lost node, at most `concurrency` per document. (Not
    # per CPU: Ray lends a task's CPU to another while it waits in ray.get, so a node runs more tasks.)
    repeated = Counter(re.search(r"doc (\d+) paragraph", text, re.IGNORECASE).group(1)
                       for text, n in asks.items() for _ in range(n - 2))
    assert all(n <= 4 for n in repeated.values()), repeated


def done_steps(database) -> dict[str, float]:
    """The done steps in a run store (read-only, while the run writes): step key -> start time."""
    if not database.exists():
        return {}
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as connection:
        rows = connection.execute("SELECT step_key, started FROM steps WHERE status = 'done'").fetchall()
    return dict(rows)
