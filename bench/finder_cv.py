"""The clause finder: model selection by 5-fold cross-validation grouped by contract, its findings,
the CUAD paper's measure, and its speed.

    python bench/finder_cv.py cv [--variants NAME,...]   # variants table + the chosen model  -> "finder"
    python bench/finder_cv.py findings                   # what --lm none shows, then vs now   -> "finder-extras"
    python bench/finder_cv.py cuad                       # the CUAD paper's span measure       -> "finder-cuad"
    OMP_NUM_THREADS=1 python bench/finder_cv.py speed    # the shipped finder, one core        -> "finder-speed"

Data: ../shared/data/cuad (409 CUAD contracts, CC BY 4.0, The Atticus Project). Folds: contracts
sorted by id, fold = rank mod 5, so a contract's passages are never split between training and
test. Every threshold and narrowing rule used on fold k was chosen on the out-of-fold scores of the
other four folds only (``training.thresholds.cv_thresholds``, ``training.narrowing.cv_findings``),
so no number below was tuned on the contracts it scores. Shipped configurations are scored through
the package's own training and streaming code (``training.train.out_of_fold``); research variants
that need code the package does not ship (rlmpipe 0.2.0's paragraphs, heading features) through
design matrices here.

Out-of-fold scores are cached under $RLMPIPE_BENCH_CACHE (default bench/.cache)/finder, by variant
configuration and code version (delete to recompute).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlmpipe.offline import configure_offline_defaults  # noqa: E402

configure_offline_defaults()  # before anything loads litellm
import numpy as np  # noqa: E402
from _results import machine, write_section  # noqa: E402

from rlmpipe.apps.contracts.categories import NAMES  # noqa: E402
from rlmpipe.apps.contracts.passages import Passage  # noqa: E402
from rlmpipe.apps.contracts.training import narrowing  # noqa: E402
from rlmpipe.apps.contracts.training import train as ft  # noqa: E402
from rlmpipe.apps.contracts.training.data import load_corpus  # noqa: E402
from rlmpipe.apps.contracts.training.metrics import FindingsScore, evaluate  # noqa: E402
from rlmpipe.apps.contracts.training.thresholds import cv_thresholds  # noqa: E402
from tests.support.cuad import cuad_dir  # noqa: E402

CUAD = cuad_dir() or ROOT.parent / "shared" / "data" / "cuad"
CACHE = Path(os.environ.get("RLMPIPE_BENCH_CACHE", ROOT / "bench" / ".cache")) / "finder"
FOLDS = 5
#: bump when scoring, cutting or labelling code changes, so cached out-of-fold scores are not reused
CODE_VERSION = 3
CHOSEN = "structure"
#: rlmpipe 0.2.0's finder configuration (bench/RESULTS.md before this change: "trunc6-mc2")
TODAY = {"max_chars": 1000, "ngram_max": 2, "min_df": 2, "min_contracts": 2, "max_features": 200_000,
         "truncate": 6, "sublinear": True, "C": 16.0, "context": False, "context_scale": 0.5}

# name -> (what changes, overrides of training.train.DEFAULT_CONFIG, how it is scored)
VARIANTS: dict[str, tuple[str, dict, str]] = {
    "paragraphs": ("rlmpipe 0.2.0's finder: paragraphs (blank lines), cut at 1,000 characters; findings are "
                   "whole passages", TODAY, "paragraphs"),
    "structure": ("passages that follow the structure (sections, headings, items); findings narrowed to "
                  "their sentences", {}, "package"),
    "C64": ("structure, C=64", {"C": 64.0}, "package"),
    "context": ("structure + the neighbouring passages' words (0.5 x previous + next)", {"context": True},
                "package"),
    "heading": ("structure + the words of the headings a passage is under (own TF-IDF block)", {}, "heading"),
}


# --- rlmpipe 0.2.0's passages, kept to measure against ---------------------------------------------------
_BLANK = re.compile(r"\n[ \t\f\v\r]*\n")
_SENTENCE = re.compile(r"[.;:!?][\"')\]]*\s+")


def paragraphs(text: str, max_chars: int) -> list[Passage]:
    """The passages of rlmpipe 0.2.0 (apps/contracts/passages.py at 554e628), for a whole text:
    paragraphs between blank lines, one longer than ``max_chars`` cut greedily at its last line
    break, else sentence end, else space in the second half of the window."""
    out = []
    bounds = [0] + [x for m in _BLANK.finditer(text) for x in (m.start(), m.end())] + [len(text)]
    for start, end in zip(bounds[::2], bounds[1::2]):
        while True:
            while start < end and text[start].isspace():
                start += 1
            stop = end
            while stop > start and text[stop - 1].isspace():
                stop -= 1
            if stop - start <= max_chars:
                if stop > start:
                    out.append(Passage(start, stop, text[start:stop]))
                break
            limit, low = start + max_chars, start + max_chars // 2
            cut = text.rfind("\n", low, limit) + 1
            if not cut:
                cut = max((m.end() for m in _SENTENCE.finditer(text, low, limit)), default=-1)
            if cut == -1:
                cut = max((m.end() for m in re.finditer(r"\s+", text[low:limit])), default=-1)
                cut = low + cut if cut != -1 else limit
            stop = cut
            while text[stop - 1].isspace():
                stop -= 1
            out.append(Passage(start, stop, text[start:stop]))
            start = cut
    return out


# --- out-of-fold scores, cached ------------------------------------------------------------------------
_CORPORA: dict[tuple, list] = {}


def corpus_for(how: str, config: dict):
    key = (how == "paragraphs", config["max_chars"])
    if key not in _CORPORA:
        _CORPORA[key] = load_corpus(CUAD, max_chars=config["max_chars"], cut=paragraphs if key[0] else None)
    return _CORPORA[key]


def _key(name: str) -> Path:
    _, overrides, how = VARIANTS[name]
    config = {**ft.DEFAULT_CONFIG, **overrides}
    digest = hashlib.sha256(json.dumps({"config": config, "how": how, "folds": FOLDS, "code": CODE_VERSION},
                                       sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / f"oof-{name}-{digest}.npz"


def oof(name: str):
    """(corpus, Scored, seconds) of a variant: out-of-fold scores of every contract."""
    _, overrides, how = VARIANTS[name]
    config = {**ft.DEFAULT_CONFIG, **overrides}
    corpus = corpus_for(how, config)
    path = _key(name)
    if path.exists():
        return corpus, _load(path, corpus), float(np.load(path)["seconds"])
    log = lambda m: print(f"    {name}: {m}", file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    if how == "package":
        scored = ft.out_of_fold(corpus, config, FOLDS, log=log)
    else:
        scored = ft.Scored(_matrix_oof(corpus, config, heading=how == "heading", log=log), [], [])
    seconds = time.perf_counter() - started
    _save(path, scored, seconds)
    return corpus, scored, seconds


def _matrix_oof(corpus, config: dict, heading: bool, log) -> list[np.ndarray]:
    """Passage scores of a research variant, fold by fold, from design matrices."""
    import scipy.sparse as sp

    fold = np.arange(len(corpus)) % FOLDS
    out: list = [None] * len(corpus)
    for k in range(FOLDS):
        train_set = [c for c, f in zip(corpus, fold) if f != k]
        test = [i for i in range(len(corpus)) if fold[i] == k]
        features = ft.fit_features(train_set, config)
        titles = ft.Features.fit(([" ".join(p.heading) for p in c.passages] for c in train_set), min_df=2,
                                 min_documents=2, max_features=50_000, truncate=config["truncate"]) if heading else None

        def matrix(contracts):
            x, y = ft.design(contracts, features, config)
            if titles is not None:
                rows = titles.rows([" ".join(p.heading) for c in contracts for p in c.passages])
                x = sp.hstack([x, sp.csr_matrix((rows[2], rows[1], rows[0]), shape=(x.shape[0], len(titles)))],
                              format="csr")
            return x, y

        x, y = matrix(train_set)
        xt, _ = matrix([corpus[i] for i in test])
        logits = np.full((xt.shape[0], len(NAMES)), -20.0)
        for j in range(len(NAMES)):
            if y[:, j].any() and not y[:, j].all():
                coef, intercept = ft._logistic(x, y[:, j], config["C"])
                logits[:, j] = xt @ coef.astype(np.float32) + intercept
        parts = np.split(logits, np.cumsum([len(corpus[i].passages) for i in test])[:-1])
        for i, part in zip(test, parts):
            out[i] = 0.5 * (1 + np.tanh(0.5 * part))
        log(f"fold {k + 1}/{FOLDS}")
    return out


def _save(path: Path, scored, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = [len(s) for s in scored.passages]
    sentences = [len(spans) for contract in scored.sentence_spans for spans in contract]
    flat_spans = np.array([span for contract in scored.sentence_spans for spans in contract for span in spans],
                          dtype=np.int64).reshape(-1, 2)
    flat_logits = (np.vstack([lg for contract in scored.sentence_logits for lg in contract]).astype(np.float32)
                   if sentences else np.zeros((0, len(NAMES)), dtype=np.float32))
    np.savez(path, scores=np.vstack(scored.passages).astype(np.float64), counts=counts, sentences=sentences,
             spans=flat_spans, logits=flat_logits, seconds=seconds)


def _load(path: Path, corpus):
    data = np.load(path)
    passages = np.split(data["scores"], np.cumsum(data["counts"])[:-1])
    scored = ft.Scored(list(passages), [], [])
    if len(data["sentences"]):
        spans = np.split(data["spans"], np.cumsum(data["sentences"])[:-1])
        logits = np.split(data["logits"], np.cumsum(data["sentences"])[:-1])
        at = 0
        for contract in corpus:
            n = len(contract.passages)
            scored.sentence_spans.append([[tuple(map(int, s)) for s in part] for part in spans[at:at + n]])
            scored.sentence_logits.append([part.astype(np.float64) for part in logits[at:at + n]])
            at += n
    return scored


# --- measures ----------------------------------------------------------------------------------------------
def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def findings_figures(corpus, scored, honest, narrow: bool) -> dict:
    """What --lm none shows, fold-honestly; with ``narrow`` each finding is narrowed to its clause
    (the rule chosen on the other folds), else it is its whole passage."""
    if narrow and scored.sentence_spans:
        figures = narrowing.cv_findings(corpus, scored, honest, FOLDS)
    else:
        score = FindingsScore()
        for contract, scores, chosen in zip(corpus, scored.passages, honest):
            score.add(contract, [(k, contract.passages[i].char_start, contract.passages[i].char_end)
                                 for k, i, _ in narrowing.findings_of(scores, chosen)])
        figures = score.figures()
    figures["contained"] = contained(corpus, scored, honest)
    return figures


def contained(corpus, scored, honest) -> float:
    """The share of expert pieces wholly inside the passage of a finding of their category (the
    measure bench/contracts_cost.py's "finder alone" row used for rlmpipe 0.2.0's findings)."""
    hit = total = 0
    for contract, scores, chosen in zip(corpus, scored.passages, honest):
        shown = {}
        for k, i, _ in narrowing.findings_of(scores, chosen):
            shown.setdefault(k, []).append(contract.passages[i])
        text = contract.text
        for k, start, end, _, _ in contract.annotations:
            total += 1
            piece = " ".join(text[start:end].split())
            hit += any(p.char_start <= start and end <= p.char_end or
                       (text.count(text[start:end]) > 1 and piece in " ".join(p.text.split()))
                       for p in shown.get(k, ()))
    return hit / max(1, total)


def cmd_cv(args) -> None:
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    rows = []
    for name in names:
        print(f"{name}: {VARIANTS[name][0]}", file=sys.stderr, flush=True)
        corpus, scored, seconds = oof(name)
        honest = cv_thresholds(corpus, scored.passages, FOLDS)
        result = evaluate(corpus, scored.passages, honest)
        shown = findings_figures(corpus, scored, honest, narrow=True)
        select = evaluate(corpus, scored.passages, honest, "select0.95")
        rows.append((name, result, shown, select, seconds))
        print(f"  macro F1 {result['macro']['f1']:.3f}  micro F1 {result['micro']['f1']:.3f}  findings right "
              f"{shown['right']:.3f} close {shown['close']:.3f}  ({seconds:.0f} s)", file=sys.stderr, flush=True)
    if args.variants and not args.write:
        return
    lines = ["## Clause finder (trained on CUAD): model selection by cross-validation", "", machine(), "",
             "Command: `python bench/finder_cv.py cv`. 5-fold CV grouped by contract over the 409 CUAD contracts "
             "in ../shared/data/cuad (CC BY 4.0, The Atticus Project); for each test fold, every threshold (and "
             "narrowing rule) was chosen on the out-of-fold scores of the other four folds only. Contract "
             "level: category present = the experts highlighted a passage (n_spans > 0); predicted present = "
             "some passage's score clears the category's F1 threshold. *Findings*: what `--lm none` shows "
             "(each category's best passage above its F1 threshold, up to two more above its passage "
             "threshold; narrowed to their sentences where the variant narrows): *right* = overlaps an expert "
             "piece of its category, *J>=0.5* = within Jaccard 0.5 of one (character offsets; a text the "
             "experts marked once counts wherever it recurs). *Text at select0.95*: the share of the "
             "contracts' characters in passages whose best score clears the cascade's 95% selection "
             "threshold (what an LM would read, before context). Macro = mean over the 41 categories; "
             "micro = over all contract x category pairs.", "",
             "| variant | what changes | macro P | macro R | macro F1 | micro F1 | passage recall | findings "
             "right | findings J>=0.5 | pieces reached | text at select0.95 | CV s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r, shown, select, seconds in rows:
        mark = " **(chosen)**" if name == CHOSEN else ""
        lines.append(f"| {name}{mark} | {VARIANTS[name][0]} | {pct(r['macro']['precision'])} | "
                     f"{pct(r['macro']['recall'])} | {pct(r['macro']['f1'])} | {pct(r['micro']['f1'])} | "
                     f"{pct(r['passage_recall'])} | {pct(shown['right'])} | {pct(shown['close'])} | "
                     f"{pct(shown['reached'])} | {pct(select['chars_selected'])} | {seconds:.0f} |")
    corpus, scored, _ = oof(CHOSEN)
    lines += ["", detail_tables(corpus, scored)]
    write_section("finder", "\n".join(lines))


def detail_tables(corpus, scored) -> str:
    honest = cv_thresholds(corpus, scored.passages, FOLDS)
    result = evaluate(corpus, scored.passages, honest)
    ok = result["macro"]["f1"] >= 0.76 and result["micro"]["f1"] >= 0.88
    lines = ["### The chosen model, per category (F1 thresholds)", "",
             "| category | contracts with it | precision | recall | F1 | annotated pieces | passage recall |",
             "|---|---|---|---|---|---|---|"]
    per = result["per_category"]
    for name in sorted(NAMES, key=lambda n: per[n]["f1"]):
        c = per[name]
        lines.append(f"| {name} | {c['support']} | {pct(c['precision'])} | {pct(c['recall'])} | {pct(c['f1'])} | "
                     f"{c['annotations']} | {pct(c['passage_recall'])} |")
    lines += ["", f"Overall: macro P/R/F1 {pct(result['macro']['precision'])} / {pct(result['macro']['recall'])} / "
              f"{pct(result['macro']['f1'])}; micro P/R/F1 {pct(result['micro']['precision'])} / "
              f"{pct(result['micro']['recall'])} / {pct(result['micro']['f1'])}; passage recall "
              f"{pct(result['passage_recall'])} (mean over categories {pct(result['passage_recall_macro'])}). "
              f"**Targets (issue 29): macro F1 >= 0.76, micro F1 >= 0.88: {'MET' if ok else 'NOT MET'}.**", "",
              "### Recall-oriented thresholds (what to send to a language model)", "",
              "`recallX`: the cheapest per-category thresholds (fewest characters selected) that together keep "
              "X of all annotated pieces on the out-of-fold scores of the other folds, applied to the test fold; "
              "`selectX`: one threshold on a passage's best score keeping X of the pieces (the cascade's rule). "
              "*Selected* = passages (characters) whose score clears the threshold of at least one category: "
              "what the cascade shows an LM, before context (bench/contracts_cost.py measures the cascade "
              "itself).", "",
              "| thresholds | passage recall (all pieces) | mean over categories | contract-level macro F1 | "
              "passages selected | characters selected |", "|---|---|---|---|---|---|"]
    kinds = ["f1"] + [f"{p}{level:.2f}" for p in ("recall", "select") for level in (0.85, 0.90, 0.95, 0.99)]
    for kind in kinds:
        r = evaluate(corpus, scored.passages, honest, kind)
        lines.append(f"| {kind} | {pct(r['passage_recall'])} | {pct(r['passage_recall_macro'])} | "
                     f"{pct(r['macro']['f1'])} | {pct(r['passages_selected'])} | {pct(r['chars_selected'])} |")
    return "\n".join(lines)


def cmd_findings(args) -> None:
    today_corpus, today, _ = oof("paragraphs")
    corpus, scored, _ = oof(CHOSEN)
    today_honest = cv_thresholds(today_corpus, today.passages, FOLDS)
    honest = cv_thresholds(corpus, scored.passages, FOLDS)
    rows = [("rlmpipe 0.2.0: paragraphs, whole passages", findings_figures(today_corpus, today, today_honest, False)),
            ("structure passages, whole passages", findings_figures(corpus, scored, honest, False)),
            ("structure passages, narrowed (shipped)", findings_figures(corpus, scored, honest, True))]
    curve = trade_off(corpus, scored, honest)
    shipped = rows[-1][1]
    met = {"right": shipped["right"] >= 0.80 and shipped["reached"] >= rows[0][1]["reached"],
           "close": shipped["close"] >= 0.55}
    lines = ["## The finder alone: the findings a reviewer reads", "", machine(), "",
             "Command: `python bench/finder_cv.py findings`. 409 CUAD contracts, fold-honest (out-of-fold scores; "
             "thresholds and the narrowing rule chosen on the other folds). Findings are what `--lm none` shows: "
             "each category's best passage above its F1 threshold and up to two more above its passage threshold. "
             "*Right*: the finding overlaps an expert piece of its category. *J>=0.5*: its Jaccard overlap "
             "(characters) with one is at least 0.5, the CUAD paper's criterion. *Reached*: expert pieces a "
             "finding of their category overlaps. *Inside a shown passage*: expert pieces wholly inside the "
             "passage of a finding of their category (what rlmpipe 0.2.0's cost bench called reached: 62.6%). "
             "A text the experts marked once (a party's short name, a date) counts wherever it recurs.", "",
             "| findings | count | right | J>=0.5 | pieces reached | inside a shown passage | mean characters |",
             "|---|---|---|---|---|---|---|"]
    for label, f in rows:
        lines.append(f"| {label} | {f['findings']:,} | {pct(f['right'])} | {pct(f['close'])} | {pct(f['reached'])} | "
                     f"{pct(f['contained'])} | {f['mean_chars']:.0f} |")
    lines += ["", f"**Targets (issue 29): >= 80% right while reaching at least as many expert pieces as rlmpipe "
              f"0.2.0 ({pct(rows[0][1]['reached'])}% by overlap): {pct(shipped['right'])}% right, "
              f"{pct(shipped['reached'])}% reached — {'MET' if met['right'] else 'NOT MET'}; >= 55% within "
              f"Jaccard 0.5: {pct(shipped['close'])}% — {'MET' if met['close'] else 'NOT MET'}.**", "",
              "The trade-off (shipped narrowing; a finding is shown only when its score also clears the "
              "given floor; the contract-level F1 of the finder section assumes no floor):", "",
              "| score floor for every finding | findings | right | J>=0.5 | pieces reached |", "|---|---|---|---|---|"]
    for floor, f in curve:
        lines.append(f"| {floor:.2f} | {f['findings']:,} | {pct(f['right'])} | {pct(f['close'])} | "
                     f"{pct(f['reached'])} |")
    text = "\n".join(lines)
    print(text)
    write_section("finder-extras", text)


def trade_off(corpus, scored, honest, floors=(0.0, 0.2, 0.3, 0.4, 0.5, 0.7)):
    """Findings figures when every finding must also clear a score floor (narrowing as shipped)."""
    out = []
    for floor in floors:
        raised = [{**t, "f1": np.maximum(t["f1"], floor), "passage": np.maximum(t["passage"], floor)} for t in honest]
        out.append((floor, narrowing.cv_findings(corpus, scored, raised, FOLDS)))
    return out


# --- the CUAD paper's measure --------------------------------------------------------------------------
#: the CUAD paper's published figures as issue 29 quotes them (precision at 80% recall, AUPR; its test
#: split of 102 contracts); precision at 90% recall is not quoted here
PUBLISHED = [("DeBERTa-xlarge (CUAD paper)", 44.0, None, 47.8), ("RoBERTa-base (CUAD paper)", 31.1, None, 42.6)]
NBEST = 20


def cuad_words(text: str) -> set[str]:
    """The CUAD scorer's words: lower case, ``.,;:`` removed, "/" as a space, split on spaces."""
    for token in ".,;:":
        text = text.replace(token, "")
    return set(text.lower().replace("/", " ").split(" "))


