"""A scripted DSPy LM for unit tests: deterministic answers per prompt pattern, no HTTP, thread-safe.

    lm = ScriptedLM()
    lm.reply(r"capital of France", chat_reply(answer="Paris"))
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="What is the capital of France?").answer == "Paris"
    assert lm.count("capital of France") == 1
    assert lm.history[-1]["usage"]["completion_tokens"] == 6   # words of the reply, by default

Design (DSPy 3.4): ``ScriptedLM`` is a ``dspy.LM`` (hence a ``dspy.BaseLM``) whose execution engine is
``ScriptedEngine`` (``complete(Request) -> Response``), the engine contract DSPy 3.4 documents for custom
LMs. Subclassing ``BaseLM`` and overriding ``forward()`` still works in 3.4 but emits a DeprecationWarning
on every call and is scheduled for removal in DSPy 3.5, so this double does not use it. Everything around
the engine is DSPy's own: adapters, history (``lm.history[-1]["usage"]``), usage tracking, callbacks. DSPy's
response cache is off (``cache=False``) and its retry loop too (``num_retries=0``) unless asked for.

Precedence per call, as in ``tests.support.openai_server``: the queue, then the rules (first ``re.search``
match against the prompt wins), then the default. The prompt is every message's text (system first) joined by
newlines. A reply is a string, a ``callable(request_json) -> str`` (``request_json`` is the OpenAI-style
``{"model", "messages", **options}`` dict, so the same callables serve both doubles), or an exception
instance, which is raised (raise ``dspy.lm15`` errors, e.g. ``dspy.lm15.RateLimitError("slow down",
retry_after=2)``, to see what DSPy makes of provider failures).

Reply formats, taken from DSPy's adapters (dspy/adapters/chat_adapter.py, json_adapter.py):

* ChatAdapter (the default): each output field as ``[[ ## name ## ]]\\n<value>``, fields joined by a blank
  line, then ``[[ ## completed ## ]]``. Values: ``str`` verbatim, lists/dicts/pydantic models as JSON,
  anything else ``str()``. ``chat_reply(answer="Paris")``.
* JSONAdapter: one JSON object with the output fields (``json.dumps(..., indent=2, ensure_ascii=False)``).
  ``json_reply(answer="Paris")``.
* ChainOfThought adds a ``reasoning`` output field before the signature's own:
  ``chat_reply(reasoning="...", answer="...")``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import dspy
from dspy import lm15

Reply = str | Callable[[dict], str] | BaseException

COMPLETED_MARKER = "[[ ## completed ## ]]"


# -- reply formatting -------------------------------------------------------------------------------------
def _format_value(value: Any) -> str:
    """ChatAdapter's format_field_value for an output value (dspy/adapters/utils.py)."""
    from dspy.adapters.utils import serialize_for_json

    if isinstance(value, str):
        return value
    jsonable = serialize_for_json(value)
    if isinstance(jsonable, (dict, list)):
        return json.dumps(jsonable, ensure_ascii=False)
    return str(jsonable)


def chat_reply(**fields: Any) -> str:
    """A completion in DSPy's ChatAdapter format for the given output fields (in the order given).

    >>> chat_reply(answer="Paris")
    '[[ ## answer ## ]]\\nParis\\n\\n[[ ## completed ## ]]'
    """
    body = "\n\n".join(f"[[ ## {name} ## ]]\n{_format_value(value)}" for name, value in fields.items())
    return f"{body}\n\n{COMPLETED_MARKER}" if body else COMPLETED_MARKER


def json_reply(**fields: Any) -> str:
    """A completion in DSPy's JSONAdapter format: one JSON object with the output fields."""
    from dspy.adapters.utils import serialize_for_json

    return json.dumps(serialize_for_json(dict(fields)), indent=2, ensure_ascii=False)


# -- the engine -------------------------------------------------------------------------------------------
def _part_text(parts: Any) -> str:
    if parts is None:
        return ""
    if isinstance(parts, str):
        return parts
    return "\n".join(getattr(p, "text", "") or "" for p in parts)


def request_messages(request: lm15.Request) -> list[dict[str, str]]:
    """The request's conversation as OpenAI-style ``{"role", "content"}`` dicts (system first)."""
    messages = []
    if request.system is not None:
        messages.append({"role": "system", "content": _part_text(request.system)})
    for message in request.messages:
        messages.append({"role": message.role, "content": _part_text(message.parts)})
    return messages


def request_options(request: lm15.Request) -> dict[str, Any]:
    """The generation options that were set on the request (``max_tokens``, ``temperature``, ...)."""
    defaults = lm15.Config()
    return {f.name: getattr(request.config, f.name) for f in fields(request.config)
            if getattr(request.config, f.name) != getattr(defaults, f.name)}


@dataclass
class LMCall:
    """One call the scripted LM answered (or raised for)."""

    index: int
    time: float
    messages: list[dict[str, str]]
    kwargs: dict[str, Any]  # generation options DSPy sent (temperature, max_tokens, response_format, ...)
    prompt: str
    request: lm15.Request = field(repr=False)
    reply: str | None = None
    rule: str | None = None  # the rule's pattern, "queue" or "default"
    error: BaseException | None = None


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    reply: Reply
    latency: float | None = None
    usage: tuple[int, int] | None = None
    hits: int = 0


