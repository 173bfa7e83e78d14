"""Needle in a haystack with `rlmpipe ask`'s RLM step: a 1,000-page synthetic document, a scripted LM.

    python bench/rlm_needle.py

The scripted model does what a good RLM does: it looks at the document's size, cuts it into
parts, asks sub-queries about every part at once (llm_query_batched, depth 1), then narrows down
with code and one more sub-query, and submits. Reported: LM calls and tokens by recursion depth,
REPL rounds, wall time (sandbox start-up included), from the run store.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlmpipe.offline import configure_offline_defaults  # noqa: E402

configure_offline_defaults()
from _results import write_section  # noqa: E402

NEEDLE = "The secret escrow account number is 88-4417-2093."
PAGES = 1000


def document() -> str:
    filler = ("The Supplier shall deliver the Products in accordance with the Specifications and the "
              "delivery schedule agreed by the parties in writing from time to time. ")
    pages = [f"Page {n}\n" + filler * 12 for n in range(1, PAGES + 1)]
    pages[736] += NEEDLE + "\n"
    return "\n\f\n".join(pages)


def main() -> None:
    from rlmpipe.apps.ask import AskPipeline
    from rlmpipe.monitor.metrics import run_tables
    from rlmpipe.runtime.runner import RunOptions, execute
    from rlmpipe.runtime.store import Store
    from rlmpipe.sandbox import ensure_pyodide
    from tests.support.scripted_lm import ScriptedLM, chat_reply

    ensure_pyodide()
    step1 = ("```python\nprint(len(documents))\nparts = [documents[i:i + 250_000] for i in range(0, len(documents), 250_000)]\n"
             "hits = [p.find('escrow') for p in parts]\n"
             "answers = llm_query_batched(['SUBQUERY: does this part mention an escrow account? ' + "
             "(p[max(0, h - 200): h + 200] if h >= 0 else p[:400]) for p, h in zip(parts, hits)])\n"
             "print([a[:40] for a in answers])\n```")
    step2 = ("```python\nk = next(i for i, a in enumerate(answers) if a.startswith('yes'))\n"
             "at = parts[k].find('escrow')\n"
             "number = llm_query('SUBQUERY: extract the account number: ' + parts[k][at - 50: at + 80])\n"
             "print(number)\n```")
    step3 = "```python\nSUBMIT(answer=number, sources=['haystack.txt'])\n```"

    def sub_answer(request: dict) -> str:
        text = request["messages"][-1]["content"]
        if "extract the account number" in text:
            return "88-4417-2093"
        return "yes: an escrow account is mentioned" if "escrow account number" in text else "no"

    lm = ScriptedLM()
    lm.reply(r"\[\[ ## iteration ## \]\]\n1/", chat_reply(reasoning="Size up and scan all parts.", code=step1))
    lm.reply(r"\[\[ ## iteration ## \]\]\n2/", chat_reply(reasoning="Narrow down.", code=step2))
    lm.reply(r"\[\[ ## iteration ## \]\]\n3/", chat_reply(reasoning="Submit.", code=step3))
    lm.reply(r"^SUBQUERY:", sub_answer)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "haystack.txt"
        text = document()
        path.write_text(text, encoding="utf-8")
        started = time.perf_counter()
        summary = execute(AskPipeline("What is the escrow account number?"), [str(path)], lm,
                          options=RunOptions(workspace=Path(folder) / "ws"))
        seconds = time.perf_counter() - started
        tables = run_tables(Store(Path(folder) / "ws"), summary.run_id)
    answer = (summary.final or {}).get("answer")
    rows = ["| depth | LM calls | tokens in | tokens out | LM time (s) |", "|---|---|---|---|---|"]
    for row in tables["depths"]:
        rows.append(f"| {row['depth']} | {row['calls']} | {row['prompt_tokens']:,} | {row['completion_tokens']:,} | "
                    f"{row['seconds']:.3f} |")
    import dspy

    markdown = "\n".join([
        "## RLM: needle in a 1,000-page haystack (scripted LM)", "",
        f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"dspy {dspy.__version__}. Command: `python bench/rlm_needle.py`.", "",
        f"Document: {PAGES} pages, {len(text):,} characters, needle on page 737. Answer: `{answer}` "
        f"({'correct' if answer == '88-4417-2093' else 'WRONG'}); {summary.final.get('iterations') if summary.final else '?'} "
        f"REPL rounds; wall time {seconds:.1f} s including sandbox start-up (the scripted LM answers instantly, "
        "so the time is rlmpipe's, the sandbox's and DSPy's own).", "",
        "Token counts are the scripted LM's (words of prompt and reply): what matters is where they are: the "
        "document is never in a depth-0 prompt.", "",
        *rows,
    ])
    write_section("rlm-needle", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