def cuad_match(answer: str, prediction: str, parties: bool) -> bool:
    a, p = cuad_words(answer), cuad_words(prediction)
    return len(a & p) / len(a | p) >= 0.5 or (parties and answer in prediction)


def cuad_curve(corpus, scored, honest, narrow: bool):
    """The CUAD scorer (its evaluate.py, as wrapped by Hugging Face's `cuad` metric), on our predictions:
    per contract and category, the ``NBEST`` best passages' spans with their scores as probabilities."""
    pick = _fold_narrowing(corpus, scored, honest) if narrow else None
    fold = np.arange(len(corpus)) % FOLDS
    answer_best: list[float] = []  # per expert answer: the best probability of a prediction matching it
    predictions: list[tuple[float, bool]] = []  # (probability, matches an answer)
    for ci, (contract, scores) in enumerate(zip(corpus, scored.passages)):
        answers = _answers(contract)
        for k in range(len(NAMES)):
            mine = answers.get(k, [])
            best = [0.0] * len(mine)
            seen: dict[str, float] = {}
            for i in np.argsort(-scores[:, k], kind="stable")[:NBEST]:
                passage = contract.passages[i]
                if pick is not None:
                    found = narrowing.spans(contract, scored.sentence_spans[ci][i], scored.sentence_logits[ci][i],
                                            k, narrowing.options(k)[pick[k, fold[ci]]])
                else:
                    found = [(passage.char_start, passage.char_end)]
                for start, end in found:
                    text = contract.text[start:end]
                    seen[text] = max(seen.get(text, 0.0), float(scores[i, k]))
            for text, probability in seen.items():
                matched = [j for j, answer in enumerate(mine) if cuad_match(answer, text, NAMES[k] == "Parties")]
                for j in matched:
                    best[j] = max(best[j], probability)
                predictions.append((probability, bool(matched)))
            answer_best += best
    answer_best_a = np.array(answer_best)
    probs = np.array([p for p, _ in predictions])
    matched = np.array([m for _, m in predictions])
    precisions, recalls = [1.0], [0.0]
    for conf in list(np.arange(0.99, 0, -0.01)) + [0.001, 0.0]:
        tp = int((answer_best_a > conf).sum())
        fp = int(((probs > conf) & ~matched).sum())
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        recalls.append(tp / len(answer_best_a))
    processed = np.maximum.accumulate(np.array(precisions)[::-1])[::-1]
    aupr = float(np.trapezoid(processed, recalls)) if hasattr(np, "trapezoid") else float(np.trapz(processed, recalls))

    def at(level):
        return next((float(p) for p, r in zip(processed, recalls) if r >= level), 0.0)

    return {"p80": at(0.8), "p90": at(0.9), "aupr": aupr, "max_recall": max(recalls)}


