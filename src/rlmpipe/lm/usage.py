"""One place for usage: every LM call (each attempt, each cache hit) becomes one :class:`LMCall`
given to one :class:`UsageRecorder`. Progress bars, the event log, the run store, OpenTelemetry,
Prometheus and the report all read from it (as listeners), so nothing counts on its own.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

#: outcomes of a call that did not reach the model: answered from DSPy's cache, or from the step's call
#: journal (a step run again after a crash or a stop): no tokens billed, no cost, no model time
FREE_OUTCOMES = ("cached", "replayed")


@dataclass(frozen=True, slots=True)
class LMCall:
    """One attempt at one LM call (a retried call gives several, a cache hit gives one)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # None: litellm does not know this model's price (never silently 0)
    latency: float  # seconds
    started: float  # epoch seconds
    outcome: str  # "ok", "error", or one of FREE_OUTCOMES ("cached", "replayed")
    attempt: int = 1  # 1 for the first try of a call, 2 for its first retry, ...
    depth: int = 0  # recursion depth (0: the pipeline's own calls; RLM sub-calls are deeper)
    run_id: str | None = None
    step_key: str | None = None
    step_name: str | None = None
    doc_id: str | None = None
    error_type: str | None = None
    error: str | None = None
    worker: str = ""
    call_id: str = ""
    #: seconds this attempt waited before it reached the model (a rate-limit window, the local
    #: model's one slot): queueing, which ``latency`` (the model's own time) does not include
    queued: float = 0.0
    #: the provider reported no usage: the tokens were counted here with the model's tokenizer
    estimated: bool = False
    #: the request's content and occurrence in its step (the call journal's key; see lm/journal.py)
    request: str | None = None
    occurrence: int | None = None
    #: the call's place in its step (the order requests were made), and the RLM code execution whose
    #: tool call made it (None: the program's own call)
    seq: int | None = None
    parent: str | None = None
    #: already in the store (kept with its journal entry): not to be written again
    stored: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Usage:
    """What a group of LM attempts used: the one place that says how an attempt counts.

    A cache hit counts as ``cached`` and an answer served from a step's call journal as ``replayed``,
    and nothing else (no tokens, no cost, no time); every other attempt is a call (``ok`` or ``errors``), a retry when it is not its call's first attempt, its
    tokens and time are summed, and its cost too when its price is known (else it is ``unpriced``
    and the cost is a lower bound). The store's totals, ``runs show``, the live display,
    Prometheus and both reports all add attempts here (:meth:`add` takes an :class:`LMCall`, a
    store row or an ``lm_call`` event alike)."""

    calls: int = 0  # attempts that reached the provider (ok or error)
    ok: int = 0
    cached: int = 0
    replayed: int = 0  # answers served from the call journal (a step run again): not billed again
    errors: int = 0
    retries: int = 0  # attempts after the first of their call
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0  # the sum of known prices
    unpriced: int = 0  # calls with tokens and no known price: the cost is a lower bound
    estimated: int = 0  # calls whose tokens were counted here (the provider reported none)
    seconds: float = 0.0  # the model's own time, from sending to the reply
    queued: float = 0.0  # time waiting before sending (rate-limit windows, the model's one slot)

    def add(self, call) -> "Usage":
        get = call.get if isinstance(call, Mapping) else (lambda key, default=None: getattr(call, key, default))
        outcome = get("outcome")
        if outcome in FREE_OUTCOMES:
            if outcome == "cached":
                self.cached += 1
            else:
                self.replayed += 1
            return self
        prompt, completion = int(get("prompt_tokens") or 0), int(get("completion_tokens") or 0)
        self.calls += 1
        self.ok += get("outcome") == "ok"
        self.errors += get("outcome") == "error"
        self.retries += int(get("attempt") or 1) > 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.estimated += bool(get("estimated"))
        latency = float(get("latency") or 0.0)
        self.seconds += latency
        self.queued += float(get("queued") or 0.0)
        cost = get("cost")
        if cost is None:
            self.unpriced += (prompt + completion) > 0
        else:
            self.cost += float(cost)
        return self

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_known(self) -> bool:
        return self.unpriced == 0

    def row(self) -> dict:
        """The figures as the tables, the API and ``runs show --json`` give them."""
        return {"calls": self.calls, "ok": self.ok, "cached": self.cached, "replayed": self.replayed,
                "errors": self.errors,
                "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "tokens": self.tokens,
                "cost": round(self.cost, 8), "cost_known": self.cost_known, "unpriced_calls": self.unpriced,
                "estimated_calls": self.estimated, "seconds": round(self.seconds, 4),
                "queued_seconds": round(self.queued, 4)}


