"""RLM: ``dspy.RLM`` as a checkpointed step, in the offline sandbox, with recursion depth and budgets.

The document stays out of the prompt: it is a variable in a Python REPL (Pyodide under Deno, see
:mod:`rlmpipe.sandbox`); the model writes code to inspect it and calls sub-models on the parts it
chooses (``llm_query``, ``llm_query_batched``, sub-agents such as a nested ``dspy.RLM``).

Recursion depth is counted where the recursion happens: every tool call from a sandbox that can
reach a model (``llm_query``, ``llm_query_batched``, a sub-agent) runs one level deeper than the
code that made it, so the top RLM's own calls are depth 0, its ``llm_query`` calls depth 1, a
nested RLM's calls depth 1 and that one's ``llm_query`` calls depth 2. Every LM call is recorded
with its depth (``runs show``: table by depth). ``max_depth`` refuses calls that would go deeper;
the refusal is shown to the model as an error, and it can go on with what it has. Token, cost and
time budgets apply across all depths (the run's budget), and so does the sub-call budget
(``RunOptions.max_sub_calls``), which dspy.RLM's own per-call ``max_llm_calls`` does not cover.

When a token, cost or time budget runs out mid-way, the step ends with its best partial answer
(the last output the REPL printed) and a clear status, stored with its trajectory but not marked
done: a resume with a larger budget runs it again.

A recursion survives a crash: every LM call in it is kept in the step's call journal when it is
answered (``lm/journal.py``), and the step, run again, replays them: the model's code runs again
against the same answers, which rebuilds the REPL's variables (the sandbox has no permissions, so
running its code again has no outside effect), and only calls never answered reach the model.
For that the sandbox is deterministic (a fixed hash seed and ``random`` seed) and what the code
asks the host that may change between runs (``budget_left()``) is journaled too.

While it runs, every code execution is told as events (``rlm_iteration``, ``rlm_output``: the live
display and ``runs watch`` show the current iteration at each depth), and every LM call carries the
execution that made it (``parent``), so the run report draws the recursion as a tree.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import dspy
from dspy.primitives.facade import CALL_TOOL, SHIM_SETUP

from rlmpipe.lm.context import call_context, current
from rlmpipe.lm.errors import BudgetExceeded
from rlmpipe.lm.journal import value_key
from rlmpipe.runtime import events as ev
from rlmpipe.runtime.runner import StepOutput
from rlmpipe.sandbox import DenoSandbox

#: Sandbox tools that reach a model: calling one goes one level deeper (CALL_TOOL runs sub-agents).
LM_TOOLS = ("llm_query", "llm_query_batched")
#: The tool the model's code asks what is left of its budgets with (named in the instructions).
BUDGET_TOOL = "budget_left"
MAX_TRAJECTORY_OUTPUT = 4000
#: characters of code and output an event carries (the live display shows a line of each)
EVENT_TEXT = 300

BUDGET_INSTRUCTIONS = (
    f" Call {BUDGET_TOOL}() to see what is left before you plan more sub-calls: a dict of tokens, cost (USD), "
    "seconds, sub_calls (sub-model calls, all depths together), depth (levels of sub-calls still allowed below "
    "this code) and llm_calls (what is left of your own sub-call allowance); None means no limit."
)


@dataclass
class Trajectory:
    """What the code did, in every sandbox of one RLM step (nested RLMs included), in order. Each
    execution has an id (``x1``, ``x2``, ...: the same on a replay), the id of the execution whose
    tool call ran it (``parent``: a nested RLM's code), and its iteration in its own RLM."""

    entries: list[dict] = field(default_factory=list)
    executions: int = 0

    def next_id(self) -> str:
        self.executions += 1
        return f"x{self.executions}"

    def add(self, depth: int, code: str, output: str, seconds: float, error: bool, *, id: str | None = None,
            parent: str | None = None, iteration: int | None = None, started: float | None = None,
            calls: tuple[int | None, int | None] = (None, None)) -> None:
        """One execution; ``calls``: the ``seq`` of the step's requests before it started and after it ended
        (the LM calls of the step made between them were made while it ran)."""
        self.entries.append({"depth": depth, "code": code, "output": _clip(output), "seconds": round(seconds, 3),
                             "error": error, "id": id, "parent": parent, "iteration": iteration,
                             "started": started, "seq": list(calls)})

    def last_output(self) -> str:
        for entry in reversed(self.entries):
            if entry["depth"] == 0 and entry["output"].strip() and not entry["error"]:
                return entry["output"]
        return ""


def _clip(text: str, limit: int = MAX_TRAJECTORY_OUTPUT) -> str:
    text = str(text or "")
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters)"


