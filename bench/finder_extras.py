"""The finder alone (``--lm none``): are a category's second and third findings worth showing?

    OMP_NUM_THREADS=1 python bench/finder_extras.py

Without a language model the analyzer keeps up to 3 findings per category. The best one clears the
category's contract-level ``f1`` threshold (it says the category is present); the question is what
the others must clear. Compared here, fold-honestly (each contract scored by the finder trained
without its fold, thresholds chosen on the other folds; bench/finder_cv.py's out-of-fold cache),
through the shipped ``ClauseFinder.find``:

- **f1 only**: every finding clears the category's ``f1`` threshold (the rule before ``passage``);
- **f1, then passage** (the default): findings after a category's best must also clear its
  ``passage`` threshold (best passage-level F1, ``finder_train.passage_thresholds``).

A finding is right when an expert annotation of its category overlaps its passage.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlmpipe.offline import configure_offline_defaults  # noqa: E402

configure_offline_defaults()
from _results import machine, write_section  # noqa: E402
from contracts_cost import FoldFinder, ft_cuad  # noqa: E402
from cuad_eval import contract_path  # noqa: E402
from finder_cv import FOLDS, config_of, oof_scores  # noqa: E402

from rlmpipe.apps.contracts import finder_train as ft  # noqa: E402
from rlmpipe.apps.contracts.finder import ClauseFinder  # noqa: E402
from rlmpipe.apps.contracts.pipeline import FINDINGS_PER_CATEGORY  # noqa: E402
from rlmpipe.ingest import open_document  # noqa: E402


def main() -> None:
    config = config_of("trunc6-mc2")
    corpus = ft.load_corpus(ft_cuad(), max_chars=config["max_chars"])
    scores, _ = oof_scores(config, corpus)
    thresholds = ft.cv_thresholds(corpus, scores, FOLDS)
    base = ClauseFinder.load()
    rules = {"f1 only": False, "f1, then passage (default)": True}
    counts = {rule: {"best": [0, 0], "others": [0, 0]} for rule in rules}
    contracts_with = {rule: 0 for rule in rules}
    for contract, rows, chosen in zip(corpus, scores, thresholds):
        index = {(p.char_start, p.char_end): i for i, p in enumerate(contract.passages)}
        for rule, with_passage in rules.items():
            kinds = chosen if with_passage else {k: v for k, v in chosen.items() if k != "passage"}
            finder = FoldFinder(base, contract, rows, kinds)
            findings = finder.find(open_document(contract_path(contract.contract_id)).blocks(),
                                   per_category=FINDINGS_PER_CATEGORY)
            seen: set[str] = set()
            for f in findings_by_score(findings):
                k = base.categories.index(f.category)
                right = bool(contract.labels[index[(f.char_start, f.char_end)], k])
                which = "others" if f.category in seen else "best"
                seen.add(f.category)
                counts[rule][which][0] += right
                counts[rule][which][1] += 1
            contracts_with[rule] += bool(findings)
    lines = [f"{machine()}", "",
             "Command: `OMP_NUM_THREADS=1 python bench/finder_extras.py`. 409 CUAD contracts, fold-honest "
             "(out-of-fold scores, thresholds from the other folds), through `ClauseFinder.find` with "
             f"`per_category={FINDINGS_PER_CATEGORY}` as `--lm none` calls it. *Right*: an expert annotation "
             "of the finding's category overlaps its passage.", "",
             "| rule for a category's 2nd and 3rd findings | best findings (right) | further findings (right) "
             "| all findings | precision of all |", "|---|---|---|---|---|"]
    for rule in rules:
        (best_right, best_n), (other_right, other_n) = counts[rule]["best"], counts[rule]["others"]
        total, right = best_n + other_n, best_right + other_right
        lines.append(f"| {rule} | {best_n:,} ({100 * best_right / best_n:.1f}%) | {other_n:,} "
                     f"({100 * other_right / max(other_n, 1):.1f}%) | {total:,} | {100 * right / total:.1f}% |")
    (_, old_n), (new_right, new_n) = counts["f1 only"]["others"], counts["f1, then passage (default)"]["others"]
    old_right = counts["f1 only"]["others"][0]
    lines += ["", f"The passage threshold drops {old_n - new_n:,} further findings, of which "
              f"{(old_n - old_right) - (new_n - new_right):,} were wrong, and keeps {new_right:,} of the "
              f"{old_right:,} right ones ({100 * new_right / max(old_right, 1):.0f}%); the best finding of each "
              "category, and so the contract-level F1 in the finder section, is unchanged."]
    text = "## The finder alone: a category's further findings\n\n" + "\n".join(lines) + "\n"
    print(text)
    write_section("finder-extras", text)


def findings_by_score(findings):
    """Findings of each category best first (find returns them in document order)."""
    return sorted(findings, key=lambda f: -f.score)


if __name__ == "__main__":
    main()
