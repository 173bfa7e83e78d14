"""CUAD evaluation of the contract analyzer (data: ../shared/data/cuad, CC BY 4.0, The Atticus Project).

    python bench/cuad_eval.py oracle [--quick]            # 1. pipeline loss with an oracle extractor
    python bench/cuad_eval.py model --lm local --sample 5 # 2. a real model: P/R/F1 per category, overlap
                                                          # 3. (both) quotes rejected by verification

1. **Pipeline loss.** The LM is replaced by an oracle that, for the chunk it is shown, returns
   exactly the CUAD-annotated passages lying wholly inside that chunk. Everything else is the real
   pipeline (ingest, chunking, the run engine, the DSPy adapter, evidence verification, merging).
   A passage *reaches the output* when an output clause of its category covers its offsets (for a
   text that occurs several times in the contract, an output clause with the same text counts:
   CUAD's offsets for those are the first occurrence). Reported per category and overall, per
   chunking strategy and size.
2. **A real model.** Contract-level precision/recall/F1 per category against the experts' labels
   (Yes/No for 33 categories; "present" = a non-empty answer for the 8 detail categories), and, for
   clauses found in categories the contract has, the character overlap (IoU) with the best-matching
   annotated passage. Works with any ``--lm``; the embedded model's numbers are reported as they are.
3. **Invented quotes**: quotes proposed by the model that evidence verification rejected.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rlmpipe  # noqa: E402
from rlmpipe.offline import configure_offline_defaults  # noqa: E402

configure_offline_defaults()  # before dspy/litellm load
from _results import write_section  # noqa: E402

from tests.support.cuad import cuad_dir  # noqa: E402

CUAD = cuad_dir() or ROOT.parent / "shared" / "data" / "cuad"
DETAIL_CATEGORIES = {"Document Name", "Parties", "Agreement Date", "Effective Date", "Expiration Date",
                     "Renewal Term", "Notice Period To Terminate Renewal", "Governing Law"}


def load_cuad(limit: int | None = None):
    contracts = [json.loads(line) for line in open(CUAD / "contracts.jsonl", encoding="utf-8")]
    contracts.sort(key=lambda c: c["contract_id"])
    if limit:
        contracts = contracts[:limit]
    wanted = {c["contract_id"] for c in contracts}
    annotations = collections.defaultdict(list)
    for line in open(CUAD / "annotations.jsonl", encoding="utf-8"):
        item = json.loads(line)
        if item["contract_id"] in wanted:
            annotations[item["contract_id"]].append(item)
    labels = collections.defaultdict(dict)
    for line in open(CUAD / "contract_labels.jsonl", encoding="utf-8"):
        item = json.loads(line)
        if item["contract_id"] in wanted:
            labels[item["contract_id"]][item["category"]] = item["answer"]
    return contracts, annotations, labels


def contract_path(contract_id: str) -> Path:
    return CUAD / "contracts" / f"{contract_id}.txt"


def norm(text: str) -> str:
    return " ".join(text.split()).lower()


def reached(annotation: dict, clauses: list[dict]) -> bool:
    """Whether an output clause of the annotation's category holds it: its evidence, or (for the
    clause finder's findings, narrowed to their sentences) the passage the clause was found in."""
    for clause in clauses:
        if clause["category"] != annotation["category"]:
            continue
        for evidence in (clause["evidence"], clause.get("passage")):
            if evidence is None:
                continue
            if evidence["char_start"] <= annotation["start"] and annotation["end"] <= evidence["char_end"]:
                return True
            if annotation.get("n_occurrences", 1) > 1 and norm(annotation["text"]) in norm(evidence["quote"]):
                return True
    return False


def machine() -> str:
    import dspy

    return (f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"dspy {dspy.__version__}, rlmpipe {rlmpipe.__version__}")


# --- 1. the oracle -----------------------------------------------------------------------------------
class Oracle:
    """Answers an extraction prompt with the CUAD passages wholly inside the excerpt it was shown."""

    def __init__(self, contracts, annotations, chunking):
        from rlmpipe.chunking import chunk_document
        from rlmpipe.ingest import open_document

        self.by_excerpt: dict[str, list[dict]] = {}
        for contract in contracts:
            cid = contract["contract_id"]
            for chunk in chunk_document(open_document(contract_path(cid)), chunking):
                inside = [a for a in annotations[cid] if chunk.char_start <= a["start"] and a["end"] <= chunk.char_end]
                self.by_excerpt.setdefault(chunk.text, inside)

    def __call__(self, request: dict) -> str:
        from tests.support.scripted_lm import chat_reply

        text = "\n".join(m["content"] for m in request["messages"] if m["role"] == "user")
        if "[[ ## findings ## ]]" in text:
            return chat_reply(summary="(oracle run: no summary)")
        match = re.search(r"\[\[ ## excerpt ## \]\]\n(.*?)\n\nRespond with", text, re.S)
        excerpt = match.group(1) if match else ""
        found = self.by_excerpt.get(excerpt)
        if found is None:  # DSPy may strip the field: try without surrounding whitespace
            found = next((v for k, v in self.by_excerpt.items() if k.strip() == excerpt.strip()), [])
        clauses = [{"category": a["category"], "quote": a["text"]} for a in found]
        return chat_reply(clauses=clauses, risks=[], obligations=[])


