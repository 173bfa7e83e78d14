"""Classify an LM failure once: retry it, ask again, or stop.

* **retryable**: rate limits (429), server errors (5xx), timeouts, dropped connections. Retried
  with exponential backoff and jitter, honouring ``Retry-After`` up to a cap.
* **reask**: the model answered but its output did not parse or validate. The step asks again,
  showing the model the error, a bounded number of times.
* **fatal**: authentication, billing, bad request, unknown model, context window exceeded, a
  missing API key, an exhausted budget. Retrying cannot help: the run stops with a message that
  says what to do.

DSPy (>= 3.4) raises its own typed ``LMError`` s with ``status`` and ``retry_after``; litellm and
the OpenAI SDK raise theirs with ``status_code`` and a response carrying headers. Both are read,
by type and status; an error is never classified by its class's name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

Kind = Literal["retryable", "reask", "fatal"]

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}


class BudgetExceeded(RuntimeError):
    """A run-wide budget (tokens, cost or time) is used up. Not an LM error: the run stops cleanly.

    ``used`` is what was billed when the next call was refused; ``needed`` what that call would
    have reserved (its counted prompt and expected completion)."""

    def __init__(self, what: str, used: float, limit: float, needed: float | None = None):
        self.what, self.used, self.limit, self.needed = what, used, limit, needed
        unit = {"token": " tokens", "cost": " USD", "time": " s", "sub-call": " sub-calls"}.get(what, "")
        detail = f"{_fmt(used)}{unit} billed of {_fmt(limit)}" if what in ("token", "cost") else \
            f"{_fmt(used)} of {_fmt(limit)}{unit}"
        if needed:
            detail += f"; the next call needed ~{_fmt(needed)}"
        super().__init__(f"{what} budget reached ({detail})")


class FatalLMError(RuntimeError):
    """An LM failure that retrying cannot fix; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "", kind: str = "fatal"):
        self.hint, self.kind = hint, kind
        super().__init__(f"{message}{': ' + hint if hint else ''}")


#: Fatal errors that no other document could escape either: they stop the whole run. Other fatal
#: errors (a request too large for the context, a bad request) fail only the step at hand.
RUN_FATAL = {"auth", "billing", "not_configured", "unknown_model", "configuration", "budget"}


@dataclass(frozen=True)
class Classified:
    kind: Kind
    type: str  # short name for logs and metrics: "rate_limit", "server", "timeout", ...
    status: int | None = None
    retry_after: float | None = None
    hint: str = ""

    @property
    def stops_run(self) -> bool:
        return self.kind == "fatal" and self.type in RUN_FATAL


def one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (whitespace runs collapsed), the message cut at ``limit`` characters;
    just ``Type`` if there is no message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}" if text else type(error).__name__


def _fmt(value: float) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"


def _status(error: BaseException) -> int | None:
    for name in ("status", "status_code", "http_status"):
        value = getattr(error, name, None)
        if isinstance(value, int):
            return value
    response = getattr(error, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def retry_after_seconds(error: BaseException) -> float | None:
    """The server's ``Retry-After`` hint, from DSPy's attribute or the HTTP response headers."""
    value = getattr(error, "retry_after", None)
    if value is None:
        headers = getattr(getattr(error, "response", None), "headers", None) or {}
        try:
            value = headers.get("retry-after") or headers.get("Retry-After")
        except AttributeError:
            value = None
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: rare for LM providers, and backoff covers it
    return seconds if seconds is not None and seconds >= 0 else None


#: what to do about a prompt larger than the model's context window
CONTEXT_HINT = ("the prompt is larger than the model's context window: use smaller chunks (--chunk-tokens) or a "
                "model with a larger context window")


def _loaded(*names: tuple[str, str]) -> tuple[type, ...]:
    """The exception types ``(module, class)`` of the client libraries that are loaded (nothing is
    imported for this: an error of a library that was never imported cannot be raised)."""
    found = []
    for module_name, class_name in names:
        module = sys.modules.get(module_name)
        kind = getattr(module, class_name, None) if module is not None else None
        if isinstance(kind, type) and issubclass(kind, BaseException):
            found.append(kind)
    return tuple(found)


def classify(error: BaseException) -> Classified:
    from dspy.utils import exceptions as dx

    status = _status(error)
    after = retry_after_seconds(error)
    if isinstance(error, BudgetExceeded):
        return Classified("fatal", "budget")
    if isinstance(error, FatalLMError):
        return Classified("fatal", error.kind, hint=error.hint)
    if isinstance(error, dx.AdapterParseError):
        return Classified("reask", "parse")
    fatal_types = [
        (dx.ContextWindowExceededError, "context_window", CONTEXT_HINT),
        (dx.LMAuthError, "auth", "check the API key for this provider"),
        (dx.LMBillingError, "billing", "the provider account has no credit"),
        (dx.LMNotConfiguredError, "not_configured", "set the provider's API key variable"),
        (dx.LMUnsupportedModelError, "unknown_model", "check the model name (--lm)"),
        (dx.LMConfigurationError, "configuration", "check --lm and --api-base"),
        (dx.LMInvalidRequestError, "bad_request", "the provider rejected the request"),
    ]
    for error_type, name, hint in fatal_types:
        if isinstance(error, error_type):
            return Classified("fatal", name, status, hint=hint)
    retryable_types = [
        (dx.LMRateLimitError, "rate_limit"),
        (dx.LMTimeoutError, "timeout"),
        (dx.LMServerError, "server"),
        (dx.LMTransportError, "connection"),
        (dx.LMLockTimeoutError, "lock_timeout"),
    ]
    for error_type, name in retryable_types:
        if isinstance(error, error_type):
            return Classified("retryable", name, status, after)
    if isinstance(error, dx.LMProviderError) and (status is None or status < 400 or status >= 500):
        # the provider answered, but not with a usable response (e.g. a body that is not JSON)
        return Classified("retryable", "malformed_response", status, after)
    # Other LMs' errors (an LM of your own, litellm or the OpenAI SDK called directly): by the HTTP
    # status they carry, else by type; never by the class's name (a DenoNotFoundError is no unknown model)
    if isinstance(error, _loaded(("litellm", "ContextWindowExceededError"))):
        return Classified("fatal", "context_window", status, hint=CONTEXT_HINT)
    if status == 429:
        return Classified("retryable", "rate_limit", status, after)
    if isinstance(error, (TimeoutError, *_loaded(("openai", "APITimeoutError"), ("httpx", "TimeoutException")))):
        return Classified("retryable", "timeout", status, after)
    if status in RETRYABLE_STATUS:
        return Classified("retryable", "server", status, after)
    if isinstance(error, (ConnectionError, *_loaded(("openai", "APIConnectionError"), ("httpx", "NetworkError")))):
        return Classified("retryable", "connection", status, after)
    if status in (401, 403):
        return Classified("fatal", "auth", status, hint="check the API key for this provider")
    if status == 404:
        return Classified("fatal", "unknown_model", status, hint="check the model name (--lm)")
    if status is not None and 400 <= status < 500:
        return Classified("fatal", "bad_request", status, hint="the provider rejected the request")
    if isinstance(error, (ValueError, KeyError, TypeError)) and "parse" in str(error).lower():
        return Classified("reask", "parse")
    return Classified("fatal", "unexpected", status, hint=type(error).__name__)
