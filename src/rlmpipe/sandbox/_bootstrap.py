"""Python side of the rlmpipe sandbox protocol. Runs INSIDE Pyodide, never on the host.

The host (rlmpipe.sandbox.DenoSandbox) sends this file's source with the "init" message; runner.js executes
it as a fresh module ``_rlmpipe_sandbox`` (not in the user namespace) and calls:

- ``install(config_json, tool_bridge)``: keep the JS tool bridge (a synchronous JS function).
- ``register(spec_json)``: (re)define the host tools and ``SUBMIT`` in the user namespace (``__main__``).
- ``set_var(name, kind, data)``: store an input variable sent once per session (``data`` is a Uint8Array).
- ``execute(code, bind_json)``: bind the named variables, run ``code``, return a JSON result string.

Sandboxed code shares this interpreter, so nothing here is a security boundary (Deno's permissions are).
"""

import ast
import asyncio
import contextlib
import inspect
import json
import sys
import traceback

_MAIN = sys.modules["__main__"]
_G = _MAIN.__dict__
_dumps = json.dumps
_loads = json.loads

_bridge = None
_config = {}
_vars = {}  # name -> (kind, value): str value for "str", JSON/literal text otherwise
_registered = set()  # names this module put into the user namespace (tools, SUBMIT)
_FILENAME = "<sandbox>"


class _FinalOutput(BaseException):
    """Control flow for SUBMIT(...): not an Exception, so `except Exception` in user code lets it through."""


def _no_processes(*_args, **_kwargs):
    raise OSError(38, "the rlmpipe sandbox cannot run processes")


def install(config_json, tool_bridge):
    global _bridge, _config
    _bridge = tool_bridge
    _config = _loads(config_json)
    _G.setdefault("__name__", "__main__")
    # Deno refuses to start processes anyway; Emscripten's system() however wedges the interpreter (the
    # execution never finishes), so answer with a plain error instead.
    import os
    import posix

    for module in (os, posix):
        for name in ("system", "popen", "fork", "forkpty", "execv", "execve", "spawnv", "spawnve", "posix_spawn",
                     "posix_spawnp"):
            if hasattr(module, name):
                setattr(module, name, _no_processes)
    # The same random numbers in every process (with the hash seed the runner sets): model-written code run
    # again against the same answers (a step replayed after a crash) does what it did the first time.
    import random

    random.seed(0)


# -- tools and SUBMIT -------------------------------------------------------------------------------------
_KINDS = {
    "positional": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "keyword": inspect.Parameter.KEYWORD_ONLY,
    "var_keyword": inspect.Parameter.VAR_KEYWORD,
}
_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict, "NoneType": type(None)}


def _signature(params):
    out = []
    for p in params:
        kind = _KINDS[p.get("kind", "positional")]
        default = p.get("default", inspect.Parameter.empty)
        annotation = _TYPES.get(p.get("type"), inspect.Parameter.empty)
        out.append(inspect.Parameter(p["name"], kind, default=default, annotation=annotation))
    return inspect.Signature(out)


class ToolError(RuntimeError):
    """A host tool raised; the message names the host-side exception type."""


ToolError.__module__ = "builtins"  # tracebacks show "ToolError: ...", not the bootstrap's module name


def _call_host(name, kwargs):
    try:
        payload = _dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"arguments to {name}() must be JSON-serializable: {e}") from None
    response = _loads(_bridge(name, payload))
    if "error" in response:
        err = response["error"] or {}
        raise ToolError(f"{name}() failed on the host: {err.get('type', 'Error')}: {err.get('message', '')}")
    return response.get("result")


def _make_tool(name, params, doc):
    sig = _signature(params)
    var_kw = {p["name"] for p in params if p.get("kind") == "var_keyword"}

    def tool(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        sent = {}
        for key, value in bound.arguments.items():
            if key in var_kw:
                sent.update(value)
            else:
                sent[key] = value
        return _call_host(name, sent)

    tool.__name__ = tool.__qualname__ = name
    tool.__signature__ = sig
    tool.__doc__ = doc or f"Host tool {name}."
    tool.__module__ = "__main__"
    return tool


def _make_submit(outputs):
    if outputs:
        sig = inspect.Signature([
            inspect.Parameter(o["name"], inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              annotation=_TYPES.get(o.get("type"), inspect.Parameter.empty))
            for o in outputs
        ])
    else:
        sig = inspect.Signature([inspect.Parameter("output", inspect.Parameter.POSITIONAL_OR_KEYWORD)])

    def SUBMIT(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        raise _FinalOutput(dict(bound.arguments))

    SUBMIT.__signature__ = sig
    SUBMIT.__doc__ = "Submit the final output(s) and end the run: SUBMIT(" + ", ".join(sig.parameters) + ")"
    return SUBMIT


def register(spec_json):
    spec = _loads(spec_json)
    for name in _registered:
        _G.pop(name, None)
    _registered.clear()
    names = []
    for tool in spec.get("tools", []):
        _G[tool["name"]] = _make_tool(tool["name"], tool.get("parameters", []), tool.get("doc"))
        _registered.add(tool["name"])
        names.append(tool["name"])
    _G["SUBMIT"] = _make_submit(spec.get("outputs") or [])
    _registered.add("SUBMIT")
    return _dumps({"tools": names, "outputs": [o["name"] for o in spec.get("outputs") or []]})


# -- variables --------------------------------------------------------------------------------------------
def set_var(name, kind, data):
    text = data.to_bytes().decode("utf-8", "surrogatepass")
    _vars[name] = (kind, text)


def _value(name):
    kind, text = _vars[name]
    if kind == "str":
        return text  # immutable: the stored object itself, no copy per execution
    if kind == "json":
        return _loads(text)  # a fresh copy per execution, as if assigned from a literal
    return ast.literal_eval(text)


# -- execution --------------------------------------------------------------------------------------------
def flush_streams():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # user code may have replaced the streams with anything
            stream.flush()


def _user_traceback(exc):
    """The traceback from the first frame of sandboxed code on (the executor's frames are noise)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != _FILENAME:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    text = "".join(lines)
    limit = int(_config.get("traceback_limit_chars", 8000))
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


async def _run(code, bind):
    for name in bind:
        _G[name] = _value(name)
    try:
        from pyodide.code import CodeRunner

        runner = CodeRunner(code, return_mode="last_expr", quiet_trailing_semicolon=True, filename=_FILENAME,
                            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        runner.compile()
    except SyntaxError as e:
        return {"status": "syntax_error", "type": type(e).__name__, "message": str(e),
                "traceback": "".join(traceback.format_exception_only(type(e), e))}
    try:
        value = await runner.run_async(_G, _G)
        if value is not None:
            print(repr(value))
    except _FinalOutput as final:
        payload = final.args[0]
        try:
            text = _dumps(payload)
        except (TypeError, ValueError):
            text = _dumps(payload, default=_jsonable)
        return {"status": "final", "final_json": text}
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: the session goes on
        return {"status": "error", "type": type(e).__name__, "message": str(e), "traceback": _user_traceback(e)}
    finally:
        flush_streams()
    return {"status": "ok"}


async def _execute(code, bind_json):
    result = await _run(code, _loads(bind_json))
    if result.get("status") == "final":
        # Splice the submitted value in as raw JSON; it may be large.
        text = result.pop("final_json")
        return _dumps(result)[:-1] + ', "final": ' + text + "}"
    return _dumps(result)


def execute(code, bind_json):
    return asyncio.ensure_future(_execute(code, bind_json))