def run_oracle(contracts, annotations, chunking, workspace: Path) -> dict:
    from rlmpipe.apps.contracts import ContractsPipeline
    from rlmpipe.runtime.runner import RunOptions, execute
    from tests.support.scripted_lm import ScriptedLM

    oracle = Oracle(contracts, annotations, chunking)
    lm = ScriptedLM(default=oracle, usage=(1, 1))
    started = time.perf_counter()
    summary = execute(ContractsPipeline(chunking), [str(contract_path(c["contract_id"])) for c in contracts], lm,
                      options=RunOptions(concurrency=4, workspace=workspace))
    seconds = time.perf_counter() - started
    by_path = {item["path"]: item["result"] for item in summary.results}
    per_category = collections.defaultdict(lambda: [0, 0])
    rejected = chunks = 0
    for contract in contracts:
        record = by_path.get(str(contract_path(contract["contract_id"])))
        clauses = record["clauses"] if record else []
        if record:
            rejected += record["evidence"]["rejected"]
            chunks += record["chunks"]
        for annotation in annotations[contract["contract_id"]]:
            counts = per_category[annotation["category"]]
            counts[1] += 1
            counts[0] += reached(annotation, clauses)
    total = [sum(v[0] for v in per_category.values()), sum(v[1] for v in per_category.values())]
    return {"per_category": dict(per_category), "total": total, "rejected": rejected, "chunks": chunks,
            "failed": summary.documents.get("failed", 0), "seconds": seconds}


