"""``RecordingLM``: any DSPy LM, with every call retried, rate-limited, budgeted and recorded.

It wraps the LM a pipeline uses (``dspy.LM``, the embedded local model, a test LM) and is what
DSPy modules see. Around each call it

1. checks the run's budget (raising :class:`BudgetExceeded` before spending more),
2. waits for the rate limiter,
3. calls the inner LM with DSPy's own usage tracker swapped for a capture (so the exact usage the
   provider reported is seen, per call and per thread; an outer tracker still gets it too),
4. records one :class:`LMCall` per attempt (a cache hit is recorded as ``cached``, costing nothing),
5. retries retryable failures with exponential backoff and jitter (tenacity's schedule),
   honouring ``Retry-After`` up to a cap.

DSPy's own retries should be off on the inner LM (``num_retries=0``; :func:`rlmpipe.lm.models.make_lm`
does this) so that every attempt is seen and counted here.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import dspy
import tenacity

from rlmpipe.lm.context import current
from rlmpipe.lm.errors import Classified, classify
from rlmpipe.lm.limits import Budget, RateLimiter
from rlmpipe.lm.usage import LMCall, UsageRecorder, price


class _Attempt:
    """The one thing tenacity's wait strategies read from a retry state: the attempt number."""

    __slots__ = ("attempt_number",)

    def __init__(self, attempt_number: int):
        self.attempt_number = attempt_number


class RunStopping(RuntimeError):
    """The run is stopping (Ctrl-C, budget, fatal error elsewhere): no new attempt is started."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 60.0  # a longer Retry-After is capped to this


class _UsageCapture:
    """Stands in for DSPy's usage tracker during one call; forwards to the tracker it replaced."""

    def __init__(self, outer: Any):
        self.outer = outer
        self.entries: list[dict] = []

    def add_usage(self, lm: str, usage_entry: dict) -> None:
        self.entries.append(dict(usage_entry or {}))
        if self.outer is not None:
            self.outer.add_usage(lm, usage_entry)

    def tokens(self) -> tuple[int, int]:
        prompt = sum(int(entry.get("prompt_tokens") or 0) for entry in self.entries)
        completion = sum(int(entry.get("completion_tokens") or 0) for entry in self.entries)
        return prompt, completion


class RecordingLM(dspy.BaseLM):
    def __init__(
        self,
        inner: dspy.BaseLM,
        recorder: UsageRecorder,
        *,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        budget: Budget | None = None,
        stop: threading.Event | None = None,
    ):
        # Not BaseLM.__init__: identity and defaults are the inner LM's, shared, not copied.
        self.inner = inner
        self.model = inner.model
        self.model_type = getattr(inner, "model_type", "chat")
        self.kwargs = inner.kwargs
        self.cache = getattr(inner, "cache", False)
        self.callbacks = []
        self.history = []
        self.recorder = recorder
        self.retry = retry or RetryPolicy()
        self.limiter = limiter
        self.budget = budget
        self.stop = stop or threading.Event()
        # tenacity's schedule, built once (a Retrying per call left a reference cycle per call)
        self._backoff = tenacity.wait_exponential_jitter(
            initial=self.retry.initial_wait, max=self.retry.max_wait, jitter=self.retry.jitter)

    # --- DSPy's view of the LM: the inner LM's capabilities -------------------------------------
    @property
    def supports_function_calling(self) -> bool:
        return self.inner.supports_function_calling

    @property
    def supports_reasoning(self) -> bool:
        return self.inner.supports_reasoning

    @property
    def supports_response_schema(self) -> bool:
        return self.inner.supports_response_schema

    @property
    def supported_params(self) -> set[str]:
        return self.inner.supported_params

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set: avoid infinite recursion during construction
            raise AttributeError(name)
        return getattr(self.inner, name)

    def copy(self, **kwargs) -> "RecordingLM":
        return RecordingLM(self.inner.copy(**kwargs), self.recorder, retry=self.retry,
                           limiter=self.limiter, budget=self.budget, stop=self.stop)

    def dump_state(self) -> dict:
        return self.inner.dump_state()

    # --- calls ----------------------------------------------------------------------------------
    def __call__(self, prompt=None, messages=None, **kwargs):
        context = current()
        if context.reask_feedback and messages:
            messages = [*messages, {"role": "user", "content": (
                "Your previous reply could not be used: " + context.reask_feedback
                + "\nReply again, following the required output format exactly.")}]
        call_id = uuid.uuid4().hex[:16]
        attempt = 0
        while True:
            attempt += 1
            if self.stop.is_set():
                raise RunStopping("the run is stopping")
            if self.budget is not None:
                self.budget.check(context.depth)
            if self.limiter is not None:
                self.limiter.acquire(_estimate_tokens(prompt, messages, kwargs), self.stop)
            try:
                return self._attempt(prompt, messages, kwargs, context, call_id, attempt)
            except Exception as error:
                info = classify(error)
                if info.kind != "retryable" or attempt >= self.retry.max_attempts:
                    raise
                self._sleep(self._delay(info, attempt))

    def _attempt(self, prompt, messages, kwargs, context, call_id: str, attempt: int):
        capture = _UsageCapture(dspy.settings.usage_tracker)
        started, clock = time.time(), time.perf_counter()
        error: BaseException | None = None
        try:
            with dspy.context(usage_tracker=capture):
                return self.inner(prompt, messages=messages, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            latency = time.perf_counter() - clock
            prompt_tokens, completion_tokens = capture.tokens()
            if error is not None:
                outcome, info = "error", classify(error)
            elif capture.entries:
                outcome, info = "ok", None
            else:  # DSPy reports usage for every call that reached the model, none for a cache hit
                outcome, info = "cached", None
            self.recorder.record(LMCall(
                model=self.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=0.0 if outcome == "cached" else price(self.model, prompt_tokens, completion_tokens),
                latency=latency,
                started=started,
                outcome=outcome,
                attempt=attempt,
                depth=context.depth,
                run_id=context.run_id,
                step_key=context.step_key,
                step_name=context.step_name,
                doc_id=context.doc_id,
                error_type=info.type if info else None,
                error=_one_line(error) if error is not None else None,
                worker=threading.current_thread().name,
                call_id=call_id,
            ))

    def _delay(self, info: Classified, attempt: int) -> float:
        """Retry-After when the server gave one (capped), else exponential backoff with jitter."""
        if info.retry_after is not None:
            return min(info.retry_after, self.retry.max_retry_after)
        return self._backoff(_Attempt(attempt))

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise RunStopping("the run is stopping")

    async def acall(self, prompt=None, messages=None, **kwargs):
        import asyncio

        return await asyncio.to_thread(self.__call__, prompt, messages=messages, **kwargs)


def _estimate_tokens(prompt, messages, kwargs) -> int:
    """A cheap upper-ish estimate for tokens-per-minute limits: 1 token per 4 characters + max_tokens."""
    chars = len(prompt or "") + sum(len(str(m.get("content", ""))) for m in messages or [])
    return chars // 4 + int(kwargs.get("max_tokens") or 0)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"
