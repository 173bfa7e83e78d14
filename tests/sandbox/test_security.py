"""What LM-generated code can do to the host through DenoSandbox: nothing. Each test runs the escape attempt as
sandboxed code and asserts the specific outcome: the error text Deno or Pyodide gives, the host file unchanged,
the test server's request count 0, the limit hit, and that the sandbox is still usable (or restarted cleanly).

Most tests share one sandbox (started with a fake OPENAI_API_KEY in the host's environment); the tests that
kill the process (timeout, JS heap exhaustion) use their own.
"""

from __future__ import annotations

import http.server
import os
import threading
import uuid
from pathlib import Path

import pytest
from dspy.primitives.code_interpreter import CodeExecutionError

from rlmpipe.sandbox import DenoSandbox, SandboxMemoryError, SandboxTimeoutError, pyodide_dir
from tests.sandbox.helpers import REPO, proc_status_kb, process_gone, requires_deno

pytestmark = [requires_deno, pytest.mark.slow]

SECRET = "sk-test-secret"
MEMORY_LIMIT_MB = 1536


@pytest.fixture(scope="module")
def sb(pyodide_cache):
    sandbox = DenoSandbox(timeout=60, memory_limit_mb=MEMORY_LIMIT_MB, max_output_bytes=100_000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", SECRET)  # in the host's environment while the sandbox starts
        sandbox.start()
    assert sandbox.restarts == 0
    yield sandbox
    pid = sandbox.pid
    sandbox.shutdown()
    assert process_gone(pid)


def run_error(sb: DenoSandbox, code: str) -> str:
    """Run code that must fail; return the error text the model would see."""
    with pytest.raises(CodeExecutionError) as info:
        sb.execute(code)
    return str(info.value)


def js(expr: str) -> str:
    """Python source that evaluates a JS expression through Pyodide's FFI and prints the (awaited) result."""
    return (f"from pyodide.code import run_js\n_r = run_js({expr!r})\n"
            "if hasattr(_r, 'then'):\n    _r = await _r\nprint(_r)")


DENO_GONE = "ReferenceError: Deno is not defined"


def refused(err: str, access: str, target: str = "") -> bool:
    """Node's compatibility APIs that the sandboxed code can still import either find the Deno namespace
    gone (they look it up when called) or hit Deno's refusal of the permission: both mean not done."""
    return DENO_GONE in err or f'NotCapable: Requires {access} access{" to " + chr(34) + target + chr(34) if target else ""}' in err


@pytest.fixture
def still_usable(sb):
    yield
    assert sb.execute("print(6 * 7)") == "42\n"
    assert sb.restarts == 0, "an escape attempt crashed the shared sandbox"


# -- reading host files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/etc/passwd", str(REPO / "pyproject.toml")])
def test_python_open_cannot_read_host_files(sb, still_usable, path):
    assert Path(path).exists()  # it is there on the host
    err = run_error(sb, f"print(open({path!r}).read()[:100])")
    assert "FileNotFoundError" in err and "No such file or directory" in err
    listing = sb.execute("import os; print(sorted(os.listdir('/')))")
    assert listing.strip() == "['dev', 'home', 'lib', 'proc', 'tmp']"  # Pyodide's in-memory FS, not the host's


@pytest.mark.parametrize("path", ["/etc/passwd", str(REPO / "pyproject.toml")])
def test_deno_read_apis_are_refused(sb, still_usable, path):
    # the Deno namespace is not among the globals Pyodide's `js` module exposes ...
    assert "AttributeError: Deno" in run_error(sb, f"import js\njs.Deno.readTextFileSync({path!r})")
    assert sb.execute("import js; print(hasattr(js, 'Deno'))") == "False\n"
    # ... nor reachable by evaluating JS: it is gone from the global object
    assert "ReferenceError: Deno is not defined" in run_error(sb, js(f"Deno.readTextFileSync({path!r})"))
    assert sb.execute(js("[typeof Deno, typeof Worker, (0).constructor.constructor('return typeof Deno')()]"
                         ".join(' ')")) == "undefined undefined undefined\n"
    # ... and what still holds Deno's internals (Node compatibility) is refused: no read permission
    err = run_error(sb, js(f"import('node:fs').then(fs => fs.readFileSync({path!r}, 'utf8'))"))
    assert refused(err, "read", path), err
    err = run_error(sb, js(f"import('file://{path}', {{with: {{type: 'text'}}}})"))
    assert f'Requires read access to "{path}"' in err


def test_read_permission_is_dropped_after_pyodide_loads(sb, still_usable):
    # --allow-read covered Pyodide's own package folder only, and only until Pyodide was loaded
    own_file = pyodide_dir(sb.deno_dir) / "package.json"
    assert own_file.is_file()
    err = run_error(sb, js(f"import('node:fs').then(fs => fs.readFileSync({str(own_file)!r}, 'utf8'))"))
    assert refused(err, "read"), err
    # the runner reports the read permission's state after revoking it, before any code runs
    assert sb.runtime_info["read_permission"] == "prompt"  # revoked; with --no-prompt "prompt" means refused
    assert "ReferenceError: Deno is not defined" in run_error(sb, js("Deno.permissions.requestSync({name: 'read'})"))


@pytest.mark.parametrize("path", ["/etc/passwd", str(REPO / "pyproject.toml")])
def test_fetch_of_file_urls_is_refused(sb, still_usable, path):
    err = run_error(sb, f"import js\nr = await js.fetch('file://{path}')\nprint(await r.text())")
    assert f'NotCapable: Requires read access to "{path}"' in err
    err = run_error(sb, f"import pyodide.http\nr = await pyodide.http.pyfetch('file://{path}')\nprint(await r.string())")
    assert f'Requires read access to "{path}"' in err


# -- writing host files -----------------------------------------------------------------------------------
def test_writes_never_reach_the_host(sb, still_usable, tmp_path):
    existing = tmp_path / "existing.txt"
    existing.write_text("original")
    new = tmp_path / f"new-{uuid.uuid4().hex}.txt"

    # Python writes land in Pyodide's in-memory file system ...
    out = sb.execute(
        f"import os\nos.makedirs({str(tmp_path)!r}, exist_ok=True)\n"
        f"open({str(new)!r}, 'w').write('escaped')\nopen({str(existing)!r}, 'w').write('changed')\n"
        f"print(open({str(new)!r}).read())")
    assert out == "escaped\n"
    # ... while Deno's API is out of reach and Node's is refused
    for target in (new, existing):
        err = run_error(sb, js(f"Deno.writeTextFileSync({str(target)!r}, 'escaped')"))
        assert "ReferenceError: Deno is not defined" in err
        err = run_error(sb, js(f"import('node:fs').then(fs => fs.writeFileSync({str(target)!r}, 'escaped'))"))
        assert refused(err, "write", str(target)), err

    assert not new.exists()
    assert existing.read_text() == "original"


# -- network ----------------------------------------------------------------------------------------------
@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 that counts the requests it gets."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"reached")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_network_is_refused(sb, still_usable, server):
    port, hits = server
    url = f"http://127.0.0.1:{port}/"
    # the server is reachable from the host: the refusals below are the sandbox's doing
    import urllib.request

    assert urllib.request.urlopen(url + "probe", timeout=5).read() == b"reached"
    assert hits == ["/probe"]
    hits.clear()

    err = run_error(sb, f"import js\nr = await js.fetch({url!r})\nprint(await r.text())")
    assert f'Requires net access to "127.0.0.1:{port}"' in err
    err = run_error(sb, f"import pyodide.http\nr = await pyodide.http.pyfetch({url!r})\nprint(await r.string())")
    assert f'Requires net access to "127.0.0.1:{port}"' in err
    err = run_error(sb, f"import urllib.request\nurllib.request.urlopen({url!r}, timeout=5)")
    assert "URLError" in err and "Host is unreachable" in err
    err = run_error(sb, f"import socket\ns = socket.socket()\ns.settimeout(5)\ns.connect(('127.0.0.1', {port}))")
    assert "OSError" in err and "Host is unreachable" in err
    err = run_error(sb, js(f"Deno.connect({{hostname: '127.0.0.1', port: {port}}})"))
    assert "ReferenceError: Deno is not defined" in err
    out = sb.execute(js(
        f"import('node:net').then(n => new Promise(res => {{ const s = n.connect({port}, '127.0.0.1');"
        " s.on('error', e => res('error: ' + e.message)); s.on('connect', () => res('connected')); }))"))
    assert out.startswith(f'error: Requires net access to "127.0.0.1:{port}"')
    out = sb.execute(js(
        f"import('node:http').then(h => new Promise(res => {{ const q = h.get({url!r}, r => res(r.statusCode));"
        " q.on('error', e => res('error: ' + e.message)); }))"))
    assert out.startswith(f'error: Requires net access to "127.0.0.1:{port}"')
    err = run_error(sb, js("import('https://deno.land/std@0.186.0/io/mod.ts')"))  # no remote code either
    assert "ERR_UNSUPPORTED_ESM_URL_SCHEME" in err

    assert hits == []  # not one request reached the server


# -- environment ------------------------------------------------------------------------------------------
def test_host_environment_is_invisible(sb, still_usable):
    out = sb.execute("import os\nprint(os.environ.get('OPENAI_API_KEY'))\nprint(sorted(os.environ))")
    assert out.startswith("None\n") and SECRET not in out
    assert "OPENAI_API_KEY" not in out
    err = run_error(sb, js("Deno.env.get('OPENAI_API_KEY')"))
    assert "ReferenceError: Deno is not defined" in err
    err = run_error(sb, "import js\nprint(js.process.env.OPENAI_API_KEY)")
    assert refused(err, "env", "OPENAI_API_KEY"), err
    # and the Deno process was started with an environment of its own: the secret is not even there
    environ = Path(f"/proc/{sb.pid}/environ").read_bytes()
    assert SECRET.encode() not in environ and b"OPENAI_API_KEY" not in environ


# -- processes --------------------------------------------------------------------------------------------
def test_processes_cannot_be_spawned(sb, still_usable, tmp_path):
    marker = tmp_path / "spawned"
    err = run_error(sb, f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])")
    assert "OSError" in err and "does not support processes" in err
    err = run_error(sb, f"import os\nos.system('touch {marker}')")
    assert "OSError" in err and "cannot run processes" in err
    err = run_error(sb, js(f"new Deno.Command('touch', {{args: [{str(marker)!r}]}}).outputSync()"))
    assert "ReferenceError: Deno is not defined" in err
    err = run_error(sb, js(f"import('node:child_process').then(cp => cp.execFileSync('touch', [{str(marker)!r}]))"))
    assert DENO_GONE in err or ("NotCapable" in err and "--allow-" in err), err
    out = sb.execute(js("import('node:process').then(p => { try { p.dlopen({}, 'libc.so.6'); return 'opened' }"
                        " catch (e) { return 'error: ' + e.message } })"))
    assert out.startswith('error: Requires ffi access to "libc.so.6"')
    assert not marker.exists()


