"""What the code making an LM call is doing: run, step, document, recursion depth.

Held in a ``contextvars.ContextVar`` so that every LM call made while a step runs is tagged with
it, without threading parameters through user DSPy modules. Worker threads set it themselves
(``call_context``); it does not leak between threads.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, replace
from typing import Any, Iterator


@dataclass(frozen=True, slots=True)
class CallContext:
    run_id: str | None = None
    step_key: str | None = None
    step_name: str | None = None
    doc_id: str | None = None
    depth: int = 0
    #: set while a step re-asks after output that did not parse: shown to the model
    reask_feedback: str | None = None
    #: the step's call journal (:class:`rlmpipe.lm.journal.Replay`): answers kept, and replayed
    journal: Any = None
    #: calls that run together (one ``llm_query_batched``): a replay that parts from its journal in one
    #: of them may still serve the others
    scope: str | None = None
    #: the RLM code execution whose tool call is running (calls made now are its sub-calls)
    parent: str | None = None


_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("rlmpipe_call_context", default=CallContext())


def current() -> CallContext:
    return _current.get()


@contextlib.contextmanager
def call_context(**changes) -> Iterator[CallContext]:
    """Run a block with some fields of the call context changed (the rest inherited)."""
    context = replace(_current.get(), **changes)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


@contextlib.contextmanager
def deeper() -> Iterator[CallContext]:
    """One recursion level down (an RLM sub-call)."""
    with call_context(depth=_current.get().depth + 1) as context:
        yield context
