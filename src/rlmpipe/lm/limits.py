"""Run-wide limits on LM calls: provider rate limits and the run's budget.

Rate limits use the ``limits`` library's moving-window limiter (requests per minute and tokens per
minute, shared by all workers). The budget is checked before every attempt and charged by every
recorded call, so it holds across threads, retries and recursion depths.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rlmpipe.lm.errors import BudgetExceeded
from rlmpipe.lm.usage import LMCall


class RateLimiter:
    """Blocks until a request (and its estimated tokens) fits the per-minute limits."""

    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None):
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._requests = RateLimitItemPerMinute(requests_per_minute) if requests_per_minute else None
        self._tokens = RateLimitItemPerMinute(tokens_per_minute) if tokens_per_minute else None
        self._lock = threading.Lock()

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> float:
        """Wait for a slot; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                delay = self._try(tokens)
            if delay <= 0:
                return waited
            if stop is not None and stop.wait(delay):
                return waited
            if stop is None:
                time.sleep(delay)
            waited += delay

    def _try(self, tokens: int) -> float:
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


@dataclass
class Budget:
    """Tokens, USD and seconds the whole run may spend (None: unlimited).

    Cost of calls whose price is unknown counts as 0 against ``max_cost`` (and ``runs show`` says
    the total is a lower bound).
    """

    max_tokens: int | None = None
    max_cost: float | None = None
    max_seconds: float | None = None
    max_sub_calls: int | None = None  # LM calls made below depth 0 (RLM sub-queries), all depths together
    tokens: int = 0
    cost: float = 0.0
    sub_calls: int = 0
    started: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.started = self.started or time.monotonic()

    def carry_over(self, tokens: int, cost: float, seconds: float = 0.0) -> None:
        """Count what earlier sessions of a resumed run spent against this budget."""
        with self._lock:
            self.tokens += tokens
            self.cost += cost
            self.started -= seconds

    def charge(self, call: LMCall) -> None:
        if call.outcome == "cached":
            return
        with self._lock:
            self.tokens += call.prompt_tokens + call.completion_tokens
            self.cost += call.cost or 0.0
            if call.depth > 0 and call.attempt == 1:
                self.sub_calls += 1

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def exceeded(self, depth: int = 0) -> BudgetExceeded | None:
        if self.max_sub_calls is not None and depth > 0 and self.sub_calls >= self.max_sub_calls:
            return BudgetExceeded("sub-call", self.sub_calls, self.max_sub_calls)
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return BudgetExceeded("token", self.tokens, self.max_tokens)
        if self.max_cost is not None and self.cost >= self.max_cost:
            return BudgetExceeded("cost", round(self.cost, 6), self.max_cost)
        if self.max_seconds is not None and self.elapsed >= self.max_seconds:
            return BudgetExceeded("time", round(self.elapsed, 1), self.max_seconds)
        return None

    def check(self, depth: int = 0) -> None:
        problem = self.exceeded(depth)
        if problem is not None:
            raise problem