def _answers(contract) -> dict[int, list[str]]:
    """The experts' answers per category: each highlight's pieces joined (CUAD's answers are whole
    highlights; annotations.jsonl splits one interrupted by omitted text into pieces)."""
    out: dict[int, list[str]] = {}
    for k, start, end, _, _ in contract.annotations:
        out.setdefault(k, []).append(contract.text[start:end])
    return out


def _fold_narrowing(corpus, scored, honest):
    found = [narrowing.findings_of(scores, chosen) for scores, chosen in zip(scored.passages, honest)]
    table = narrowing._outcomes(corpus, scored, found)
    fold = np.arange(len(corpus)) % FOLDS
    return {(k, f): narrowing._best([row for row in table.get(k, []) if fold[row[0]] != f], k)
            for k in range(len(NAMES)) for f in range(FOLDS)}


def cmd_cuad(args) -> None:
    today_corpus, today, _ = oof("paragraphs")
    corpus, scored, _ = oof(CHOSEN)
    honest = cv_thresholds(corpus, scored.passages, FOLDS)
    rows = [("rlmpipe 0.2.0: paragraphs, whole passages",
             cuad_curve(today_corpus, today, cv_thresholds(today_corpus, today.passages, FOLDS), False)),
            ("structure passages, whole passages", cuad_curve(corpus, scored, honest, False)),
            ("structure passages, narrowed (shipped)", cuad_curve(corpus, scored, honest, True))]
    lines = ["## The CUAD paper's measure beside ours", "", machine(), "",
             "Command: `python bench/finder_cv.py cuad`. The CUAD paper's scorer (its `evaluate.py`, as in Hugging "
             "Face's `cuad` metric), reimplemented here: for each contract and category the predictions are the "
             f"spans of the {NBEST} best-scoring passages (narrowed as shipped, or whole), each with its finder "
             "score as its probability, identical texts counted once; a prediction matches an expert answer when "
             "their word-set Jaccard (lower case, `.,;:` removed) is at least 0.5, or, for Parties, when the "
             "answer is inside it. At each probability threshold (0.99, 0.98, ... 0.01, 0.001, 0) an answer is "
             "a true positive when a prediction above the threshold matches it, a prediction above it that "
             "matches no answer is a false positive (every prediction is, for a contract without the category); "
             "precision is made non-increasing in recall, AUPR is the area under that curve, and precision at "
             "80% / 90% recall is the first point at or beyond that recall (0 when the recall is never reached). "
             "Expert answers: each annotated piece (annotations.jsonl splits a highlight interrupted by omitted "
             "text into pieces; the paper's answers are whole highlights). Ours is 5-fold cross-validation over "
             "the 409 contracts here (each contract scored by a model trained on about 327 others, thresholds "
             "irrelevant: the curve spans them all); the paper's is one split, models fine-tuned on 408 "
             "contracts and tested on 102 others, with transformers predicting token spans.", "",
             "| predictions | precision at 80% recall | precision at 90% recall | AUPR | highest recall reached |",
             "|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {pct(r['p80'])} | {pct(r['p90'])} | {pct(r['aupr'])} | {pct(r['max_recall'])} |")
    for label, p80, p90, aupr in PUBLISHED:
        lines.append(f"| {label} | {p80:.1f} | {'-' if p90 is None else f'{p90:.1f}'} | {aupr:.1f} | - |")
    lines += ["", "Precision at a recall the predictions never reach counts as 0, as in the paper's scorer: the "
              "sentence-level spans here cannot match a short answer (a party's name, a date inside a sentence) "
              "by Jaccard, so recall stops below those levels unless a category is cut to its words."]
    text = "\n".join(lines)
    print(text)
    write_section("finder-cuad", text)


