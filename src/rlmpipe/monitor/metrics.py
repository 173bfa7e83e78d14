"""Tables of a run, computed from the run store alone (``runs show``, the report and tests use them).

Every LM figure comes from the ``lm_calls`` rows the engine committed, so the totals of a resumed
run include what earlier sessions spent, and nothing is counted twice.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable

from rlmpipe.lm.usage import Usage, percentiles
from rlmpipe.runtime.store import Store


def run_tables(store: Store, run_id: str) -> dict:
    """Everything ``runs show`` prints: the run, totals, and tables by step, document and depth.

    Calls and steps are streamed from the store and only sums, percentiles and the ten slowest and
    costliest steps are kept, so memory does not grow with the run (a long run has hundreds of
    thousands of calls)."""
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(run_id)
    documents = store.documents(run_id)
    total = Usage()  # every group of calls in a table: the one usage model
    by_step: dict[str | None, Usage] = defaultdict(Usage)
    by_doc: dict[str | None, Usage] = defaultdict(Usage)
    by_depth: dict[int, Usage] = defaultdict(Usage)
    for call in store.each_call(run_id):
        total.add(call)
        by_step[call["step_name"]].add(call)
        by_doc[call["doc_id"]].add(call)
        by_depth[call["depth"]].add(call)
    latency = {by: percentiles(store.each_latency(run_id, by), (0.5, 0.95))
               for by in (None, "step_name", "doc_id", "depth")}

    def usage_row(usage: Usage, by: str | None, key) -> dict:
        p50, p95 = latency[by].get(key, (None, None))
        return {**usage.row(), "p50_latency": _round(p50), "p95_latency": _round(p95)}

    step_status: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    step_time: dict[str, float] = defaultdict(float)
    doc_steps: dict[str | None, int] = defaultdict(int)
    slowest = _Top(10, lambda s: s.finished - s.started)
    costliest = _Top(10, lambda s: (s.cost or 0.0, s.prompt_tokens + s.completion_tokens))
    trajectories, failed_steps = [], []
    parted_steps = unused = 0  # steps whose replay parted from their call journal, and the answers left
    for step in store.each_step(run_id):
        parted_steps += step.unused > 0
        unused += step.unused
        step_status[step.name][step.status] += 1
        step_time[step.name] += (step.finished or 0) - (step.started or 0)
        doc_steps[step.doc_id] += 1
        if step.finished and step.started:
            slowest.add(step)
        costliest.add(step)
        entries = step.extra.get("trajectory") if isinstance(step.extra, dict) else None
        if entries:
            trajectories.append({"step": step.name, "doc_id": step.doc_id, "status": step.status,
                                 "step_key": step.step_key, "entries": entries,
                                 "by_depth": dict(sorted(Counter(e["depth"] for e in entries).items()))})
        if step.status == "failed":
            failed_steps.append({"step": step.name, "doc_id": step.doc_id, "error": step.error,
                                 "detail": step.detail})
    step_rows = []
    for name in sorted(set(by_step) | set(step_status), key=lambda n: n or "(outside steps)"):
        status = step_status.get(name, {})
        step_rows.append({"step": name or "(outside steps)", "done": status.get("done", 0),
                          "failed": status.get("failed", 0), "step_seconds": round(step_time.get(name, 0.0), 3),
                          **usage_row(by_step[name], "step_name", name)})
    doc_rows = []
    for document in documents:
        doc_rows.append({**usage_row(by_doc[document["doc_id"]], "doc_id", document["doc_id"]),
                         "path": document["path"], "doc_id": document["doc_id"],
                         "status": document["status"], "error": document["error"], "detail": document.get("detail"),
                         "steps": doc_steps.get(document["doc_id"], 0),
                         "doc_seconds": round((document["finished"] or 0) - (document["started"] or 0), 3)
                         if document["finished"] else None})
    known, other_rows = {document["doc_id"] for document in documents}, []
    if (None in by_doc and by_doc[None].calls + by_doc[None].replayed) or doc_steps.get(None):
        # steps over the whole corpus (``ask``'s one recursion over every document), or calls outside steps
        other_rows.append({**usage_row(by_doc[None], "doc_id", None), "path": "(all documents: corpus-level steps)",
                         "doc_id": None, "status": "", "error": None, "detail": None,
                         "steps": doc_steps.get(None, 0), "doc_seconds": None})
    unattributed = [doc for doc in by_doc if doc is not None and doc not in known]
    for doc_id in unattributed:  # (a document whose row is gone: still counted)
        other_rows.append({**usage_row(by_doc[doc_id], "doc_id", doc_id), "path": f"(document {doc_id[:12]})",
                         "doc_id": doc_id, "status": "", "error": None, "detail": None,
                         "steps": doc_steps.get(doc_id, 0), "doc_seconds": None})
    depth_rows = [{"depth": depth, **usage_row(by_depth[depth], "depth", depth)} for depth in sorted(by_depth)]
    return {
        "run": run,
        "totals": usage_row(total, None, None),
        "replay": {"replayed": total.replayed, "parted_steps": parted_steps, "unused": unused},
        "failed_steps": failed_steps,
        "trajectories": trajectories,
        "steps": step_rows,
        "documents": doc_rows,
        "other_documents": other_rows,  # steps and calls of no listed document (corpus-level steps)
        "depths": depth_rows,
        "slowest_steps": [_step_summary(s) for s in slowest.items()],
        "costliest_steps": [_step_summary(s) for s in costliest.items()],
    }


class _Top:
    """The ``n`` items with the largest ``key`` of a stream, as ``sorted(..., reverse=True)[:n]`` would
    give them (ties in arrival order), holding ``n`` items at a time."""

    def __init__(self, n: int, key: Callable):
        self.n, self.key, self.heap, self.seen = n, key, [], 0

    def add(self, item) -> None:
        entry = (self.key(item), -self.seen, item)  # the later of two equal keys is dropped first
        self.seen += 1
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, entry)

    def items(self) -> list:
        return [item for *_, item in sorted(self.heap, key=lambda e: e[:2], reverse=True)]


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def _step_summary(step) -> dict:
    return {"step": step.name, "doc_id": step.doc_id, "chunk_id": step.chunk_id, "status": step.status,
            "seconds": round((step.finished or 0) - (step.started or 0), 3), "depth": step.depth,
            "tokens": step.prompt_tokens + step.completion_tokens, "cost": step.cost, "attempts": step.attempts}
