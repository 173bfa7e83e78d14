"""Run-wide limits on LM calls: provider rate limits, the run's budget, and a circuit breaker.

Rate limits use the ``limits`` library's moving-window limiter (requests per minute and tokens per
minute, shared by all workers). The budget is an admission control: a call starts only if what
it is expected to spend (its counted prompt plus its expected completion) fits beside what has
been billed and what the calls in flight have reserved, so a budget is a cap even with many calls
at once. The circuit breaker stops a run whose provider fails call after call.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rlmpipe.lm.errors import BudgetExceeded
from rlmpipe.lm.usage import LMCall


#: completion tokens reserved for a call without a cap before any answer was billed
FIRST_COMPLETION_GUESS = 256


def wait_until_free(ask: Callable[[], float], stop: threading.Event | None = None, most: float = math.inf) -> float:
    """Wait until ``ask()`` (the seconds until there is room; <= 0: now, and the room is taken) lets a
    call go, sleeping at most ``most`` seconds between two asks; returns the seconds waited (fewer
    if ``stop`` is set first)."""
    waited = 0.0
    while (delay := ask()) > 0:
        pause = min(delay, most)
        if stop is None:
            time.sleep(pause)
        elif stop.wait(pause):
            break
        waited += pause
    return waited


class ModelSlots:
    """The model's own slots (how many calls it answers at once), handed out first come, first served.

    With a ``threading.Semaphore`` whichever thread runs first takes a freed slot: a worker that has
    just finished a call can take it again for its next call before a call that has waited for
    seconds wakes up, so one call's wait had no bound. Here a freed slot goes straight to the call
    that has waited longest."""

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"a model needs at least one slot, not {slots}")
        self.slots = slots
        self._free = slots
        self._waiting: deque[threading.Event] = deque()  # oldest first; set: the slot is handed over
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for a slot, behind every call that asked before; False (and no slot) if ``stop`` is
        set first."""
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            handed = threading.Event()
            self._waiting.append(handed)
        while not handed.wait(0.25):
            if stop is not None and stop.is_set():
                with self._lock:
                    if handed.is_set():  # handed over as it stopped: the caller has it, and releases it
                        return True
                    self._waiting.remove(handed)
                    return False
        return True

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # never free in between: no later call can take it first
            elif self._free < self.slots:
                self._free += 1
            else:
                raise ValueError("a model slot was released more often than it was taken")

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)


class RateLimiter:
    """Blocks until a request (and its estimated tokens) fits the per-minute limits, and until any
    pause a provider asked for (``Retry-After``, see :meth:`hold`) is over: one server's 429 slows
    every worker, not only the one that got it."""

    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None):
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._requests = RateLimitItemPerMinute(requests_per_minute) if requests_per_minute else None
        self._tokens = RateLimitItemPerMinute(tokens_per_minute) if tokens_per_minute else None
        self._lock = threading.Lock()
        self.hold_until = 0.0  # time.time() before which no request starts

    def hold(self, seconds: float) -> None:
        """No request starts for ``seconds`` (a provider's Retry-After), whoever asks."""
        with self._lock:
            self.hold_until = max(self.hold_until, time.time() + seconds)

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> float:
        """Wait for a slot; returns the seconds waited."""
        return wait_until_free(lambda: self.try_acquire(tokens), stop)

    def try_acquire(self, tokens: int) -> float:
        """Without waiting: 0 when the request may start now (and is counted), else the seconds to
        wait before asking again (what a limiter shared through a Ray actor answers)."""
        with self._lock:
            held = self.hold_until - time.time()
            if held > 0:
                return held
            items = []
            if self._requests is not None:
                items.append((self._requests, 1))
            if self._tokens is not None:
                items.append((self._tokens, max(1, min(tokens, self._tokens.amount))))
            for item, cost in items:
                if not self._limiter.test(item, "lm", cost=cost):
                    reset, _ = self._limiter.get_window_stats(item, "lm")
                    return max(0.05, min(reset - time.time(), 60.0))
            for item, cost in items:
                self._limiter.hit(item, "lm", cost=cost)
            return 0.0


@dataclass(frozen=True)
class Reservation:
    """What one admitted call is expected to spend, held against the budget until it is billed."""

    tokens: int
    cost: float


