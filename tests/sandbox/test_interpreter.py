"""DenoSandbox as DSPy's CodeInterpreter: state, tools, SUBMIT, variables, errors, lifecycle, the command line."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from dspy.primitives.code_interpreter import (
    CodeExecutionError,
    CodeInterpreter,
    CodeInterpreterError,
    FinalOutput,
)

from rlmpipe.sandbox import (
    PYODIDE_VERSION,
    DenoSandbox,
    SandboxCrashedError,
    pyodide_dir,
)
from rlmpipe.sandbox.deno import RUNNER_PATH
from tests.sandbox.helpers import REPO, process_gone, requires_deno

pytestmark = [requires_deno, pytest.mark.slow]

CALLS: list[tuple[str, dict]] = []


def llm_query(prompt: str) -> str:
    """Ask the sub-LM."""
    CALLS.append(("llm_query", {"prompt": prompt}))
    return f"answer to {prompt!r}"


def lookup(key: str, limit: int = 2, *, upper: bool = False, **extra) -> dict:
    CALLS.append(("lookup", {"key": key, "limit": limit, "upper": upper, **extra}))
    return {"key": key.upper() if upper else key, "hits": list(range(limit)), "extra": extra}


def failing(reason: str) -> str:
    raise LookupError(f"no such thing: {reason}")


async def async_tool(x: int) -> list:
    return [x, x * 2, {x}]


@pytest.fixture(scope="module")
def sb(pyodide_cache):
    sandbox = DenoSandbox(
        tools={"llm_query": llm_query, "lookup": lookup, "failing": failing, "async_tool": async_tool},
        output_fields=[{"name": "answer", "type": "str"}, {"name": "score", "type": "int"}],
        timeout=60,
    )
    yield sandbox
    sandbox.shutdown()


def test_is_a_dspy_code_interpreter(sb):
    assert isinstance(sb, CodeInterpreter)


def test_state_persists_and_last_expression_is_shown(sb):
    assert sb.execute("x = 20\ndef double(v):\n    return 2 * v") is None
    assert sb.execute("print('x is', x)\ndouble(x) + 2") == "x is 20\n42\n"
    assert sb.execute("import math\ny = math.sqrt(16)") is None
    assert sb.execute("y") == "4.0\n"
    assert sb.execute("x;") is None  # a trailing semicolon silences the value, as in IPython


def test_errors_carry_the_traceback_and_the_output_before_them(sb):
    with pytest.raises(CodeExecutionError) as info:
        sb.execute("print('working...')\ndef f():\n    return {}['missing']\nf()")
    text = str(info.value)
    assert text.startswith("Traceback (most recent call last):")
    assert 'File "<sandbox>", line 4, in <module>' in text and "KeyError: 'missing'" in text
    assert "_rlmpipe" not in text and "pyodide" not in text  # no frames of the executor
    assert text.endswith("Output printed before the error:\nworking...\n")
    with pytest.raises(SyntaxError) as syntax:
        sb.execute("def broken(:\n    pass")
    assert "SyntaxError: invalid syntax" in str(syntax.value) and "line 1" in str(syntax.value)
    assert sb.execute("print('fine')") == "fine\n"


def test_submit_is_typed_from_output_fields(sb):
    assert sb.execute("SUBMIT('yes', 3)") == FinalOutput({"answer": "yes", "score": 3})
    assert sb.execute("SUBMIT(score=4, answer=['a', ('b', 1)])") == FinalOutput(
        {"answer": ["a", ["b", 1]], "score": 4})
    with pytest.raises(CodeExecutionError, match="TypeError: missing a required argument: 'score'"):
        sb.execute("SUBMIT('only one')")
    # SUBMIT is not an Exception: `except Exception` in the model's code does not swallow it
    assert sb.execute("try:\n    SUBMIT('a', 1)\nexcept Exception:\n    print('swallowed')") == FinalOutput(
        {"answer": "a", "score": 1})


def test_submit_without_output_fields(pyodide_cache):
    with DenoSandbox() as sandbox:
        assert sandbox.execute("SUBMIT({'k': {1, 2}})") == FinalOutput({"output": {"k": [1, 2]}})


def test_tools_cross_to_the_host_and_back(sb):
    CALLS.clear()
    out = sb.execute("r = lookup('abc', upper=True, note='n')\nprint(r)\nprint(llm_query(prompt='hi'))")
    assert out == "{'key': 'ABC', 'hits': [0, 1], 'extra': {'note': 'n'}}\nanswer to 'hi'\n"
    assert CALLS == [("lookup", {"key": "abc", "limit": 2, "upper": True, "note": "n"}),
                     ("llm_query", {"prompt": "hi"})]
    assert sb.execute("print(async_tool(3))") == "[3, 6, [3]]\n"
    assert sb.execute("import inspect\nprint(inspect.signature(lookup))\nprint(llm_query.__doc__)") == (
        "(key: str, limit: int = 2, *, upper: bool = False, **extra)\nAsk the sub-LM.\n")
    with pytest.raises(CodeExecutionError) as info:
        sb.execute("failing('x')")
    assert "ToolError: failing() failed on the host: LookupError: no such thing: x" in str(info.value)
    with pytest.raises(CodeExecutionError, match="TypeError: missing a required argument: 'key'"):
        sb.execute("lookup()")
    # a host error is an ordinary exception in the sandbox
    assert sb.execute("try:\n    failing('y')\nexcept RuntimeError as e:\n    print('caught', e)") == (
        "caught failing() failed on the host: LookupError: no such thing: y\n")


def test_tools_added_later_are_registered_before_the_next_execution(sb):
    sb.tools["late_tool"] = lambda word: word[::-1]
    try:
        assert sb.execute("print(late_tool(word='drawer'))") == "reward\n"
    finally:
        del sb.tools["late_tool"]
    with pytest.raises(CodeExecutionError, match="NameError: name 'late_tool' is not defined"):
        sb.execute("late_tool(word='x')")


def test_variables_are_sent_once_and_rebound_every_execution(sb):
    document = "page\n" * 300_000  # 1.5 MB
    out = sb.execute("print(len(document), type(meta).__name__, meta)",
                     {"document": document, "meta": {"pages": 500, "tags": ("a", "b"), "ids": {3, 1}}})
    assert out == "1500000 dict {'pages': 500, 'tags': ['a', 'b'], 'ids': [1, 3]}\n"
    assert sb.last_stats["bytes_sent"] > 1_500_000
    # same values again: nothing crosses, and the code's own changes are undone (as if assigned anew)
    sb.execute("document = 'overwritten'\nmeta['pages'] = 0")
    out = sb.execute("print(len(document), meta['pages'])", {"document": document, "meta": {
        "pages": 500, "tags": ("a", "b"), "ids": {3, 1}}})
    assert out == "1500000 500\n"
    assert sb.last_stats["bytes_sent"] == 0
    # a changed value is sent again; non-string keys survive
    out = sb.execute("print(len(document), table[1])", {"document": document + "x", "table": {1: "one"}})
    assert out == "1500001 one\n"
    assert 1_500_001 <= sb.last_stats["bytes_sent"] < 1_500_100
    # not embedded in the code: the code sent is the code given
    assert sb.execute("print(repr(document[:5]))", {"document": "\u00e9\U0001f600'\"\n"}) == "'é😀\\'\"\\n'\n"


@pytest.mark.parametrize("name", ["1abc", "class", "llm_query", "SUBMIT", "_rlmpipe_x"])
def test_bad_variable_names_are_refused(sb, name):
    with pytest.raises(CodeInterpreterError, match="Variable name|Invalid variable name"):
        sb.execute("pass", {name: 1})


def test_recursive_execute_from_a_tool_is_refused(pyodide_cache):
    holder = {}

    def reenter() -> str:
        try:
            holder["sb"].execute("print(1)")
        except CodeInterpreterError as e:
            return str(e)
        return "no error"

    with DenoSandbox(tools={"reenter": reenter}) as sandbox:
        holder["sb"] = sandbox
        assert "cannot execute recursively" in sandbox.execute("print(reenter())")


def test_use_from_another_thread_is_refused(sb):
    sb.execute("pass")
    errors = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, sb.execute, "pass")))
    thread.start()
    thread.join()
    assert "not thread-safe" in str(errors[0].value)


def test_command_line_grants_only_reading_pyodide(pyodide_cache, tmp_path):
    sandbox = DenoSandbox(memory_limit_mb=1024, v8_heap_mb=300)
    cmd = sandbox.command()
    flags = [arg for arg in cmd if arg.startswith("--")]
    read_dir = os.path.realpath(pyodide_dir(sandbox.deno_dir))
    assert flags == [
        "--no-config", "--no-lock", "--node-modules-dir=none", "--cached-only", "--no-remote", "--no-prompt",
        f"--allow-read={read_dir}",
        "--deny-write", "--deny-net", "--deny-env", "--deny-run", "--deny-ffi", "--deny-sys", "--deny-import",
        "--v8-flags=--max-old-space-size=300",
    ]
    assert read_dir.endswith(f"/npm/registry.npmjs.org/pyodide/{PYODIDE_VERSION}")
    assert cmd[1] == "run" and cmd[-2] == str(RUNNER_PATH)
    assert json.loads(cmd[-1]) == {"output_limit_bytes": 1_000_000, "wasm_memory_limit_bytes": 512 * 1024 * 1024}


def test_runner_imports_only_the_pinned_pyodide():
    source = RUNNER_PATH.read_text()
    imports = re.findall(r"""^\s*import\s.*?from\s+["']([^"']+)["']""", source, re.MULTILINE)
    assert imports == [f"npm:pyodide@{PYODIDE_VERSION}/pyodide.mjs"]
    assert "https://" not in source and "jsr:" not in source


def test_shutdown_reaps_the_process_and_ends_the_session(pyodide_cache):
    sandbox = DenoSandbox()
    sandbox.start()
    sandbox.start()  # idempotent
    pid = sandbox.pid
    assert sandbox.pids == [pid] and sandbox.alive
    sandbox.shutdown()
    sandbox.shutdown()  # idempotent
    assert process_gone(pid)
    with pytest.raises(CodeInterpreterError, match="session has ended"):
        sandbox.execute("print(1)")


def test_garbage_collection_reaps_a_forgotten_sandbox(pyodide_cache):
    sandbox = DenoSandbox()
    sandbox.execute("x = 1")
    pid = sandbox.pid
    del sandbox
    gc.collect()
    assert process_gone(pid)


def test_a_process_killed_between_executions_is_reported_then_replaced(pyodide_cache):
    with DenoSandbox() as sandbox:
        sandbox.execute("x = 1")
        first = sandbox.pid
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(SandboxCrashedError, match="exited between executions"):
            sandbox.execute("print(x)")
        assert process_gone(first)
        assert sandbox.execute("print('fresh')") == "fresh\n"


def test_a_forged_protocol_line_runs_no_tool_and_restarts_the_sandbox(pyodide_cache):
    """Node's process.stdout still reaches the protocol stream; a line written there has no session key,
    so the host runs nothing it says and ends the process."""
    called = []

    def spend(**kwargs):
        called.append(kwargs)
        return "spent"

    with DenoSandbox(tools={"spend": spend}) as sandbox:
        sandbox.execute("secret = 1")
        first = sandbox.pid
        for forged in ({"id": "tc-1", "method": "tool_call", "params": {"name": "spend", "kwargs": {}}},
                       {"id": "x1", "result": {"status": "final", "final": {"answer": "forged"}}}):
            with pytest.raises(SandboxCrashedError, match="without the session key"):
                sandbox.execute(
                    "import json\nfrom pyodide.code import run_js\n"
                    f"line = json.dumps({forged!r}) + '\\n'\n"
                    "write = run_js(\"(line) => import('node:process').then(p => p.stdout.write(line))\")\n"
                    "await write(line)\n"
                    "while True:\n    pass")
        assert called == [], "the forged tool call was not run"
        assert process_gone(first)
        assert sandbox.execute("print(spend())") == "spent\n", "the real bridge still works"
        assert called == [{}]


def test_flooding_the_protocol_stream_does_not_grow_the_host(pyodide_cache, tmp_path):
    """200 MB written straight to stdout (without line breaks, then as lines): the host keeps at most one
    bounded message, refuses the rest, restarts the sandbox; measured as the host process's own peak RSS."""
    code = textwrap.dedent(r"""
        import json, sys
        from rlmpipe.sandbox import DenoSandbox, SandboxCrashedError
        def peak():
            return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024
        flood = ("from pyodide.code import run_js\n"
                 "write = run_js(\"(n, s) => import('node:process').then(p => { for (let i = 0; i < n; i++) p.stdout.write(s); })\")\n"
                 "await write(200, chunk)\n")
        outcomes = {}
        with DenoSandbox() as sb:  # the default bounds (a message of at most 64 MB)
            sb.execute("x = 1")
            before = peak()
            for name, chunk in (("one line", "A" * 1_000_000), ("lines", ("B" * 999 + "\n") * 1000)):
                try:
                    sb.execute(flood, {"chunk": chunk})
                    outcomes[name] = "no error"
                except SandboxCrashedError as exc:
                    outcomes[name] = str(exc)[:200]
            works = sb.execute("print(6 * 7)")
            print(json.dumps({"growth": peak() - before, "outcomes": outcomes, "works": works}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "longer than" in report["outcomes"]["one line"], report
    assert "non-protocol output" in report["outcomes"]["lines"], report
    assert report["works"] == "42\n"
    assert report["growth"] < 200, report  # MB: one bounded message at most (it was 1.2 GB)


def test_restart_budget_ends_the_session(pyodide_cache):
    with DenoSandbox(timeout=1, max_restarts=0) as sandbox:
        with pytest.raises(CodeInterpreterError, match="session is over") as info:
            sandbox.execute("while True:\n    pass")
        assert not isinstance(info.value, CodeExecutionError)  # terminal: RLM stops instead of retrying
        with pytest.raises(CodeInterpreterError, match="session has ended"):
            sandbox.execute("print(1)")


def test_sandbox_dies_with_its_host(pyodide_cache):
    host = textwrap.dedent("""
        import sys, time
        from rlmpipe.sandbox import DenoSandbox
        sb = DenoSandbox()
        sb.execute("x = 1")
        print(sb.pid, flush=True)
        sb.execute("while True:\\n    pass")   # busy: it will not notice stdin closing
    """)
    proc = subprocess.Popen([sys.executable, "-c", host], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        pid = int(proc.stdout.readline())
        assert not process_gone(pid)
        time.sleep(0.5)
        proc.kill()  # SIGKILL: no finalizer, no atexit
        proc.wait(10)
        deadline = time.monotonic() + 10
        while not process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_gone(pid)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
