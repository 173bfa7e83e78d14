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


def write_results(summary: RunSummary, store: Store, out: Path) -> dict[str, Path]:
    """The run's outputs in ``out``: every record of a contract analysed (partial ones included) and
    every input left unfinished, whatever the run's status."""
    records = [item["result"] for item in summary.results]
    return write_outputs(records, unfinished(store, summary), Path(out), run=store.get_run(summary.run_id))


def unfinished(store: Store, summary: RunSummary) -> list[dict]:
    """Every input of the run that is not fully analysed, and why (for failed.jsonl and the report)."""
    why = {"stopped": f"not analysed: the run stopped ({summary.reason}); resume it to finish"}
    rows = []
    for row in store.documents(summary.run_id):
        if row["status"] in ("failed", "partial", "stopped"):
            rows.append({"path": row["path"], "status": row["status"],
                         "error": row["error"] or why.get(row["status"], row["status"])})
    return rows
