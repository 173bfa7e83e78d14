"""Benchmark rlmpipe.sandbox.DenoSandbox: start-up, per-execution overhead, variable injection, tool calls.

    python bench/sandbox.py            # prints a markdown table and writes the "sandbox" section of RESULTS.md
    python bench/sandbox.py --no-write

Measured, each in this process against real Deno + Pyodide processes:

- start, first process: the first sandbox this run starts. Pyodide is already in Deno's cache (``ensure_pyodide``
  runs before the clock; the one-off npm download is not measured); the OS file cache may or may not hold
  Deno's binary and Pyodide's files, depending on what ran before.
- start, warm: the median of the next starts (binary and Pyodide files in the OS file cache, V8 code cache
  written by the first run).
- per-execution round trip: ``execute("x = 1")``, median of 50.
- a host tool call: ``execute("llm_query('q')")`` with an echo tool, minus nothing: the whole round trip.
- variable injection: the first ``execute("pass", {"doc": <str>})`` of a 1.5 MB and a 50 MB string (sent
  once as raw UTF-8 bytes after a JSON header), and the next execution with the same value (not sent again).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import time
from pathlib import Path

from _results import machine
from rlmpipe.sandbox import PYODIDE_VERSION, DenoSandbox, ensure_pyodide, find_deno
from rlmpipe.sandbox.deno import deno_version

HERE = Path(__file__).resolve().parent

WARM_STARTS = 3
ROUND_TRIPS = 50


def timed_start() -> tuple[float, DenoSandbox]:
    sandbox = DenoSandbox(tools={"llm_query": lambda prompt: prompt}, timeout=120)
    t0 = time.perf_counter()
    sandbox.start()
    return time.perf_counter() - t0, sandbox


def median_ms(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def inject(sandbox: DenoSandbox, size: int) -> dict[str, float]:
    text = ("The quick brown fox jumps over the lazy dog. " * (size // 45 + 1))[:size]
    t0 = time.perf_counter()
    out = sandbox.execute("print(len(doc))", {"doc": text})
    first = time.perf_counter() - t0
    assert out == f"{size}\n", out
    inject_s = sandbox.last_stats["inject_s"]
    t0 = time.perf_counter()
    sandbox.execute("print(len(doc))", {"doc": text})
    again = time.perf_counter() - t0
    return {"first_ms": first * 1000, "inject_ms": inject_s * 1000, "again_ms": again * 1000}


def run() -> tuple[list[tuple[str, str]], dict]:
    ensure_pyodide()
    load_before = os.getloadavg()[0]
    cold, sandbox = timed_start()
    try:
        sandbox.execute("x = 1")
        rows = [("start, first process (Deno + Pyodide from cache)", f"{cold:.2f} s")]
        trip = median_ms(lambda: sandbox.execute("x = 1"), ROUND_TRIPS)
        tool = median_ms(lambda: sandbox.execute("llm_query('q')"), ROUND_TRIPS)
        small = inject(sandbox, 1_500_000)
        large = inject(sandbox, 50_000_000)
        rss_mb = int(Path(f"/proc/{sandbox.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    finally:
        sandbox.shutdown()
    warm = []
    for _ in range(WARM_STARTS):
        seconds, other = timed_start()
        other.shutdown()
        warm.append(seconds)
    rows += [
        (f"start, warm (median of {WARM_STARTS})",
         f"{statistics.median(warm):.2f} s (min {min(warm):.2f}, max {max(warm):.2f})"),
        (f"execute(\"x = 1\") round trip (median of {ROUND_TRIPS})", f"{trip:.2f} ms"),
        (f"execute with one host tool call (median of {ROUND_TRIPS})", f"{tool:.2f} ms"),
        ("inject a 1.5 MB str variable: first execute / of which sending",
         f"{small['first_ms']:.0f} ms / {small['inject_ms']:.0f} ms"),
        ("same variable, next execute (not sent again)", f"{small['again_ms']:.1f} ms"),
        ("inject a 50 MB str variable: first execute / of which sending",
         f"{large['first_ms']:.0f} ms / {large['inject_ms']:.0f} ms"),
        ("same variable, next execute (not sent again)", f"{large['again_ms']:.1f} ms"),
        ("sandbox peak RSS after the 50 MB variable", f"{rss_mb:.0f} MB"),
    ]
    load_after = os.getloadavg()[0]
    return rows, {"load": (load_before, load_after)}


def render(rows, meta, command: str) -> str:
    deno = find_deno()
    version = ".".join(map(str, deno_version(deno) or ("?",)))
    today = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
    lines = [
        "## Sandbox (DenoSandbox: Pyodide under Deno)",
        "",
        f"{today}; {machine()}; Deno {version}, Pyodide {PYODIDE_VERSION}. Command: `{command}`.",
        (f"Load average (1 min) before/after: {meta['load'][0]:.1f} / {meta['load'][1]:.1f} "
         "(start-up is CPU-bound WebAssembly compilation: other work on the machine slows it)."),
        "",
        "| measurement | result |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    rows, meta = run()
    markdown = render(rows, meta, "python bench/sandbox.py")
    print(markdown)
    if not args.no_write:
        try:
            from _results import write_section
        except ImportError:  # pragma: no cover - the helper ships with the repo
            write_section = None
        if write_section is not None:
            target = write_section("sandbox", markdown)
        else:
            target = HERE / "RESULTS.md"
            text = target.read_text() if target.exists() else ""
            begin, end = "<!-- BEGIN sandbox -->", "<!-- END sandbox -->"
            block = f"{begin}\n{markdown}\n{end}"
            if begin in text and end in text:
                text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
            else:
                text = text.rstrip("\n") + "\n\n" + block + "\n"
            target.write_text(text)
        print(f"\nwrote the 'sandbox' section of {target}")


if __name__ == "__main__":
    main()
