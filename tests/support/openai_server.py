"""A real, scriptable OpenAI-compatible chat-completions server on 127.0.0.1 (standard library only).

Used to drive the real client path (dspy.LM -> lm15 native engine or LiteLLM -> httpx -> socket) in tests:
scripted answers, latency, usage numbers, injected faults, and a log of every request received.

    with OpenAIServer() as server:
        server.reply(r"capital of France", chat_reply(answer="Paris"))
        server.fail("rate_limit", times=1, retry_after=7)
        lm = dspy.LM("openai/test-model", api_base=server.base_url, api_key="test", cache=False, num_retries=0)
        ...
        assert server.count("capital of France") == 2

Precedence for each chat-completion request: an armed fault first (in the order they were added), then the
queue (``queue_replies``), then the rules (``reply``; first regex match against the prompt wins), then the
default reply.  A fault that answers with an error does not consume a queued reply; ``truncated`` and
``schema_violation`` do (they cut or replace the reply that would have been served).

The prompt a rule sees is the text of every message, each message's content (strings, or the text parts of a
content list) joined with a newline, in order.

Faults (``server.fail(kind, ...)``; see ``FAULT_KINDS``):

=================== =====================================================================================
rate_limit          HTTP 429, OpenAI error body, ``Retry-After: <retry_after>`` header
server_error        HTTP 500
unavailable         HTTP 503 (with ``Retry-After`` if ``retry_after`` is given)
auth                HTTP 401 (code ``invalid_api_key``)
bad_request         HTTP 400 (code ``invalid_request_error``)
model_not_found     HTTP 404 (code ``model_not_found``)
reset               the connection is closed with a TCP RST (SO_LINGER 0) and no response at all
timeout             nothing is sent for ``delay`` seconds (default 30; interrupted by ``stop()``), then
                    the normal reply is attempted: use a client ``timeout`` shorter than ``delay``
malformed_json      HTTP 200, ``application/json``, body cut in the middle of the JSON
truncated           HTTP 200, ``finish_reason: "length"``, the reply cut to ``keep`` characters
                    (default: half of it)
schema_violation    HTTP 200, a well-formed completion whose content is ``content`` (default: prose that is
                    neither ChatAdapter fields nor JSON), whatever format the caller asked for
=================== =====================================================================================

A fault fires on: every request (no trigger given), the next ``times`` requests, requests whose prompt
matches ``pattern`` (combine with ``times`` to limit), or a fraction ``probability`` of requests drawn from a
``random.Random(seed)`` (one draw per request the fault is otherwise eligible for, in arrival order).
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Reply = str | Callable[[dict], str]

FAULT_KINDS = (
    "rate_limit",
    "server_error",
    "unavailable",
    "auth",
    "bad_request",
    "model_not_found",
    "reset",
    "timeout",
    "malformed_json",
    "truncated",
    "schema_violation",
)

# status, OpenAI error type, OpenAI error code, message
_HTTP_FAULTS: dict[str, tuple[int, str, str | None, str]] = {
    "rate_limit": (429, "requests", "rate_limit_exceeded", "Rate limit reached for test-model. Please try again."),
    "server_error": (500, "server_error", None, "The server had an error while processing your request."),
    "unavailable": (503, "server_error", "service_unavailable", "The server is overloaded or not ready yet."),
    "auth": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "bad_request": (400, "invalid_request_error", "invalid_request_error", "Invalid request: bad parameter."),
    "model_not_found": (404, "invalid_request_error", "model_not_found", "The model does not exist."),
}

SCHEMA_VIOLATION_TEXT = (
    "Sure! I would be glad to help with that, but I will answer in my own words "
    "and without any of the requested structure."
)


def prompt_text(body: dict | None) -> str:
    """The text a rule or fault pattern is matched against: every message's text, joined by newlines."""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
            )
    if not parts and isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
    return "\n".join(parts)


