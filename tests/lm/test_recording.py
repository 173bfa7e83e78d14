"""RecordingLM and the usage recorder: exact usage per call, cache hits, retries, budgets, limits."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import dspy
import pytest
from dspy import lm15

from rlmpipe.lm.context import call_context, deeper
from rlmpipe.lm.errors import BudgetExceeded, classify
from rlmpipe.lm.limits import Budget, RateLimiter
from rlmpipe.lm.models import ModelChoice, make_lm
from rlmpipe.lm.recording import RecordingLM, RetryPolicy
from rlmpipe.lm.usage import Pricing, Usage, UsageRecorder, price
from rlmpipe.runtime import threadsafe_ast
from tests.support.scripted_lm import ScriptedLM, chat_reply

FAST = RetryPolicy(max_attempts=5, initial_wait=0.001, max_wait=0.01, jitter=0.0, max_retry_after=0.05)


def record_waits(lm: RecordingLM) -> list[float]:
    """The seconds ``lm`` waits between attempts, in order (it still waits them)."""
    waits: list[float] = []
    wait = lm._sleep

    def recorded(seconds: float) -> None:
        waits.append(seconds)
        wait(seconds)

    lm._sleep = recorded
    return waits


def counted(recorder: UsageRecorder) -> Usage:
    """Every attempt the recorder announces (from any thread), added up by the one usage model."""
    usage, lock = Usage(), threading.Lock()

    def add(call) -> None:
        with lock:
            usage.add(call)

    recorder.subscribe(add)
    return usage


def test_usage_is_exactly_what_the_server_reported_per_call(openai_server):
    openai_server.set_default(chat_reply(answer="Paris"))
    openai_server.set_usage(prompt_tokens=123, completion_tokens=7)
    recorder = UsageRecorder()
    totals = counted(recorder)
    by_depth: dict[int, Usage] = {}
    recorder.subscribe(lambda call: by_depth.setdefault(call.depth, Usage()).add(call))
    lm = RecordingLM(make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url)), recorder)
    with dspy.context(lm=lm), call_context(run_id="r1", step_key="s1", doc_id="d1"):
        answer = dspy.Predict("question -> answer")(question="Capital of France?").answer
        with deeper():
            dspy.Predict("question -> answer")(question="Capital of France, again?")
    assert answer == "Paris"
    assert (totals.calls, totals.prompt_tokens, totals.completion_tokens) == (2, 246, 14)
    assert totals.unpriced == 2 and not totals.cost_known  # test-model has no known price
    assert set(by_depth) == {0, 1} and by_depth[1].prompt_tokens == 123
    first = []
    recorder.subscribe(first.append)
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="x")
    assert first[0].model == "openai/test-model" and first[0].outcome == "ok" and first[0].latency > 0


def test_cache_hit_costs_nothing_and_is_counted_as_a_hit(tmp_path):
    scripted = ScriptedLM(default=chat_reply(answer="42"), cache=True, usage=(50, 5))
    recorder = UsageRecorder()
    totals = counted(recorder)
    lm = RecordingLM(scripted, recorder)
    question = f"unique question {time.time_ns()}"
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question=question)
        dspy.Predict("question -> answer")(question=question)
    assert totals.ok == 1 and totals.cached == 1
    assert totals.prompt_tokens == 50  # the hit added nothing
    assert len(scripted.calls) == 1


def test_retryable_errors_are_retried_recorded_and_honour_retry_after():
    scripted = ScriptedLM(default=chat_reply(answer="ok"))
    scripted.queue_replies(lm15.RateLimitError("slow down", retry_after=0.03), lm15.ServerError("boom"))
    recorder = UsageRecorder()
    totals = counted(recorder)
    lm = RecordingLM(scripted, recorder, retry=FAST)
    waits = record_waits(lm)
    with dspy.context(lm=lm):
        assert dspy.Predict("q -> answer")(q="hi").answer == "ok"
    assert waits[0] == 0.03, "Retry-After was honoured"
    assert 0 < waits[1] <= FAST.max_wait  # then backoff
    assert (totals.errors, totals.ok, totals.retries) == (2, 1, 2)


def test_retry_after_is_capped():
    scripted = ScriptedLM(default=chat_reply(answer="ok"))
    scripted.queue_replies(lm15.RateLimitError("slow down", retry_after=3600))
    lm = RecordingLM(scripted, UsageRecorder(), retry=FAST)
    waits = record_waits(lm)
    with dspy.context(lm=lm):
        dspy.Predict("q -> answer")(q="hi")
    assert waits == [FAST.max_retry_after]  # not the hour the server asked for


def test_fatal_errors_are_not_retried():
    scripted = ScriptedLM(default=chat_reply(answer="ok"))
    scripted.queue_replies(lm15.AuthError("bad key"))
    recorder = UsageRecorder()
    totals = counted(recorder)
    lm = RecordingLM(scripted, recorder, retry=FAST)
    with dspy.context(lm=lm), pytest.raises(Exception) as caught:
        dspy.Predict("q -> answer")(q="hi")
    info = classify(caught.value)
    assert info.kind == "fatal" and info.stops_run and info.type == "auth"
    assert totals.errors == 1 and len(scripted.calls) == 1


def test_budget_admits_a_call_only_if_its_prompt_and_expected_completion_fit():
    scripted = ScriptedLM(default=chat_reply(answer="ok"), usage=(60, 40), max_tokens=50)
    recorder = UsageRecorder()
    budget = Budget(max_run_tokens=1000)
    recorder.subscribe(budget.charge)
    lm = RecordingLM(scripted, recorder, budget=budget)
    predict = dspy.Predict("q -> answer")
    with dspy.context(lm=lm):
        with pytest.raises(BudgetExceeded, match="token budget reached") as caught:
            for index in range(50):
                predict(q=str(index))
    # each call reserved its counted prompt + its max_tokens (50) and was billed 100: the refused
    # call is the first whose reservation did not fit beside what was billed
    billed = 100 * len(scripted.calls)
    assert 0 < billed <= 1000 < billed + caught.value.needed
    assert caught.value.used == billed and caught.value.needed > 50
    assert budget.reserved_tokens == 0  # nothing is held once the calls are over


def test_usage_is_correct_under_threads():
    threadsafe_ast.install()  # as a run does before its step threads: DSPy parses signatures in each
    scripted = ScriptedLM(default=chat_reply(answer="ok"), usage=(10, 1), latency=0.01)
    recorder = UsageRecorder()
    totals = counted(recorder)
    lm = RecordingLM(scripted, recorder)

    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with dspy.context(lm=lm), call_context(step_key=f"s{index}"):
                for repeat in range(5):
                    dspy.Predict("q -> answer")(q=f"{index}-{repeat}")
        except BaseException as error:  # a thread's exception would otherwise only be printed
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    assert not errors, errors
    assert (totals.calls, totals.ok, totals.cached, totals.prompt_tokens, totals.estimated) == (40, 40, 0, 400, 0), (
        totals, scripted.count())


def test_rate_limiter_spaces_requests():
    limiter = RateLimiter(requests_per_minute=2)
    assert limiter.acquire(10) == 0 and limiter.acquire(10) == 0
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    limiter.acquire(10, stop)  # the third request in a minute has to wait (until stopped here)
    assert stop.is_set()  # it returned because it was stopped, not because a slot came free
    assert limiter.try_acquire(10) > 0  # and the minute's two slots are still taken


def test_tokens_per_minute_limit():
    limiter = RateLimiter(tokens_per_minute=1000)
    assert limiter.try_acquire(600) == 0
    assert limiter.try_acquire(600) > 0  # 1200 > 1000 within the minute


def test_prices_known_and_unknown():
    assert price("openai/gpt-4o-mini", 1_000_000, 0) > 0
    assert price("openai/test-model", 10, 10) is None
    assert price("local/SmolLM2-135M-Instruct", 10, 10) == 0.0


def test_resolved_prices_answer_without_litellm():
    """A Ray worker gets the run's prices already looked up: importing litellm there took tens of
    seconds under load, inside the first step, while that step's finished LM call waited to be stored."""
    resolved = Pricing().resolved("openai/gpt-4o-mini").resolved("openai/test-model")
    assert resolved.looked_up == {"openai/gpt-4o-mini": Pricing().per_token("openai/gpt-4o-mini"),
                                  "openai/test-model": None}
    assert Pricing({"*": (1.0, 2.0)}).resolved("m").cost("m", 10**6, 10**6) == 3.0  # the user's price wins
    script = ("import sys; from rlmpipe.lm.usage import Pricing; "
              "p = Pricing(looked_up={'a': (1e-6, 2e-6), 'b': None}); "
              "assert abs(p.cost('a', 10, 10) - 3e-5) < 1e-15 and p.cost('b', 10, 10) is None; "
              "assert 'litellm' not in sys.modules, 'litellm was imported'")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
