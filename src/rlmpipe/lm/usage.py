"""One place for usage: every LM call (each attempt, each cache hit) becomes one :class:`LMCall`
given to one :class:`UsageRecorder`. Progress bars, the event log, the run store, OpenTelemetry,
Prometheus and the report all read from it (as listeners), so nothing counts on its own.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass(frozen=True, slots=True)
class LMCall:
    """One attempt at one LM call (a retried call gives several, a cache hit gives one)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # None: litellm does not know this model's price (never silently 0)
    latency: float  # seconds
    started: float  # epoch seconds
    outcome: str  # "ok", "cached" or "error"
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

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Totals:
    calls: int = 0  # attempts that reached the provider (ok or error)
    ok: int = 0
    cached: int = 0
    errors: int = 0
    retries: int = 0  # attempts after the first
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0  # sum of known prices
    unpriced_calls: int = 0  # calls whose price is unknown: cost above is a lower bound
    latency: float = 0.0

    def add(self, call: LMCall) -> None:
        if call.outcome == "cached":
            self.cached += 1
            return
        self.calls += 1
        if call.outcome == "ok":
            self.ok += 1
        else:
            self.errors += 1
        if call.attempt > 1:
            self.retries += 1
        self.prompt_tokens += call.prompt_tokens
        self.completion_tokens += call.completion_tokens
        self.latency += call.latency
        if call.cost is None:
            if call.prompt_tokens or call.completion_tokens:
                self.unpriced_calls += 1
        else:
            self.cost += call.cost

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_known(self) -> bool:
        return self.unpriced_calls == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens": self.tokens, "cost_known": self.cost_known}


@dataclass
class UsageRecorder:
    """Thread-safe sink for LM calls: running totals (overall, by depth, by model) and listeners."""

    totals: Totals = field(default_factory=Totals)
    by_depth: dict[int, Totals] = field(default_factory=lambda: defaultdict(Totals))
    by_model: dict[str, Totals] = field(default_factory=lambda: defaultdict(Totals))
    _listeners: list[Callable[[LMCall], None]] = field(default_factory=list)
    _start_listeners: list[Callable[[dict], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def subscribe(self, listener: Callable[[LMCall], None]) -> Callable[[], None]:
        """Call ``listener`` with every recorded call; returns a function that unsubscribes."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = [item for item in self._listeners if item is not listener]

        return unsubscribe

    def subscribe_starts(self, listener: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``listener`` when an attempt reaches the model (after any queueing)."""
        with self._lock:
            self._start_listeners = [*self._start_listeners, listener]

        def unsubscribe() -> None:
            with self._lock:
                self._start_listeners = [item for item in self._start_listeners if item is not listener]

        return unsubscribe

    def started(self, call_id: str, attempt: int, queued: float, context) -> None:
        """An attempt has its slot at the model and is being sent (it is *in flight* from now on)."""
        listeners = self._start_listeners
        if listeners:
            start = {"call_id": call_id, "attempt": attempt, "queued": round(queued, 6), "run_id": context.run_id,
                     "step_key": context.step_key, "doc_id": context.doc_id, "depth": context.depth}
            for listener in listeners:
                listener(start)

    def record(self, call: LMCall) -> None:
        with self._lock:
            self.totals.add(call)
            self.by_depth[call.depth].add(call)
            self.by_model[call.model].add(call)
            listeners = self._listeners
        for listener in listeners:
            listener(call)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "totals": self.totals.to_dict(),
                "by_depth": {depth: t.to_dict() for depth, t in sorted(self.by_depth.items())},
                "by_model": {model: t.to_dict() for model, t in sorted(self.by_model.items())},
            }


class Pricing:
    """USD per token for each model: litellm's price list, overridden by prices the user gives
    (``--price``) for models it does not know (or knows wrongly)."""

    def __init__(self, overrides: dict[str, tuple[float, float]] | None = None):
        #: model (or "*": the run's model, whatever it is) -> (input, output) USD per million tokens
        self.overrides = dict(overrides or {})

    def per_token(self, model: str) -> tuple[float, float] | None:
        given = self.overrides.get(model) or self.overrides.get("*")
        if given is not None:
            prompt, completion = given
            return prompt / 1e6, completion / 1e6
        return _prices(model)

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
    prices = _prices(model)
    if prices is None:
        return None
    return prompt_tokens * prices[0] + completion_tokens * prices[1]


def now() -> float:
    return time.time()