class RecursionLimit(RuntimeError):
    pass


def _unlimited() -> dict:
    return {"tokens": None, "cost": None, "seconds": None, "sub_calls": None}


class DepthSandbox(DenoSandbox):
    """A sandbox whose model-reaching tools run one recursion level deeper, up to ``max_depth``; that
    tells each execution as events (``emit``) and records it in the step's ``trajectory``; and that
    answers ``budget_left()`` from ``remaining`` (the run's budgets)."""

    def __init__(self, *, max_depth: int, trajectory: Trajectory, emit: Callable[[Any], None] | None = None,
                 remaining: Callable[[], dict] | None = None, **options: Any):
        super().__init__(**options)
        self.max_depth = max_depth
        self.trajectory = trajectory
        self.emit = emit
        self.remaining = remaining or _unlimited
        self.iteration = 0  # executions of the model's code in this sandbox (one RLM invocation)
        self._execution: str | None = None  # the execution running now
        self._batches = self._agents = 0  # its batches and sub-agents so far

    def _wrap(self, name: str, tool):
        if getattr(tool, "_rlmpipe_depth", False):
            return tool
        if name not in LM_TOOLS and name != CALL_TOOL:
            return tool

        @functools.wraps(tool)  # the sandbox rebuilds the tool's signature from this
        def deeper_tool(*args, **kwargs):
            if current().depth + 1 > self.max_depth:
                raise RecursionLimit(
                    f"maximum recursion depth {self.max_depth} reached: no sub-model calls from here; "
                    "work with the data and results you already have")
            scope, parent = None, self._execution
            if name == "llm_query_batched":  # its calls run together: a replay may serve them in any order
                self._batches += 1
                scope = f"{self._execution}.b{self._batches}"
            elif name == CALL_TOOL:  # a sub-agent (a nested RLM): its own calls and code hang from this id
                self._agents += 1
                parent = f"{self._execution}.a{self._agents}"
            with call_context(depth=current().depth + 1, parent=parent, scope=scope):
                return tool(*args, **kwargs)

        deeper_tool._rlmpipe_depth = True
        return deeper_tool

    def budget_left(self) -> dict:
        """What is left of the run's budgets, the recursion depth and this RLM's sub-call allowance."""
        def compute() -> dict:
            left = dict(self.remaining())
            left["depth"] = max(0, self.max_depth - current().depth)
            left["llm_calls"] = _llm_calls_left(self.tools.get("llm_query"))
            return left

        journal = current().journal  # journaled: a replay sees what the first run saw, not today's figures
        return journal.value(value_key(BUDGET_TOOL), compute) if journal is not None else compute()

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        for name, tool in list(self.tools.items()):
            self.tools[name] = self._wrap(name, tool)
        if code == SHIM_SETUP:  # DSPy installing its sandbox facade: not the model's code
            return super().execute(code, variables)
        self.tools.setdefault(BUDGET_TOOL, _tool(self.budget_left))
        self.iteration += 1
        context = current()
        execution, parent = self.trajectory.next_id(), context.parent
        self._execution, self._batches, self._agents = execution, 0, 0
        where = {"run_id": context.run_id, "step_key": context.step_key or "", "name": context.step_name or "",
                 "doc_id": context.doc_id, "depth": context.depth, "iteration": self.iteration,
                 "execution": execution}
        self._tell(ev.RLMIteration(**where, parent=parent, code=_clip(code, EVENT_TEXT)))
        started, clock = time.time(), time.perf_counter()
        first = context.journal.position if context.journal is not None else None
        try:
            result = super().execute(code, variables)
        except Exception as error:
            output, failed = f"{type(error).__name__}: {error}", True
            raise
        else:
            output, failed = "" if result is None else str(result), False
            return result
        finally:
            seconds = time.perf_counter() - clock
            last = context.journal.position if context.journal is not None else None
            self.trajectory.add(context.depth, code, output, seconds, failed, id=execution, parent=parent,
                                iteration=self.iteration, started=started, calls=(first, last))
            self._tell(ev.RLMOutput(**where, seconds=round(seconds, 3), error=failed,
                                    output=_clip(output, EVENT_TEXT)))
            self._execution = None

    def _tell(self, event) -> None:
        if self.emit is not None:
            self.emit(event)


