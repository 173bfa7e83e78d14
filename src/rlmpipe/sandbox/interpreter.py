"""DenoSandbox: DSPy's ``CodeInterpreter`` protocol on Pyodide under Deno, offline, with hard limits.

    from rlmpipe.sandbox import DenoSandbox, sandbox_factory
    with DenoSandbox(tools={"lookup": lookup}, timeout=30) as sb:
        sb.execute("x = 41")
        sb.execute("print(x + 1)")                           # '42\\n'
    rlm = dspy.RLM("context, query -> answer", interpreter_factory=sandbox_factory(timeout=30))

What it guarantees (tests/sandbox/test_security.py checks each):

- Deno runs with read access to Pyodide's own package folder and nothing else: no network, no writes, no
  environment, no subprocesses, no FFI, no system info, no remote imports, no prompts; and with an
  environment of its own (no host variable reaches it). Once Pyodide is loaded the Deno namespace (and
  ``Worker``) are deleted from the JS global object, so no JS that sandboxed code evaluates can reach them.
- The protocol cannot be forged: every line the runner writes carries a key the host gave it over stdin,
  and a line without it (sandboxed code that found the process's stdout, through Node's ``process``)
  ends the process before anything it says is done. The host buffers at most one bounded message
  (``max_message_mb``) and 1 MB of stray output, whatever the sandbox writes.
- Limits per execution: wall-clock ``timeout`` (time spent inside host tools such as ``llm_query`` is not
  counted), memory (RLIMIT_DATA on the process, a cap on Pyodide's WebAssembly heap below it, and V8's old
  space), captured output (``max_output_bytes`` each of stdout and stderr, cut with a marker).
- A timed-out, crashed or misbehaving process is killed and reaped; the execution raises a
  ``CodeExecutionError`` subclass (so ``dspy.RLM`` shows it to the model) saying that the state is lost, and
  the next execution starts a fresh process (up to ``max_restarts`` times per session).
- The process never outlives its owner: ``shutdown()``, the context manager, a ``weakref.finalize`` safety
  net (garbage collection and interpreter exit), and PR_SET_PDEATHSIG (host killed) all end it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import keyword
import logging
import secrets
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Self

from dspy.primitives.code_interpreter import (
    SIMPLE_TYPES,
    CodeExecutionError,
    CodeInterpreterError,
    FinalOutput,
)
from dspy.primitives.facade import SHIM_SETUP

from rlmpipe.sandbox import deno as _deno
from rlmpipe.sandbox._process import DenoProcess, ProcessDied, ProcessTimeout, ProtocolViolation, reap

logger = logging.getLogger(__name__)

BOOTSTRAP_SOURCE = _deno.BOOTSTRAP_PATH.read_text(encoding="utf-8")
_MB = 1024 * 1024
_SIMPLE_TYPE_NAMES = {t.__name__ for t in SIMPLE_TYPES}


class SandboxTimeoutError(CodeExecutionError):
    """An execution ran past its time limit; the process was killed and its state lost."""


class SandboxCrashedError(CodeExecutionError):
    """The sandbox process died or broke the protocol during an execution; its state was lost."""


class SandboxMemoryError(SandboxCrashedError):
    """The sandbox process ran out of its memory allowance and died; its state was lost."""


_STATE_LOST = (
    "The sandbox process was killed and a fresh one starts with the next execution: ALL interpreter state "
    "is lost (variables, functions and imports from earlier steps). Input variables are provided again; "
    "recompute anything else you need."
)


def _jsonable(value: Any) -> Any:
    """Host values to JSON-compatible ones, as DSPy's PythonInterpreter does (sets/tuples -> lists, models
    -> dicts, anything pydantic can serialize)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {k if isinstance(k, (str, int, float, bool)) or k is None else str(k): _jsonable(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [_jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    from pydantic import BaseModel
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="json"))
    try:
        return _jsonable(to_jsonable_python(value))
    except PydanticSerializationError:
        raise CodeInterpreterError(f"Unsupported variable type: {type(value).__name__}") from None


def _has_non_str_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return any(not isinstance(k, str) or _has_non_str_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_non_str_keys(v) for v in value)
    return False


def _tool_parameters(fn: Callable) -> list[dict]:
    """The tool's signature as the sandbox wrapper rebuilds it (names, kinds, simple types, defaults)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [{"name": "kwargs", "kind": "var_keyword"}]
    params = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue  # tools are called with keyword arguments only
        kind = {inspect.Parameter.KEYWORD_ONLY: "keyword", inspect.Parameter.VAR_KEYWORD: "var_keyword"}.get(
            p.kind, "positional")
        entry: dict[str, Any] = {"name": p.name, "kind": kind}
        if p.annotation in SIMPLE_TYPES:
            entry["type"] = p.annotation.__name__
        elif isinstance(p.annotation, str) and p.annotation in _SIMPLE_TYPE_NAMES:  # `from __future__ import annotations`
            entry["type"] = p.annotation
        if p.default is not inspect.Parameter.empty and kind != "var_keyword":
            try:
                json.dumps(p.default, allow_nan=False)
                entry["default"] = p.default
            except (TypeError, ValueError):
                entry["default"] = None
        params.append(entry)
    return params


def _tool_doc(fn: Callable) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().split("\n\n")[0][:500]


class DenoSandbox:
    """A Pyodide (CPython 3.13 on WebAssembly) interpreter in a locked-down Deno process.

    Args:
        tools: host functions callable from sandboxed code by name (keyword arguments, JSON-compatible
            arguments and results). ``dspy.RLM`` adds ``llm_query``/``llm_query_batched`` and its facade
            tools to this dict itself.
        output_fields: ``[{"name": ..., "type": ...}]`` for a typed ``SUBMIT(...)``; ``dspy.RLM`` sets it.
        timeout: seconds of wall-clock time one ``execute()`` may take, not counting time spent in host tools.
        memory_limit_mb: hard limit on the process's data memory (RLIMIT_DATA): WebAssembly heap, V8 heap,
            ArrayBuffers. Past it allocations fail (Python: MemoryError); the host is never at risk.
        wasm_memory_limit_mb: cap on Pyodide's WebAssembly heap (Python objects); default
            ``memory_limit_mb - 512`` so Python runs out first and cleanly, leaving room for the JS side.
        v8_heap_mb: V8 old-space limit (``--max-old-space-size``).
        max_output_bytes: per execution, stdout and stderr are each kept up to this many bytes.
        start_timeout: seconds allowed for process start (Deno + Pyodide load, ~3-8 s).
        max_restarts: restarts after timeouts/crashes per session before the session is ended for good.
        deno_dir: Deno cache folder holding Pyodide (default :func:`rlmpipe.sandbox.deno.default_deno_dir`).
        fetch: fetch Pyodide from the npm registry on first start if it is not cached (``ensure_pyodide``).
    """

    execution_instructions = (
        "Python 3.13 runs in Pyodide (WebAssembly) in an offline sandbox: the standard library only (no numpy, "
        "pandas or pip), no access to the host's files, network, environment or processes. State persists "
        "across executions. Each execution has a time limit; if it is exceeded the sandbox restarts and all "
        "state is lost. Output beyond the per-execution cap is cut."
    )

    def __init__(
        self,
        tools: dict[str, Callable[..., Any]] | None = None,
        output_fields: list[dict] | None = None,
        *,
        timeout: float = 120.0,
        memory_limit_mb: int = 2048,
        wasm_memory_limit_mb: int | None = None,
        v8_heap_mb: int = 512,
        max_output_bytes: int = 1_000_000,
        max_message_mb: int = 64,
        start_timeout: float = 120.0,
        max_restarts: int = 5,
        deno_dir: str | os.PathLike | None = None,
        deno: str | None = None,
        fetch: bool = True,
    ) -> None:
        self.tools: dict[str, Callable[..., Any]] = dict(tools) if tools else {}
        self.output_fields = output_fields
        self.timeout = float(timeout)
        self.memory_limit_mb = int(memory_limit_mb) if memory_limit_mb else 0
        if wasm_memory_limit_mb is None:
            wasm_memory_limit_mb = max(256, self.memory_limit_mb - 512) if self.memory_limit_mb else 0
        self.wasm_memory_limit_mb = int(wasm_memory_limit_mb)
        self.v8_heap_mb = int(v8_heap_mb) if v8_heap_mb else 0
        self.max_output_bytes = int(max_output_bytes)
        self.max_message_bytes = int(max_message_mb) * _MB
        self.start_timeout = float(start_timeout)
        self.max_restarts = int(max_restarts)
        self.deno_dir = _deno.resolve_deno_dir(deno_dir)
        self._deno = deno
        self.fetch = fetch

        self._proc: DenoProcess | None = None
        self._key: str | None = None  # the running process's session key (set by "init")
        self._finalizer: weakref.finalize | None = None
        self._session_ended = False
        self._needs_restart = False
        self.restarts = 0
        self.pids: list[int] = []  # every process this sandbox started, in order
        self._registered: str | None = None  # the registration spec (JSON) the live process has
        self._tools_registered = False  # DSPy's PythonInterpreter flag; dspy.RLM resets it to force re-register
        self._sent_vars: dict[str, tuple[str, Any]] = {}  # name -> (kind, str value or serialized text)
        self._preamble: list[tuple[str, dict[str, Any]]] = []  # setup code replayed after a restart
        self._owner_thread: int | None = None
        self._in_tool = False
        self.last_stats: dict[str, float] = {}

    # -- protocol surface -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the process (Deno + Pyodide) if it is not running. Idempotent."""
        self._check_session_active()
        if self._proc is not None and self._proc.alive() and not self._needs_restart:
            return
        if self._proc is not None:
            self._discard_process()
        self._spawn()

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        if self._in_tool:
            raise CodeInterpreterError("DenoSandbox cannot execute recursively from one of its own tools.")
        self._check_session_active()
        self._check_thread()
        variables = dict(variables or {})
        for name in variables:
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                raise CodeInterpreterError(f"Invalid variable name: {name!r}")
            if name in self.tools or name == "SUBMIT" or name.startswith("_rlmpipe"):
                raise CodeInterpreterError(f"Variable name {name!r} clashes with a sandbox function")

        if self._proc is not None and not self._needs_restart and not self._proc.alive():
            died = self._proc.exit_status()
            raise self._fail(SandboxCrashedError,
                             f"The sandbox process exited between executions (exit code {died.returncode}).")
        restarted = self._needs_restart or self._proc is None
        self.start()
        if restarted and self._preamble:
            for setup_code, setup_vars in list(self._preamble):
                self._execute_once(setup_code, setup_vars)

        result = self._execute_once(code, variables)
        if code == SHIM_SETUP:
            self._preamble.append((code, variables))  # dspy's sandbox facade: reinstall it after a restart
        return result

    __call__ = execute

    def shutdown(self) -> None:
        """End the session: stop the process (gracefully, then SIGKILL) and reap it. Idempotent."""
        self._session_ended = True
        self._discard_process(graceful=True)
        self._owner_thread = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()

    # -- introspection ----------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def command(self) -> list[str]:
        """The exact Deno command line the sandbox runs."""
        return _deno.build_command(deno=self._deno_bin(), deno_dir=self.deno_dir, v8_heap_mb=self.v8_heap_mb,
                                   runner_config=self._runner_config())

    # -- internals: process lifecycle -------------------------------------------------------------------
    def _deno_bin(self) -> str:
        if self._deno is None:
            self._deno = _deno.find_deno()
        return self._deno

    def _runner_config(self) -> dict:
        return {"output_limit_bytes": self.max_output_bytes,
                "wasm_memory_limit_bytes": self.wasm_memory_limit_mb * _MB}

    def _check_session_active(self) -> None:
        if self._session_ended:
            raise CodeInterpreterError("DenoSandbox session has ended; create a new sandbox for a fresh session.")

    def _check_thread(self) -> None:
        current = threading.get_ident()
        if self._owner_thread is None:
            self._owner_thread = current
        elif self._owner_thread != current:
            raise RuntimeError("DenoSandbox is not thread-safe: use one instance per thread.")

    def _spawn(self) -> None:
        deno = self._deno_bin()
        version = _deno.deno_version(deno)
        if version is None or version < _deno.MIN_DENO_VERSION:
            raise CodeInterpreterError(f"Deno >= 2.0 required, found {version} at {deno}")
        if not _deno.pyodide_cached(self.deno_dir):
            if not self.fetch:
                raise _deno.PyodideNotCachedError(
                    f"Pyodide {_deno.PYODIDE_VERSION} is not cached in {self.deno_dir}; call "
                    "rlmpipe.sandbox.ensure_pyodide() once (fetches it from the npm registry).")
            _deno.ensure_pyodide(self.deno_dir, deno=deno)
        cmd = self.command()
        data_limit = self.memory_limit_mb * _MB if self.memory_limit_mb else None
        t0 = time.monotonic()
        try:
            proc = DenoProcess(cmd, _deno.deno_env(self.deno_dir), data_limit=data_limit,
                               max_line_bytes=self.max_message_bytes)
        except OSError as e:
            raise CodeInterpreterError(f"could not start Deno ({cmd[0]}): {e}") from e
        self._proc = proc
        self.pids.append(proc.pid)
        self._finalizer = weakref.finalize(self, reap, proc.proc)
        self._needs_restart = False
        self._registered = None
        self._sent_vars.clear()
        deadline = t0 + self.start_timeout
        try:
            ready = proc.read_message(deadline)
            if ready.get("method") == "fatal":
                raise CodeInterpreterError(f"sandbox failed to start: {ready.get('params', {}).get('message')}")
            if ready.get("method") != "ready":
                raise CodeInterpreterError(f"sandbox sent {ready!r} instead of 'ready'")
            self.runtime_info = ready.get("params", {})
            self._key = secrets.token_hex(16)  # every message of this process must carry it (see runner.js)
            self._request("init", {"bootstrap": BOOTSTRAP_SOURCE, "key": self._key,
                                   "config": {"traceback_limit_chars": 8000}}, deadline)
        except (ProcessTimeout, ProcessDied, ProtocolViolation, CodeInterpreterError) as e:
            self._discard_process()
            self._session_ended = True
            detail = {ProcessTimeout: f"no answer within {self.start_timeout:g}s"}.get(type(e), str(e))
            if isinstance(e, ProcessDied):
                detail = f"Deno exited ({e.returncode}): {e.stderr_tail.strip()[-2000:]}"
            raise CodeInterpreterError(f"DenoSandbox failed to start: {detail}") from e
        self.last_stats = {"start_s": time.monotonic() - t0}

    def _discard_process(self, graceful: bool = False) -> None:
        """End the process (``graceful``: ask it to exit first, then kill it) and detach its finalizer."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if graceful:
                proc.shutdown()
            else:
                proc.close()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _lose_process(self) -> None:
        """Kill the process after a failure; the next execution restarts (within ``max_restarts``)."""
        self._discard_process()
        self._needs_restart = True
        self.restarts += 1
        if self.restarts > self.max_restarts:
            self._session_ended = True

    def _fail(self, exc: type[CodeExecutionError], message: str) -> CodeInterpreterError:
        self._lose_process()
        if self._session_ended:
            return CodeInterpreterError(
                f"{message} The sandbox has been restarted {self.max_restarts} times in this session already, "
                "so the session is over.")
        return exc(f"{message} {_STATE_LOST}")

    # -- internals: messages ----------------------------------------------------------------------------
    def _request(self, method: str, params: dict, deadline: float, payload: bytes | None = None) -> Any:
        assert self._proc is not None
        rid = f"h{time.monotonic_ns()}"
        header = json.dumps({"id": rid, "method": method, "params": params}, ensure_ascii=False)
        parts = [header.encode("utf-8", "surrogatepass") + b"\n"]
        if payload is not None:
            parts.append(payload)
        self._proc.send(*parts, deadline=deadline)
        message = self._read(deadline)
        if message.get("id") != rid:
            raise ProtocolViolation(f"expected the answer to {method!r}, got {str(message)[:300]}")
        if "error" in message:
            err = message["error"] or {}
            raise CodeInterpreterError(f"sandbox {method} failed: {err.get('type')}: {err.get('message')}")
        return message.get("result")

    def _read(self, deadline: float) -> dict:
        """The next protocol message, which must carry this process's key: a line without it did not
        come from the runner (sandboxed code found a way to stdout) and ends the process unheard."""
        message = self._proc.read_message(deadline)
        if self._key is not None and message.get("key") != self._key:
            raise ProtocolViolation(f"a message without the session key (forged by sandboxed code?): "
                                    f"{str(message)[:200]}")
        return message

    def _registration(self) -> str:
        tools = []
        for name, fn in self.tools.items():
            if not name.isidentifier() or keyword.iskeyword(name):
                raise CodeInterpreterError(f"Invalid tool name: {name!r}")
            tools.append({"name": name, "parameters": _tool_parameters(fn), "doc": _tool_doc(fn)})
        outputs = [{"name": f["name"], **({"type": f["type"]} if f.get("type") else {})}
                   for f in (self.output_fields or [])]
        return json.dumps({"tools": tools, "outputs": outputs}, sort_keys=True)

    def _sync_registration(self, deadline: float) -> None:
        spec = self._registration()
        if spec != self._registered or not self._tools_registered:
            self._request("register", json.loads(spec), deadline)
            self._registered = spec
            self._tools_registered = True

    def _sync_variables(self, variables: dict[str, Any], deadline: float) -> int:
        """Send each variable the process does not have yet (or whose value changed). Returns bytes sent."""
        sent = 0
        for name, value in variables.items():
            if isinstance(value, str):
                kind, keep = "str", value
            else:
                converted = _jsonable(value)
                if _has_non_str_keys(converted):
                    kind, keep = "literal", repr(converted)
                else:
                    kind, keep = "json", json.dumps(converted, ensure_ascii=False)
            # tuples compare their items by identity first: the same 50 MB string is not read again
            if self._sent_vars.get(name) == (kind, keep):
                continue
            payload = keep.encode("utf-8", "surrogatepass")
            self._request("set_var", {"name": name, "kind": kind, "nbytes": len(payload)}, deadline, payload)
            self._sent_vars[name] = (kind, keep)
            sent += len(payload)
        return sent

    def _execute_once(self, code: str, variables: dict[str, Any]) -> Any:
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        tool_time = 0.0
        try:
            # set-up messages get their own allowance: a 50 MB variable must not eat the code's time
            setup_deadline = t0 + max(self.timeout, 60.0)
            self._sync_registration(setup_deadline)
            nbytes = self._sync_variables(variables, setup_deadline)
            t1 = time.monotonic()
            deadline = t1 + self.timeout
            rid = f"x{time.monotonic_ns()}"
            self._proc.send_json({"id": rid, "method": "execute",
                                  "params": {"code": code, "bind": list(variables)}}, deadline)
            while True:
                message = self._read(deadline)
                if message.get("method") == "tool_call":
                    started = time.monotonic()
                    self._answer_tool_call(message, deadline + 3600.0)
                    spent = time.monotonic() - started
                    tool_time += spent
                    deadline += spent
                    continue
                if message.get("id") != rid or "result" not in message:
                    raise ProtocolViolation(f"unexpected message during execution: {str(message)[:300]}")
                break
        except ProcessTimeout:
            raise self._fail(SandboxTimeoutError,
                             f"TimeoutError: the execution did not finish within {self.timeout:g} seconds "
                             "(time in llm_query and other host tools not counted).") from None
        except ProcessDied as e:
            raise self._crash_error(e) from None
        except ProtocolViolation as e:
            raise self._fail(SandboxCrashedError, f"The sandbox broke the host protocol ({e}).") from None
        except BaseException:
            # a CodeInterpreterError, or e.g. KeyboardInterrupt inside a host tool: the conversation is
            # cut mid-way, so is the process
            self._lose_process()
            raise
        self.last_stats = {"inject_s": t1 - t0, "exec_s": time.monotonic() - t1 - tool_time,
                           "tool_s": tool_time, "bytes_sent": float(nbytes)}
        return self._result(message)

    def _crash_error(self, died: ProcessDied) -> CodeInterpreterError:
        lines = [ln.strip(" #") for ln in died.stderr_tail.splitlines() if ln.strip(" #")]
        oom_lines = [ln for ln in lines if any(k in ln.lower() for k in ("out of memory", "heap limit",
                                                                       "allocation failed"))]
        if oom_lines:
            return self._fail(SandboxMemoryError,
                              f"The sandbox process ran out of memory and died ({oom_lines[0][:300]}).")
        errors = [ln for ln in lines if ln.lower().startswith(("error", "uncaught", "panic", "thread"))]
        detail = (errors or lines or ["no message"])[-1][:300]
        return self._fail(SandboxCrashedError,
                          f"The sandbox process died during the execution (exit code {died.returncode}: {detail}).")

    def _answer_tool_call(self, message: dict, deadline: float) -> None:
        tid = message.get("id")
        params = message.get("params") or {}
        name, kwargs = params.get("name"), params.get("kwargs") or {}
        try:
            if name not in self.tools:
                raise NameError(f"no host tool named {name!r}")
            if not isinstance(kwargs, dict):
                raise TypeError("tool arguments must be a JSON object")
            self._in_tool = True
            try:
                result = self.tools[name](**kwargs)
                if inspect.isawaitable(result):
                    result = _run_awaitable(result)
            finally:
                self._in_tool = False
            try:
                line = json.dumps({"id": tid, "result": _jsonable(result)}, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError, CodeInterpreterError):
                line = json.dumps({"id": tid, "result": str(result)}, ensure_ascii=False)
        except Exception as e:  # noqa: BLE001 - reported to sandboxed code, as DSPy's interpreter does
            line = json.dumps({"id": tid, "error": {"type": type(e).__name__, "message": str(e)}},
                              ensure_ascii=False)
        self._proc.send(line.encode("utf-8", "surrogatepass") + b"\n", deadline=deadline)

    def _result(self, message: dict) -> Any:
        result = message["result"]
        streams = message.get("streams") or {}
        output = self._format_streams(streams)
        status = result.get("status")
        if status == "final":
            return FinalOutput(result.get("final"))
        if status == "ok":
            return output or None
        if status == "syntax_error":
            raise SyntaxError(result.get("traceback") or result.get("message") or "invalid syntax")
        text = (result.get("traceback") or f"{result.get('type')}: {result.get('message')}").rstrip()
        if output:
            text = f"{text}\n\nOutput printed before the error:\n{output}"
        raise CodeExecutionError(text)

    def _format_streams(self, streams: dict) -> str:
        out = streams.get("stdout") or ""
        if streams.get("stdout_dropped"):
            out += (f"\n[... output truncated: {int(streams['stdout_dropped']):,} more bytes of stdout not shown; "
                    f"the sandbox keeps the first {self.max_output_bytes:,} bytes per execution]\n")
        err = streams.get("stderr") or ""
        if streams.get("stderr_dropped"):
            err += (f"\n[... stderr truncated: {int(streams['stderr_dropped']):,} more bytes not shown; "
                    f"the sandbox keeps the first {self.max_output_bytes:,} bytes per execution]\n")
        if err:
            out = f"{out}{'' if not out or out.endswith(chr(10)) else chr(10)}[stderr]\n{err}"
        return out


def _run_awaitable(awaitable: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    # called from inside a running loop (sync execute() within async code): run it on a helper thread
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _await(awaitable)).result()


async def _await(awaitable: Any) -> Any:
    return await awaitable


class SandboxFactory:
    """A zero-argument factory for ``dspy.RLM(interpreter_factory=...)`` / ``dspy.configure(...)`` that makes
    a ``DenoSandbox`` with fixed settings. Its ``execution_instructions`` (which RLM puts in the prompt)
    state the limits it enforces."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        probe = DenoSandbox(**{k: v for k, v in kwargs.items() if k not in ("tools", "output_fields")})
        self.execution_instructions = (
            DenoSandbox.execution_instructions
            + f" Limits per execution: {probe.timeout:g} s, about {probe.wasm_memory_limit_mb} MB of Python "
            f"memory, {probe.max_output_bytes:,} bytes of printed output."
        )

    def __call__(self) -> DenoSandbox:
        return DenoSandbox(**self.kwargs)

    def __repr__(self) -> str:
        return f"SandboxFactory({self.kwargs!r})"


def sandbox_factory(**kwargs: Any) -> SandboxFactory:
    """``dspy.RLM(sig, interpreter_factory=sandbox_factory(timeout=30))``."""
    return SandboxFactory(**kwargs)
