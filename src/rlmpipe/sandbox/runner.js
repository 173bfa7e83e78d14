// rlmpipe sandbox runner: CPython (Pyodide, WebAssembly) inside Deno, driven over stdin/stdout.
//
// Started by rlmpipe.sandbox.DenoSandbox with no Deno permission except read access to Pyodide's own
// package folder in the npm cache (see rlmpipe/sandbox/deno.py for the exact command line), and that one is
// revoked as soon as Pyodide is loaded, before any sandboxed code runs. No remote imports: the only import
// is the pinned npm package, resolved from the npm cache (--cached-only). The version is pinned twice, here
// and in deno.py's PYODIDE_VERSION (tests/sandbox/test_interpreter.py checks they agree).
//
// Protocol (one JSON object per line; both directions):
//   host -> sandbox   {"id", "method": "init", "params": {"bootstrap": <python source>, "config": {...}}}
//                     {"id", "method": "register", "params": {"tools": [...], "outputs": [...]}}
//                     {"id", "method": "set_var", "params": {"name", "kind": "str"|"json"|"literal", "nbytes"}}
//                         followed by exactly `nbytes` raw UTF-8 bytes (no escaping, no newline)
//                     {"id", "method": "execute", "params": {"code", "bind": [names]}}
//                     {"id", "result"|"error"}  -- the answer to a tool_call
//                     {"method": "shutdown"}
//   sandbox -> host   {"method": "ready", "params": {...}}      once Pyodide is loaded
//                     {"id", "result"|"error"}                    the answer to a host request
//                     {"id", "method": "tool_call", "params": {"name", "kwargs"}}   during "execute"
//
// The Python side of the protocol (tool wrappers, SUBMIT, variable store, executor) is the bootstrap
// source the host sends with "init" (rlmpipe/sandbox/_bootstrap.py).

import { loadPyodide } from "npm:pyodide@0.29.4/pyodide.mjs";

// ---- what the runner itself uses from Deno ----------------------------------------------------------------
const denoStdin = Deno.stdin;
const denoStdout = Deno.stdout;
const denoExit = Deno.exit;
const runnerArgs = JSON.parse(Deno.args[0] ?? "{}");
const JSONs = Object.freeze({ parse: JSON.parse, stringify: JSON.stringify });
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8");

// Bound Pyodide's WebAssembly heap below the OS limit the host sets (RLIMIT_DATA), so that a Python
// allocation past it becomes a clean MemoryError instead of starving the JS side of memory.
const wasmLimit = Number(runnerArgs.wasm_memory_limit_bytes || 0);
if (wasmLimit > 0) {
  const grow = WebAssembly.Memory.prototype.grow;
  WebAssembly.Memory.prototype.grow = function (delta) {
    if (this.buffer.byteLength + Number(delta) * 65536 > wasmLimit) {
      throw new RangeError(`rlmpipe sandbox: WebAssembly memory limit (${wasmLimit} bytes) reached`);
    }
    return grow.call(this, delta);
  };
}

// ---- stdin: synchronous line / byte reader (Deno's own API, no std library) -----------------------------
const input = {
  buf: new Uint8Array(1 << 16),
  start: 0,
  end: 0,
  fill() {
    if (this.start === this.end) {
      this.start = this.end = 0;
    } else if (this.end === this.buf.length) {
      const live = this.end - this.start;
      if (this.start > 0) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const bigger = new Uint8Array(this.buf.length * 2);
        bigger.set(this.buf.subarray(0, live));
        this.buf = bigger;
      }
      this.start = 0;
      this.end = live;
    }
    const n = denoStdin.readSync(this.buf.subarray(this.end));
    if (n === null || n === 0) return false;
    this.end += n;
    return true;
  },
  readLine() {
    for (;;) {
      const at = this.buf.subarray(this.start, this.end).indexOf(10);
      if (at >= 0) {
        const line = decoder.decode(this.buf.subarray(this.start, this.start + at));
        this.start += at + 1;
        return line;
      }
      if (!this.fill()) return null;
    }
  },
  readExact(n) {
    const out = new Uint8Array(n);
    const have = Math.min(n, this.end - this.start);
    out.set(this.buf.subarray(this.start, this.start + have));
    this.start += have;
    let off = have;
    while (off < n) {
      const got = denoStdin.readSync(out.subarray(off));
      if (got === null || got === 0) return null;
      off += got;
    }
    return out;
  },
};