def count_words(text: str) -> int:
    """The default deterministic token count: whitespace-separated words."""
    return len(text.split())


def count_chars4(text: str) -> int:
    """Four characters a token (rounded up), roughly what providers count for English text."""
    return -(-len(text) // 4)


@dataclass
class Rule:
    pattern: re.Pattern[str]
    reply: Reply
    latency: float | None = None
    usage: tuple[int, int] | None = None
    hits: int = 0


@dataclass
class Fault:
    kind: str
    times: int | None = None
    pattern: re.Pattern[str] | None = None
    probability: float | None = None
    seed: int = 0
    retry_after: float | str | None = None
    delay: float = 30.0
    keep: int | None = None
    content: str | None = None
    message: str | None = None
    fired: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def eligible(self, prompt: str) -> bool:
        """Called under the server lock, once per request, in arrival order."""
        if self.exhausted:
            return False
        if self.pattern is not None and not self.pattern.search(prompt):
            return False
        return self.probability is None or self._rng.random() < self.probability


@dataclass
class Call:
    """One request received: logged when it arrives, completed when its answer is sent (or abandoned)."""

    index: int
    time: float  # time.time() when the request was read
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON (dict) or None; raw text if it was not JSON
    prompt: str
    served: str = ""  # "reply", "models", "not_found", or a fault kind
    status: int | None = None  # HTTP status sent (None for reset/timeout without answer)
    reply: str | None = None  # message content served (after truncation/replacement)
    rule: str | None = None  # pattern of the rule that answered, "queue", or "default"
    stream: bool = False
    finished: float | None = None  # time.time() when the handler finished
    latency: float = 0.0  # seconds the server waited before answering (its scripted latency)
    prompt_tokens: int = 0  # tokens this server counted for the request (reported or not)
    completion_tokens: int = 0

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict]:
        return list(self.body.get("messages") or []) if isinstance(self.body, dict) else []


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() joins its own handler threads with a deadline
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: the default 5 overflows when many clients connect at once

    def __init__(self, owner: OpenAIServer, address: tuple[str, int]):
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.reset_sockets: set[int] = set()
        self.handler_threads: set[threading.Thread] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        thread = threading.Thread(
            target=self._run_handler, args=(request, client_address), daemon=True, name="openai-server-handler"
        )
        with self.sockets_lock:
            self.open_sockets.add(request)
            self.handler_threads.add(thread)
        thread.start()

    def _run_handler(self, request, client_address):
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(request)
                self.handler_threads.discard(threading.current_thread())

    def shutdown_request(self, request):
        with self.sockets_lock:
            reset = id(request) in self.reset_sockets
            self.reset_sockets.discard(id(request))
        if reset:
            # No shutdown(SHUT_WR): that would send a FIN first. close() with SO_LINGER 0 sends an RST.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # Clients that went away (timeouts, resets, stop()) are expected here; stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    # Head and body go out as two writes; without TCP_NODELAY the second waits for the client's
    # delayed ACK, adding ~40 ms to every call on a reused connection.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 60  # an idle keep-alive connection ends its thread after this long (stop() ends it at once)

    def log_message(self, format, *args):
        pass

    # -- plumbing -----------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length)) if int(length) > 0 else b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _send(self, status: int, payload: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, val in (headers or {}).items():
            self.send_header(key, val)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    # -- endpoints ----------------------------------------------------------------------------------------
    def do_GET(self):
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        call = owner._log(self, None, "")
        if path in ("/v1/models", "/models"):
            owner._finish(call, served="models", status=200)
            self._send_json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "rlmpipe-tests"} for name in owner.models
            ]})
        else:
            owner._finish(call, served="not_found", status=404)
            self._send_json(404, _error_body(f"Unknown path {self.path}", "invalid_request_error", "not_found"))

    def do_POST(self):
        owner = self.server.owner
        raw = self._read_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if path not in ("/v1/chat/completions", "/chat/completions"):
            call = owner._log(self, body, prompt_text(body))
            owner._finish(call, served="not_found", status=404)
            self._send_json(404, _error_body(f"Unknown path {self.path}", "invalid_request_error", "not_found"))
            return
        if not isinstance(body, dict):
            call = owner._log(self, body, "")
            owner._finish(call, served="not_json", status=400)
            self._send_json(400, _error_body("We could not parse the JSON body of your request.",
                                             "invalid_request_error", None))
            return
        owner._serve_chat(self, body)


