"""Run events: what the engine tells the outside (progress, the event log, traces, metrics) as it works.

Each kind of event is a class below, with its fields; :meth:`Event.to_dict` is the one place an
event becomes JSON (the event log, a Ray worker's events on their way to the driver) and
:func:`event_from_dict` the one place it is read back (``runs watch``, the report). Events also
read like the dicts they serialise to (``event["type"]``, ``event.get("doc_id")``), which is what
most listeners want.

Listeners must be quick and must not raise: one that raises is dropped, with a warning, rather
than failing the run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, dataclass_transform

from rlmpipe.lm.usage import Listeners

log = logging.getLogger("rlmpipe.events")


@dataclass(frozen=True, kw_only=True)
class Event(Mapping):
    """An event: its ``type`` (the class's name for it) and when, for which run."""

    type: ClassVar[str] = "event"
    run_id: str | None = None
    time: float = field(default_factory=time.time)

    # --- read like a dict -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key == "type":
            return self.type
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self):
        yield "type"
        yield from self._names()

    def __len__(self) -> int:
        return 1 + len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict:
        return {"type": self.type, **{name: getattr(self, name) for name in self._names()}}


EVENT_TYPES: dict[str, type[Event]] = {}


@dataclass_transform(kw_only_default=True, frozen_default=True)
def event_kind(name: str):
    """An event kind: a frozen, keyword-only dataclass, registered under ``name`` (its ``type``)."""

    def register(cls):
        cls = dataclass(frozen=True, kw_only=True)(cls)
        cls.type = name
        EVENT_TYPES[name] = cls
        return cls

    return register


# --- the run ---------------------------------------------------------------------------------------------
@event_kind("run_start")
class RunStart(Event):
    session: int
    pipeline: str
    model: str
    fingerprint: str
    concurrency: int
    executor: str = "threads"


@event_kind("run_stopping")
class StopRequested(Event):
    reason: str


@event_kind("run_end")
class RunEnd(Event):
    status: str
    reason: str | None
    documents: dict
    steps: dict


@event_kind("note")
class Note(Event):
    message: str


# --- documents ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DocumentEvent(Event):
    doc_id: str | None
    path: str


@event_kind("document_queued")
class DocumentQueued(DocumentEvent):
    size: int


@event_kind("document_start")
class DocumentStart(DocumentEvent):
    size: int


@event_kind("document_done")
class DocumentDone(DocumentEvent):
    pass


@event_kind("document_partial")
class DocumentPartial(DocumentEvent):
    error: str  # what is missing, naming the document


@event_kind("document_failed")
class DocumentFailed(DocumentEvent):
    error: str  # one line naming the document
    traceback: str | None = None  # a bug's traceback


@event_kind("document_stopped")
class DocumentStopped(DocumentEvent):
    pass


# --- steps ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class StepEvent(Event):
    step_key: str
    name: str
    doc_id: str | None


@event_kind("step_start")
class StepStart(StepEvent):
    chunk_id: str | None
    depth: int
    worker: str


@event_kind("step_done")
class StepDone(StepEvent):
    chunk_id: str | None
    depth: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    seconds: float
    worker: str


@event_kind("step_reused")
class StepReused(StepEvent):
    chunk_id: str | None
    depth: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


@event_kind("step_failed")
class StepFailedEvent(StepEvent):
    error: str
    error_type: str
    fatal: bool
    traceback: str | None = None


@event_kind("step_stopped")
class StepStopped(StepEvent):
    pass


@event_kind("reask")
class Reask(StepEvent):
    error: str


# --- a recursion (RLM) as it runs ------------------------------------------------------------------------------
@event_kind("rlm_iteration")
class RLMIteration(StepEvent):
    """The model's code starts to run: the ``iteration``-th execution of one RLM at ``depth``."""

    depth: int
    iteration: int
    execution: str  # its id in the step (x1, x2, ...), the ``parent`` of the LM calls its tools make
    parent: str | None  # the execution whose tool call runs this RLM (None: the step's own RLM)
    code: str  # clipped


@event_kind("rlm_output")
class RLMOutput(StepEvent):
    """The model's code ended."""

    depth: int
    iteration: int
    execution: str
    seconds: float
    error: bool
    output: str  # clipped


# --- LM calls --------------------------------------------------------------------------------------------------
@event_kind("lm_call_start")
class LMCallStart(Event):
    """An attempt left the queue and was sent to the model."""

    call_id: str
    attempt: int
    queued: float
    step_key: str | None
    doc_id: str | None
    depth: int


@event_kind("lm_call")
class LMCallEvent(Event):
    """An attempt ended (the fields of :class:`rlmpipe.lm.usage.LMCall`)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    latency: float
    started: float
    outcome: str
    attempt: int = 1
    depth: int = 0
    step_key: str | None = None
    step_name: str | None = None
    doc_id: str | None = None
    error_type: str | None = None
    error: str | None = None
    worker: str = ""
    call_id: str = ""
    queued: float = 0.0
    estimated: bool = False
    parent: str | None = None

    @classmethod
    def of(cls, call) -> "LMCallEvent":
        return cls(**{f.name: getattr(call, f.name) for f in dataclasses.fields(cls)
                      if f.name != "time" and hasattr(call, f.name)})


def event_from_dict(record: dict) -> Event:
    """An event read back from its JSON (unknown fields are dropped, unknown kinds kept as they are)."""
    cls = EVENT_TYPES.get(record.get("type", ""))
    if cls is None:
        return _Unknown(record)
    names = set(cls._names())
    return cls(**{key: value for key, value in record.items() if key in names})


class _Unknown(dict):
    """An event of a kind this rlmpipe does not know (from a newer one): passed on as a dict."""

    def to_dict(self) -> dict:
        return dict(self)


# --- the bus ---------------------------------------------------------------------------------------------------
Listener = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: Listeners[Event] = Listeners()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        return self._listeners.add(listener)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as exc:  # monitoring must never break the work it watches
                log.warning("dropping event listener %r after it raised %s", listener, exc)
                self._listeners.remove(listener)
