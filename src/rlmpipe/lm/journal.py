"""The call journal: every answered LM call of a step, kept so that the step, when it runs again
after a crash, a Ctrl-C or a budget stop, is served what was already answered instead of paying
for it again. Its replay also rebuilds whatever state the step had (an RLM's REPL variables): the
program runs again from the start, and every answer it gets is the one it got before.

A call is known by its step, the *content* of its request (model, prompt or messages, arguments)
and its *occurrence* (the n-th time the step makes this very request). So calls made concurrently
(``llm_query_batched``) match whatever order their threads run in: identical requests are
interchangeable and different ones have different keys; and a request made twice on purpose
(sampling) gets its two answers, not one answer twice.

Replay is exact only while the program asks what it asked before. The first request that is not
in the journal while answers remain unused is the point where the run and its journal part
(a changed program, code that is not deterministic): from there the step runs live, except for
the calls that run *alongside* the one that parted (the rest of its batch, or calls made while it
is in flight), which may still be served. Answers that were never asked for again are counted
(:attr:`JournalSummary.unused`) and reported.

This module is the policy (keys, replay, parting); where answers are kept is the runtime's
(:class:`rlmpipe.runtime.journal.StepJournal`, on the run's store).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

#: characters of a request's last message kept beside its answer, for the trajectory view
PREVIEW_CHARS = 2000


def request_key(model: str, prompt: Any, messages: Any, kwargs: dict) -> str:
    """The content of a request, as a digest: what the model was asked, and how."""
    content = {"model": model, "prompt": prompt, "messages": messages, "kwargs": kwargs}
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, default=_opaque)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def value_key(name: str, arguments: Any = None) -> str:
    """The key of a value the program asked the host for (a tool answer that is not an LM call, such as
    what is left of the budget): journaled like an answer, so a replay sees what the first run saw."""
    return request_key(f"tool:{name}", None, None, {"arguments": arguments})


def _opaque(value: Any) -> Any:
    dump = getattr(value, "model_json_schema", None) or getattr(value, "model_dump", None)
    if callable(dump):  # a pydantic class or model (a response format): its schema or fields
        try:
            return dump()
        except TypeError:
            pass
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def preview(prompt: Any, messages: Any) -> str:
    """What the trajectory view shows of a request: its prompt, or its last message, clipped."""
    text = prompt if isinstance(prompt, str) else ""
    if not text and isinstance(messages, list) and messages:
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else messages[-1]
        if isinstance(content, list):  # content parts
            content = " ".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content)
        text = str(content or "")
    return clip(text, PREVIEW_CHARS)


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and its end."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return f"{text[:head]}\n[... {len(text) - limit:,} characters ...]\n{text[-(limit - head):]}"


def dumps_outputs(outputs: Any) -> str | None:
    """An answer as stored JSON, or None when it cannot be stored as JSON (it is then not journaled)."""
    try:
        return json.dumps(outputs, ensure_ascii=False, allow_nan=False,
                          default=lambda o: o.model_dump() if hasattr(o, "model_dump") else _refuse(o))
    except (TypeError, ValueError):
        return None


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


@dataclass(frozen=True)
class Answer:
    """What a call was answered, as the journal keeps it."""

    outputs: Any  # what the LM returned (a list of completions)
    prompt_tokens: int = 0  # what it was billed when it was made
    completion_tokens: int = 0
    cost: float | None = None


@dataclass(frozen=True)
class Claim:
    """A request as the journal placed it: its key and occurrence, its place in the step (``seq``), and
    the answer to replay (None: call the model)."""

    key: str
    occurrence: int
    seq: int
    answer: Answer | None = None
    parted: bool = False  # a live call made while the journal still held answers


@dataclass(frozen=True)
class JournalSummary:
    replayed: int  # calls served from the journal
    unused: int  # answers of earlier sessions not served: never asked for again, or asked after the replay parted
    parted_at: int | None  # how many calls were replayed when the first request missed the journal


class Replay:
    """One execution of a step against its journal: which answers it may still be served.

    ``answers`` are the step's journal (``(key, occurrence) -> Answer``); ``store`` writes a new
    answer durably, and returns only once it is stored (``store(claim, outputs_json, call, preview)``).
    Thread-safe: a step's calls may come from several threads at once."""

    def __init__(self, answers: dict[tuple[str, int], Answer], store: Callable[..., None]):
        self._unused = dict(answers)
        self._store = store
        self._lock = threading.Lock()
        self._occurrences: Counter[str] = Counter()
        self._seq = 0
        self._open = True  # no request has missed yet: answers are served
        self._parted_scopes: set[str] = set()  # batches in which a request missed
        self._live_partings = 0  # live calls in flight that missed while answers remained
        self._refused = 0  # journaled answers asked for after the replay parted: called live instead
        self.replayed = 0
        self.parted_at: int | None = None

    @property
    def empty(self) -> bool:
        return not self._unused

    @property
    def position(self) -> int:
        """Requests placed so far (the next one's ``seq``): where a stretch of the program starts and ends."""
        with self._lock:
            return self._seq

    def claim(self, key: str, scope: str | None = None) -> Claim:
        """Place a request: its occurrence, and the answer to replay if the journal may serve it."""
        with self._lock:
            occurrence = self._occurrences[key]
            self._occurrences[key] += 1
            seq, self._seq = self._seq, self._seq + 1
            answer = self._unused.pop((key, occurrence), None)
            if answer is not None and (self._open or self._live_partings or (scope and scope in self._parted_scopes)):
                self.replayed += 1
                return Claim(key, occurrence, seq, answer)
            if not self._unused and answer is None:
                self._open = False  # past the end of what was answered before: live from here
                return Claim(key, occurrence, seq)
            self._refused += answer is not None
            # a request the journal cannot serve while it still holds answers: the run parts from it here
            if self._open:
                self._open = False
                self.parted_at = self.replayed
            if scope:
                self._parted_scopes.add(scope)
            self._live_partings += 1
            return Claim(key, occurrence, seq, parted=True)

    def settle(self, claim: Claim) -> None:
        """A live call placed by :meth:`claim` has ended (answered or not)."""
        if claim.parted:
            with self._lock:
                self._live_partings -= 1

    def answered(self, claim: Claim, outputs_json: str, call: Any, request_preview: str) -> None:
        """Keep a live call's answer (before the program uses it)."""
        self._store(claim, outputs_json, call, request_preview)

    def value(self, key: str, compute: Callable[[], Any]) -> Any:
        """A host value the program asked for (not an LM call): replayed if journaled, else computed and
        journaled, so a replay sees what the first run saw."""
        claim = self.claim(key)
        try:
            if claim.answer is not None:
                return claim.answer.outputs
            value = compute()
            stored = dumps_outputs(value)
            if stored is not None:
                self._store(claim, stored, None, "")
            return value
        finally:
            self.settle(claim)

    def summary(self) -> JournalSummary:
        """Calls replayed, and the answers left behind where the replay parted from the journal (answers
        not reached because the step stopped first are not counted: a later session may still use them)."""
        with self._lock:
            unused = len(self._unused) + self._refused if self.parted_at is not None else 0
            return JournalSummary(self.replayed, unused, self.parted_at if unused else None)

    def stale(self) -> list[tuple[str, int]]:
        """The keys of the answers the replay parted from: they describe a run that no longer happens."""
        with self._lock:
            return list(self._unused) if self.parted_at is not None else []
