"""Tables of a run, computed from the run store alone (``runs show``, the report and tests use them).

Every LM figure comes from the ``lm_calls`` rows the engine committed, so the totals of a resumed
run include what earlier sessions spent, and nothing is counted twice.
"""

from __future__ import annotations

from collections import defaultdict

from rlmpipe.lm.usage import Usage
from rlmpipe.runtime.store import Store


def run_tables(store: Store, run_id: str) -> dict:
    """Everything ``runs show`` prints: the run, totals, and tables by step, document and depth."""
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(run_id)
    calls = store.calls(run_id)
    steps = store.steps(run_id)
    documents = store.documents(run_id)
    total = Usage.with_latencies()  # every group of calls in a table: the one usage model, with latencies
    by_step: dict[str, Usage] = defaultdict(Usage.with_latencies)
    by_doc: dict[str | None, Usage] = defaultdict(Usage.with_latencies)
    by_depth: dict[int, Usage] = defaultdict(Usage.with_latencies)
    for call in calls:
        total.add(call)
        by_step[call["step_name"] or "(outside steps)"].add(call)
        by_doc[call["doc_id"]].add(call)
        by_depth[call["depth"]].add(call)
    step_status: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    step_time: dict[str, float] = defaultdict(float)
    doc_steps: dict[str | None, int] = defaultdict(int)
    for step in steps:
        step_status[step.name][step.status] += 1
        step_time[step.name] += (step.finished or 0) - (step.started or 0)
        doc_steps[step.doc_id] += 1
    step_rows = []
    for name in sorted(set(by_step) | set(step_status)):
        status = step_status.get(name, {})
        step_rows.append({"step": name, "done": status.get("done", 0), "failed": status.get("failed", 0),
                          "step_seconds": round(step_time.get(name, 0.0), 3), **by_step[name].row()})
    doc_rows = []
    for document in documents:
        doc_rows.append({**by_doc[document["doc_id"]].row(), "path": document["path"], "doc_id": document["doc_id"],
                         "status": document["status"], "error": document["error"], "detail": document.get("detail"),
                         "steps": doc_steps.get(document["doc_id"], 0),
                         "doc_seconds": round((document["finished"] or 0) - (document["started"] or 0), 3)
                         if document["finished"] else None})
    depth_rows = [{"depth": depth, **by_depth[depth].row()} for depth in sorted(by_depth)]
    slowest = sorted((s for s in steps if s.finished and s.started), key=lambda s: s.finished - s.started,
                     reverse=True)[:10]
    costliest = sorted(steps, key=lambda s: (s.cost or 0.0, s.prompt_tokens + s.completion_tokens), reverse=True)[:10]
    trajectories = [
        {"step": step.name, "doc_id": step.doc_id, "status": step.status, "step_key": step.step_key,
         "entries": step.extra["trajectory"],
         "by_depth": {depth: sum(1 for e in step.extra["trajectory"] if e["depth"] == depth)
                      for depth in sorted({e["depth"] for e in step.extra["trajectory"]})}}
        for step in steps if isinstance(step.extra, dict) and step.extra.get("trajectory")
    ]
    failed_steps = [{"step": s.name, "doc_id": s.doc_id, "error": s.error, "detail": s.detail}
                    for s in steps if s.status == "failed"]
    return {
        "run": run,
        "totals": total.row(),
        "failed_steps": failed_steps,
        "trajectories": trajectories,
        "steps": step_rows,
        "documents": doc_rows,
        "depths": depth_rows,
        "slowest_steps": [_step_summary(s) for s in slowest],
        "costliest_steps": [_step_summary(s) for s in costliest],
        "calls": calls,
    }


def _step_summary(step) -> dict:
    return {"step": step.name, "doc_id": step.doc_id, "chunk_id": step.chunk_id, "status": step.status,
            "seconds": round((step.finished or 0) - (step.started or 0), 3), "depth": step.depth,
            "tokens": step.prompt_tokens + step.completion_tokens, "cost": step.cost, "attempts": step.attempts}
