"""What the contract analyzer costs with an LM: the cascade vs a full read vs the seed's design.

    python bench/contracts_cost.py [--limit N] [--no-curve]

Data: the 409 CUAD contracts of ../shared/data/cuad (CC BY 4.0, The Atticus Project). Every design
runs against the loopback OpenAI-compatible server of tests/support, which counts tokens as
4 characters each, with an **oracle** LM: it answers exactly the annotated passages that lie wholly
inside the text it was shown (for the cascade: inside an excerpt, in a category suspected there).
So the tables show what each design *can* find and what it pays for the chance: passages reaching
the output (the recall of a perfect reader), prompt and completion tokens and LM calls per contract.

- **seed**: the seed's ``LegalContractAnalyzer`` as written in rlm-production-patterns.md (semantic
  chunks of 2,500 words, one ``ChainOfThought`` per chunk with the running "Clauses so far"
  context, one summary call), one contract after another on 8 threads. Its clauses are strings
  without categories, so a passage reaches its output when the passage's text is in one of them
  (more lenient than the rest, which need the right category).
- **full read**: ``--read all`` with a range of chunk sizes and overlaps.
- **cascade**: ``--read candidates`` (the default with an LM). Honest: each contract is scored by
  the finder trained without its fold (out-of-fold scores of 5-fold cross-validation grouped by
  contract, as bench/finder_cv.py) and with thresholds chosen on the other folds only.
- **finder alone**: ``--lm none``, no LM call at all (its findings are narrowed to their sentences; a
  passage counts as reached when it lies inside the passage a finding of its category was found in).

Out-of-fold scores are bench/finder_cv.py's cache (computed on first use, ~6 min on one core).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlmpipe.offline import configure_offline_defaults  # noqa: E402

configure_offline_defaults()
import dspy  # noqa: E402
import numpy as np  # noqa: E402
from _results import machine, write_section  # noqa: E402
from cuad_eval import Oracle, contract_path, load_cuad, norm, reached  # noqa: E402
from finder_cv import CHOSEN, FOLDS, oof  # noqa: E402

from rlmpipe.apps.contracts.cascade import candidate_windows  # noqa: E402
from rlmpipe.apps.contracts.categories import NAMES  # noqa: E402
from rlmpipe.apps.contracts.finder import ClauseFinder  # noqa: E402
from rlmpipe.apps.contracts.passages import passages  # noqa: E402
from rlmpipe.apps.contracts.training import narrowing  # noqa: E402
from rlmpipe.apps.contracts.training.thresholds import cv_thresholds  # noqa: E402
from rlmpipe.apps.contracts.pipeline import (  # noqa: E402
    DEFAULT_BATCH_TOKENS, DEFAULT_CHUNKING, DEFAULT_CONTEXT_CHARS, DEFAULT_RECALL, ContractsPipeline)
from rlmpipe.chunking import ChunkingConfig  # noqa: E402
from rlmpipe.ingest import open_document  # noqa: E402
from rlmpipe.lm.models import ModelChoice, make_lm  # noqa: E402
from rlmpipe.lm.none import NoLM  # noqa: E402
from rlmpipe.runtime.runner import RunOptions, execute  # noqa: E402
from tests.support.contract_replies import review_excerpts  # noqa: E402
from tests.support.openai_server import OpenAIServer  # noqa: E402
from tests.support.replies import user_text  # noqa: E402
from tests.support.scripted_lm import chat_reply  # noqa: E402

CONCURRENCY = 8
FULL_READS = [(4096, 0), (4096, 128), (2048, 0), (2048, 128), (1024, 128), (1024, 0), (512, 64)]
CURVE_LEVELS = ["recall0.85", "recall0.90", "recall0.93", "recall0.95", "recall0.97", "recall0.99"]
CURVE_CONTEXT = [100, 150, 300]


# --- the honest finder: each contract scored by the model of the folds that did not see it -------------
class FoldFinder(ClauseFinder):
    """The shipped finder's interface over one contract's out-of-fold scores, thresholds and (for
    the finder alone) narrowing: its sentences' out-of-fold logits and the rule of the other folds."""

    def __init__(self, base: ClauseFinder, contract, rows: np.ndarray, thresholds: dict, sentences=None,
                 options=None):
        self.__dict__.update(base.__dict__)
        self._contract, self._rows = contract, rows
        self._thresholds = {kind: np.asarray(value, dtype=np.float64) for kind, value in thresholds.items()}
        self._sentences, self._options = sentences, options
        self._index = {(p.char_start, p.char_end): i for i, p in enumerate(contract.passages)}

    def score(self, blocks):
        expected = self._contract.passages
        for index, passage in enumerate(passages(blocks, max_chars=self.max_chars)):
            mine = expected[index]
            if (mine.char_start, mine.char_end) != (passage.char_start, passage.char_end):
                raise RuntimeError(f"{self._contract.contract_id}: passage {index} differs from training's")
            yield passage, self._rows[index]

    def narrow(self, passage, k):
        if self._sentences is None:
            return [(passage.char_start, passage.char_end)]
        index = self._index[(passage.char_start, passage.char_end)]
        spans, logits = self._sentences
        return narrowing.spans(self._contract, spans[index], logits[index], k, self._options[k])


