"""Choosing a model by one string, failing fast when it cannot work, and classifying failures."""

from __future__ import annotations

import dspy
import pytest

from rlmpipe.lm.errors import FatalLMError, classify
from rlmpipe.lm.models import choose_model, make_lm, ModelChoice
from tests.support.scripted_lm import chat_reply


def test_precedence_flag_environment_config_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLMPIPE_LM", raising=False)
    monkeypatch.setattr("rlmpipe.lm.models.CONFIG_FILES", (tmp_path / "rlmpipe.toml",))
    assert choose_model().model == "local" and choose_model().source == "default"
    (tmp_path / "rlmpipe.toml").write_text('lm = "ollama_chat/llama3.1"\napi_base = "http://127.0.0.1:11434"\n')
    choice = choose_model()
    assert (choice.model, choice.api_base) == ("ollama_chat/llama3.1", "http://127.0.0.1:11434")
    assert choice.source.startswith("config")
    monkeypatch.setenv("RLMPIPE_LM", "anthropic/claude-3-5-haiku-latest")
    assert choose_model().model == "anthropic/claude-3-5-haiku-latest"
    assert choose_model("openai/gpt-4o-mini").source == "flag"


def test_missing_api_key_fails_fast_with_what_to_set(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(FatalLMError, match="set OPENAI_API_KEY"):
        make_lm(ModelChoice("openai/gpt-4o-mini", "flag"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(FatalLMError, match="ANTHROPIC_API_KEY"):
        make_lm(ModelChoice("anthropic/claude-3-5-haiku-latest", "flag"))


def test_unknown_provider_fails_fast():
    with pytest.raises(FatalLMError, match="unknown model 'nosuchprovider/x'"):
        make_lm(ModelChoice("nosuchprovider/x", "flag"))


def test_a_self_hosted_server_needs_no_key(monkeypatch, openai_server):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    openai_server.set_default(chat_reply(answer="yes"))
    lm = make_lm(ModelChoice("openai/whatever", "flag", api_base=openai_server.base_url))
    with dspy.context(lm=lm):
        assert dspy.Predict("q -> answer")(q="?").answer == "yes"


@pytest.mark.parametrize("fault,kind,type_", [
    ("rate_limit", "retryable", "rate_limit"),
    ("server_error", "retryable", "server"),
    ("unavailable", "retryable", "server"),
    ("reset", "retryable", "connection"),
    ("malformed_json", "retryable", "malformed_response"),
    ("auth", "fatal", "auth"),
    ("bad_request", "fatal", "bad_request"),
    ("model_not_found", "fatal", "unknown_model"),
])
def test_each_provider_failure_is_classified_once(openai_server, fault, kind, type_):
    openai_server.fail(fault, retry_after=2 if fault == "rate_limit" else None)
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url))
    with dspy.context(lm=lm), pytest.raises(Exception) as caught:
        dspy.Predict("q -> answer")(q="?")
    info = classify(caught.value)
    assert (info.kind, info.type) == (kind, type_), repr(caught.value)
    if fault == "rate_limit":
        assert info.retry_after == 2.0
    assert info.stops_run == (type_ in ("auth", "unknown_model"))


def test_read_timeout_is_retryable(openai_server):
    openai_server.fail("timeout", delay=3)
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url), timeout=0.5)
    with dspy.context(lm=lm), pytest.raises(Exception) as caught:
        dspy.Predict("q -> answer")(q="?")
    assert classify(caught.value).kind == "retryable"


def test_output_that_never_parses_is_reaskable(openai_server):
    openai_server.fail("schema_violation")
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url))
    with dspy.context(lm=lm), pytest.raises(Exception) as caught:
        dspy.Predict("q -> answer")(q="?")
    assert classify(caught.value).kind == "reask"


class DenoNotFoundError(RuntimeError):
    """Named like an unknown model's error to a guess by name; it is about something else entirely."""


class ConnectionQualityReport(Exception):
    """A name with 'Connection' in it that is no connection error."""


def test_errors_are_classified_by_type_and_status_never_by_name():
    """Issue 28: any exception whose class name held "NotFound" was an unknown model ("check the model
    name (--lm)"), and it stopped the run; the sandbox's DenoNotFoundError was told so."""
    import httpx
    import litellm
    import openai

    assert (classify(DenoNotFoundError("Deno executable not found")).type, classify(
        DenoNotFoundError("x")).stops_run) == ("unexpected", False)
    assert classify(ConnectionQualityReport("fine")).type == "unexpected"
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    missing = litellm.NotFoundError("no such model", model="m", llm_provider="openai")
    assert (classify(missing).type, classify(missing).stops_run) == ("unknown_model", True)
    assert classify(openai.APITimeoutError(request=request)).type == "timeout"
    assert classify(openai.APIConnectionError(request=request)).type == "connection"
    assert classify(httpx.ConnectError("refused")).type == "connection"
    assert classify(ConnectionRefusedError(111, "Connection refused")).kind == "retryable"
    assert classify(TimeoutError("slow")).type == "timeout"
    window = litellm.ContextWindowExceededError("too long", model="m", llm_provider="openai")
    assert classify(window).type == "context_window"


def test_a_context_window_error_names_the_flag_that_makes_chunks_smaller():
    """Issue 28: the advice said --max-tokens, on run commands the old name of the token budget."""
    from dspy.utils import exceptions as dx

    info = classify(dx.ContextWindowExceededError(model="openai/test-model"))
    assert info.type == "context_window" and "--chunk-tokens" in info.hint and "--max-tokens" not in info.hint