def _tool(method: Callable) -> Callable:
    """A bound method as a plain host tool (the sandbox builds its signature and help from it)."""
    @functools.wraps(method)
    def tool():
        return method()

    tool.__signature__ = inspect.Signature()
    return tool


def _llm_calls_left(llm_query) -> int | None:
    """What is left of DSPy's per-invocation sub-call allowance (``max_llm_calls``), read from the budget
    its ``llm_query`` tool draws on; None when it cannot be read."""
    tool = inspect.unwrap(llm_query) if llm_query is not None else None
    try:
        budget = inspect.getclosurevars(tool).nonlocals.get("budget") if tool is not None else None
        return max(0, int(budget._limit) - int(budget._count))
    except (AttributeError, TypeError, ValueError):
        return None


def rlm_module(signature, *, max_depth: int = 2, max_iters: int = 12, max_llm_calls: int = 40,
               sandbox: dict | None = None, trajectory: Trajectory | None = None,
               emit: Callable[[Any], None] | None = None, remaining: Callable[[], dict] | None = None) -> dspy.RLM:
    """The ``dspy.RLM`` that :func:`rlm_step` runs, over this package's sandbox. Built one way for
    running and for fingerprinting: its prompts include the sandbox's own instructions."""
    trajectory = trajectory if trajectory is not None else Trajectory()

    def factory():
        return DepthSandbox(max_depth=max_depth, trajectory=trajectory, emit=emit, remaining=remaining,
                            **(sandbox or {}))

    factory.execution_instructions = DenoSandbox.execution_instructions + BUDGET_INSTRUCTIONS  # in the prompt
    return dspy.RLM(signature, max_iters=max_iters, max_llm_calls=max_llm_calls, interpreter_factory=factory)


def rlm_step(run, name: str, signature, inputs: dict, *, key_inputs: list[str], doc_id: str | None = None,
             max_depth: int = 2, max_iters: int = 12, max_llm_calls: int = 40,
             sandbox: dict | None = None) -> dict:
    """Run ``dspy.RLM(signature)`` on ``inputs`` as the checkpointed step ``name``.

    Returns the step's result: the signature's outputs, plus ``status`` and ``iterations``; the
    trajectory (code, output, depth, time of every execution) is stored with the step.
    """
    budget = getattr(run.lm, "budget", None)

    def work():
        trajectory = Trajectory()
        module = rlm_module(signature, max_depth=max_depth, max_iters=max_iters, max_llm_calls=max_llm_calls,
                            sandbox=sandbox, trajectory=trajectory, emit=run.events.emit,
                            remaining=budget.remaining if budget is not None else None)
        try:
            prediction = module(**inputs)
        except BudgetExceeded as exc:  # the best partial answer, kept as a step that is not done
            partial = {"status": f"stopped: {exc}", "partial_answer": trajectory.last_output(),
                       "iterations": sum(1 for e in trajectory.entries if e["depth"] == 0)}
            return StepOutput(partial, {"trajectory": trajectory.entries}, stopped=f"budget: {exc}")
        outputs = {key: _jsonable(prediction[key]) for key in module.signature.output_fields}
        result = {**outputs, "status": "done", "iterations": sum(1 for e in trajectory.entries if e["depth"] == 0)}
        return StepOutput(result, {"trajectory": trajectory.entries,
                                   "dspy_trajectory": _jsonable(prediction.get("trajectory", []))})

    return run.step(name, work, doc_id=doc_id, inputs=key_inputs)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)
