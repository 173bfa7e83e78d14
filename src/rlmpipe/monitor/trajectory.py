"""The recursion of an RLM step as a tree, for the run report: each iteration's code and output, the
LM call that wrote it, the sub-calls its tools made (prompt and answer, clipped and expandable),
nested RLMs under the code that started them, with depth, tokens, time, and whether each call was
replayed from the call journal (a step run again after a crash) rather than paid for.

Read from the store alone: the step's executions (its ``extra["trajectory"]``, written by
:mod:`rlmpipe.patterns.rlm`), its LM calls of its last session (``lm_calls``: depth, the execution
that made each, its place ``seq``) and the call journal (what each call asked and was answered).
How calls hang together: a call's ``parent`` is the execution whose tool made it (``x3``), or the
sub-agent that execution started (``x3.a1``: a nested RLM's own calls, and its executions); calls
and executions without one belong to the step's own RLM. Within one RLM, the call that wrote an
execution's code is its last call made before the execution started (``seq``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from rlmpipe.lm.journal import clip
from rlmpipe.monitor.formats import duration
from rlmpipe.monitor import html
from rlmpipe.monitor.html import environment

#: characters of a prompt or an answer shown before "more"
SHOWN_CHARS = 240
#: characters kept at all (the rest is cut, and says so)
KEPT_CHARS = 4000
#: sub-calls listed per execution (a batch of thousands stays readable; the rest are counted)
MAX_SUB_CALLS = 200


@dataclass
class Call:
    """One LM call of the step (its last attempt), with what it asked and what it got."""

    seq: int
    depth: int
    parent: str | None
    outcome: str  # ok | error | replayed
    attempts: int
    prompt_tokens: int  # billed now; for a replayed call, what it was billed when first made
    completion_tokens: int
    seconds: float
    prompt: str
    answer: str
    error: str | None = None

    @property
    def replayed(self) -> bool:
        return self.outcome == "replayed"


@dataclass
class Agent:
    """One RLM (the step's own, or one started by a tool call): its calls, and its executions."""

    id: str | None
    depth: int
    calls: list[Call] = field(default_factory=list)
    executions: list["Execution"] = field(default_factory=list)


@dataclass
class Execution:
    """One run of model-written code, with what it made: sub-calls and nested RLMs, in order."""

    id: str
    depth: int
    iteration: int | None
    code: str
    output: str
    seconds: float
    error: bool
    first_seq: int | None
    written_by: list[Call] = field(default_factory=list)  # the call(s) that wrote its code
    sub_calls: list[Call] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)


@dataclass
class Recursion:
    step: str
    step_key: str
    document: str
    status: str
    root: Agent
    calls: int  # LM calls of its last session
    replayed: int
    by_depth: dict[int, int]


def build(step: dict, entries: list[dict], call_rows: list[dict], journal_rows: list[dict]) -> Recursion:
    """The tree of one RLM step from its executions, its calls and their journaled answers."""
    answers = {(row["request"], row["occurrence"]): row for row in journal_rows}
    last_attempt: dict[str, dict] = {}
    attempts: dict[str, int] = defaultdict(int)
    for row in call_rows:
        key = row["call_id"] or f"row-{row['id']}"
        attempts[key] += 1
        if row["attempt"] >= last_attempt.get(key, {"attempt": 0})["attempt"]:
            last_attempt[key] = row
    calls = [_call(row, attempts[key], answers.get((row["request"], row["occurrence"])))
             for key, row in last_attempt.items()]
    calls.sort(key=lambda c: (c.seq if c.seq is not None else 1 << 60))
    agents: dict[str | None, Agent] = {None: Agent(None, 0)}
    executions: dict[str, Execution] = {}
    for entry in entries:  # (in the order they ended: a nested RLM's code before the code that started it)
        execution = Execution(str(entry.get("id") or f"x{len(executions) + 1}"), entry["depth"],
                              entry.get("iteration"), entry.get("code") or "", entry.get("output") or "",
                              float(entry.get("seconds") or 0.0), bool(entry.get("error")),
                              (entry.get("seq") or [None])[0])
        executions[execution.id] = execution
    for entry, execution in zip(entries, executions.values()):
        _agent(agents, executions, entry.get("parent"), execution.depth).executions.append(execution)
    for call in calls:
        if call.parent in executions:
            executions[call.parent].sub_calls.append(call)
        else:
            _agent(agents, executions, call.parent, call.depth).calls.append(call)
    for agent in agents.values():
        _writers(agent)
    replayed = sum(1 for c in calls if c.replayed)
    depths: dict[int, int] = defaultdict(int)
    for call in calls:
        depths[call.depth] += 1
    return Recursion(step["step"], step["step_key"], step.get("document") or "", step["status"], agents[None],
                     len(calls), replayed, dict(sorted(depths.items())))