def cmd_speed(args) -> None:
    import gc

    from rlmpipe.apps.contracts.finder import MODEL_PATH, ClauseFinder
    from rlmpipe.apps.contracts.pipeline import FINDINGS_PER_CATEGORY
    from rlmpipe.ingest import open_document

    path = Path(args.model) if args.model else MODEL_PATH
    started = time.perf_counter()
    finder = ClauseFinder.load(path)
    load_seconds = time.perf_counter() - started
    files = sorted((CUAD / "contracts").glob("*.txt"))
    documents = [open_document(p) for p in files]  # validation (hashing) is the reader's, not the finder's
    total_chars = sum(d.size_bytes for d in documents)
    gc.collect()
    started = time.perf_counter()
    n_findings = 0
    for document in documents:
        n_findings += len(finder.find(document.blocks(), per_category=FINDINGS_PER_CATEGORY))
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    n_passages = sum(1 for document in documents for _ in finder.score(document.blocks()))
    score_seconds = time.perf_counter() - started
    size = path.stat().st_size
    print(f"{len(documents)} contracts, {n_passages} passages, {n_findings} findings: {seconds:.1f} s "
          f"(scoring alone {score_seconds:.1f} s); load {load_seconds:.2f} s; file {size / 1e6:.1f} MB", file=sys.stderr)
    lines = ["## Clause finder speed", "", machine(), "",
             "Command: `OMP_NUM_THREADS=1 python bench/finder_cv.py speed` (one core; the timing excludes imports "
             "and loading the model; it includes reading the files through `rlmpipe.ingest`, cutting passages, "
             "scoring every passage for all 41 categories, choosing the findings `--lm none` shows and narrowing "
             "each to its sentences: `ClauseFinder.find(per_category=3)`).", "",
             "| contracts | characters | passages | findings | seconds | scoring alone s | characters/s | model load s "
             "| model file MB |", "|---|---|---|---|---|---|---|---|---|",
             f"| {len(documents)} | {total_chars:,} | {n_passages:,} | {n_findings:,} | {seconds:.1f} | "
             f"{score_seconds:.1f} | {total_chars / seconds:,.0f} | {load_seconds:.2f} | {size / 1e6:.1f} |", "",
             f"**Target (issue 29): the 409 contracts in <= 30 s on one core, narrowing included: "
             f"{seconds:.1f} s — {'MET' if seconds <= 30 else 'NOT MET'}.**"]
    if not args.model:
        write_section("finder-speed", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cv = sub.add_parser("cv", help="cross-validate the variants; write the finder section of RESULTS.md")
    cv.add_argument("--variants", help="comma-separated variant names (default: all; then RESULTS.md is written)")
    cv.add_argument("--write", action="store_true", help="write RESULTS.md from the --variants given")
    sub.add_parser("findings", help="what --lm none shows, rlmpipe 0.2.0 vs now")
    sub.add_parser("cuad", help="the CUAD paper's measure")
    speed = sub.add_parser("speed", help="time the finder over all contracts")
    speed.add_argument("--model", help="model file (default: the shipped one; then RESULTS.md is written)")
    args = parser.parse_args()
    {"cv": cmd_cv, "findings": cmd_findings, "cuad": cmd_cuad, "speed": cmd_speed}[args.command](args)


if __name__ == "__main__":
    main()