# -- resource limits --------------------------------------------------------------------------------------
def test_infinite_loop_times_out_and_the_sandbox_restarts(pyodide_cache):
    with DenoSandbox(timeout=2) as sb:
        sb.execute("x = 5")
        first_pid = sb.pid
        with pytest.raises(SandboxTimeoutError) as info:
            sb.execute("while True:\n    pass")
        message = str(info.value)
        assert "did not finish within 2 seconds" in message
        assert "ALL interpreter state is lost" in message
        assert isinstance(info.value, CodeExecutionError)  # so dspy.RLM shows it to the model and goes on
        assert process_gone(first_pid)
        # the next execution gets a fresh process, without the old state
        assert "NameError: name 'x' is not defined" in run_error(sb, "print(x)")
        assert sb.pid != first_pid and sb.restarts == 1
        assert sb.execute("print('back')") == "back\n"
        last_pid = sb.pid
    assert process_gone(last_pid)


def test_allocating_10_gb_is_bounded(sb, still_usable):
    host_rss_before = proc_status_kb(os.getpid(), "VmRSS")
    # one 10 GB object: more than a 32-bit WebAssembly address space can hold
    err = run_error(sb, "x = bytearray(10 * 1024**3)")
    assert "OverflowError" in err or "MemoryError" in err
    err = run_error(sb, "x = 'x' * (10 * 1024**3)")
    assert "OverflowError" in err or "MemoryError" in err
    # 10 GB in 100 MB steps: Python gets a MemoryError at the WebAssembly heap cap, and can catch it
    out = sb.execute(
        "chunks = []\n"
        "try:\n"
        "    for _ in range(100):\n"
        "        chunks.append(bytearray(100 * 1024**2))\n"
        "except MemoryError:\n"
        "    print('MemoryError after', len(chunks))\n"
        "chunks = None")
    assert out.startswith("MemoryError after ")
    assert int(out.split()[-1]) * 100 <= MEMORY_LIMIT_MB
    # 10 GB of JS ArrayBuffers (outside the WebAssembly heap and V8's old space): the OS limit refuses them
    out = sb.execute(
        "import js\n"
        "bufs = []\n"
        "try:\n"
        "    for _ in range(10):\n"
        "        b = js.ArrayBuffer.new(1024**3)\n"
        "        js.Uint8Array.new(b).fill(1)\n"
        "        bufs.append(b)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e, len(bufs))\n"
        "bufs = None")
    assert "RangeError: Array buffer allocation failed" in out
    peak_mb = proc_status_kb(sb.pid, "VmHWM") / 1024
    assert peak_mb < MEMORY_LIMIT_MB + 64, f"sandbox peaked at {peak_mb:.0f} MB"
    assert proc_status_kb(os.getpid(), "VmRSS") - host_rss_before < 100 * 1024  # the host is unaffected