class Honest:
    """Out-of-fold scores, fold-honest thresholds and narrowing for every contract, by path."""

    def __init__(self, contracts, *, per_category: bool = False, perfect: bool = False):
        corpus, scored, _ = oof(CHOSEN)
        scores = scored.passages
        thresholds = cv_thresholds(corpus, scores, FOLDS)
        if per_category:  # the rule before the selection threshold: each category's recall threshold
            thresholds = [{kind: t for kind, t in fold.items() if not kind.startswith("select")} for fold in thresholds]
        if perfect:  # a finder that knows the answers: 1 on the passages an annotation overlaps, for its category
            scores = [perfect_scores(c, s.shape) for c, s in zip(corpus, scores)]
            thresholds = [{kind: np.full(len(t), 0.5) for kind, t in fold.items()} for fold in thresholds]
        found = [narrowing.findings_of(s, t) for s, t in zip(scored.passages, thresholds)]
        table = narrowing._outcomes(corpus, scored, found)
        fold = np.arange(len(corpus)) % FOLDS
        options = [[narrowing.options(k)[narrowing._best([r for r in table.get(k, []) if fold[r[0]] != f], k)]
                    for k in range(len(NAMES))] for f in range(FOLDS)]
        wanted = {c["contract_id"] for c in contracts}
        base = ClauseFinder.load()
        self.by_path = {
            str(contract_path(c.contract_id)): FoldFinder(base, c, s, t, (spans, logits), options[fold[i]])
            for i, (c, s, t, spans, logits) in enumerate(zip(corpus, scores, thresholds, scored.sentence_spans,
                                                             scored.sentence_logits))
            if c.contract_id in wanted}


def perfect_scores(contract, shape) -> np.ndarray:
    rows = np.zeros(shape)
    for k, _, _, first, last in contract.annotations:
        rows[first:last, k] = 1.0
    return rows


class HonestPipeline(ContractsPipeline):
    """The analyzer, each contract scored by its fold-honest finder."""

    def __init__(self, honest: Honest, **settings):
        self.honest = honest
        super().__init__(**settings)

    def finder(self):  # (what the settings are checked against: the honest thresholds' levels)
        return next(iter(self.honest.by_path.values()))

    def finder_for(self, document):
        return self.honest.by_path[str(document.path)]


# --- oracles ----------------------------------------------------------------------------------------------
class CascadeOracle:
    """Answers a review prompt with the annotated passages wholly inside each excerpt, in a suspected
    category (the excerpt is found by its text: windows are computed as the pipeline does)."""

    def __init__(self, contracts, annotations, honest: Honest, level: str, context_chars: int):
        self.windows: dict[str, tuple[str, int, int]] = {}
        for contract in contracts:
            cid = contract["contract_id"]
            path = contract_path(cid)
            finder = honest.by_path[str(path)]
            select, ask = finder.cascade_thresholds(level)
            for window in candidate_windows(open_document(path).blocks(), finder.score, finder.categories,
                                            select, ask=ask, context_chars=context_chars):
                self.windows[window.text.strip()] = (cid, window.char_start, window.char_end)
        self.annotations = annotations
        self.shown_chars = 0  # contract text in the excerpts (the rest of a prompt is instructions)
        self.lock = threading.Lock()

    def __call__(self, request: dict) -> str:
        text = user_text(request)
        if "[[ ## findings ## ]]" in text:
            return chat_reply(summary="(oracle run: no summary)")
        clauses = []
        for number, suspected, excerpt in review_excerpts(request):
            with self.lock:
                self.shown_chars += len(excerpt)
            where = self.windows.get(excerpt.strip())
            if where is None:
                continue
            cid, start, end = where
            clauses += [{"excerpt": number, "category": a["category"], "quote": a["text"]}
                        for a in self.annotations[cid]
                        if start <= a["start"] and a["end"] <= end and a["category"] in suspected]
        return chat_reply(clauses=clauses, risks=[], obligations=[])


