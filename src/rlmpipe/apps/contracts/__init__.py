"""The contract corpus analyzer: clauses (41 CUAD categories), risks, obligations, an executive
summary and a 0-100 risk score for every contract in a folder, every finding tied to offsets in the
contract's text. Built only from ingest, chunking, the run engine and monitoring."""

from __future__ import annotations

from pathlib import Path

from rlmpipe.apps.contracts.outputs import write_outputs
from rlmpipe.apps.contracts.pipeline import DEFAULT_CHUNKING, ContractsPipeline
from rlmpipe.runtime.runner import RunSummary
from rlmpipe.runtime.store import Store

__all__ = ["ContractsPipeline", "DEFAULT_CHUNKING", "write_results"]


def write_results(summary: RunSummary, store: Store, out: Path, inputs=None) -> dict[str, Path]:
    """The run's outputs in ``out``, rebuilt for this session's inputs (``inputs``, an
    :class:`rlmpipe.api.SessionInputs`; None: every document the run ever had): every record of a
    contract analysed (partial ones included) and every input left unfinished, whatever the run's status."""
    records = [item["result"] for item in summary.results]
    return write_outputs(records, unfinished(store, summary, inputs), Path(out), run=store.get_run(summary.run_id))


def unfinished(store: Store, summary: RunSummary, inputs=None) -> list[dict]:
    """Every input of this session that is not fully analysed, and why (for failed.jsonl and the
    report): failed, partial, stopped, or never reached because the run stopped first. A document
    of an earlier session that is no longer an input (edited, deleted) is not listed."""
    stopped = f"the run stopped ({summary.reason})" if summary.reason else "the run stopped"
    why = {"stopped": f"not analysed: {stopped}; resume it to finish"}
    rows = []
    for row in store.documents(summary.run_id):
        if inputs is not None and (row["doc_id"], row["path"]) not in inputs.documents:
            continue
        if row["status"] in ("failed", "partial", "stopped"):
            rows.append({"path": row["path"], "status": row["status"],
                         "error": row["error"] or why.get(row["status"], row["status"])})
    if inputs is not None and summary.status != "done":  # stopped, or failed (which stops it too)
        rows += [{"path": path, "status": "stopped", "error": f"not analysed: {stopped} before it was read; "
                  "resume it to finish"} for path in inputs.unread()]
    return rows