@dataclass
class Budget:
    """Tokens, USD and seconds the whole run may spend (None: unlimited), as caps.

    ``admit`` is asked before every attempt with the attempt's expected spend; it refuses
    (:class:`BudgetExceeded`) when that would not fit beside what was billed, and makes it wait
    while it fits only once the calls in flight have been billed. ``charge`` adds what a call was billed. A cost cap needs the model's
    price: the run refuses to start without one (see ``rlmpipe.runtime.runner.check_prices``).
    """

    max_run_tokens: int | None = None
    max_cost: float | None = None
    max_seconds: float | None = None
    max_sub_calls: int | None = None  # LM calls made below depth 0 (RLM sub-queries), all depths together
    tokens: int = 0
    cost: float = 0.0
    sub_calls: int = 0
    started: float = field(default_factory=time.monotonic)
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    largest_completion: int = 0  # the longest completion billed so far: the expected one, without a cap
    answered: bool = False  # some call was billed (so largest_completion means something)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def carry_over(self, tokens: int, cost: float, seconds: float = 0.0) -> None:
        """Count what earlier sessions of a resumed run spent against this budget."""
        with self._lock:
            self.tokens += tokens
            self.cost += cost
            self.started -= seconds

    def expected_completion(self, cap: int | None) -> int:
        """Completion tokens to reserve for a call: its cap when it has one, else the longest answer
        billed so far (before the first answer, :data:`FIRST_COMPLETION_GUESS`)."""
        if cap:
            return int(cap)
        return self.largest_completion if self.answered else FIRST_COMPLETION_GUESS

    def admit(self, tokens: int, cost: float | None, depth: int = 0) -> Reservation | None:
        """Reserve ``tokens`` / ``cost`` for a call about to start. BudgetExceeded when it cannot fit
        beside what was billed; None (ask again shortly) when it fits only once calls in flight
        have settled: their reservations are usually far above what they will be billed."""
        cost = cost or 0.0
        with self._lock:
            problem = self._exceeded(depth, tokens, cost, reserved=False)
            if problem is not None:
                raise problem
            if self._exceeded(depth, tokens, cost) is not None:
                return None
            self.reserved_tokens += tokens
            self.reserved_cost += cost
            return Reservation(tokens, cost)

    def admit_replayed(self, depth: int = 0, completion_tokens: int = 0) -> None:
        """Admit a call answered from a step's journal: free (no tokens, no cost), but a sub-call all the
        same, so the sub-call cap sees the program's history as it was; and an answer of the model's
        (``completion_tokens`` long when it was billed) that tells what later answers will need.
        BudgetExceeded when a cap is already reached."""
        with self._lock:
            problem = self._exceeded(depth, 0, 0.0, reserved=False)
            if problem is None:
                self.largest_completion = max(self.largest_completion, completion_tokens)
                self.answered = True
        if problem is not None:
            raise problem

    def remaining(self) -> dict:
        """What is left of each cap (None: no cap): what a program may ask to plan its work."""
        with self._lock:
            def left(cap, used):
                return None if cap is None else max(0, cap - used)
            return {"tokens": left(self.max_run_tokens, self.tokens + self.reserved_tokens),
                    "cost": None if self.max_cost is None else round(max(0.0, self.max_cost - self.cost
                                                                          - self.reserved_cost), 6),
                    "seconds": None if self.max_seconds is None else round(max(0.0, self.max_seconds
                                                                               - self.elapsed), 1),
                    "sub_calls": left(self.max_sub_calls, self.sub_calls)}

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self.reserved_tokens -= reservation.tokens
            self.reserved_cost -= reservation.cost

    def charge(self, call: LMCall) -> None:
        if call.outcome == "cached":
            return
        with self._lock:
            self.tokens += call.prompt_tokens + call.completion_tokens
            self.cost += call.cost or 0.0
            self.largest_completion = max(self.largest_completion, call.completion_tokens)
            self.answered = self.answered or call.outcome == "ok"
            if call.depth > 0 and call.attempt == 1:
                self.sub_calls += 1

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _exceeded(self, depth: int, tokens: int, cost: float, reserved: bool = True) -> BudgetExceeded | None:
        held_tokens, held_cost = (self.reserved_tokens, self.reserved_cost) if reserved else (0, 0.0)
        if self.max_sub_calls is not None and depth > 0 and self.sub_calls >= self.max_sub_calls:
            return BudgetExceeded("sub-call", self.sub_calls, self.max_sub_calls)
        if self.max_run_tokens is not None and self.tokens + held_tokens + tokens > self.max_run_tokens:
            return BudgetExceeded("token", self.tokens, self.max_run_tokens, needed=tokens)
        if self.max_cost is not None and self.cost + held_cost + cost > self.max_cost:
            return BudgetExceeded("cost", round(self.cost, 6), self.max_cost, needed=round(cost, 6))
        if self.max_seconds is not None and self.elapsed >= self.max_seconds:
            return BudgetExceeded("time", round(self.elapsed, 1), self.max_seconds)
        return None


@dataclass
class CircuitBreaker:
    """Stops a run whose provider keeps failing: ``failures`` attempts in a row that failed for
    the provider's sake (connection, timeout, server error), over at least ``seconds`` with no
    success in between. A rate limit (429) is throttling, not an outage: it does not count."""

    failures: int = 8
    seconds: float = 30.0
    _streak: int = 0
    _since: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    COUNTED = frozenset({"connection", "timeout", "server", "malformed_response"})

    def record(self, error_type: str | None, error: str = "") -> str | None:
        """Note one attempt's outcome; returns why the breaker opened, when it just did."""
        if error_type == "rate_limit":
            return None
        with self._lock:
            if error_type not in self.COUNTED:
                self._streak, self._since = 0, None
                return None
            self._streak += 1
            self._since = self._since if self._since is not None else time.monotonic()
            if self._streak >= self.failures and time.monotonic() - self._since >= self.seconds:
                return (f"the provider failed {self._streak} attempts in a row over "
                        f"{time.monotonic() - self._since:.0f}s (last: {error[:200]})")
            return None
