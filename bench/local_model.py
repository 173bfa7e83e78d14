"""Throughput of the embedded model (SmolLM2-135M-Instruct GGUF) under llama-cpp-python.

    python bench/local_model.py                 # measure, print the table, update bench/RESULTS.md
    python bench/local_model.py --no-write      # print only

Prompt processing (prefill) and generation (decode) tokens/s at n_threads 1 and 2, measured side
by side in one run: the repetitions are interleaved (1, 2, 2 passive, 1, 2, ...) so that a change
in the machine's load hits every setting alike, and each runs in a fresh process. A repetition
evaluates a 1000-token chat prompt from an empty KV cache (as ``LocalLM`` does, n_batch 512),
then generates 128 tokens greedily one at a time. Wall-clock times.

llama-cpp-python built with OpenMP makes waiting threads spin; with other processes busy on the
cores that collapses multi-threaded speed, so n_threads > 1 is also measured with
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep while waiting), which avoids the collapse at a price.
The load average is printed with the results: on a shared machine it matters more than anything.
"""

# ruff: noqa: I001  (offline defaults first: before litellm is imported)
from rlmpipe.offline import configure_offline_defaults

configure_offline_defaults()  # a program: its whole process uses the bundled price map and BPE files

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from _results import cpu_model
from rlmpipe.lm.local import available_cores, default_model_path

SECTION = "local-model"
TEXT = (
    "The committee met on Tuesday to review the quarterly report. Revenue grew in every region "
    "except the north, where two large contracts ended early. The board asked for a plan to "
    "replace them before the end of the year, and for a summary of the risks in the new supply "
    "agreements, including the clauses on termination, liability and governing law. "
)


def load(threads: int, n_ctx: int, n_batch: int):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(default_model_path()), n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
        n_threads_batch=threads, seed=0, verbose=False,
    )


def prompt_tokens(llama, n: int) -> list[int]:
    messages = [{"role": "user", "content": TEXT * (n // 40 + 2) + "\nSummarise the above."}]
    from llama_cpp import llama_chat_format

    template = llama.metadata["tokenizer.chat_template"]
    eos = llama._model.token_get_text(llama.token_eos())
    bos = llama._model.token_get_text(llama.token_bos())
    formatter = llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    rendered = formatter(messages=messages)
    tokens = llama.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
    if len(tokens) < n:
        raise SystemExit(f"prompt text too short: {len(tokens)} < {n} tokens")
    return tokens[:n]


def measure(llama, tokens: list[int], gen_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) for one fresh prompt + greedy generation."""
    llama.reset()  # clear the KV cache: the whole prompt is evaluated
    start = time.perf_counter()
    llama.eval(tokens)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(gen_tokens):
        token = llama.sample(temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0)
        llama.eval([token])
    decode = time.perf_counter() - start
    return len(tokens) / prefill, gen_tokens / decode


def child(spec: dict) -> None:
    """One measurement in a fresh process (so that OMP_WAIT_POLICY, read when llama.cpp's
    OpenMP runtime loads, can differ between settings); prints JSON."""
    llama = load(spec["threads"], spec["n_ctx"], spec["n_batch"])
    tokens = prompt_tokens(llama, spec["prompt_tokens"])
    llama.reset()  # warm-up: page the weights in, build the compute graphs
    llama.eval(tokens[:64])
    pp, gen = measure(llama, tokens, spec["gen_tokens"])
    print(json.dumps({"pp": pp, "gen": gen}))


def run_child(spec: dict, wait_policy: str | None) -> tuple[float, float]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["pp"], result["gen"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="1,2", help="comma-separated n_threads values (default 1,2)")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3, help="repetitions per setting; the median is reported")
    parser.add_argument("--n-batch", type=int, default=512, help="as LocalLM (default 512)")
    parser.add_argument("--no-passive", action="store_true",
                        help="skip the OMP_WAIT_POLICY=PASSIVE rows for n_threads > 1")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    n_ctx = 1 << (args.prompt_tokens + args.gen_tokens + 16).bit_length()
    spec = {"n_ctx": n_ctx, "n_batch": args.n_batch, "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens}
    # (n_threads, OMP_WAIT_POLICY): the OpenMP default (threads spin while waiting) and PASSIVE
    # (they sleep while waiting).
    settings = [(t, None) for t in threads]
    if not args.no_passive:
        settings += [(t, "PASSIVE") for t in threads if t > 1]

    load_before = os.getloadavg()
    results: dict[tuple[int, str | None], list[tuple[float, float]]] = {s: [] for s in settings}
    for rep in range(args.reps):
        for setting in settings:
            pp, gen = run_child({**spec, "threads": setting[0]}, setting[1])
            results[setting].append((pp, gen))
            policy = setting[1] or "(unset)"
            print(
                f"  rep {rep + 1}/{args.reps} n_threads={setting[0]} OMP_WAIT_POLICY={policy}: "
                f"prompt {pp:7.1f} tok/s, generation {gen:6.1f} tok/s",
                file=sys.stderr,
            )
    load_after = os.getloadavg()

    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-write"]
    command = shlex.join(["python", "bench/local_model.py", *given])
    rows = []
    for (t, policy), values in results.items():
        pps = [r[0] for r in values]
        gens = [r[1] for r in values]
        rows.append(
            f"| {t} | {policy or 'unset (spin)'} "
            f"| {statistics.median(pps):.0f} | {min(pps):.0f}–{max(pps):.0f} "
            f"| {statistics.median(gens):.1f} | {min(gens):.1f}–{max(gens):.1f} |"
        )
    model_file = default_model_path().name
    openmp = "yes" if "OPENMP = 1" in system_info() else "no"
    header = (
        f"{datetime.date.today().isoformat()}, {available_cores()} cores ({cpu_model()}), "
        f"Python {platform.python_version()}, llama-cpp-python {metadata.version('llama_cpp_python')} "
        f"(llama.cpp built with OpenMP: {openmp}). Command: `{command}`."
    )
    method = (
        f"`{model_file}`: a {args.prompt_tokens}-token prompt evaluated from an empty KV cache "
        f"(n_batch {args.n_batch}), then {args.gen_tokens} tokens generated greedily one at a time; "
        f"wall-clock, median of {args.reps} interleaved repetitions per setting (range beside it), "
        "each in a fresh process."
    )
    before = "/".join(f"{x:.2f}" for x in load_before)
    after = "/".join(f"{x:.2f}" for x in load_after)
    footer = (
        f"Load average (1/5/15 min) before the run {before}, after {after}. The OpenMP default lets "
        "waiting threads spin: fastest on an idle machine, but when other processes are busy on the "
        "cores, 2 threads become many times slower than 1 (generation most). `OMP_WAIT_POLICY=PASSIVE` "
        "(threads sleep while waiting) avoids that, but its wake-ups slow generation on an idle machine. "
        "LocalLM defaults to n_threads = half the cores (1 here)."
    )
    markdown = "\n".join([
        "## Embedded model throughput (llama-cpp-python)",
        "",
        header,
        "",
        method,
        "",
        "| n_threads | OMP_WAIT_POLICY | prompt processing (tok/s) | range | generation (tok/s) | range |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        footer,
    ])
    print(markdown)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _results import write_section

        print(f"\nwrote section {SECTION!r} of {write_section(SECTION, markdown)}", file=sys.stderr)
    return 0


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode()


if __name__ == "__main__":
    raise SystemExit(main())