// The host's secret for this process, from the "init" message. Every line the runner writes carries it, and
// the host acts on no line without it: sandboxed code that reaches the process's stdout some other way (a
// Worker, say) cannot forge a protocol message, such as a tool call.
let sessionKey = null;

function send(obj) {
  writeRaw(JSONs.stringify(sessionKey === null ? obj : { ...obj, key: sessionKey }) + "\n");
}

function writeRaw(text) {
  const bytes = encoder.encode(text);
  let off = 0;
  while (off < bytes.length) off += denoStdout.writeSync(bytes.subarray(off));
}

function fatal(message) {
  try { send({ method: "fatal", params: { message } }); } catch (_) { /* host gone */ }
  denoExit(70);
}

// ---- captured output of one execution, capped -----------------------------------------------------------
const outputLimit = Number(runnerArgs.output_limit_bytes || 1_000_000);

class Capture {
  constructor() { this.reset(); }
  reset() { this.chunks = []; this.kept = 0; this.dropped = 0; }
  write(bytes) {
    const room = outputLimit - this.kept;
    if (room > 0) {
      const part = bytes.length <= room ? bytes : bytes.subarray(0, room);
      this.chunks.push(part.slice());   // copy: `bytes` is a view into the WebAssembly heap
      this.kept += part.length;
    }
    this.dropped += Math.max(0, bytes.length - Math.max(room, 0));
    return bytes.length;
  }
  text() {
    const all = new Uint8Array(this.kept);
    let off = 0;
    for (const c of this.chunks) { all.set(c, off); off += c.length; }
    return decoder.decode(all);
  }
}
const stdoutCapture = new Capture();
const stderrCapture = new Capture();

// Sandboxed Python reaches JS through Pyodide's `js` module: give it the JS globals minus the Deno namespace.
// Defense in depth only (Python can still evaluate JS through the FFI): Deno's permissions are the boundary.
// Deno itself stays a global because Deno's Node compatibility layer looks it up lazily.
const HIDDEN = new Set(["Deno"]);
const jsglobals = new Proxy(globalThis, {
  get: (target, key) => (HIDDEN.has(key) ? undefined : Reflect.get(target, key)),
  has: (target, key) => !HIDDEN.has(key) && Reflect.has(target, key),
  ownKeys: (target) => Reflect.ownKeys(target).filter((key) => !HIDDEN.has(key)),
  getOwnPropertyDescriptor: (target, key) =>
    HIDDEN.has(key) ? undefined : Reflect.getOwnPropertyDescriptor(target, key),
});

// An error thrown from a JS callback or a rejected promise that sandboxed code leaves behind must not end
// the process (Deno's default for uncaught errors).
globalThis.addEventListener("error", (event) => event.preventDefault());
globalThis.addEventListener("unhandledrejection", (event) => event.preventDefault());

// ---- load Pyodide ---------------------------------------------------------------------------------------
let pyodide;
try {
  pyodide = await loadPyodide({
    // a fixed hash seed: sets and dicts of strings iterate alike in every process, so that code run again
    // (an RLM step replayed after a crash) prints what it printed the first time
    env: { HOME: "/home/pyodide", PYTHONHASHSEED: "0" },
    jsglobals,
    stdin: () => null,
    stdout: () => {},
    stderr: () => {},
  });
} catch (e) {
  fatal(`loading Pyodide failed: ${e?.stack || e}`);
}
// Python's stdin is always at EOF (Pyodide's default would read our protocol stream); stdout and stderr
// go to the per-execution captures, never to the protocol stream.
pyodide.setStdin({ stdin: () => null, autoEOF: true });
pyodide.setStdout({ write: (b) => stdoutCapture.write(b), isatty: false });
pyodide.setStderr({ write: (b) => stderrCapture.write(b), isatty: false });

// Read access was needed to load Pyodide's files; sandboxed code needs none: drop it before any runs.
// From here on the process holds no permission at all.
Deno.permissions.revokeSync({ name: "read" });
const readState = Deno.permissions.querySync({ name: "read" }).state;
// Then the Deno namespace goes from the global object altogether (the runner keeps what it uses), so that no
// JS evaluated from Python (js.eval, Function constructors) can reach it; and so do Workers, which would get
// a namespace of their own.
delete globalThis.Deno;
delete globalThis.Worker;

