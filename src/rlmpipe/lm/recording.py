"""``RecordingLM``: any DSPy LM, with every call admitted, retried, rate-limited and recorded.

It wraps the LM a pipeline uses (``dspy.LM``, the embedded local model, a test LM) and is what
DSPy modules see. Around each attempt it

1. asks the run's budget to admit it: the prompt is counted with the model's tokenizer and the
   expected completion reserved (its ``max_tokens``, else the longest completion so far), so the
   attempt starts only if it fits beside what was billed and what other calls hold
   (:class:`BudgetExceeded` otherwise),
2. waits for the rate limiter and for one of the model's own slots, first come, first served (the
   embedded model answers one call at a time): time spent there is *queued*, not the model's latency,
3. calls the inner LM with DSPy's own usage tracker swapped for a capture (so the exact usage the
   provider reported is seen, per call and per thread; an outer tracker still gets it too); a
   reply without usage is counted here with the tokenizer and marked estimated,
4. records one :class:`LMCall` per attempt (a cache hit is recorded as ``cached``, costing nothing),
   and keeps each answer in the step's call journal before the program sees it (``lm/journal.py``):
   a step run again after a crash or a stop is served its answered calls from there, recorded as
   ``replayed`` (no tokens billed, no cost), and calls the model only for what was never answered,
5. retries retryable failures (tenacity's ``Retrying``: exponential backoff with jitter, or the
   ``Retry-After`` the provider sent, up to a cap, which then pauses every worker; a sleep ends at once
   when the run stops), and opens the circuit breaker (stopping the run) when the provider fails
   attempt after attempt.

DSPy's own retries are turned off on the inner LM (``num_retries=0``: a copy is made when the LM
given has its own), so that every attempt is seen and counted here, once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import dspy
import tenacity

from rlmpipe.lm.context import current
from rlmpipe.lm.control import RunControl
from rlmpipe.lm.errors import classify, one_line
from rlmpipe.lm.journal import Claim, dumps_outputs, preview, request_key
from rlmpipe.lm.limits import Budget, CircuitBreaker, ModelSlots, RateLimiter, Reservation
from rlmpipe.lm.tokens import count_outputs, count_prompt
from rlmpipe.lm.usage import LMCall, Pricing, UsageRecorder


#: seconds between two asks for admission while calls in flight hold what is left of the budget
ADMISSION_POLL = 0.05

try:  # DSPy 3.4 warns when messages= reaches an LM, except for the adapter's own call: this forwards that call
    from dspy.clients._deprecation import adapter_message_call as _forwarding
except ImportError:  # pragma: no cover - a DSPy without the warning
    _forwarding = None


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

    def reported(self) -> bool:
        """Whether the provider reported any usage at all (some OpenAI-compatible servers do not)."""
        return any(entry.get("prompt_tokens") or entry.get("completion_tokens") or entry.get("total_tokens")
                   for entry in self.entries)


class RecordingLM(dspy.BaseLM):
    def __init__(
        self,
        inner: dspy.BaseLM,
        recorder: UsageRecorder,
        *,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        budget: Budget | None = None,
        control: RunControl | None = None,
        breaker: CircuitBreaker | None = None,
        pricing: Pricing | None = None,
        slots: ModelSlots | None = None,
    ):
        # Not BaseLM.__init__: identity and defaults are the inner LM's, shared, not copied.
        inner = without_own_retries(inner)
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
        self.control = control or RunControl()
        self.breaker = breaker
        self.pricing = pricing or Pricing()
        #: the model's own slots: how many calls it answers at once (None: as many as are made)
        parallel = getattr(inner, "parallel_calls", None)
        self.slots = slots or (ModelSlots(parallel) if parallel else None)
        # the schedule between attempts: exponential from initial_wait, capped, plus up to `jitter` seconds
        self._backoff = (tenacity.wait_exponential(multiplier=self.retry.initial_wait, max=self.retry.max_wait)
                         + tenacity.wait_random(0, self.retry.jitter))

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
        return RecordingLM(self.inner.copy(**kwargs), self.recorder, retry=self.retry, limiter=self.limiter,
                           budget=self.budget, control=self.control, breaker=self.breaker, pricing=self.pricing,
                           slots=self.slots)

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
        claim = None
        if context.journal is not None:
            claim = context.journal.claim(request_key(self.model, prompt, messages, kwargs), context.scope)
            if claim.answer is not None:
                return self._replay(claim, context, call_id)
        try:
            return self._call(prompt, messages, kwargs, context, call_id, claim)
        finally:
            if claim is not None:
                context.journal.settle(claim)

    def _call(self, prompt, messages, kwargs, context, call_id: str, claim: Claim | None):
        """The call, attempted as the retry policy says (``_attempt`` once per attempt)."""
        prompt_tokens = count_prompt(self.model, prompt, messages)
        attempts = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry.max_attempts),
            retry=tenacity.retry_if_exception(lambda error: classify(error).kind == "retryable"),
            wait=self._wait, sleep=self._sleep, before_sleep=self._pause_everyone, reraise=True)
        for attempt in attempts:
            with attempt:
                if self.control.stopping:
                    raise self._stopping()
                try:
                    return self._attempt(prompt, messages, kwargs, context, call_id,
                                         attempt.retry_state.attempt_number, prompt_tokens, claim)
                except Exception as error:
                    if self.breaker is not None:
                        opened = self.breaker.record(classify(error).type, one_line(error))
                        if opened:
                            self.control.stop(f"provider unavailable: {opened}")
                    raise

    def _replay(self, claim: Claim, context, call_id: str):
        """A call the step made before it was stopped or crashed: its answer, from the journal. It counts as
        made for the sub-call budget (the program sees the same history), and costs nothing."""
        if self.budget is not None:
            self.budget.admit_replayed(context.depth, claim.answer.completion_tokens)
        self.recorder.record(LMCall(
            model=self.model, prompt_tokens=0, completion_tokens=0, cost=0.0, latency=0.0, started=time.time(),
            outcome="replayed", attempt=1, depth=context.depth, run_id=context.run_id, step_key=context.step_key,
            step_name=context.step_name, doc_id=context.doc_id, worker=threading.current_thread().name,
            call_id=call_id, request=claim.key, occurrence=claim.occurrence, seq=claim.seq, parent=context.parent))
        return json.loads(json.dumps(claim.answer.outputs))  # a copy: the program may change what it gets

    def _admit(self, prompt_tokens: int, kwargs: dict, depth: int) -> Reservation | None:
        """Reserve this attempt's expected spend in the budget (or raise BudgetExceeded)."""
        if self.budget is None:
            return None
        cap = kwargs.get("max_tokens") or self.kwargs.get("max_tokens") or kwargs.get("max_completion_tokens") \
            or self.kwargs.get("max_completion_tokens")
        completion = self.budget.expected_completion(cap)
        cost = self.pricing.cost(self.model, prompt_tokens, completion) if self.budget.max_cost is not None else None
        while True:
            reservation = self.budget.admit(prompt_tokens + completion, cost, depth)
            if reservation is not None:
                return reservation
            if self.control.wait(ADMISSION_POLL):  # calls in flight hold the rest: wait for them to be billed
                raise self._stopping()

    def _wait_for_the_model(self, prompt_tokens: int, kwargs: dict) -> float:
        """Rate-limit window, then one of the model's slots; returns the seconds queued."""
        started = time.perf_counter()
        if self.limiter is not None:
            self.limiter.acquire(prompt_tokens + int(kwargs.get("max_tokens") or self.kwargs.get("max_tokens") or 0),
                                 self.control.event)
        if self.slots is not None and not self.slots.acquire(self.control.event):  # first come, first served
            raise self._stopping()
        return time.perf_counter() - started

    def _attempt(self, prompt, messages, kwargs, context, call_id: str, attempt: int, prompt_tokens: int,
                 claim: Claim | None):
        reservation = self._admit(prompt_tokens, kwargs, context.depth)
        try:
            queued = self._wait_for_the_model(prompt_tokens, kwargs)  # from here on it holds a slot (if any)
            try:
                if self.control.stopping:  # stopped while it waited: nothing was sent
                    raise self._stopping()
                return self._send(prompt, messages, kwargs, context, call_id, attempt, prompt_tokens, queued, claim)
            finally:
                if self.slots is not None:
                    self.slots.release()
        finally:
            if reservation is not None:
                self.budget.release(reservation)

    def _send(self, prompt, messages, kwargs, context, call_id, attempt, counted_prompt, queued, claim):
        capture = _UsageCapture(dspy.settings.usage_tracker)
        self.recorder.started(call_id, attempt, queued, context)
        started, clock = time.time(), time.perf_counter()
        error: BaseException | None = None
        outputs = None
        try:
            forwarded = (_forwarding(self.inner, messages) if _forwarding is not None and messages is not None
                         else contextlib.nullcontext())
            with dspy.context(usage_tracker=capture), forwarded:
                outputs = self.inner(prompt, messages=messages, **kwargs)
            return outputs
        except BaseException as exc:
            error = exc
            raise
        finally:
            latency = time.perf_counter() - clock
            prompt_tokens, completion_tokens = capture.tokens()
            estimated = False
            if error is not None:
                outcome, info = "error", classify(error)
            elif capture.entries or not self.cache:
                # DSPy reports usage for every call that reached the model, none for a cache hit;
                # with the cache off there are no hits: no usage means the provider sent none
                outcome, info = "ok", None
                if not capture.reported():
                    prompt_tokens, completion_tokens = counted_prompt, count_outputs(self.model, outputs)
                    estimated = True
            else:
                outcome, info = "cached", None
            if self.breaker is not None and error is None:
                self.breaker.record(None)
            call = LMCall(
                model=self.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=0.0 if outcome == "cached" else self.pricing.cost(self.model, prompt_tokens, completion_tokens),
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
                error=one_line(error) if error is not None else None,
                worker=threading.current_thread().name,
                call_id=call_id,
                queued=round(queued, 6),
                estimated=estimated,
                request=claim.key if claim else None,
                occurrence=claim.occurrence if claim else None,
                seq=claim.seq if claim else None,
                parent=context.parent,
            )
            answer = dumps_outputs(outputs) if claim is not None and outcome == "ok" else None
            if answer is not None:  # kept with its call's record before the program sees it
                context.journal.answered(claim, answer, call, preview(prompt, messages))
                call = dataclasses.replace(call, stored=True)
            self.recorder.record(call)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Retry-After when the server gave one (capped), else exponential backoff with jitter."""
        after = classify(state.outcome.exception()).retry_after
        return min(after, self.retry.max_retry_after) if after is not None else self._backoff(state)

    def _pause_everyone(self, state: tenacity.RetryCallState) -> None:
        """A Retry-After is the provider asking everyone to wait, not only this call."""
        if self.limiter is not None and classify(state.outcome.exception()).retry_after is not None:
            self.limiter.hold(state.next_action.sleep)

    def _sleep(self, seconds: float) -> None:
        """Sleep between attempts; RunStopping at once when the run stops."""
        if self.control.wait(seconds):
            raise self._stopping()

    def _stopping(self) -> RunStopping:
        return RunStopping(self.control.reason or "the run is stopping")

    async def acall(self, prompt=None, messages=None, **kwargs):
        import asyncio

        return await asyncio.to_thread(self.__call__, prompt, messages=messages, **kwargs)


def without_own_retries(lm: dspy.BaseLM) -> dspy.BaseLM:
    """``lm`` with DSPy's retry loop off (a copy when it had one): attempts are retried, and
    counted, by RecordingLM alone, never twice over."""
    if isinstance(lm, RecordingLM):
        return lm.inner
    retries = getattr(lm, "num_retries", 0)
    if retries and hasattr(lm, "copy"):
        copy = lm.copy()
        copy.num_retries = 0
        return copy
    return lm