def _error_body(message: str, type_: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class OpenAIServer:
    """A scriptable OpenAI-compatible server on 127.0.0.1 at an ephemeral port. Thread-safe."""

    def __init__(self, *, default_reply: Reply = "OK", latency: float = 0.0, models: tuple[str, ...] = ("test-model",),
                 host: str = "127.0.0.1"):
        self.host = host
        self.models = tuple(models)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._rules: list[Rule] = []
        self._queue: deque[Reply] = deque()
        self._faults: list[Fault] = []
        self._calls: list[Call] = []
        self._default: Reply = default_reply
        self._latency = float(latency)
        self._usage: tuple[int | None, int | None] = (None, None)
        self._count = "words"
        self._omit_usage = False
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> OpenAIServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer(self, (self.host, 0))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="openai-server")
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> list[threading.Thread]:
        """Stop serving, wake sleeping handlers, close open connections, and join every thread (bounded).

        Returns the server's threads still alive after ``timeout`` (an empty list when all ended).
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return []
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with httpd.sockets_lock:
            sockets = list(httpd.open_sockets)
            handlers = list(httpd.handler_threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        workers = [w for w in [thread, *handlers] if w is not None]
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._httpd = None
        self._thread = None
        return [w for w in workers if w.is_alive()]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the ``api_base`` an OpenAI client wants."""
        return f"{self.url}/v1"

    def running_threads(self) -> list[threading.Thread]:
        """Handler threads still alive (for leak checks)."""
        if self._httpd is None:
            return []
        with self._httpd.sockets_lock:
            return [t for t in self._httpd.handler_threads if t.is_alive()]

    # -- scripting ----------------------------------------------------------------------------------------
    def reply(self, pattern: str, reply: Reply, *, latency: float | None = None,
              usage: tuple[int, int] | None = None, flags: int = 0) -> Rule:
        """Add a rule: requests whose prompt matches ``pattern`` (re.search) get ``reply``.

        ``reply`` is a string or ``callable(request_json) -> str``. ``latency`` (seconds) replaces the
        server-wide latency for this rule; ``usage=(prompt_tokens, completion_tokens)`` fixes the numbers.
        """
        rule = Rule(re.compile(pattern, flags), reply, latency, usage)
        with self._lock:
            self._rules.append(rule)
        return rule

    def set_default(self, reply: Reply) -> None:
        with self._lock:
            self._default = reply

    def queue_replies(self, *replies: Reply) -> None:
        """The next ``len(replies)`` chat requests get these replies, in order, before any rule."""
        with self._lock:
            self._queue.extend(replies)

    def set_latency(self, seconds: float) -> None:
        """Delay before every chat answer (rules may override)."""
        with self._lock:
            self._latency = float(seconds)

    def set_usage(self, prompt_tokens: int | None = None, completion_tokens: int | None = None, *,
                  count: str | None = None, omit: bool | None = None) -> None:
        """Fix the usage numbers reported; ``None`` means the default count. ``count``: how the default
        counts tokens, ``"words"`` (whitespace-split words, the default) or ``"chars/4"`` (4 characters a
        token, as providers roughly do for English). ``omit=True``: answer without a ``usage`` object at all,
        as some OpenAI-compatible servers do."""
        with self._lock:
            self._usage = (prompt_tokens, completion_tokens)
            if count is not None:
                if count not in ("words", "chars/4"):
                    raise ValueError("count must be 'words' or 'chars/4'")
                self._count = count
            if omit is not None:
                self._omit_usage = omit

    def fail(self, kind: str, *, times: int | None = None, pattern: str | None = None,
             probability: float | None = None, seed: int = 0, retry_after: float | str | None = None,
             delay: float = 30.0, keep: int | None = None, content: str | None = None,
             message: str | None = None) -> Fault:
        """Arm a fault (see the module docstring). Returns it; ``fault.fired`` counts its firings."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose one of {FAULT_KINDS}")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if kind == "rate_limit" and retry_after is None:
            retry_after = 1
        fault = Fault(kind, times, re.compile(pattern) if pattern is not None else None, probability, seed,
                      retry_after, delay, keep, content, message)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget rules, queue, faults, latency, usage and the request log (the default reply stays)."""
        with self._lock:
            self._rules.clear()
            self._queue.clear()
            self._faults.clear()
            self._calls.clear()
            self._latency = 0.0
            self._usage = (None, None)
            self._count = "words"
            self._omit_usage = False

    # -- request log --------------------------------------------------------------------------------------
    @property
    def calls(self) -> list[Call]:
        """Every request received so far (all paths), oldest first (a snapshot)."""
        with self._lock:
            return list(self._calls)

    @property
    def chat_calls(self) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if c.path.rstrip("/").endswith("/chat/completions")]

    def count(self, pattern: str | None = None, *, served: str | None = None) -> int:
        """Chat-completion requests whose prompt matches ``pattern`` (all if None) and, if given, ``served``."""
        regex = re.compile(pattern) if pattern is not None else None
        return sum(
            1 for c in self.chat_calls
            if (regex is None or regex.search(c.prompt)) and (served is None or c.served == served)
        )

    def wait_for_calls(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` chat-completion requests have been received."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len([c for c in self._calls if c.path.rstrip("/").endswith("/chat/completions")]) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # -- internals ----------------------------------------------------------------------------------------
    def _log(self, handler: BaseHTTPRequestHandler, body: Any, prompt: str) -> Call:
        with self._changed:
            call = Call(index=len(self._calls), time=time.time(), method=handler.command, path=handler.path,
                        headers={k.lower(): v for k, v in handler.headers.items()}, body=body, prompt=prompt,
                        stream=bool(isinstance(body, dict) and body.get("stream")))
            self._calls.append(call)
            self._changed.notify_all()
            return call

    def _finish(self, call: Call, **fields: Any) -> None:
        with self._lock:
            for key, val in fields.items():
                setattr(call, key, val)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stop() is called; returns False if interrupted."""
        return not self._stopping.wait(seconds) if seconds > 0 else not self._stopping.is_set()

    def _choose(self, body: dict, prompt: str) -> tuple[Fault | None, Reply | None, str | None, float,
                                                      tuple[int | None, int | None]]:
        """Under the lock: the fault (if any), the reply source, its label, the latency and the usage."""
        fault = next((f for f in self._faults if f.eligible(prompt)), None)
        if fault is not None:
            fault.fired += 1
        latency, usage = self._latency, self._usage
        if fault is not None and fault.kind not in ("truncated", "schema_violation", "timeout"):
            return fault, None, None, latency, usage
        if self._queue:
            return fault, self._queue.popleft(), "queue", latency, usage
        for rule in self._rules:
            if rule.pattern.search(prompt):
                rule.hits += 1
                return (fault, rule.reply, rule.pattern.pattern,
                        rule.latency if rule.latency is not None else latency, rule.usage or usage)
        return fault, self._default, "default", latency, usage

    def _serve_chat(self, handler: _Handler, body: dict) -> None:
        prompt = prompt_text(body)
        call = self._log(handler, body, prompt)
        with self._lock:
            fault, source, label, latency, usage = self._choose(body, prompt)
            call.latency = latency
        stream = bool(body.get("stream"))
        kind = fault.kind if fault is not None else None

        if kind == "reset":
            self._finish(call, served="reset", finished=time.time())
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with handler.server.sockets_lock:
                handler.server.reset_sockets.add(id(handler.connection))
            handler.close_connection = True
            return
        if kind == "timeout":
            self._finish(call, served="timeout")
            if not self._sleep(fault.delay):
                self._finish(call, finished=time.time())
                handler.close_connection = True
                return
        elif not self._sleep(latency):
            self._finish(call, served="stopped", finished=time.time())
            handler.close_connection = True
            return

        if kind in _HTTP_FAULTS:
            status, type_, code, text = _HTTP_FAULTS[kind]
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            if kind == "model_not_found":
                text = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            self._finish(call, served=kind, status=status, finished=time.time())
            handler._send_json(status, _error_body(fault.message or text, type_, code), headers=headers)
            return

        try:
            text = source(body) if callable(source) else str(source)
        except Exception as exc:  # noqa: BLE001 - a broken scripted callable answers 500 and says why
            self._finish(call, served="reply_error", status=500, reply=repr(exc), rule=label, finished=time.time())
            handler._send_json(500, _error_body(f"scripted reply raised {exc!r}", "server_error", None))
            return
        finish_reason = "stop"
        served = "reply" if kind is None else kind
        if kind == "truncated":
            keep = fault.keep if fault.keep is not None else len(text) // 2
            text, finish_reason = text[:keep], "length"
        elif kind == "schema_violation":
            text = fault.content if fault.content is not None else SCHEMA_VIOLATION_TEXT
        p_fixed, c_fixed = usage
        counter = count_words if self._count == "words" else count_chars4
        prompt_tokens = p_fixed if p_fixed is not None else counter(prompt)
        completion_tokens = c_fixed if c_fixed is not None else counter(text)
        usage_obj = None if self._omit_usage else {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
        self._finish(call, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        model = body.get("model") or self.models[0]
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        n = body.get("n") or 1
        self._finish(call, served=served, status=200, reply=text, rule=label)

        try:
            if kind == "malformed_json":
                payload = json.dumps(_completion(completion_id, created, model, text, finish_reason, usage_obj, n))
                handler.close_connection = True
                handler._send(200, payload[: max(1, len(payload) // 2)].encode())
            elif stream:
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                handler.close_connection = True
                handler.send_response(200)
                handler.send_header("Content-Type", "text/event-stream")
                handler.send_header("Cache-Control", "no-cache")
                handler.send_header("Connection", "close")
                handler.end_headers()
                for chunk in _stream_chunks(completion_id, created, model, text, finish_reason,
                                            usage_obj if include_usage else None):
                    handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    handler.wfile.flush()
                handler.wfile.write(b"data: [DONE]\n\n")
                handler.wfile.flush()
            else:
                handler._send_json(200, _completion(completion_id, created, model, text, finish_reason, usage_obj, n))
        except OSError:
            handler.close_connection = True  # the client went away (e.g. it timed out first)
        finally:
            self._finish(call, finished=time.time())


def _completion(completion_id: str, created: int, model: str, text: str, finish_reason: str, usage: dict,
                n: int = 1) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
             "finish_reason": finish_reason}
            for i in range(max(1, int(n)))
        ],
        **({"usage": usage} if usage is not None else {}),
    }


def _stream_chunks(completion_id: str, created: int, model: str, text: str, finish_reason: str,
                   usage: dict | None) -> Iterator[dict]:
    def chunk(delta: dict, reason: str | None) -> dict:
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in re.findall(r"\S+\s*|\s+", text):
        yield chunk({"content": piece}, None)
    yield chunk({}, finish_reason)
    if usage is not None:
        yield {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
               "system_fingerprint": None, "choices": [], "usage": usage}


@contextmanager
def running_server(**kwargs: Any) -> Iterator[OpenAIServer]:
    """``with running_server() as server:`` — started, and always stopped."""
    server = OpenAIServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