// A synchronous bridge for host tools: write the request, block on stdin for the answer. No JSPI, no
// run_sync: Python calls a plain JS function and gets the response line back as a string.
let toolCounter = 0;
function toolCall(name, kwargsJson) {
  const id = `tc-${++toolCounter}`;
  writeRaw(`{"id":${JSONs.stringify(id)},"key":${JSONs.stringify(sessionKey)},"method":"tool_call","params":{"name":${JSONs.stringify(name)},"kwargs":${kwargsJson}}}\n`);
  const line = input.readLine();
  if (line === null) denoExit(0);   // host went away
  return line;
}

send({ method: "ready", params: { pyodide: pyodide.version, read_permission: readState } });

// ---- main loop ------------------------------------------------------------------------------------------
let api = null;   // the bootstrap module (a PyProxy) after "init"

function reply(id, fn) {
  try {
    send({ id, result: fn() });
  } catch (e) {
    send({ id, error: { type: e?.type || e?.name || "Error", message: String(e?.message || e) } });
  }
}

for (;;) {
  const line = input.readLine();
  if (line === null) break;
  if (line.trim() === "") continue;
  let msg;
  try {
    msg = JSONs.parse(line);
  } catch (e) {
    send({ id: null, error: { type: "ParseError", message: `invalid JSON from host: ${e.message}` } });
    continue;
  }
  const { id, method } = msg;
  const params = msg.params || {};

  if (method === "shutdown") break;

  if (method === "init") {
    sessionKey = String(params.key || "");
    reply(id, () => {
      // Run the bootstrap as its own module, outside the user namespace (__main__).
      const scratch = pyodide.toPy({});
      const load = pyodide.runPython(
        "def _load(src):\n" +
        "    import sys, types\n" +
        "    m = types.ModuleType('_rlmpipe_sandbox')\n" +
        "    exec(compile(src, '<rlmpipe-bootstrap>', 'exec'), m.__dict__)\n" +
        "    sys.modules['_rlmpipe_sandbox'] = m\n" +
        "    return m\n" +
        "_load", { globals: scratch });
      api = load(params.bootstrap);
      load.destroy();
      scratch.destroy();
      api.install(JSONs.stringify(params.config || {}), toolCall);
      return { ok: true };
    });
    continue;
  }

  if (api === null) {
    send({ id, error: { type: "ProtocolError", message: `'${method}' before 'init'` } });
    continue;
  }

  if (method === "register") {
    reply(id, () => JSONs.parse(api.register(JSONs.stringify(params))));
    continue;
  }

  if (method === "set_var") {
    const bytes = input.readExact(Number(params.nbytes));
    if (bytes === null) break;
    reply(id, () => {
      api.set_var(params.name, params.kind, bytes);
      return { stored: params.name, nbytes: bytes.length };
    });
    continue;
  }

  if (method === "execute") {
    stdoutCapture.reset();
    stderrCapture.reset();
    let resultJson;
    try {
      const pending = api.execute(params.code ?? "", JSONs.stringify(params.bind || []));
      resultJson = await pending;
      pending.destroy?.();
    } catch (e) {
      // An error outside user code (the executor itself, or the JS side): report it as such.
      resultJson = JSONs.stringify({ status: "error", type: e?.type || e?.name || "Error", message: String(e?.message || e), traceback: "" });
    }
    try { api.flush_streams(); } catch (_) { /* user replaced sys.stdout with something odd */ }
    const streams = {
      stdout: stdoutCapture.text(), stdout_dropped: stdoutCapture.dropped,
      stderr: stderrCapture.text(), stderr_dropped: stderrCapture.dropped,
    };
    stdoutCapture.reset();
    stderrCapture.reset();
    // resultJson is produced by the bootstrap's json.dumps; splice it in without re-parsing (it may be large).
    writeRaw(`{"id":${JSONs.stringify(id)},"key":${JSONs.stringify(sessionKey)},"result":${resultJson},"streams":${JSONs.stringify(streams)}}\n`);
    continue;
  }

  send({ id, error: { type: "MethodNotFound", message: `unknown method: ${method}` } });
}
denoExit(0);
