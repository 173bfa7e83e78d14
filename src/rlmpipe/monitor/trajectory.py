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
from rlmpipe.monitor.html import count, esc

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
    depth_text = ", ".join(f"{n} at depth {d}" for d, n in recursion.by_depth.items()) or "none"
    head = (f'<p class="muted">Status {esc(recursion.status)}'
            + (f" · document {esc(recursion.document)}" if recursion.document else "")
            + f" · {count(recursion.calls)} LM calls in its last session ({esc(depth_text)})"
            + (f', <span class="replayed">{count(recursion.replayed)} replayed</span> from the call journal '
               "(answered in an earlier session, not billed again)" if recursion.replayed else "")
            + ". Each iteration: the call that wrote the code, the code, its output, then what its tools "
              "asked (sub-calls, nested RLMs), in order.</p>")
    return f'<div class="recursion">{head}{_agent_html(recursion.root, top=True)}</div>'


def _agent_html(agent: Agent, top: bool = False) -> str:
    executions = sorted(agent.executions, key=lambda e: (e.first_seq if e.first_seq is not None else 1 << 60,
                                                          e.iteration or 0))
    parts = [_execution_html(e, open_=top and number < 3) for number, e in enumerate(executions)]
    if agent.calls:
        parts.append('<div class="calls-after">' + "".join(_call_html(c) for c in agent.calls) + "</div>")
    if not parts:
        return '<p class="muted">no code ran</p>'
    return "".join(parts)


def _execution_html(execution: Execution, open_: bool) -> str:
    writer = "".join(_call_html(c, label="written by") for c in execution.written_by)
    subs = execution.sub_calls[:MAX_SUB_CALLS]
    more = len(execution.sub_calls) - len(subs)
    replayed = sum(1 for c in execution.sub_calls if c.replayed)
    items = sorted([(c.seq if c.seq is not None else 1 << 60, _call_html(c)) for c in subs]
                   + [(min([c.seq for c in a.calls if c.seq is not None] + [
                       e.first_seq for e in a.executions if e.first_seq is not None] + [1 << 60]),
                       _nested_html(a)) for a in execution.agents], key=lambda item: item[0])
    summary = (f"iteration {esc(execution.iteration or '?')} · depth {execution.depth} · code "
               f"{esc(duration(execution.seconds))}"
               + (f" · {count(len(execution.sub_calls))} sub-call{'s' if len(execution.sub_calls) != 1 else ''}"
                  + (f" ({count(replayed)} replayed)" if replayed else "") if execution.sub_calls else "")
               + (f" · {len(execution.agents)} nested RLM{'s' if len(execution.agents) != 1 else ''}"
                  if execution.agents else "")
               + (' · <span class="error">error</span>' if execution.error else ""))
    return (f'<details class="execution depth-{min(execution.depth, 3)}"{" open" if open_ else ""}>'
            f"<summary>{summary}</summary>{writer}"
            f'<div class="label">code</div><pre>{esc(clip(execution.code, KEPT_CHARS))}</pre>'
            f'<div class="label">output</div><pre class="muted">{esc(clip(execution.output, KEPT_CHARS))}</pre>'
            + "".join(html for _, html in items)
            + (f'<p class="muted">... and {count(more)} more sub-calls</p>' if more > 0 else "")
            + "</details>")


def _nested_html(agent: Agent) -> str:
    return (f'<details class="nested depth-{min(agent.depth, 3)}" open><summary>nested RLM at depth '
            f"{agent.depth} ({len(agent.executions)} iterations)</summary>{_agent_html(agent)}</details>")


def _call_html(call: Call, label: str = "sub-call") -> str:
    badge = ('<span class="pill replayed" title="answered from the call journal: asked in an earlier session, '
             'not billed again">replayed</span> ' if call.replayed else
             '<span class="pill error">error</span> ' if call.outcome == "error" else "")
    tokens = f"{count(call.prompt_tokens)} in / {count(call.completion_tokens)} out"
    facts = (f"{label} · depth {call.depth} · {tokens} tokens"
             + (" (when first made)" if call.replayed else f" · {esc(duration(call.seconds))}")
             + (f" · {call.attempts} attempts" if call.attempts > 1 else ""))
    answer = call.answer if call.outcome != "error" else (call.error or "")
    said = _text("asked", call.prompt) + _text("answered" if call.outcome != "error" else "failed", answer)
    if label == "written by":  # the RLM's own prompt is long and its answer is the code below: on a click
        return (f'<details class="call{" is-replayed" if call.replayed else ""}"><summary>{badge}{facts}</summary>'
                f"{said}</details>")
    return f'<div class="call{" is-replayed" if call.replayed else ""}"><div>{badge}{facts}</div>{said}</div>'


def _text(label: str, text: str) -> str:
    """A prompt or an answer: one line of it, and all of it (up to KEPT_CHARS) behind a click."""
    text = clip(text or "", KEPT_CHARS)
    line = " ".join(text.split())
    if len(line) <= SHOWN_CHARS and "\n" not in text.strip():
        return f'<div class="said"><span class="label">{label}</span> <code>{esc(line)}</code></div>'
    return (f'<details class="said"><summary><span class="label">{label}</span> '
            f"<code>{esc(line[:SHOWN_CHARS])}…</code></summary><pre>{esc(text)}</pre></details>")
