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
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.primitives.facade import CALL_TOOL, SHIM_SETUP

from rlmpipe.lm.context import current, deeper
from rlmpipe.lm.errors import BudgetExceeded
from rlmpipe.runtime.runner import StepOutput
from rlmpipe.sandbox import DenoSandbox

#: Sandbox tools that reach a model: calling one goes one level deeper (CALL_TOOL runs sub-agents).
LM_TOOLS = ("llm_query", "llm_query_batched")
MAX_TRAJECTORY_OUTPUT = 4000


@dataclass
class Trajectory:
    """What the code did, in every sandbox of one RLM step (nested RLMs included)."""

    entries: list[dict] = field(default_factory=list)

    def add(self, depth: int, code: str, output: str, seconds: float, error: bool) -> None:
        self.entries.append({"depth": depth, "code": code, "output": _clip(output), "seconds": round(seconds, 3),
                             "error": error})

    def last_output(self) -> str:
        for entry in reversed(self.entries):
            if entry["depth"] == 0 and entry["output"].strip() and not entry["error"]:
                return entry["output"]
        return ""


def _clip(text: str) -> str:
    text = str(text or "")
    if len(text) <= MAX_TRAJECTORY_OUTPUT:
        return text
    return text[:MAX_TRAJECTORY_OUTPUT] + f"\n... ({len(text) - MAX_TRAJECTORY_OUTPUT} more characters)"


class RecursionLimit(RuntimeError):
    pass


class DepthSandbox(DenoSandbox):
    """A sandbox whose model-reaching tools run one recursion level deeper, up to ``max_depth``."""

    def __init__(self, *, max_depth: int, trajectory: Trajectory, **options: Any):
        super().__init__(**options)
        self.max_depth = max_depth
        self.trajectory = trajectory

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
            with deeper():
                return tool(*args, **kwargs)

        deeper_tool._rlmpipe_depth = True
        return deeper_tool

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        for name, tool in list(self.tools.items()):
            self.tools[name] = self._wrap(name, tool)
        if code == SHIM_SETUP:  # DSPy installing its sandbox facade: not the model's code
            return super().execute(code, variables)
        started = time.perf_counter()
        try:
            result = super().execute(code, variables)
        except Exception as error:
            self.trajectory.add(current().depth, code, f"{type(error).__name__}: {error}",
                                time.perf_counter() - started, True)
            raise
        self.trajectory.add(current().depth, code, "" if result is None else str(result),
                            time.perf_counter() - started, False)
        return result


def rlm_module(signature, *, max_depth: int = 2, max_iters: int = 12, max_llm_calls: int = 40,
               sandbox: dict | None = None, trajectory: Trajectory | None = None) -> dspy.RLM:
    """The ``dspy.RLM`` that :func:`rlm_step` runs, over this package's sandbox. Built one way for
    running and for fingerprinting: its prompts include the sandbox's own instructions."""
    trajectory = trajectory if trajectory is not None else Trajectory()

    def factory():
        return DepthSandbox(max_depth=max_depth, trajectory=trajectory, **(sandbox or {}))

    factory.execution_instructions = DenoSandbox.execution_instructions  # RLM puts it in the prompt
    return dspy.RLM(signature, max_iters=max_iters, max_llm_calls=max_llm_calls, interpreter_factory=factory)


def rlm_step(run, name: str, signature, inputs: dict, *, key_inputs: list[str], doc_id: str | None = None,
             max_depth: int = 2, max_iters: int = 12, max_llm_calls: int = 40,
             sandbox: dict | None = None) -> dict:
    """Run ``dspy.RLM(signature)`` on ``inputs`` as the checkpointed step ``name``.

    Returns the step's result: the signature's outputs, plus ``status`` and ``iterations``; the
    trajectory (code, output, depth, time of every execution) is stored with the step.
    """
    def work():
        trajectory = Trajectory()
        module = rlm_module(signature, max_depth=max_depth, max_iters=max_iters, max_llm_calls=max_llm_calls,
                            sandbox=sandbox, trajectory=trajectory)
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