# --- the seed's design, as written --------------------------------------------------------------------------
def semantic_chunks(text, max_chunk_size=3000):
    """rlm-production-patterns.md, as written."""
    sections = re.split(r"\n(?=#{1,4}\s)|(?:\n\n)", text)
    sections = [s.strip() for s in sections if s.strip()]
    chunks, current_chunk, current_size = [], [], 0
    for section in sections:
        section_size = len(section.split())
        if current_size + section_size > max_chunk_size and current_chunk:
            chunks.append({"text": "\n\n".join(current_chunk), "chunk_id": len(chunks), "sections": len(current_chunk)})
            current_chunk, current_size = [section], section_size
        else:
            current_chunk.append(section)
            current_size += section_size
    if current_chunk:
        chunks.append({"text": "\n\n".join(current_chunk), "chunk_id": len(chunks), "sections": len(current_chunk)})
    return chunks


class LegalContractAnalyzer(dspy.Module):
    """The seed's case study, as written (without its metrics object and prints)."""

    def __init__(self):
        self.extract_clauses = dspy.ChainOfThought(
            "contract_text, context -> clauses: list[str], risks: list[str], obligations: list[str]")
        self.summarize = dspy.ChainOfThought(
            "clauses: str, risks: str, obligations: str -> executive_summary: str, risk_score: float")

    def analyze_contract(self, filepath: str):
        text = Path(filepath).read_text(encoding="utf-8")
        chunks = semantic_chunks(text, max_chunk_size=2500)
        all_clauses, all_risks, all_obligations, context = [], [], [], ""
        for chunk in chunks:
            result = self.extract_clauses(contract_text=chunk["text"], context=context)
            all_clauses.extend(result.clauses)
            all_risks.extend(result.risks)
            all_obligations.extend(result.obligations)
            context = f"Clauses so far: {len(all_clauses)}, Risks: {len(all_risks)}"
        summary = self.summarize(clauses=json.dumps(all_clauses), risks=json.dumps(all_risks),
                                 obligations=json.dumps(all_obligations))
        return {"file": filepath, "clauses": all_clauses, "risks": all_risks, "obligations": all_obligations,
                "executive_summary": summary.executive_summary, "risk_score": summary.risk_score}


class SeedOracle:
    """Answers the seed's extraction prompt with the annotated passages inside its chunk."""

    def __init__(self, contracts, annotations):
        self.by_chunk: dict[str, list[str]] = {}
        for contract in contracts:
            cid = contract["contract_id"]
            text = contract_path(cid).read_text(encoding="utf-8")
            for chunk in semantic_chunks(text, max_chunk_size=2500):
                flat = norm(chunk["text"])
                self.by_chunk[chunk["text"].strip()] = [a["text"] for a in annotations[cid] if norm(a["text"]) in flat]

    def __call__(self, request: dict) -> str:
        text = user_text(request)
        if "[[ ## executive_summary ## ]]" in text and "[[ ## contract_text ## ]]" not in text:
            return chat_reply(reasoning="", executive_summary="(oracle run: no summary)", risk_score=50.0)
        match = re.search(r"\[\[ ## contract_text ## \]\]\n(.*?)\n\n\[\[ ## context ## \]\]", text, re.S)
        found = self.by_chunk.get(match.group(1).strip() if match else "", [])
        return chat_reply(reasoning="", clauses=found, risks=[], obligations=[])


# --- running a design against the server ------------------------------------------------------------------
def served(server: OpenAIServer, contracts: int) -> dict:
    calls = [c for c in server.chat_calls if c.served == "reply"]
    return {"calls": len(calls) / contracts, "prompt": sum(c.prompt_tokens for c in calls) / contracts,
            "completion": sum(c.completion_tokens for c in calls) / contracts,
            "unanswered": sum(1 for c in server.chat_calls if c.served != "reply")}


def run_seed(contracts, annotations) -> dict:
    started = time.perf_counter()
    with OpenAIServer() as server:
        server.set_default(SeedOracle(contracts, annotations))
        server.set_usage(count="chars/4")
        lm = dspy.LM("openai/test-model", api_base=server.base_url, api_key="unused", cache=False, num_retries=0)
        analyzer = LegalContractAnalyzer()

        def one(contract):
            with dspy.context(lm=lm):
                return analyzer.analyze_contract(str(contract_path(contract["contract_id"])))

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(one, contracts))
        totals = served(server, len(contracts))
    hit = total = 0
    for contract, result in zip(contracts, results):
        outputs = [norm(str(clause)) for clause in result["clauses"]]
        for annotation in annotations[contract["contract_id"]]:
            total += 1
            hit += any(norm(annotation["text"]) in output for output in outputs)
    return {**totals, "reached": hit / total, "seconds": time.perf_counter() - started}


