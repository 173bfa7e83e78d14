"""dspy.RLM end to end on DenoSandbox, with a scripted LM (no HTTP).

RLM's action step is a ChatAdapter call whose output fields are ``reasoning`` and ``code``; its prompt carries
the ``iteration`` input as ``[[ ## iteration ## ]]\\n<n>/<max_iters>``, which is what the rules below match.
Sub-LM calls from ``llm_query`` send the bare prompt string to the same LM (no ``sub_lm`` given).
"""

from __future__ import annotations

import dspy
import pytest

from rlmpipe.sandbox import DenoSandbox, sandbox_factory
from tests.sandbox.helpers import process_gone, requires_deno
from tests.support.scripted_lm import ScriptedLM, chat_reply

pytestmark = [requires_deno, pytest.mark.slow]

NEEDLE = "The vault code is 7341."


def long_context() -> str:
    filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20
    pages = [f"Page {i}. {filler}" for i in range(500)]  # ~600 KB
    pages[377] = f"Page 377. {filler[:300]} {NEEDLE} {filler[300:]}"
    return "\n".join(pages)


def action(iteration: int) -> str:
    return rf"\[\[ ## iteration ## \]\]\n{iteration}/"


class RecordingFactory:
    """A zero-argument interpreter factory that remembers the sandboxes it made."""

    def __init__(self, **kwargs):
        self.inner = sandbox_factory(**kwargs)
        self.execution_instructions = self.inner.execution_instructions
        self.made: list[DenoSandbox] = []

    def __call__(self) -> DenoSandbox:
        sandbox = self.inner()
        self.made.append(sandbox)
        return sandbox


def test_rlm_explores_context_calls_llm_query_and_submits(pyodide_cache):
    context = long_context()
    step1 = (
        "```python\n"
        "print(type(context).__name__, len(context))\n"
        "at = context.find('vault code')\n"
        "window = context[at - 40: at + 40]\n"
        "reply = llm_query('SUBQUERY: what is the vault code in: ' + window)\n"
        "print('sub-LM says:', reply)\n"
        "```"
    )
    step2 = "```python\nSUBMIT(answer=reply.split(':')[-1].strip())\n```"
    lm = ScriptedLM()
    lm.reply(action(1), chat_reply(reasoning="Find the code, ask the sub-LM.", code=step1))
    lm.reply(action(2), chat_reply(reasoning="Submit what the sub-LM found.", code=step2))
    lm.reply(r"^SUBQUERY:", "vault code: 7341")

    factory = RecordingFactory(timeout=60)
    rlm = dspy.RLM("context, question -> answer", max_iters=4, interpreter_factory=factory)
    with dspy.context(lm=lm):
        result = rlm(context=context, question="What is the vault code?")

    assert result.answer == "7341"
    # llm_query crossed from the sandbox to the host: the LM got the sub-call with the sandbox-computed slice
    sub_calls = [c for c in lm.calls if c.rule == r"^SUBQUERY:"]
    assert len(sub_calls) == 1
    assert NEEDLE.replace(".", "") in sub_calls[0].prompt
    # the sandbox's output went back into RLM's history, and the context came in whole
    step_one_output = result.trajectory[0]["output"]
    assert f"str {len(context)}" in step_one_output
    assert "sub-LM says: vault code: 7341" in step_one_output
    # RLM shut the interpreter down: no process left
    assert len(factory.made) == 1
    sandbox = factory.made[0]
    assert sandbox.pid is None and not sandbox.alive
    assert sandbox.restarts == 0
    assert all(process_gone(pid) for pid in sandbox.pids)


def test_rlm_recovers_from_a_timeout_with_the_context_reinjected(pyodide_cache):
    context = long_context()
    lm = ScriptedLM()
    lm.reply(action(1), chat_reply(reasoning="Define a helper.", code="```python\nhelper = 1\n```"))
    lm.reply(action(2), chat_reply(reasoning="Loop forever by mistake.", code="```python\nwhile True:\n    pass\n```"))
    lm.reply(action(3), chat_reply(
        reasoning="State was lost; the context and the dspy facade are back.",
        code="```python\nimport dspy\nprint('helper' in globals(), len(context), callable(dspy.Predict))\n```"))
    lm.reply(action(4), chat_reply(
        reasoning="Count.", code="```python\nSUBMIT(answer=str(context.count('vault code')))\n```"))

    factory = RecordingFactory(timeout=3)
    rlm = dspy.RLM("context -> answer", max_iters=5, interpreter_factory=factory)
    with dspy.context(lm=lm):
        result = rlm(context=context)

    assert result.answer == "1"
    timeout_output = result.trajectory[1]["output"]
    assert timeout_output.startswith("[Error] TimeoutError: the execution did not finish within 3 seconds")
    assert "ALL interpreter state is lost" in timeout_output
    assert f"False {len(context)} True" in result.trajectory[2]["output"]
    sandbox = factory.made[0]
    assert sandbox.restarts == 1
    assert len(sandbox.pids) == 2
    assert all(process_gone(pid) for pid in sandbox.pids)
