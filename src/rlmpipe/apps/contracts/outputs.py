"""The analyzer's files: contracts.jsonl (+ its JSON Schema), clauses.csv, failed.jsonl, report.html.

Each file is replaced whole (:mod:`rlmpipe.atomic`): a crash while outputs are rewritten leaves the
previous complete version, never a truncated one. ``failed.jsonl`` lists every input that is not
fully analysed: failed, partial (some chunks failed: its record is in contracts.jsonl too, marked
``partial``) or not analysed because the run stopped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.schema import ContractRecord
from rlmpipe.atomic import open_atomic, write_text_atomic


def write_outputs(records: list[dict], failures: list[dict], out: Path, *, run: dict | None = None) -> dict[str, Path]:
    """Write every output for a corpus; ``records`` are ContractRecord dicts, ``failures`` {path, status,
    error} (status: failed, partial or stopped)."""
    out.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: r["path"])
    paths = {
        "contracts": out / "contracts.jsonl",
        "schema": out / "contracts.schema.json",
        "clauses": out / "clauses.csv",
        "failed": out / "failed.jsonl",
    }
    with open_atomic(paths["contracts"]) as handle:
        for record in records:
            handle.write(json.dumps(ContractRecord.model_validate(record).model_dump(), ensure_ascii=False) + "\n")
    write_text_atomic(paths["schema"], json.dumps(ContractRecord.model_json_schema(), indent=2) + "\n")
    with open_atomic(paths["clauses"], newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "doc_id", "category", "present", "score", "clauses", "quotes", "offsets"])
        for record in records:
            by_category: dict[str, list[dict]] = {}
            for clause in record["clauses"]:
                by_category.setdefault(clause["category"], []).append(clause)
            for name in NAMES:
                found = [clause["evidence"] for clause in by_category.get(name, [])]
                scores = [clause["score"] for clause in by_category.get(name, []) if clause.get("score") is not None]
                writer.writerow([  # present as the JSON says it; score: the category's best finder score
                    record["path"], record["doc_id"], name, "true" if found else "false",
                    max(scores) if scores else "", len(found),
                    " | ".join(" ".join(e["quote"].split()) for e in found),
                    ";".join(f"{e['char_start']}-{e['char_end']}" for e in found),
                ])
    with open_atomic(paths["failed"]) as handle:
        for failure in sorted(failures, key=lambda f: f["path"]):
            handle.write(json.dumps(failure, ensure_ascii=False) + "\n")
    from rlmpipe.apps.contracts.report import write_corpus_report

    paths["report"] = write_corpus_report(records, failures, out, run=run)
    return paths