def run_engine(pipeline, oracle, contracts, annotations) -> dict:
    started = time.perf_counter()
    with OpenAIServer() as server, tempfile.TemporaryDirectory() as workspace:
        server.set_default(oracle)
        server.set_usage(count="chars/4")
        lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url), timeout=60)
        summary = execute(pipeline, [str(contract_path(c["contract_id"])) for c in contracts], lm,
                          options=RunOptions(concurrency=CONCURRENCY, workspace=Path(workspace)))
        totals = served(server, len(contracts))
    failed = summary.documents.get("failed", 0)
    return {**totals, "reached": share_reached(summary, contracts, annotations),
            "seconds": time.perf_counter() - started, "failed": failed}


def share_reached(summary, contracts, annotations) -> float:
    """The share of annotated passages an output clause of their category covers (cuad_eval.reached)."""
    by_path = {item["path"]: item["result"] for item in summary.results}
    hit = total = 0
    for contract in contracts:
        record = by_path.get(str(contract_path(contract["contract_id"]))) or {"clauses": []}
        for annotation in annotations[contract["contract_id"]]:
            total += 1
            hit += reached(annotation, record["clauses"])
    return hit / total


def cascade(honest, contracts, annotations, level: str, context_chars: int, batch_tokens: int | None = None) -> dict:
    pipeline = HonestPipeline(honest, mode="cascade", recall=level, context_chars=context_chars,
                              batch_tokens=batch_tokens or DEFAULT_BATCH_TOKENS)
    oracle = CascadeOracle(contracts, annotations, honest, level, context_chars)
    result = run_engine(pipeline, oracle, contracts, annotations)
    return {**result, "shown": oracle.shown_chars / 4 / len(contracts)}


def finder_alone(honest, contracts, annotations) -> dict:
    pipeline = HonestPipeline(honest, mode="finder")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workspace:
        summary = execute(pipeline, [str(contract_path(c["contract_id"])) for c in contracts], NoLM(),
                          options=RunOptions(concurrency=2, workspace=Path(workspace)))
    return {"calls": 0.0, "prompt": 0.0, "completion": 0.0, "unanswered": 0,
            "reached": share_reached(summary, contracts, annotations), "seconds": time.perf_counter() - started}


