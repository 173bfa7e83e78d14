"""The LM test doubles work, and through the real client path.

Real path: dspy.LM("openai/test-model", api_base=...) -> DSPy 3.4 execution -> the native lm15 engine (engine="auto",
the default for openai/ + api_base) or LiteLLM (engine="litellm") -> HTTP on 127.0.0.1 -> OpenAIServer.
The exception tables below were found by experiment against dspy 3.4.1 / litellm 1.110.2; if an upgrade changes
them, these tests say so.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request

import dspy
import litellm
import pytest
from dspy.utils.exceptions import (
    AdapterParseError,
    LMAuthError,
    LMInvalidRequestError,
    LMProviderError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMTransportError,
    LMUnsupportedModelError,
)

from tests.support.openai_server import FAULT_KINDS, OpenAIServer, count_words
from tests.support.scripted_lm import COMPLETED_MARKER, ScriptedLM, chat_reply, json_reply

QUESTION = "What is the capital of France?"
PARIS = chat_reply(answer="Paris")


# -- helpers ----------------------------------------------------------------------------------------------
def make_lm(server: OpenAIServer, engine: str = "auto", **kwargs) -> dspy.LM:
    kwargs = {"cache": False, "num_retries": 0, **kwargs}
    return dspy.LM("openai/test-model", api_base=server.base_url, api_key="test", engine=engine, **kwargs)


def raw_completion(server: OpenAIServer, content: str = "hello there", **kwargs):
    kwargs = {"num_retries": 0, **kwargs}
    return litellm.completion(model="openai/test-model", api_base=server.base_url, api_key="test",
                              messages=[{"role": "user", "content": content}], **kwargs)


def post_chat(server: OpenAIServer, content: str, **extra) -> tuple[int, dict, bytes]:
    """A bare HTTP client (urllib): what the server itself sends, no SDK in between."""
    body = {"model": "test-model", "messages": [{"role": "user", "content": content}], **extra}
    request = urllib.request.Request(f"{server.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def content_of(raw: bytes) -> str:
    return json.loads(raw)["choices"][0]["message"]["content"]


def exception_chain(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def predict(lm: dspy.LM, question: str = QUESTION, signature: str = "question -> answer"):
    with dspy.context(lm=lm):
        return dspy.Predict(signature)(question=question)


# -- the server on its own --------------------------------------------------------------------------------
def test_models_endpoint_and_log(openai_server):
    with urllib.request.urlopen(f"{openai_server.base_url}/models", timeout=5) as response:
        data = json.loads(response.read())
    assert [m["id"] for m in data["data"]] == ["test-model"]
    assert [(c.method, c.path, c.served, c.status) for c in openai_server.calls] == [
        ("GET", "/v1/models", "models", 200)]
    assert openai_server.count() == 0  # count() is about chat completions


def test_rules_queue_default_and_callable_replies(openai_server):
    openai_server.reply(r"capital of (France|Italy)", "first rule")
    openai_server.reply(r"capital", "second rule")
    openai_server.reply(r"echo", lambda body: f"{body['model']}|{body['messages'][-1]['content']}|{body['temperature']}")
    openai_server.set_default("the default")

    assert content_of(post_chat(openai_server, "the capital of Italy")[2]) == "first rule"
    assert content_of(post_chat(openai_server, "the capital of Spain")[2]) == "second rule"
    assert content_of(post_chat(openai_server, "echo me", temperature=0.5)[2]) == "test-model|echo me|0.5"
    assert content_of(post_chat(openai_server, "nothing matches")[2]) == "the default"

    openai_server.queue_replies("q1", lambda body: "q2")
    assert [content_of(post_chat(openai_server, "the capital of Italy")[2]) for _ in range(3)] == [
        "q1", "q2", "first rule"]
    assert [c.rule for c in openai_server.chat_calls] == [
        r"capital of (France|Italy)", "capital", "echo", "default", "queue", "queue", r"capital of (France|Italy)"]
    assert openai_server.count("capital") == 5
    assert openai_server.count(served="reply") == 7


def test_usage_is_a_word_count_by_default_or_fixed(openai_server):
    openai_server.set_default("three word reply")
    body = json.loads(post_chat(openai_server, "one two three four")[2])
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert count_words("one two  three\nfour") == 4

    openai_server.set_usage(prompt_tokens=100, completion_tokens=5)
    body = json.loads(post_chat(openai_server, "one two three four")[2])
    assert body["usage"] == {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}

    openai_server.reply("special", "x", usage=(1, 2))
    assert json.loads(post_chat(openai_server, "special")[2])["usage"]["total_tokens"] == 3


def test_latency_server_wide_and_per_rule(openai_server):
    openai_server.set_latency(0.3)
    openai_server.reply("quick", "fast", latency=0.0)
    openai_server.reply("slow", "slower", latency=0.6)

    def timed(text: str) -> float:
        start = time.monotonic()
        post_chat(openai_server, text)
        return time.monotonic() - start

    waited = [timed("quick"), timed("default"), timed("slow")]
    assert [call.latency for call in openai_server.chat_calls] == [0.0, 0.3, 0.6]  # what each one was given
    assert waited[1] >= 0.3 and waited[2] >= 0.6  # and it was really waited (lower bounds: load only adds)


def test_fault_triggers_times_pattern_and_seeded_probability(openai_server):
    fault = openai_server.fail("server_error", times=2)
    assert [post_chat(openai_server, "a")[0] for _ in range(3)] == [500, 500, 200]
    assert fault.fired == 2

    openai_server.fail("auth", pattern=r"secret")
    assert post_chat(openai_server, "public")[0] == 200
    assert post_chat(openai_server, "top secret")[0] == 401
    assert post_chat(openai_server, "top secret again")[0] == 401
    openai_server.clear_faults()

    def failures(seed: int) -> list[int]:
        with OpenAIServer() as server:
            server.fail("unavailable", probability=0.3, seed=seed)
            return [i for i in range(60) if post_chat(server, f"call {i}")[0] == 503]

    first, again, other = failures(7), failures(7), failures(8)
    assert first == again  # reproducible
    assert first != other
    assert 6 <= len(first) <= 30  # about 18 of 60


def test_error_fault_does_not_consume_the_queue(openai_server):
    openai_server.queue_replies("queued answer")
    openai_server.fail("rate_limit", times=1, retry_after=3)
    status, headers, body = post_chat(openai_server, "x")
    assert status == 429 and headers["retry-after"] == "3"
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    assert content_of(post_chat(openai_server, "x")[2]) == "queued answer"
    assert [c.served for c in openai_server.chat_calls] == ["rate_limit", "reply"]


@pytest.mark.parametrize("kind,status,code", [
    ("rate_limit", 429, "rate_limit_exceeded"),
    ("server_error", 500, None),
    ("unavailable", 503, "service_unavailable"),
    ("auth", 401, "invalid_api_key"),
    ("bad_request", 400, "invalid_request_error"),
    ("model_not_found", 404, "model_not_found"),
])
def test_http_faults_send_openai_error_bodies(openai_server, kind, status, code):
    openai_server.fail(kind, times=1)
    got_status, headers, body = post_chat(openai_server, "x")
    error = json.loads(body)["error"]
    assert (got_status, error["code"]) == (status, code)
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert headers["content-type"] == "application/json"


def test_malformed_truncated_and_schema_violation_bodies(openai_server):
    openai_server.set_default("alpha beta gamma delta")
    openai_server.fail("malformed_json", times=1)
    status, _, raw = post_chat(openai_server, "x")
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)

    openai_server.fail("truncated", times=1, keep=10)
    choice = json.loads(post_chat(openai_server, "x")[2])["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("alpha beta", "length")

    openai_server.fail("schema_violation", times=1, content="not what you asked for")
    choice = json.loads(post_chat(openai_server, "x")[2])["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("not what you asked for", "stop")
    assert [c.served for c in openai_server.chat_calls] == ["malformed_json", "truncated", "schema_violation"]


def test_unknown_fault_kind_is_refused(openai_server):
    with pytest.raises(ValueError, match="unknown fault kind"):
        openai_server.fail("meteor_strike")
    assert len(FAULT_KINDS) == 11


def test_streaming_sse_through_litellm(openai_server):
    openai_server.set_default("streamed words arrive one by one")
    chunks = list(raw_completion(openai_server, "stream please", stream=True,
                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed words arrive one by one"
    usage = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usage and (usage[-1].prompt_tokens, usage[-1].completion_tokens) == (2, 6)
    assert openai_server.chat_calls[-1].stream


def test_streaming_sse_wire_format(openai_server):
    openai_server.set_default("a b")
    for include_usage in (False, True):
        body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True,
                "stream_options": {"include_usage": include_usage}}
        request = urllib.request.Request(f"{openai_server.base_url}/chat/completions",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            events = [line[len("data: "):] for line in response.read().decode().split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "a b"
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
        assert ("usage" in chunks[-1] and chunks[-1]["choices"] == []) is include_usage


# -- dspy.LM through the real client path -----------------------------------------------------------------
@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_predict_through_real_client_gets_answer_and_usage(openai_server, engine):
    openai_server.reply(r"capital of France", PARIS)
    openai_server.set_usage(prompt_tokens=11, completion_tokens=7)
    lm = make_lm(openai_server, engine)

    assert predict(lm).answer == "Paris"

    entry = lm.history[-1]
    assert {k: entry["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == {
        "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert entry["response_model"] == "test-model" and entry["model"] == "openai/test-model"
    (call,) = openai_server.chat_calls
    assert call.model == "test-model"  # the provider prefix is stripped on the wire
    assert call.headers["authorization"] == "Bearer test"
    assert [m["role"] for m in call.messages] == ["system", "user"]
    assert QUESTION in call.prompt


# fault -> (native engine: DSPy class, litellm engine: DSPy class, litellm class (raw litellm.completion,
# and the cause of the litellm-engine error)). Exact classes, not "an instance of".
FAULT_TABLE = {
    "rate_limit": (LMRateLimitError, LMRateLimitError, litellm.RateLimitError),
    "server_error": (LMServerError, LMServerError, litellm.InternalServerError),
    "unavailable": (LMServerError, LMServerError, litellm.ServiceUnavailableError),
    "auth": (LMAuthError, LMAuthError, litellm.AuthenticationError),
    "bad_request": (LMInvalidRequestError, LMInvalidRequestError, litellm.BadRequestError),
    "model_not_found": (LMUnsupportedModelError, LMUnsupportedModelError, litellm.NotFoundError),
    "reset": (LMTransportError, LMServerError, litellm.InternalServerError),  # not APIConnectionError
    "timeout": (LMTransportError, LMTimeoutError, litellm.Timeout),  # native: transport, not timeout
    "malformed_json": (LMProviderError, LMServerError, litellm.InternalServerError),
}
STATUS = {"rate_limit": 429, "server_error": 500, "unavailable": 503, "auth": 401, "bad_request": 400,
          "model_not_found": 404}
CLIENT_TIMEOUT = 0.5


def _arm(server: OpenAIServer, kind: str) -> None:
    server.fail(kind, retry_after=7 if kind in ("rate_limit", "unavailable") else None, delay=30)


@pytest.mark.parametrize("kind", list(FAULT_TABLE))
@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_fault_seen_by_dspy_lm_as(openai_server, engine, kind):
    native_cls, litellm_engine_cls, litellm_cls = FAULT_TABLE[kind]
    _arm(openai_server, kind)
    lm = make_lm(openai_server, engine, timeout=CLIENT_TIMEOUT)

    with pytest.raises(Exception) as info:
        predict(lm)

    exc = info.value
    assert type(exc) is (native_cls if engine == "auto" else litellm_engine_cls)
    if engine == "litellm":
        assert litellm_cls in [type(e) for e in exception_chain(exc)]
    if kind in STATUS:
        assert exc.status == STATUS[kind]
    if kind in ("rate_limit", "unavailable"):
        assert exc.retry_after == 7.0  # the Retry-After header, in seconds, on every engine
        if engine == "auto":
            assert dict(exc.rate_limit_headers)["retry-after"] == ("7",)
        else:
            cause = next(e for e in exception_chain(exc) if type(e) is litellm_cls)
            assert cause.response.headers["retry-after"] == "7"
    else:
        assert exc.retry_after is None
    assert openai_server.count() == 1  # num_retries=0: no retry anywhere below DSPy either


@pytest.mark.parametrize("kind", list(FAULT_TABLE))
def test_fault_seen_by_litellm_completion_as(openai_server, kind):
    litellm_cls = FAULT_TABLE[kind][2]
    _arm(openai_server, kind)

    with pytest.raises(Exception) as info:
        raw_completion(openai_server, timeout=CLIENT_TIMEOUT)

    exc = info.value
    assert type(exc) is litellm_cls
    if kind in STATUS:
        assert exc.status_code == STATUS[kind]
    if kind in ("rate_limit", "unavailable"):
        assert exc.response.headers["retry-after"] == "7"
    if kind == "reset":
        assert ConnectionResetError in [type(e) for e in exception_chain(exc)]
    assert openai_server.count() == 1


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_reset_is_a_tcp_rst_on_the_wire(openai_server, engine):
    openai_server.fail("reset")
    with pytest.raises(Exception) as info:
        predict(make_lm(openai_server, engine))
    assert ConnectionResetError in [type(e) for e in exception_chain(info.value)]


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_truncated_reply_is_accepted_by_predict_with_only_a_log_warning(openai_server, engine, caplog):
    openai_server.set_default(chat_reply(answer="Paris is the capital of France and a big city"))
    openai_server.fail("truncated", keep=len("[[ ## answer ## ]]\nParis is the capital"))
    lm = make_lm(openai_server, engine)

    with caplog.at_level(logging.WARNING):
        result = predict(lm)

    assert result.answer == "Paris is the capital"  # no error: the cut text parses as a complete answer
    assert "truncated" in caplog.text
    response = lm.history[-1]["response"]
    finish = response.finish_reason if engine == "auto" else response.choices[0].finish_reason
    assert finish == "length"
    assert openai_server.count() == 1


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_schema_violation_costs_a_json_fallback_call_then_adapter_parse_error(openai_server, engine):
    openai_server.fail("schema_violation")
    with pytest.raises(AdapterParseError):
        predict(make_lm(openai_server, engine))
    # ChatAdapter fails to parse, DSPy retries once with JSONAdapter, which fails too.
    assert [c.served for c in openai_server.chat_calls] == ["schema_violation", "schema_violation"]


def test_wire_options_differ_between_engines(openai_server):
    """What DSPy puts on the wire: native lm15 sends max_completion_tokens and no response_format in the
    JSONAdapter fallback; LiteLLM sends max_tokens and response_format json_object.
    (llama-cpp-python's server ignores max_completion_tokens.)"""
    openai_server.set_default("not parseable")
    sent = {}
    for engine in ("auto", "litellm"):
        openai_server.reset()
        with pytest.raises(AdapterParseError):
            predict(make_lm(openai_server, engine, max_tokens=64, temperature=0.0))
        sent[engine] = [{k: v for k, v in c.body.items() if k != "messages"} for c in openai_server.chat_calls]
    assert sent["auto"] == [{"model": "test-model", "max_completion_tokens": 64, "temperature": 0.0}] * 2
    assert sent["litellm"] == [
        {"model": "test-model", "max_tokens": 64, "temperature": 0.0},
        {"model": "test-model", "max_tokens": 64, "temperature": 0.0, "response_format": {"type": "json_object"}},
    ]


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_dspy_retries_by_itself_and_waits_retry_after(openai_server, engine):
    openai_server.reply("capital", PARIS)
    openai_server.fail("rate_limit", times=2, retry_after=0.25)
    lm = make_lm(openai_server, engine, num_retries=2)

    start = time.monotonic()
    assert predict(lm).answer == "Paris"
    elapsed = time.monotonic() - start

    assert [c.served for c in openai_server.chat_calls] == ["rate_limit", "rate_limit", "reply"]
    assert elapsed >= 0.5  # slept Retry-After (0.25 s) before each retry
    gaps = [b.time - a.time for a, b in zip(openai_server.chat_calls, openai_server.chat_calls[1:])]
    assert all(g >= 0.24 for g in gaps)


def test_litellm_completion_retries_by_default(openai_server):
    """Without num_retries=0, litellm.completion (through the OpenAI SDK, max_retries=2) retries 429/5xx,
    connection errors and timeouts on its own, honouring Retry-After."""
    openai_server.fail("server_error", times=2)
    openai_server.set_default("finally")
    response = litellm.completion(model="openai/test-model", api_base=openai_server.base_url, api_key="test",
                                  messages=[{"role": "user", "content": "hi"}])
    assert response.choices[0].message.content == "finally"
    assert openai_server.count() == 3


# -- concurrency and shutdown -----------------------------------------------------------------------------
def test_server_answers_16_concurrent_requests_in_parallel(openai_server):
    inside = threading.Barrier(16, timeout=30)  # passes only once all 16 requests are being answered at once

    def answer(body):
        inside.wait()
        return "answer " + body["messages"][-1]["content"].split()[-1]

    openai_server.reply(r"question (\d+)", answer)
    lm = make_lm(openai_server)
    barrier = threading.Barrier(16)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = lm(f"question {i}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors  # a server that answered one at a time would break the barrier (HTTP 500)
    assert results == {i: [f"answer {i}"] for i in range(16)}
    prompts = sorted(c.prompt for c in openai_server.chat_calls)
    assert prompts == sorted(f"question {i}" for i in range(16))  # each logged exactly once


def test_stop_returns_promptly_with_a_sleeping_handler_and_leaves_no_threads():
    server = OpenAIServer().start()
    server.fail("timeout", delay=60)
    outcome = []
    client = threading.Thread(target=lambda: outcome.append(post_chat_safely(server)))
    client.start()
    assert server.wait_for_calls(1, timeout=5)
    handler_threads = server.running_threads()
    assert handler_threads

    start = time.monotonic()
    leaked = server.stop()
    assert time.monotonic() - start < 30  # the handler is asleep for 60 s: stop did not wait for it
    assert leaked == []
    assert not any(t.is_alive() for t in handler_threads)
    client.join(timeout=5)
    assert not client.is_alive() and outcome == ["error"]
    assert not [t for t in threading.enumerate() if t.name.startswith("openai-server")]


def post_chat_safely(server: OpenAIServer) -> str:
    try:
        post_chat(server, "hang")
        return "answered"
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return "error"


def test_context_manager_stops_even_when_the_body_fails():
    with pytest.raises(RuntimeError, match="boom"), OpenAIServer() as server:
        url = server.url
        raise RuntimeError("boom")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/v1/models", timeout=2)


# -- the scripted LM --------------------------------------------------------------------------------------
def test_chat_and_json_reply_formats_match_dspy_adapters():
    assert chat_reply(answer="Paris") == "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"
    assert chat_reply(reasoning="r", answer=3) == "[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\n3\n\n" + COMPLETED_MARKER
    assert chat_reply(items=["a", "b"]) == '[[ ## items ## ]]\n["a", "b"]\n\n[[ ## completed ## ]]'
    signature = dspy.Signature("question -> reasoning, answer: int, items: list[str]")
    assert dspy.ChatAdapter().parse(signature, chat_reply(reasoning="r", answer=3, items=["a", "b"])) == {
        "reasoning": "r", "answer": 3, "items": ["a", "b"]}
    assert json_reply(answer="Paris") == '{\n  "answer": "Paris"\n}'
    assert dspy.JSONAdapter().parse(signature, json_reply(reasoning="r", answer=3, items=["a"])) == {
        "reasoning": "r", "answer": 3, "items": ["a"]}
    # DSPy's own rendering of an assistant turn, for comparison (it adds a trailing newline).
    fields = dspy.Signature("question -> answer")
    assert dspy.ChatAdapter().format_assistant_message_content(fields, {"answer": "Paris"}).strip() == PARIS


def test_scripted_lm_with_predict_and_chain_of_thought():
    lm = ScriptedLM(usage=(12, 3))
    lm.reply(r"capital of France", PARIS)
    lm.reply(r"capital of Spain", chat_reply(reasoning="Spain's capital is Madrid.", answer="Madrid"))
    assert isinstance(lm, dspy.BaseLM)

    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question=QUESTION).answer == "Paris"
        cot = dspy.ChainOfThought("question -> answer")(question="What is the capital of Spain?")
    assert (cot.reasoning, cot.answer) == ("Spain's capital is Madrid.", "Madrid")

    assert [c.rule for c in lm.calls] == [r"capital of France", r"capital of Spain"]
    first = lm.calls[0]
    assert [m["role"] for m in first.messages] == ["system", "user"]
    assert QUESTION in first.messages[-1]["content"] and QUESTION in first.prompt
    assert first.reply == PARIS
    assert lm.history[-1]["usage"]["prompt_tokens"] == 12
    assert lm.history[-1]["usage"]["completion_tokens"] == 3
    assert lm.count("capital") == 2 and lm.count("Spain") == 1


def test_scripted_lm_with_json_adapter_and_typed_output():
    lm = ScriptedLM(rules=[("how many", json_reply(answer=42))])
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert dspy.Predict("question -> answer: int")(question="how many?").answer == 42


def test_scripted_lm_records_options_queue_default_callable_and_usage():
    seen = []
    lm = ScriptedLM(default="fallback")
    lm.reply(r"^call me", lambda request: seen.append(request) or "called")
    lm.queue_replies("from the queue")

    assert lm("anything", temperature=0.3, max_tokens=20) == ["from the queue"]
    assert lm("call me maybe") == ["called"]
    assert lm("unmatched words here") == ["fallback"]

    assert lm.calls[0].kwargs == {"temperature": 0.3, "max_tokens": 20}
    assert seen[0]["messages"] == [{"role": "user", "content": "call me maybe"}]
    assert seen[0]["model"] == "scripted/test-model"
    assert [c.rule for c in lm.calls] == ["queue", r"^call me", "default"]
    usage = lm.history[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 1)  # word counts by default


def test_scripted_lm_exception_replies_become_dspy_errors_and_dspy_retries_them():
    lm = ScriptedLM(default="ok")
    lm.queue_replies(dspy.lm15.RateLimitError("slow down", retry_after=2))
    with pytest.raises(LMRateLimitError) as info:
        lm("hi")
    assert info.value.retry_after == 2.0

    retrying = ScriptedLM(default="ok", num_retries=1)
    retrying.queue_replies(dspy.lm15.ServerError("flaky", retry_after=0.01))
    assert retrying("hi") == ["ok"]
    assert [c.error is not None for c in retrying.calls] == [True, False]


def test_scripted_lm_is_thread_safe_sleeps_per_call_and_supports_async():
    lm = ScriptedLM(latency=0.2)
    inside = threading.Barrier(8, timeout=30)  # passes only once all 8 calls are past their sleep at once

    def answer(request):
        inside.wait()
        return "a" + request["messages"][-1]["content"][1:]

    lm.reply(r"q(\d+)", answer)
    outputs = {}

    def worker(i):
        outputs[i] = lm(f"q{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outputs == {i: [f"a{i}"] for i in range(8)}  # calls answered one at a time would break the barrier
    assert sorted(c.index for c in lm.calls) == list(range(8))

    async def run():
        with dspy.context(lm=ScriptedLM(rules=[("capital", PARIS)])):
            return await dspy.Predict("question -> answer").acall(question=QUESTION)

    assert asyncio.run(run()).answer == "Paris"


def test_scripted_lm_copies_share_the_script():
    lm = ScriptedLM(default="same")
    copy = lm.copy(temperature=0.5)
    assert copy("x") == ["same"]
    assert lm.count() == 1 and lm.calls[0].kwargs == {"temperature": 0.5}


# -- a real OpenAI-compatible server: llama-cpp-python ----------------------------------------------------
@pytest.fixture(scope="module")
def llama_server():
    for module in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings",
                   "llama_cpp.server.app"):
        pytest.importorskip(module)
    from rlmpipe.lm.local import LocalModelMissing, default_model_path
    from tests.support.llama_server import llama_cpp_server

    try:
        model_path = default_model_path()
    except LocalModelMissing as exc:
        pytest.skip(str(exc))
    with llama_cpp_server(model_path, n_ctx=2048, startup_timeout=60) as server:
        yield server
    assert server.process.poll() is not None  # terminated


@pytest.mark.local_model
@pytest.mark.slow
def test_llama_cpp_server_runs_a_dspy_program(llama_server):
    # engine="litellm": the native engine sends max_completion_tokens, which llama-cpp-python's server ignores,
    # and no response_format in the JSON fallback, so a tiny model can ramble to n_ctx there.
    lm = dspy.LM("openai/smollm2", api_base=llama_server.base_url, api_key="none", engine="litellm",
                 cache=False, num_retries=0, max_tokens=64, temperature=0.0)
    result = predict(lm)
    assert isinstance(result.answer, str) and result.answer.strip()
    assert lm.history
    for entry in lm.history:
        assert entry["usage"]["prompt_tokens"] > 0 and entry["usage"]["completion_tokens"] > 0


@pytest.mark.local_model
@pytest.mark.slow
def test_llama_cpp_server_through_the_native_engine(llama_server):
    lm = dspy.LM("openai/smollm2", api_base=llama_server.base_url, api_key="none", cache=False, num_retries=0,
                 max_tokens=32, temperature=0.0)
    (text,) = lm("What is 2+2? Answer with a number.", stop=["\n\n"])
    assert text.strip()
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