def _agent(agents: dict, executions: dict, parent: str | None, depth: int) -> Agent:
    """The RLM ``parent`` names (``x3.a1``: the first sub-agent of execution x3), hung under its execution
    when first seen; one whose origin is not in the trajectory is shown with the step's own RLM."""
    if parent in agents:
        return agents[parent]
    owner = executions.get(parent.rsplit(".a", 1)[0]) if parent and ".a" in parent else None
    if owner is None:
        return agents[None]
    agent = agents[parent] = Agent(parent, depth)
    owner.agents.append(agent)
    return agent


def _writers(agent: Agent) -> None:
    """Give each execution of ``agent`` the call(s) that wrote its code: its own calls made before it."""
    ordered = sorted(agent.executions, key=lambda e: (e.first_seq if e.first_seq is not None else 1 << 60))
    remaining = list(agent.calls)
    for execution in ordered:
        if execution.first_seq is None:
            continue
        execution.written_by = [c for c in remaining if c.seq is not None and c.seq < execution.first_seq]
        remaining = [c for c in remaining if c not in execution.written_by]
    agent.calls = remaining  # calls after its last execution (the final answer's extraction, if any)


def _call(row: dict, attempts: int, journal: dict | None) -> Call:
    replayed = row["outcome"] == "replayed"
    prompt_tokens = journal["prompt_tokens"] if replayed and journal else row["prompt_tokens"]
    completion_tokens = journal["completion_tokens"] if replayed and journal else row["completion_tokens"]
    return Call(seq=row.get("seq"), depth=row["depth"], parent=row.get("parent"), outcome=row["outcome"],
                attempts=attempts, prompt_tokens=prompt_tokens or 0, completion_tokens=completion_tokens or 0,
                seconds=float(row["latency"] or 0.0), prompt=(journal or {}).get("preview") or "",
                answer=_answer_text((journal or {}).get("outputs")), error=row.get("error"))


def _answer_text(outputs: str | None) -> str:
    if not outputs:
        return ""
    try:
        value = json.loads(outputs)
    except ValueError:
        return outputs
    first = value[0] if isinstance(value, list) and value else value
    if isinstance(first, dict):
        first = first.get("text", first)
    return first if isinstance(first, str) else json.dumps(first, ensure_ascii=False)


# --- HTML ---------------------------------------------------------------------------------------
def render(recursion: Recursion) -> str:
    """The tree as HTML (templates/trajectory.html)."""
    depth_text = ", ".join(f"{n} at depth {d}" for d, n in recursion.by_depth.items()) or "none"
    env = environment()
    env.filters.update(oneline=lambda text: " ".join(str(text).split()), kept=lambda text: clip(text or "", KEPT_CHARS),
                       duration=duration, in_order=_in_order, executions_in_order=_executions_in_order)
    return html.render("trajectory.html", recursion=recursion, depth_text=depth_text, shown=SHOWN_CHARS,
                       most=MAX_SUB_CALLS)


def _executions_in_order(agent: Agent) -> list[Execution]:
    return sorted(agent.executions, key=lambda e: (e.first_seq if e.first_seq is not None else 1 << 60,
                                                   e.iteration or 0))


def _in_order(execution: Execution) -> list[tuple[str, Call | Agent]]:
    """What an execution's tools made, in the order they made it: its sub-calls (at most MAX_SUB_CALLS)
    and its nested RLMs (placed by their first call or code)."""
    items = [(c.seq if c.seq is not None else 1 << 60, "call", c) for c in execution.sub_calls[:MAX_SUB_CALLS]]
    for agent in execution.agents:
        first = min([c.seq for c in agent.calls if c.seq is not None]
                    + [e.first_seq for e in agent.executions if e.first_seq is not None] + [1 << 60])
        items.append((first, "agent", agent))
    return [(kind, item) for _, kind, item in sorted(items, key=lambda item: item[0])]