def row(label: str, result: dict, seed_prompt: float) -> str:
    return (f"| {label} | {100 * result['reached']:.1f}% | {result['prompt']:,.0f} | {result['completion']:,.0f} | "
            f"{result['calls']:.1f} | {result['prompt'] / seed_prompt:.2f}x | {result['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="only the first N contracts (a quick look; not written)")
    parser.add_argument("--no-curve", action="store_true", help="skip the threshold x context curve")
    args = parser.parse_args()
    contracts, annotations, _ = load_cuad(args.limit)
    n = len(contracts)
    log = lambda label, r: print(f"{label}: reached {100 * r['reached']:.1f}%, prompt {r['prompt']:,.0f}/contract, "  # noqa: E731
                                 f"{r['calls']:.1f} calls, {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    honest = Honest(contracts)
    results: dict[str, dict] = {}
    results["seed"] = run_seed(contracts, annotations)
    log("seed", results["seed"])
    for tokens, overlap in FULL_READS:
        chunking = ChunkingConfig(strategy="structure", chunk_tokens=tokens, overlap=overlap)
        label = f"full read, structure {tokens}/{overlap}" + (" (default)" if chunking == DEFAULT_CHUNKING else "")
        label += " (1.x default)" if (tokens, overlap) == (1024, 128) else ""
        results[label] = run_engine(ContractsPipeline(chunking, mode="full"),
                                    Oracle(contracts, annotations, chunking), contracts, annotations)
        log(label, results[label])
    label = f"cascade {DEFAULT_RECALL}, context {DEFAULT_CONTEXT_CHARS}, {DEFAULT_BATCH_TOKENS} tokens a call (default)"
    results[label] = cascade(honest, contracts, annotations, DEFAULT_RECALL, DEFAULT_CONTEXT_CHARS)
    log(label, results[label])
    wide = f"cascade {DEFAULT_RECALL}, context {DEFAULT_CONTEXT_CHARS}, {2 * DEFAULT_BATCH_TOKENS} tokens a call"
    results[wide] = cascade(honest, contracts, annotations, DEFAULT_RECALL, DEFAULT_CONTEXT_CHARS,
                            2 * DEFAULT_BATCH_TOKENS)
    log(wide, results[wide])
    name = f"cascade with a perfect finder (the annotated passages only), context {DEFAULT_CONTEXT_CHARS}"
    results[name] = cascade(Honest(contracts, perfect=True), contracts, annotations, DEFAULT_RECALL,
                            DEFAULT_CONTEXT_CHARS)
    log(name, results[name])
    per_category = Honest(contracts, per_category=True)
    for level in ("recall0.95", DEFAULT_RECALL):
        name = f"cascade {level}, context {DEFAULT_CONTEXT_CHARS}, per-category thresholds (the earlier rule)"
        if name not in results:
            results[name] = cascade(per_category, contracts, annotations, level, DEFAULT_CONTEXT_CHARS)
            log(name, results[name])
    results["finder alone"] = finder_alone(honest, contracts, annotations)
    log("finder alone", results["finder alone"])
    curve = {}
    if not args.no_curve:
        for level in CURVE_LEVELS:
            for context in CURVE_CONTEXT:
                if (level, context) == (DEFAULT_RECALL, DEFAULT_CONTEXT_CHARS):
                    curve[level, context] = results[label]
                    continue
                curve[level, context] = cascade(honest, contracts, annotations, level, context)
                log(f"cascade {level} context {context}", curve[level, context])
    seed = results["seed"]["prompt"]
    default = results[label]
    keeps, cheap = default["reached"] >= 0.95, default["prompt"] <= 0.6 * seed
    lines = [
        "## Contracts: what an LM costs — the cascade vs a full read vs the seed's design",
        "",
        f"{machine()}. {n} CUAD contracts, {sum(len(annotations[c['contract_id']]) for c in contracts):,} annotated "
        f"passages. Command: `python bench/contracts_cost.py`. Tokens: the loopback server's count (4 characters "
        "a token); the LM is an oracle answering exactly the annotated passages wholly inside what it was shown "
        "(the cascade: in a category it was asked about), so *reached* is the recall of a perfect reader. The "
        "cascade's finder is fold-honest (each contract scored by the model of the four folds without it, "
        "thresholds chosen on those folds).",
        "",
        "| design | passages reaching the output | prompt tokens / contract | completion tokens / contract | "
        "LM calls / contract | prompt vs seed | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [row(name, result, seed) for name, result in results.items()]
    lines += ["", f"**Target (issue 29): the cascade keeps >= 95% of annotated passages at <= 0.6x the seed design's prompt "
                  f"tokens: {100 * default['reached']:.1f}% at {default['prompt'] / seed:.2f}x — "
                  f"{'MET' if keeps and cheap else 'NOT MET'}.**", "",
              "The seed's clauses carry no category, so its column counts a passage found in any output string "
              "(the others need the right category as well). A passage is shown to the LM when its best score "
              "over the 41 categories clears one selection threshold (`selectX`, chosen on the other folds to "
              "keep X of their annotated passages) and asked about every category clearing it or the generous "
              f"per-category `recall0.99`; the default's prompt holds {default['shown']:,.0f} tokens of contract "
              f"text a contract ({100 * default['shown'] / default['prompt']:.0f}%), the rest is instructions, "
              "category explanations, output schemas and the summary call. The *perfect finder* row is the "
              "design's floor: a finder that flags exactly the passages the experts annotated, in their "
              "categories, still pays for their context, the instructions and the summary. The earlier rule (per-category "
              "recall thresholds, chosen to keep X of all pieces at the fewest characters) is shown for "
              "comparison."]
    if curve:
        lines += ["", "The trade-off as the threshold and the context move (cascade; prompt tokens per contract, "
                      "passages reaching the output):", "",
                  "| recall level | " + " | ".join(f"context {c}" for c in CURVE_CONTEXT) + " |",
                  "|---|" + "---|" * len(CURVE_CONTEXT)]
        for level in CURVE_LEVELS:
            cells = [f"{100 * curve[level, c]['reached']:.1f}% at {curve[level, c]['prompt']:,.0f} "
                     f"({curve[level, c]['prompt'] / seed:.2f}x)" for c in CURVE_CONTEXT]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.limit is None:
        write_section("contracts-cost", text)


if __name__ == "__main__":
    main()
