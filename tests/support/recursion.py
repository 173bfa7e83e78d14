"""Scripted recursions (``dspy.RLM`` programs) for the durable-recursion tests and benchmarks, and what
a killed-then-resumed run paid twice.

A program is a top-level RLM over one document whose first iteration asks ``n`` sub-questions
(``SUBQUERY <i>``), one after another (``sequential``), all at once (``batched``, ``llm_query_batched``),
or through a nested RLM that asks them at depth 2 (``nested``); its second iteration submits every
answer joined, so an answer shows whether each sub-call was answered, and answered right. The same
script serves the scripted LM (in process) and the loopback OpenAI server (a real ``rlmpipe ask``).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tests.support.scripted_lm import chat_reply

SHAPES = ("sequential", "batched", "nested")
#: the nested RLM's query, in its prompt (and nowhere in the top-level one's first iteration)
NESTED_QUERY = "NESTEDTASK: list the items"


def iteration(number: int) -> str:
    return rf"\[\[ ## iteration ## \]\]\n{number}/"


def sub_answer(request: dict) -> str:
    """The answer to ``SUBQUERY <i>``: ``item <i> is <i*i>``."""
    number = int(re.search(r"SUBQUERY (\d+)", json.dumps(request)).group(1))
    return f"item {number} is {number * number}"


def expected_answer(n: int) -> str:
    return "; ".join(f"item {i} is {i * i}" for i in range(n))


def script(target, n: int, shape: str = "sequential", *, sub_latency: float | None = None) -> None:
    """Teach ``target`` (a ScriptedLM or an OpenAIServer: both have ``reply``) the program."""
    if shape not in SHAPES:
        raise ValueError(shape)
    questions = f"[f'SUBQUERY {{i}}: what is item {{i}}?' for i in range({n})]"
    if shape == "sequential":
        first = f"answers = []\nfor q in {questions}:\n    answers.append(llm_query(q))\nprint(len(answers))"
    elif shape == "batched":
        first = f"answers = llm_query_batched({questions})\nprint(len(answers))"
    else:
        first = (f"import dspy\nsub = dspy.RLM('context, query -> answer', max_llm_calls={n + 5})\n"
                 f"answers = sub(context='items', query='{NESTED_QUERY}').answer.split('; ')\nprint(len(answers))")
        inner = f"answers = []\nfor q in {questions}:\n    answers.append(llm_query(q))\nprint(len(answers))"
        # the nested RLM's own iterations: its variables are `context` and `query` (the top level's `documents`)
        target.reply(rf"Variable: `query`[\s\S]*{iteration(1)}",
                     chat_reply(reasoning="Ask each item.", code=f"```python\n{inner}\n```"))
        target.reply(rf"Variable: `query`[\s\S]*{iteration(2)}",
                     chat_reply(reasoning="Submit.", code="```python\nSUBMIT(answer='; '.join(answers))\n```"))
    target.reply(r"SUBQUERY \d+", sub_answer, **({"latency": sub_latency} if sub_latency is not None else {}))
    target.reply(iteration(1), chat_reply(reasoning="Ask about every item.", code=f"```python\n{first}\n```"))
    target.reply(iteration(2), chat_reply(
        reasoning="Submit.", code="```python\nSUBMIT(answer='; '.join(answers), sources=['doc.txt'])\n```"))


def journal_size(workspace: Path) -> int:
    """Answers kept in the workspace's call journal (0 before the first)."""
    database = workspace / "runs.sqlite"
    if not database.exists():
        return 0
    connection = sqlite3.connect(database, timeout=30)
    try:
        return connection.execute("SELECT COUNT(*) FROM journal WHERE model NOT LIKE 'tool%'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        connection.close()


def journaled_prompts(workspace: Path) -> list[str]:
    connection = sqlite3.connect(workspace / "runs.sqlite", timeout=30)
    try:
        return [row[0] for row in connection.execute("SELECT preview FROM journal WHERE model NOT LIKE 'tool%'")]
    finally:
        connection.close()


def journaled_requests(workspace: Path) -> set[str]:
    """The request keys of every journaled answer (LM calls only)."""
    connection = sqlite3.connect(workspace / "runs.sqlite", timeout=30)
    try:
        return {row[0] for row in connection.execute("SELECT request FROM journal WHERE model NOT LIKE 'tool%'")}
    finally:
        connection.close()


@dataclass
class Repeats:
    """What a resumed run asked the server again."""

    repeated: list[str]  # requests served before the kill and again after it
    in_flight: list[str]  # requests the server saw before the kill whose answer was not journaled

    @property
    def only_in_flight(self) -> bool:
        return all(request in self.in_flight for request in self.repeated)


def sub_queries(prompts: list[str]) -> list[str]:
    return [match.group(0) for prompt in prompts for match in [re.search(r"SUBQUERY \d+", prompt)] if match]


def repeats(before: list[str], after: list[str], journaled: list[str]) -> Repeats:
    """Which sub-queries the server answered twice, and which were in flight at the kill: seen by the
    server before it, not in the journal (every sub-query is asked once in an uninterrupted run)."""
    first, second, kept = sub_queries(before), sub_queries(after), set(sub_queries(journaled))
    return Repeats([q for q in second if q in first], [q for q in first if q not in kept])