def percentiles(rows: Iterable[tuple[Any, float, int]], qs: Sequence[float]) -> dict[Any, list[float]]:
    """Per group, the ``qs`` quantiles (linear between the closest ranks) of rows sorted by group, then
    value, each row with its group's size (as :meth:`rlmpipe.runtime.store.Store.each_latency` gives
    them): read in one pass, holding no list of values, whatever the number of calls."""
    result: dict[Any, list[float]] = {}
    group: Any = object()
    index, picked, positions, wanted = 0, {}, [], set()
    for key, value, size in rows:
        if key != group:
            group, index, picked = key, 0, {}
            positions = [(size - 1) * q for q in qs]
            wanted = {int(p) for p in positions} | {min(int(p) + 1, size - 1) for p in positions}
        if index in wanted:
            picked[index] = value
        if index == size - 1:
            result[key] = [picked[int(p)] + (picked[min(int(p) + 1, size - 1)] - picked[int(p)]) * (p - int(p))
                           for p in positions]
        index += 1
    return result


class Listeners(Generic[T]):
    """Functions to call with each ``T``, added and removed from any thread at any time.

    Adding or removing one replaces the whole tuple (copy on write), so a loop over the listeners
    (``for listener in listeners``) goes over those there were when it started, without a lock,
    even while one of them removes itself or another."""

    def __init__(self) -> None:
        self._items: tuple[Callable[[T], None], ...] = ()
        self._lock = threading.Lock()

    def add(self, listener: Callable[[T], None]) -> Callable[[], None]:
        """Add ``listener``; returns the function that removes it."""
        with self._lock:
            self._items = (*self._items, listener)
        return lambda: self.remove(listener)

    def remove(self, listener: Callable[[T], None]) -> None:
        """Remove ``listener`` (nothing happens if it is not there)."""
        with self._lock:
            self._items = tuple(item for item in self._items if item is not listener)

    def __iter__(self) -> Iterator[Callable[[T], None]]:
        return iter(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


class UsageRecorder:
    """Where every LM attempt is announced (once, when it is made): listeners (the run's store,
    budget, event log, traces) each take what they need."""

    def __init__(self) -> None:
        self._calls: Listeners[LMCall] = Listeners()
        self._starts: Listeners[dict] = Listeners()

    def subscribe(self, listener: Callable[[LMCall], None]) -> Callable[[], None]:
        """Call ``listener`` with every recorded call; returns a function that unsubscribes."""
        return self._calls.add(listener)

    def subscribe_starts(self, listener: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``listener`` when an attempt reaches the model (after any queueing)."""
        return self._starts.add(listener)

    def started(self, call_id: str, attempt: int, queued: float, context) -> None:
        """An attempt has its slot at the model and is being sent (it is *in flight* from now on)."""
        if self._starts:
            start = {"call_id": call_id, "attempt": attempt, "queued": round(queued, 6), "run_id": context.run_id,
                     "step_key": context.step_key, "doc_id": context.doc_id, "depth": context.depth}
            for listener in self._starts:
                listener(start)

    def record(self, call: LMCall) -> None:
        for listener in self._calls:
            listener(call)


class Pricing:
    """USD per token for each model: litellm's price list, overridden by prices the user gives
    (``--price``) for models it does not know (or knows wrongly)."""

    def __init__(self, overrides: dict[str, tuple[float, float]] | None = None,
                 looked_up: dict[str, tuple[float, float] | None] | None = None):
        #: model (or "*": the run's model, whatever it is) -> (input, output) USD per million tokens
        self.overrides = dict(overrides or {})
        #: litellm's answers, already looked up elsewhere (USD per token, None: unknown)
        self.looked_up = dict(looked_up or {})

    def per_token(self, model: str) -> tuple[float, float] | None:
        given = self.overrides.get(model) or self.overrides.get("*")
        if given is not None:
            prompt, completion = given
            return prompt / 1e6, completion / 1e6
        if model in self.looked_up:
            return self.looked_up[model]
        return _prices(model)

    def resolved(self, model: str) -> "Pricing":
        """These prices with ``model``'s looked up now: for processes that should not import litellm
        (a Ray worker took tens of seconds to, in its first step, holding its finished LM calls)."""
        return Pricing(self.overrides, {**self.looked_up, model: self.per_token(model)})

    def known(self, model: str) -> bool:
        return self.per_token(model) is not None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        prices = self.per_token(model)
        if prices is None:
            return None
        return prompt_tokens * prices[0] + completion_tokens * prices[1]


@functools.lru_cache(maxsize=256)
def _prices(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token if litellm knows the model, else None."""
    if model.startswith("local/") or model == "local":
        return (0.0, 0.0)  # the embedded model runs here: it costs nothing
    try:
        from rlmpipe.offline import import_litellm

        litellm = import_litellm()  # quiet: else it prints "Provider List: ..." to stdout for unknown models
        prompt_cost, completion_cost = litellm.cost_per_token(model=model, prompt_tokens=1, completion_tokens=1)
    except Exception:  # litellm raises a plain Exception for unmapped models
        return None
    return (float(prompt_cost), float(completion_cost))


def price(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD cost of a call, or None when the price is unknown."""
    return Pricing().cost(model, prompt_tokens, completion_tokens)
