"""A run's limits: the budget, rate limiter, stop flag and circuit breaker (:mod:`rlmpipe.lm.limits`,
:mod:`rlmpipe.lm.control`) that every LM call of the run goes through.

With threads they live in the run's process. With Ray they live in one actor per run, which builds
them here too (this module does not import DSPy, which that actor never needs), and every process
holds proxies of them (:mod:`rlmpipe.runtime.ray_executor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmpipe.lm.control import RunControl
from rlmpipe.lm.limits import Budget, CircuitBreaker, RateLimiter


@dataclass
class Limits:
    budget: Any
    limiter: Any
    control: Any
    breaker: Any


def local_limits(settings, carried_tokens: int, carried_cost: float) -> Limits:
    """The limits ``settings`` set (the run's options, or their limit fields), in this process; the
    budget counts what earlier sessions of the run spent."""
    budget = Budget(settings.max_run_tokens, settings.max_cost, settings.max_seconds, settings.max_sub_calls)
    budget.carry_over(carried_tokens, carried_cost)
    return Limits(budget, RateLimiter(settings.requests_per_minute, settings.tokens_per_minute), RunControl(),
                  CircuitBreaker(settings.breaker_failures, settings.breaker_seconds))