def test_exhausting_the_js_heap_kills_and_restarts_the_sandbox(pyodide_cache):
    with DenoSandbox(timeout=60, v8_heap_mb=256) as sb:
        sb.execute("x = 1")
        first_pid = sb.pid
        with pytest.raises(SandboxMemoryError) as info:
            sb.execute(js("(() => { const a = []; while (true) a.push(new Array(1e6).fill(1.5)); })()"))
        assert "ran out of memory" in str(info.value) and "Reached heap limit" in str(info.value)
        assert "ALL interpreter state is lost" in str(info.value)
        assert process_gone(first_pid)
        assert sb.execute("print('restarted')") == "restarted\n"


def test_printing_100_mb_is_capped(sb, still_usable):
    host_rss_before = proc_status_kb(os.getpid(), "VmRSS")
    out = sb.execute("print('x' * 100_000_000)")
    assert out.startswith("x" * 1000)
    assert len(out) < 100_000 + 500
    assert "[... output truncated: 99,900,001 more bytes of stdout not shown" in out
    out = sb.execute("for _ in range(100):\n    print('y' * 1_000_000)")
    assert len(out) < 100_000 + 500 and "output truncated: 99,900,100 more bytes" in out
    out = sb.execute("import os, sys\nn = os.write(1, b'z' * 5_000_000)\nn = sys.stderr.write('e' * 5_000_000)")
    assert out.count("z") == 100_000 and "output truncated: 4,900,000 more bytes of stdout" in out
    assert "[stderr]" in out and "stderr truncated: 4,900,000 more bytes" in out
    assert proc_status_kb(os.getpid(), "VmRSS") - host_rss_before < 100 * 1024