class ScriptedEngine:
    """``complete(Request) -> Response`` from scripted rules. Owned by a ScriptedLM (which holds the script)."""

    def __init__(self, model: str, default: Reply, latency: float, usage: tuple[int, int] | None):
        self.model = model
        self._lock = threading.RLock()
        self._rules: list[_Rule] = []
        self._queue: deque[Reply] = deque()
        self._default = default
        self._latency = float(latency)
        self._usage = usage
        self._calls: list[LMCall] = []

    def complete(self, request: lm15.Request) -> lm15.Response:
        messages = request_messages(request)
        prompt = "\n".join(m["content"] for m in messages)
        options = request_options(request)
        with self._lock:
            call = LMCall(len(self._calls), time.time(), messages, options, prompt, request)
            self._calls.append(call)
            reply, label, latency, usage = self._choose(prompt)
            call.rule = label
        if latency > 0:
            time.sleep(latency)
        if isinstance(reply, BaseException):
            call.error = reply
            raise reply
        text = reply({"model": self.model, "messages": messages, **options}) if callable(reply) else str(reply)
        call.reply = text
        prompt_tokens, completion_tokens = usage if usage is not None else (len(prompt.split()), len(text.split()))
        return lm15.Response(
            id=f"scripted-{call.index}",
            model=self.model,
            message=lm15.Message.assistant(text),
            finish_reason="stop",
            usage=lm15.Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens,
                             total_tokens=prompt_tokens + completion_tokens),
        )

    def _choose(self, prompt: str) -> tuple[Reply, str, float, tuple[int, int] | None]:
        if self._queue:
            return self._queue.popleft(), "queue", self._latency, self._usage
        for rule in self._rules:
            if rule.pattern.search(prompt):
                rule.hits += 1
                latency = rule.latency if rule.latency is not None else self._latency
                return rule.reply, rule.pattern.pattern, latency, rule.usage or self._usage
        return self._default, "default", self._latency, self._usage

    def stream(self, request: lm15.Request):
        return lm15.response_to_events(self.complete(request))

    def close(self) -> None:
        pass


class AsyncScriptedEngine:
    """The async counterpart DSPy uses for ``acall``/``aforward``: the same script, run in a worker thread."""

    def __init__(self, sync: ScriptedEngine):
        self.sync = sync

    async def complete(self, request: lm15.Request) -> lm15.Response:
        return await asyncio.to_thread(self.sync.complete, request)

    async def stream(self, request: lm15.Request):
        for event in lm15.response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        pass


class ScriptedLM(dspy.LM):
    """A ``dspy.LM`` (so a ``dspy.BaseLM``) answering from a script; see the module docstring.

    ``rules``: ``[(pattern, reply), ...]``; ``default``: the reply when nothing matches; ``latency``: seconds
    slept per call (in the calling thread); ``usage``: fixed ``(prompt_tokens, completion_tokens)`` or None for
    word counts of the prompt and the reply.
    """

    def __init__(self, rules: list[tuple[str, Reply]] | None = None, *, default: Reply = "",
                 model: str = "scripted/test-model", latency: float = 0.0, usage: tuple[int, int] | None = None,
                 cache: bool = False, num_retries: int = 0, **kwargs: Any):
        engine = ScriptedEngine(model, default, latency, usage)
        super().__init__(model, engine=engine, async_engine=AsyncScriptedEngine(engine), cache=cache,
                         num_retries=num_retries, **kwargs)
        for pattern, reply in rules or ():
            self.reply(pattern, reply)

    @property
    def script(self) -> ScriptedEngine:
        return self._engine_spec

    # -- scripting ----------------------------------------------------------------------------------------
    def reply(self, pattern: str, reply: Reply, *, latency: float | None = None,
              usage: tuple[int, int] | None = None, flags: int = 0) -> ScriptedLM:
        with self.script._lock:
            self.script._rules.append(_Rule(re.compile(pattern, flags), reply, latency, usage))
        return self

    def queue_replies(self, *replies: Reply) -> ScriptedLM:
        with self.script._lock:
            self.script._queue.extend(replies)
        return self

    def set_default(self, reply: Reply) -> None:
        with self.script._lock:
            self.script._default = reply

    def set_latency(self, seconds: float) -> None:
        with self.script._lock:
            self.script._latency = float(seconds)

    def set_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self.script._lock:
            self.script._usage = (prompt_tokens, completion_tokens)

    # -- the call log -------------------------------------------------------------------------------------
    @property
    def calls(self) -> list[LMCall]:
        with self.script._lock:
            return list(self.script._calls)

    def count(self, pattern: str | None = None) -> int:
        regex = re.compile(pattern) if pattern is not None else None
        return sum(1 for c in self.calls if regex is None or regex.search(c.prompt))