def oracle_main(args) -> str:
    from rlmpipe.apps.contracts import DEFAULT_CHUNKING
    from rlmpipe.chunking import ChunkingConfig

    contracts, annotations, _ = load_cuad(40 if args.quick else None)
    settings = [DEFAULT_CHUNKING] + ([] if args.quick else [
        ChunkingConfig(strategy="structure", chunk_tokens=512), ChunkingConfig(strategy="structure", chunk_tokens=1024),
        ChunkingConfig(strategy="structure", chunk_tokens=2048),
        ChunkingConfig(strategy="fixed", chunk_tokens=512), ChunkingConfig(strategy="fixed", chunk_tokens=1024),
        ChunkingConfig(strategy="fixed", chunk_tokens=2048)])
    results = []
    for chunking in settings:
        with tempfile.TemporaryDirectory() as workspace:
            result = run_oracle(contracts, annotations, chunking, Path(workspace))
        label = f"{chunking.strategy} {chunking.chunk_tokens}" + (f" overlap {chunking.overlap}" if chunking.overlap else "")
        if chunking == DEFAULT_CHUNKING:
            label += " (default)"
        results.append((label, chunking, result))
        print(f"{label}: {100 * result['total'][0] / result['total'][1]:.2f}% of {result['total'][1]} passages "
              f"({result['seconds']:.0f}s)", flush=True)
    default = results[0][2]
    share = default["total"][0] / default["total"][1]
    lines = [
        f"## CUAD: pipeline loss with an oracle extractor{' (quick)' if args.quick else ''}",
        "",
        f"{machine()}. {len(contracts)} contracts, {default['total'][1]} annotated passages. "
        f"Command: `python bench/cuad_eval.py oracle{' --quick' if args.quick else ''}`.",
        "",
        "The LM is replaced by an oracle returning the annotated passages wholly inside each chunk; "
        "the rest is the real pipeline (chunking, engine, adapter, evidence verification, merge).",
        "",
        "| chunking | passages reaching the output | chunks (LM calls) | rejected quotes | failed contracts |",
        "|---|---|---|---|---|",
    ]
    for label, _, result in results:
        lines.append(f"| {label} | {100 * result['total'][0] / result['total'][1]:.2f}% | {result['chunks']} | "
                     f"{result['rejected']} | {result['failed']} |")
    lines += ["", f"**Target: >= 99% overall with the default settings: {100 * share:.2f}% "
                  f"{'PASS' if share >= 0.99 else 'FAIL'}.**", "",
              "Per category, default settings:", "", "| category | passages | reaching the output |", "|---|---|---|"]
    for category, (hit, total) in sorted(default["per_category"].items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {category} | {total} | {100 * hit / total:.1f}% |")
    return "\n".join(lines)


# --- 2. a real model ---------------------------------------------------------------------------------
def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union else 0.0


def model_main(args) -> str:
    from rlmpipe.apps.contracts import ContractsPipeline, DEFAULT_CHUNKING
    from rlmpipe.apps.contracts.categories import NAMES
    from rlmpipe.lm.models import choose_model, make_lm
    from rlmpipe.runtime.runner import RunOptions, execute

    contracts, annotations, labels = load_cuad()
    rng = random.Random(args.seed)
    pool = [c for c in contracts if c["n_chars"] <= args.max_chars]
    sample = sorted(rng.sample(pool, min(args.sample, len(pool))), key=lambda c: c["contract_id"])
    choice = choose_model(args.lm, args.api_base, args.model_path)
    lm = make_lm(choice, max_tokens=1024 if choice.is_local else None)
    options = RunOptions(concurrency=args.concurrency, workspace=Path(args.workspace), max_cost=args.max_cost)
    if choice.is_local:
        import dspy

        options.adapter = dspy.JSONAdapter()
    started = time.perf_counter()
    summary = execute(ContractsPipeline(DEFAULT_CHUNKING), [str(contract_path(c["contract_id"])) for c in sample], lm,
                      options=options)
    seconds = time.perf_counter() - started
    by_path = {item["path"]: item["result"] for item in summary.results}
    counts = {name: collections.Counter() for name in NAMES}
    overlaps = collections.defaultdict(list)
    proposed = rejected = 0
    for contract in sample:
        cid = contract["contract_id"]
        record = by_path.get(str(contract_path(cid)))
        if record is None:
            continue
        proposed += record["evidence"]["proposed"]
        rejected += record["evidence"]["rejected"]
        found = {c["category"] for c in record["clauses"]}
        for name in NAMES:
            answer = labels[cid].get(name, "")
            truth = answer == "Yes" if name not in DETAIL_CATEGORIES else bool(answer.strip())
            counts[name]["tp" if truth and name in found else "fp" if name in found else "fn" if truth else "tn"] += 1
        for clause in record["clauses"]:
            spans = [(a["start"], a["end"]) for a in annotations[cid] if a["category"] == clause["category"]]
            if spans:
                ev = clause["evidence"]
                overlaps[clause["category"]].append(max(iou((ev["char_start"], ev["char_end"]), s) for s in spans))
    lines = [
        f"## CUAD: the analyzer with a real model ({choice.model})", "",
        f"{machine()}. {len(sample)} contracts sampled (seed {args.seed}, at most {args.max_chars:,} characters), "
        f"{summary.documents.get('done', 0)} analysed, {summary.documents.get('failed', 0)} failed, "
        f"{seconds:.0f}s. Command: `python bench/cuad_eval.py model --lm {args.lm or choice.model} "
        f"--sample {args.sample}`.", "",
        f"Quotes proposed by the model: {proposed}; rejected by evidence verification (not in the contract): "
        f"{rejected} ({100 * rejected / proposed:.0f}%)." if proposed else "The model proposed no quotes.", "",
        "Contract-level precision / recall / F1 against the experts' labels (categories with any positive or "
        "any prediction), and mean character IoU of found clauses with the best-matching annotated passage:", "",
        "| category | TP | FP | FN | precision | recall | F1 | passage IoU |", "|---|---|---|---|---|---|---|---|",
    ]
    totals = collections.Counter()
    for name in NAMES:
        c = counts[name]
        totals.update(c)
        if not (c["tp"] or c["fp"] or c["fn"]):
            continue
        precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        mean_iou = sum(overlaps[name]) / len(overlaps[name]) if overlaps[name] else None
        lines.append(f"| {name} | {c['tp']} | {c['fp']} | {c['fn']} | {precision:.2f} | {recall:.2f} | {f1:.2f} | "
                     + (f"{mean_iou:.2f}" if mean_iou is not None else "-") + " |")
    precision = totals["tp"] / (totals["tp"] + totals["fp"]) if totals["tp"] + totals["fp"] else 0.0
    recall = totals["tp"] / (totals["tp"] + totals["fn"]) if totals["tp"] + totals["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    lines.append(f"| **all (micro)** | {totals['tp']} | {totals['fp']} | {totals['fn']} | {precision:.2f} | "
                 f"{recall:.2f} | {f1:.2f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    oracle = sub.add_parser("oracle")
    oracle.add_argument("--quick", action="store_true", help="40 contracts, default settings only")
    model = sub.add_parser("model")
    model.add_argument("--lm", default=None)
    model.add_argument("--api-base", default=None)
    model.add_argument("--model-path", default=None)
    model.add_argument("--sample", type=int, default=5)
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--max-chars", type=int, default=20_000)
    model.add_argument("--concurrency", type=int, default=4)
    model.add_argument("--max-cost", type=float, default=None)
    model.add_argument("--workspace", default=str(ROOT / "bench" / ".cache" / "cuad-runs"))
    model.add_argument("--section", default=None, help="RESULTS.md section name (default: cuad-model-<lm>)")
    args = parser.parse_args()
    if args.mode == "oracle":
        markdown = oracle_main(args)
        write_section("cuad-oracle" + ("-quick" if args.quick else ""), markdown)
    else:
        markdown = model_main(args)
        name = args.section or "cuad-model-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", args.lm or "local")
        write_section(name, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
