"""The ``rlmpipe`` command: each command parses its flags, makes one library call, prints.

The library calls are :mod:`rlmpipe.api` (runs), :mod:`rlmpipe.chunking` (``chunk``) and
:mod:`rlmpipe.monitor` (``runs``). What is here: flags (the same flag for the same idea on every
command; old names kept as hidden aliases with a one-line notice), the live display, Ctrl-C,
messages and exit codes (0 done, 1 some documents failed or are partial, 2 the run could not start
or failed, 3 stopped and resumable).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from rlmpipe.offline import configure_offline_defaults

configure_offline_defaults()  # the command owns its process: litellm and tiktoken use their bundled files


class _PlainHelp:
    """--help shows what a flag takes as a word (N, USD, PATH, fixed|structure) and nothing for a
    switch: typer >= 0.2x would show Python types (<int>, <bool>, <list[Path]>). Every option here
    has its metavar; this blanks the switches' (typer's own --help included) and the arguments' type."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif param.param_type_name == "argument" and hasattr(param, "display_type_rich"):
                param.display_type_rich = lambda ctx: None  # the name column already says PATH
        return params


class _Command(_PlainHelp, TyperCommand):
    pass


class _Group(_PlainHelp, TyperGroup):
    pass


class _Typer(typer.Typer):
    """A Typer whose groups and commands show plain help (:class:`_PlainHelp`)."""

    def __init__(self, **kwargs):
        super().__init__(cls=_Group, **kwargs)

    def command(self, *args, **kwargs):
        return super().command(*args, cls=kwargs.pop("cls", _Command), **kwargs)


app = _Typer(
    name="rlmpipe",
    help="Run language-model programs over documents larger than a context window, reliably.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr (control characters escaped), no traceback."""
    from rlmpipe.ingest import printable

    typer.echo(printable(f"error: {message}"), err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from rlmpipe import __version__

        typer.echo(f"rlmpipe {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """rlmpipe: language-model programs over documents of any size, with checkpoints, budgets and reports."""


def deprecated(old: str, new: str) -> None:
    """The one-line notice of an old flag name, still accepted."""
    from rlmpipe.ingest import printable

    typer.echo(printable(f"note: {old} is deprecated and will go away: use {new}"), err=True)


# --- numbers: every numeric flag has a range, checked before anything runs ------------------------------
#: the bounds that several flags share (inclusive)
MAX_CHUNK_TOKENS = 1_000_000  # no model reads more at once (the largest context windows are 1-2 M tokens)
MAX_TOKENS = 10**15  # token budgets and rates: beyond any real run, and far from int64
MAX_CONTEXT_CHARS = 2_000  # = rlmpipe.apps.contracts.pipeline.MAX_CONTEXT_CHARS (a test checks): why, there


def _number(value) -> str:
    """1,000,000 / 10^15 / 0.1 / 65535: as a person writes the number."""
    if isinstance(value, int) and value >= 10**9 and str(value).rstrip("0") == "1":
        return f"10^{len(str(value)) - 1}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 100_000 else str(value)
    return f"{value:g}"


def _range(low, high, low_open: bool = False) -> str:
    if high is None:
        return f"{'more than' if low_open else 'at least'} {_number(low)}"
    return f"more than {_number(low)}, at most {_number(high)}" if low_open else f"{_number(low)} to {_number(high)}"


def in_range(flag: str, low, high=None, *, low_open: bool = False):
    """A typer callback refusing a value of ``flag`` outside ``[low, high]`` (``(low, high]`` with
    ``low_open``; nan and infinities too) with one line and exit code 2."""

    def check(value):
        if value is None:
            return value
        if not math.isfinite(value) or value < low or (low_open and value == low) or \
                (high is not None and value > high):
            fail(f"{flag} {_number(value)}: must be {_range(low, high, low_open)}")
        return value

    check.bounds = (low, high, low_open)
    return check


def number(default, flag: str, help: str, low, high=None, *, low_open: bool = False, metavar: str = "N",
           default_text: str | None = None, **options):
    """A numeric option whose help states its range (and ``default_text``, the default the library
    applies when the flag is not given) and whose value is checked against it."""
    told = _range(low, high, low_open) + (f"; default {default_text}" if default_text else "")
    return typer.Option(default, flag, help=f"{help.rstrip('.')} ({told}).", metavar=metavar,
                        callback=in_range(flag, low, high, low_open=low_open), **options)


# --- chunk ---------------------------------------------------------------------------------------------
@app.command()
def chunk(
    paths: List[Path] = typer.Argument(..., metavar="PATH", help="Files or folders (.txt .md .html .pdf .docx)."),
    strategy: str = typer.Option("structure", metavar="fixed|structure", help="How chunks are cut: fixed token "
                                 "windows, or along headings, clauses, paragraphs and sentences."),
    chunk_tokens: int = number(512, "--chunk-tokens", "The most tokens a chunk may have.", 8, MAX_CHUNK_TOKENS),
    overlap: int = number(0, "--overlap", "Tokens shared by consecutive chunks (fewer than --chunk-tokens).", 0,
                          MAX_CHUNK_TOKENS),
    tokenizer: str = typer.Option(
        "cl100k_base", metavar="NAME", help="cl100k_base, o200k_base, an OpenAI model name, 'local' or gguf:PATH."
    ),
    out: Optional[Path] = typer.Option(None, metavar="FILE", help="Write JSON Lines here instead of stdout."),
    stats: bool = typer.Option(False, "--stats", help="Print only counts and the token distribution (no chunks)."),
    old_max_tokens: Optional[int] = typer.Option(None, "--max-tokens", hidden=True,
                                                 callback=in_range("--max-tokens", 8, MAX_CHUNK_TOKENS)),
) -> None:
    """Cut documents into token-exact chunks, as JSON Lines (one chunk per line)."""
    from rlmpipe.chunking import Chunk, ChunkingConfig, chunk_paths, get_tokenizer
    from rlmpipe.chunking.stats import ChunkStats
    from rlmpipe.ingest import Document, DocumentError, check_inputs

    if old_max_tokens is not None:
        deprecated("--max-tokens", "--chunk-tokens")
        chunk_tokens = old_max_tokens
    try:
        config = ChunkingConfig(strategy=strategy, chunk_tokens=chunk_tokens, overlap=overlap, tokenizer=tokenizer)
        get_tokenizer(config.tokenizer)
        check_inputs(paths)
    except ValueError as exc:
        fail(str(exc))
    totals = ChunkStats()
    sink = open(out, "w", encoding="utf-8") if out else (None if stats else sys.stdout)
    try:
        for item in chunk_paths(paths, config):
            if isinstance(item, Chunk):
                if sink is not None:
                    sink.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
                totals.add(item.token_count, item.char_end - item.char_start)
            elif isinstance(item, Document):
                totals.documents += 1
            elif isinstance(item, DocumentError):
                totals.failed += 1
                typer.echo(f"error: {item}", err=True)
            else:
                typer.echo(f"note: {item}", err=True)
    except BrokenPipeError:  # `rlmpipe chunk ... | head`
        sys.stderr.close()
        raise typer.Exit(0)
    finally:
        if out and sink is not None:
            sink.close()
    if stats:
        _print_stats(totals)
    if totals.failed:
        raise typer.Exit(1)


def _print_stats(totals) -> None:
    summary = totals.summary()
    lines = [
        f"documents {summary['documents']}  failed {summary['failed']}  chunks {summary['chunks']}  "
        f"tokens {summary['tokens']:,}  characters {summary['characters']:,}",
        f"tokens per chunk: min {summary['tokens_min']}  p10 {summary['tokens_p10']}  "
        f"p50 {summary['tokens_p50']}  p90 {summary['tokens_p90']}  max {summary['tokens_max']}  "
        f"mean {summary['tokens_mean']}",
    ]
    for low, high, count in totals.histogram():
        lines.append(f"  {low:>6}-{high:<6} {count:>8}")
    typer.echo("\n".join(lines), err=True)


# --- the flags every run command shares ------------------------------------------------------------------
LM_HELP = ("Model: a litellm model string (openai/gpt-4o-mini, ollama_chat/llama3.1, openai/NAME with --api-base), "
           "'local' (the embedded model) or 'none'.")


class RunFlags(SimpleNamespace):
    """What every run command takes, one attribute per entry of :data:`RUN_FLAGS`: the model, limits,
    where runs live, display and observability."""

    def model(self) -> dict:
        return {"lm": self.lm, "api_base": self.api_base, "model_path": self.model_path,
                "max_output_tokens": self.max_output_tokens}

    def run_options(self) -> dict:
        prices = {}
        if self.price:
            prices = {"*": _parse_price(self.price)}
        return {"concurrency": self.concurrency, "max_run_tokens": self.max_run_tokens, "max_cost": self.max_cost,
                "max_seconds": self.max_time, "requests_per_minute": self.rpm, "tokens_per_minute": self.tpm,
                "workspace": self.workspace, "force_resume": self.force_resume, "fresh": self.fresh,
                "prices": prices, "executor": self.executor, "ray_address": self.ray_address}


def _parse_price(text: str) -> tuple[float, float]:
    try:
        prompt, completion = (float(part) for part in text.split(","))
    except ValueError:
        fail(f"--price {text!r}: give INPUT,OUTPUT in USD per million tokens, e.g. --price 0.15,0.60")
    return prompt, completion


#: (name, type, typer.Option) of every shared flag, in the order --help lists them
RUN_FLAGS = [
    ("lm", Optional[str], typer.Option(None, "--lm", metavar="MODEL", help=LM_HELP, rich_help_panel="Model")),
    ("api_base", Optional[str], typer.Option(None, "--api-base", metavar="URL", help="URL of an OpenAI-compatible "
                                             "server.", rich_help_panel="Model")),
    ("model_path", Optional[str], typer.Option(None, "--model-path", metavar="FILE", help="A GGUF file for the "
                                               "local model.", rich_help_panel="Model")),
    ("max_output_tokens", Optional[int], number(None, "--max-output-tokens", "The most tokens one answer may have.",
                                                1, MAX_CHUNK_TOKENS, rich_help_panel="Model")),
    ("concurrency", int, number(8, "--concurrency", "LM calls at once.", 1, 1024, rich_help_panel="Limits")),
    ("max_run_tokens", Optional[int], number(None, "--max-run-tokens", "Token budget for the whole run, a cap: a "
                                             "call starts only if it fits", 1, MAX_TOKENS,
                                             rich_help_panel="Limits")),
    ("max_cost", Optional[float], number(None, "--max-cost", "USD budget for the whole run, a cap", 0, 1_000_000,
                                         low_open=True, metavar="USD", rich_help_panel="Limits")),
    ("max_time", Optional[float], number(None, "--max-time", "Seconds this session may run.", 0, 30 * 86400,
                                         low_open=True, metavar="S", rich_help_panel="Limits")),
    ("price", Optional[str], typer.Option(None, "--price", metavar="IN,OUT", help="USD per million input and "
                                          "output tokens, for a model litellm has no price for (needed by "
                                          "--max-cost).", rich_help_panel="Limits")),
    ("rpm", Optional[int], number(None, "--rpm", "Requests per minute the provider allows.", 1, 10**9,
                                  rich_help_panel="Limits")),
    ("tpm", Optional[int], number(None, "--tpm", "Tokens per minute the provider allows.", 1, MAX_TOKENS,
                                  rich_help_panel="Limits")),
    ("workspace", Optional[Path], typer.Option(None, "--workspace", metavar="DIR", help="Where runs live (default: "
                                               "the nearest .rlmpipe folder here or above, else ./.rlmpipe).",
                                               rich_help_panel="Runs")),
    ("force_resume", bool, typer.Option(False, "--force-resume", help="Reuse the finished steps of an earlier run "
                                        "over these inputs even though its configuration changed.",
                                        rich_help_panel="Runs")),
    ("fresh", bool, typer.Option(False, "--fresh", help="Ignore earlier runs and compute everything again.",
                                 rich_help_panel="Runs")),
    ("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress display, no notices of the libraries "
                                 "(errors are still printed).", rich_help_panel="Runs")),
    ("executor", str, typer.Option("threads", "--executor", metavar="threads|ray", help="Where steps run: this "
                                   "process's threads, or a Ray cluster.", rich_help_panel="Runs")),
    ("ray_address", Optional[str], typer.Option(None, "--ray-address", metavar="ADDRESS", help="A Ray cluster to "
                                                "run on (default: start a local one).", rich_help_panel="Runs")),
    ("otel", Optional[str], typer.Option(None, "--otel", metavar="console|otlp", help="Export OpenTelemetry traces "
                                         "(run > document > step > LM call): console (stderr) or otlp (OTLP/HTTP; "
                                         "the OTEL_EXPORTER_OTLP_* variables are honoured). Needs the 'otel' extra.",
                                         rich_help_panel="Observability")),
    ("otlp_endpoint", Optional[str], typer.Option(None, "--otlp-endpoint", metavar="URL", help="OTLP/HTTP endpoint, "
                                                  "e.g. http://localhost:4318 (default: OTEL_EXPORTER_OTLP_ENDPOINT).",
                                                  rich_help_panel="Observability")),
    ("metrics_port", Optional[int], number(None, "--metrics-port", "Serve Prometheus metrics at "
                                           "http://127.0.0.1:PORT/metrics while the run goes, from the 'metrics' "
                                           "extra; 0: any free port, printed on stderr", 0, 65535,
                                           metavar="PORT", rich_help_panel="Observability")),
]
#: old flag -> (new flag, the RunFlags field it sets)
ALIASES = {"--max-tokens": ("--max-run-tokens", "max_run_tokens")}


def run_command(function=None, *, only: tuple[str, ...] | None = None):
    """A command taking :class:`RunFlags` as ``flags``: the shared flags (all, or those named in
    ``only``; the others keep their defaults) are added to its signature (typer reads
    ``__signature__``), with the old names of those as hidden aliases. ``@run_command`` or
    ``@run_command(only=(...))``."""
    if function is None:
        return functools.partial(run_command, only=only)
    taken = {name for name, _, _ in RUN_FLAGS if only is None or name in only}
    aliases = {old: (new, field) for old, (new, field) in ALIASES.items() if field in taken}
    own = [p for p in inspect.signature(function).parameters.values() if p.name != "flags"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
              for name, annotation, option in RUN_FLAGS if name in taken]
    checks = {name: option.callback for name, _, option in RUN_FLAGS}
    hidden = [inspect.Parameter(f"alias_{field}", inspect.Parameter.KEYWORD_ONLY,
                                default=typer.Option(None, old, hidden=True, callback=_renamed(checks[field], old)),
                                annotation=Optional[int])
              for old, (_, field) in aliases.items()]

    @functools.wraps(function)
    def command(**kwargs):
        for old, (new, field) in aliases.items():
            value = kwargs.pop(f"alias_{field}")
            if value is not None:
                deprecated(old, new)
                kwargs[field] = value
        flags = RunFlags(**{name: kwargs.pop(name) if name in taken else option.default
                            for name, _, option in RUN_FLAGS})
        return function(flags=flags, **kwargs)

    command.__signature__ = inspect.Signature(own + shared + hidden)
    return command


def _renamed(check, flag: str):
    """The range check of a flag, for its old name (the error names the flag as it was typed)."""
    low, high, low_open = check.bounds
    return in_range(flag, low, high, low_open=low_open)


@contextlib.contextmanager
def session(flags: RunFlags):
    """Events with the live display, observability and Ctrl-C handling around one run; yields
    ``(events, on_start)`` for the library call. Errors that stop a run before it starts become
    one line on stderr and exit code 2."""
    from rlmpipe.api import SetupError
    from rlmpipe.lm.errors import FatalLMError
    from rlmpipe.lm.local import LocalModelMissing
    from rlmpipe.monitor.progress import attach_progress
    from rlmpipe.runtime.events import EventBus
    from rlmpipe.runtime.runner import ConfigurationChanged, interrupt_handling
    from rlmpipe.runtime.store import WorkspaceBusy, WorkspaceTooNew

    if flags.otel not in (None, "console", "otlp"):
        fail(f"--otel must be console or otlp (got {flags.otel!r})")
    events = EventBus()
    display = attach_progress(events, quiet=flags.quiet)
    current = {}
    try:
        with interrupt_handling(lambda: current.get("run")), display, _libraries_quiet(flags.quiet), \
                _observability(events, flags.otel, flags.otlp_endpoint, flags.metrics_port):
            yield events, lambda run: current.update(run=run)
    except (FatalLMError, LocalModelMissing, ValueError, WorkspaceBusy, WorkspaceTooNew, ConfigurationChanged,
            LookupError, SetupError) as exc:
        fail(str(exc))


#: the loggers of the libraries a run uses, whose notices --quiet hides (their errors still show)
LIBRARY_LOGGERS = ("dspy", "LiteLLM", "litellm", "httpx")


@contextlib.contextmanager
def _libraries_quiet(quiet: bool):
    """--quiet: no warnings of the libraries either (DSPy's "RLM reached max iterations", ...); what
    rlmpipe has to say (notes, errors) goes to stderr as always."""
    import logging

    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS] if quiet else []
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def _observability(events, otel: Optional[str], otlp_endpoint: Optional[str], metrics_port: Optional[int]):
    """--otel / --metrics-port: OpenTelemetry traces and a Prometheus endpoint fed by the run's events."""
    with contextlib.ExitStack() as closers:  # closed last first: the metrics server, then the traces
        if otel is not None:
            try:
                from rlmpipe.monitor.otel import TraceListener, configure_tracing

                provider = configure_tracing(otel, otlp_endpoint)
            except ImportError as exc:
                fail(f"--otel needs the 'otel' extra: pip install 'rlmpipe[otel]' ({exc})")
            listener = TraceListener(provider)
            events.subscribe(listener)
            closers.callback(provider.shutdown)  # flushes, after ...
            closers.callback(listener.close)  # ... the spans still open are ended
        if metrics_port is not None:
            try:
                from rlmpipe.monitor.prometheus import serve_metrics
            except ImportError:
                fail("--metrics-port needs the 'metrics' extra: pip install 'rlmpipe[metrics]'")
            try:
                server = serve_metrics(events, metrics_port)
            except OSError as exc:
                fail(f"--metrics-port {metrics_port}: {exc}")
            typer.echo(f"metrics: {server.url}", err=True)
            closers.callback(server.stop)
        yield


def finish(result) -> None:
    """After the display has ended: what was written, then the outcome and the exit code."""
    for path in result.outputs.values():
        typer.echo(f"wrote {path}", err=True)
    if result.status == "failed":
        typer.echo(f"error: run {result.run_id} failed: {result.reason}", err=True)
        raise typer.Exit(2)
    if result.status == "stopped":
        typer.echo(f"run {result.run_id} stopped ({result.reason}); resume with: rlmpipe resume {result.run_id}",
                   err=True)
        raise typer.Exit(3)
    bad = result.failed
    if bad:
        partial = sum(1 for d in bad if d.status == "partial")
        typer.echo(f"run {result.run_id}: {len(bad) - partial} document(s) failed, {partial} partial; "
                   f"details: rlmpipe runs show {result.run_id}", err=True)
        raise typer.Exit(1)


# --- summarize, ask, contracts ------------------------------------------------------------------------------
@app.command()
@run_command
def summarize(
    paths: List[Path] = typer.Argument(..., metavar="PATH", help="Files or folders."),
    pattern: str = typer.Option("map-reduce", "--pattern", metavar="map-reduce|window", help="map-reduce (chunks in "
                                "parallel, then merged) or window (chunks in order, each with the summary so far)."),
    chunk_tokens: int = number(1024, "--chunk-tokens", "Tokens per chunk.", 8, MAX_CHUNK_TOKENS),
    overlap: int = number(0, "--overlap", "Tokens shared by consecutive chunks (fewer than --chunk-tokens).", 0,
                          MAX_CHUNK_TOKENS),
    strategy: str = typer.Option("structure", metavar="fixed|structure", help="How chunks are cut: fixed token "
                                 "windows, or along headings, clauses, paragraphs and sentences."),
    window_tokens: int = number(1024, "--window-tokens", "window: the most tokens of running summary carried to the "
                                "next chunk.", 1, MAX_CHUNK_TOKENS),
    out: Optional[Path] = typer.Option(None, metavar="FILE", help="Write one JSON line per document here (else "
                                       "stdout)."),
    *, flags: RunFlags,
) -> None:
    """Summarize documents of any size: map over chunks then merge as a tree, or a sliding window."""
    from rlmpipe import api

    with session(flags) as (events, on_start):
        result = api.summarize(paths, pattern=pattern, strategy=strategy, chunk_tokens=chunk_tokens,
                               overlap=overlap, window_tokens=window_tokens, out=out, events=events,
                               on_start=on_start, **flags.model(), **flags.run_options())
    _print_result(result, flags.quiet)
    finish(result)


def _print_result(result, quiet: bool) -> None:
    """What a run prints on stdout: ask's answer; summarize's summaries, unless they went to --out."""
    if result.command == "ask":
        _print_answer(result, quiet)
    elif result.command == "summarize" and not result.outputs and not quiet:
        for document in result:
            if document.result is not None:
                line = {"doc_id": document.doc_id, "path": document.path, "status": document.status,
                        "result": document.result}
                typer.echo(json.dumps(line, ensure_ascii=False))


@app.command()
@run_command
def ask(
    args: List[str] = typer.Argument(..., metavar="PATH... QUESTION", help="Files or folders, then the question."),
    max_depth: int = number(2, "--max-depth", "Deepest recursion level of sub-model calls (0: none).", 0, 10),
    max_iters: int = number(12, "--max-iters", "REPL rounds of the top-level model.", 1, 1000),
    max_llm_calls: int = number(40, "--max-llm-calls", "Sub-model calls one RLM may make (dspy.RLM's "
                                "max_llm_calls; --max-sub-calls caps all of them together).", 1, 1_000_000),
    max_sub_calls: Optional[int] = number(None, "--max-sub-calls", "Sub-model calls, all depths together.", 0,
                                          1_000_000),
    timeout: float = number(120.0, "--exec-timeout", "Seconds one code execution may take.", 0, 86400,
                            low_open=True, metavar="S"),
    each: bool = typer.Option(False, "--each", help="One recursion per document (in parallel), one JSON line "
                              "each: path, status, answer, sources; else one over all documents together."),
    *, flags: RunFlags,
) -> None:
    """Answer a question over documents of any size with a Recursive Language Model (dspy.RLM) in an
    offline sandbox: the documents stay out of the prompt, the model reads them with code."""
    from rlmpipe import api

    if len(args) < 2:
        fail("give one or more files or folders, then the question")
    *paths, question = args
    options = flags.run_options()
    if flags.concurrency == 8:  # the default: fewer in parallel for one question
        options["concurrency"] = 4
    with session(flags) as (events, on_start):
        result = api.ask(paths, question, each=each, max_depth=max_depth, max_iters=max_iters,
                         max_llm_calls=max_llm_calls, exec_timeout=timeout,
                         max_sub_calls=max_sub_calls, events=events, on_start=on_start, **flags.model(), **options)
    _print_result(result, flags.quiet)
    finish(result)


def _print_answer(result, quiet: bool) -> None:
    from rlmpipe.runtime.store import Store

    if result.settings.get("each"):
        _print_answers(result)
        return
    answer = result.final
    if answer is None:
        with Store(result.workspace) as store:
            stopped = [s for s in store.steps(result.run_id) if s.name == "ask" and s.status == "stopped"]
        if stopped:
            partial = stopped[-1].result or {}
            typer.echo(f"partial answer ({partial.get('status')}):\n{partial.get('partial_answer') or '(none)'}")
        return
    typer.echo(answer.get("answer", ""))
    if answer.get("sources"):
        typer.echo("sources: " + ", ".join(map(str, answer["sources"])))
    if not quiet:
        typer.echo(f"[run {result.run_id}: {answer.get('iterations')} REPL rounds; "
                   f"details: rlmpipe runs show {result.run_id}]", err=True)


def _print_answers(result) -> None:
    """``ask --each``: one JSON line per document, in path order: its answer and sources, or why it has none
    (a stopped recursion's best partial answer is given as such)."""
    from rlmpipe.runtime.store import Store

    with Store(result.workspace) as store:
        stopped = {s.doc_id: s.result or {} for s in store.steps(result.run_id)
                   if s.name == "ask" and s.status == "stopped"}
    for document in sorted(result, key=lambda d: d.path):
        answer = document.result if isinstance(document.result, dict) else {}
        line = {"path": document.path, "status": document.status, "answer": answer.get("answer"),
                "sources": answer.get("sources"), "iterations": answer.get("iterations")}
        if document.status == "stopped" and document.doc_id in stopped:
            line["partial_answer"] = stopped[document.doc_id].get("partial_answer")
        if document.error:
            line["error"] = document.error
        typer.echo(json.dumps(line, ensure_ascii=False))


contracts_app = _Typer(help="The contract corpus analyzer.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")


@contracts_app.command("analyze")
@run_command
def contracts_analyze(
    paths: List[Path] = typer.Argument(..., metavar="PATH", help="Contracts, or folders of them (.txt .md .pdf "
                                       ".docx .html)."),
    out: Path = typer.Option(Path("contracts-out"), metavar="DIR", help="Folder for contracts.jsonl, clauses.csv, "
                             "report.html."),
    read: str = typer.Option("candidates", "--read", metavar="candidates|all", help="What the LM reads: candidates "
                             "(the passages the clause finder flags, with their context) or all (every chunk; costs "
                             "several times more). Without a model the finder works alone."),
    recall: Optional[str] = typer.Option(None, "--recall", metavar="LEVEL",
                                         help="--read candidates: how many of the clauses the finder must pass to "
                                         "the LM: recall0.85, recall0.90, recall0.93, recall0.95, recall0.97 or "
                                         "recall0.99, or 0.85 .. 0.99 for short (default recall0.95)."),
    context_chars: Optional[int] = number(None, "--context-chars", "--read candidates: characters of context the LM "
                                          "sees on each side of a flagged passage", 0, MAX_CONTEXT_CHARS,
                                          default_text="150"),
    finder_model: Optional[Path] = typer.Option(None, "--finder-model", metavar="FILE", help="A clause finder "
                                                "trained with 'rlmpipe contracts train-finder' (default: the shipped "
                                                "one)."),
    chunk_tokens: Optional[int] = number(None, "--chunk-tokens", "--read all: tokens per chunk", 8, MAX_CHUNK_TOKENS,
                                         default_text="4096"),
    overlap: Optional[int] = number(None, "--overlap", "--read all: tokens shared by consecutive chunks", 0,
                                    MAX_CHUNK_TOKENS, default_text="0"),
    old_resume: bool = typer.Option(False, "--resume", hidden=True),
    *, flags: RunFlags,
) -> None:
    """Clauses, summary and risk score for every contract, every finding in the contract's own words.

    Without a model (--lm none, the default when none is configured) the trained clause finder works
    alone, in seconds. With --lm, the finder picks the passages the model reads, and the model
    confirms the clauses and adds risks and obligations. Re-running the same command resumes it:
    finished contracts and LM calls are not repeated."""
    from rlmpipe import api

    if old_resume:
        deprecated("--resume", "--force-resume")
        flags.force_resume = True
    with session(flags) as (events, on_start):
        result = api.analyze_contracts(paths, out, read=read, recall=recall, context_chars=context_chars,
                                       finder_model=finder_model, chunk_tokens=chunk_tokens, overlap=overlap,
                                       events=events, on_start=on_start, **flags.model(), **flags.run_options())
    finish(result)


@contracts_app.command("train-finder")
def contracts_train_finder(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="A CUAD folder: contracts/*.txt, "
                                    "annotations.jsonl, contract_labels.jsonl."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="The model file to write (.npz)."),
    folds: int = number(5, "--folds", "Cross-validation folds (by contract) for the thresholds.", 2, 20),
    card: Optional[Path] = typer.Option(None, "--card", metavar="FILE", help="Also write the model card (a README.md) "
                                        "here."),
    leave_out: List[Path] = typer.Option([], "--leave-out", metavar="FILE", help="Contract files to leave out "
                                         "of training (those whose text is one of DATA_DIR's contracts; the model "
                                         "card names them)."),
) -> None:
    """Train the clause finder on expert-annotated contracts (deterministic: same data, same bytes).

    Needs scikit-learn (pip install 'rlmpipe[train]'); the model it writes needs only numpy. Use it
    with: rlmpipe contracts analyze DIR --finder-model FILE"""
    try:
        import sklearn  # noqa: F401

        from rlmpipe.apps.contracts.training import train as finder_train
    except ImportError:
        fail("train-finder needs scikit-learn: pip install 'rlmpipe[train]'")
    for name in ("contracts", "annotations.jsonl", "contract_labels.jsonl"):
        if not (data_dir / name).exists():
            fail(f"{data_dir}: no {name} (a CUAD folder has contracts/, annotations.jsonl, contract_labels.jsonl)")
    try:
        from rlmpipe.apps.contracts.training.data import matching_contracts

        exclude = matching_contracts(data_dir, leave_out)
        info = finder_train.train(data_dir, out, folds=folds, exclude=exclude,
                                  log=lambda message: typer.echo(message, err=True))
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        fail(f"{data_dir}: {exc}")
    if card is not None:
        card.write_text(finder_train.model_card(info, out.name), encoding="utf-8")
    cv = info["cv"]
    typer.echo(f"wrote {out}: cross-validated contract-level macro F1 {cv['macro']['f1']:.3f}, "
               f"micro F1 {cv['micro']['f1']:.3f}, passage recall {cv['passage_recall']:.3f}")


# --- resume ---------------------------------------------------------------------------------------------------
RUN_ID = typer.Argument(..., metavar="RUN_ID", help="A run's id, or its first characters (rlmpipe runs list shows "
                        "them).")


@app.command()
@run_command(only=("max_run_tokens", "max_cost", "max_time", "workspace", "force_resume", "quiet", "otel",
                   "otlp_endpoint", "metrics_port"))
def resume(run_id: str = RUN_ID, *, flags: RunFlags) -> None:
    """Continue a stopped or failed run where it stopped (finished steps are not run again)."""
    from rlmpipe import api

    with session(flags) as (events, on_start):
        result = api.resume(run_id, workspace=flags.workspace, max_run_tokens=flags.max_run_tokens,
                            max_cost=flags.max_cost, max_seconds=flags.max_time,
                            force_resume=flags.force_resume, events=events, on_start=on_start)
    _print_result(result, flags.quiet)
    finish(result)


# --- runs: what happened, live or afterwards -------------------------------------------------------
runs_app = _Typer(help="Inspect runs: list, show, watch, report.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
WORKSPACE_OPTION = typer.Option(None, "--workspace", metavar="DIR", help="Where runs live (default: the nearest "
                                ".rlmpipe folder here or above).")


def _store(folder: Path):
    from rlmpipe.runtime.store import Store, WorkspaceTooNew

    try:
        return Store(folder)
    except WorkspaceTooNew as exc:
        fail(str(exc))


def _open_run(workspace: Optional[Path], run_id: str):
    from rlmpipe.runtime.store import find_workspace

    if not run_id:
        fail("give a run id, or its first characters (rlmpipe runs list shows them)")
    folder = find_workspace(workspace)
    if not (folder / "runs.sqlite").exists():
        fail(f"no runs in {folder}: runs live in the nearest .rlmpipe folder here or above "
             "(or pass --workspace DIR)")
    store = _store(folder)
    matches = store.find_runs(run_id)
    if not matches:
        fail(f"no run {run_id!r} in {folder} (rlmpipe runs list shows the runs there)")
    if len(matches) > 1:
        fail(f"{run_id!r} is ambiguous: " + ", ".join(m["run_id"] for m in matches))
    return store, matches[0]


@runs_app.command("list")
def runs_list(workspace: Optional[Path] = WORKSPACE_OPTION) -> None:
    """Runs in the workspace, most recent first."""
    from rlmpipe.monitor.render import print_run_list
    from rlmpipe.runtime.store import find_workspace

    folder = find_workspace(workspace)
    if not (folder / "runs.sqlite").exists():
        typer.echo(f"no runs in {folder} (runs live in the nearest .rlmpipe folder here or above)")
        return
    with _store(folder) as store:
        print_run_list(store)


@runs_app.command("show")
def runs_show(run_id: str = RUN_ID, workspace: Optional[Path] = WORKSPACE_OPTION,
              as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Totals and tables by step, by document and by recursion depth; failures with their reasons."""
    from rlmpipe.monitor.metrics import run_tables
    from rlmpipe.monitor.render import print_run_tables

    store, run = _open_run(workspace, run_id)
    with store:
        tables = run_tables(store, run["run_id"])
    if as_json:
        typer.echo(json.dumps(tables, indent=2, default=str))
    else:
        print_run_tables(tables)


@runs_app.command("watch")
def runs_watch(run_id: str = RUN_ID, workspace: Optional[Path] = WORKSPACE_OPTION,
               interval: float = number(1.0, "--interval", "Seconds between refreshes.", 0.1, 3600,
                                        metavar="S")) -> None:
    """Follow a run started elsewhere (from its event log) until it ends."""
    from rlmpipe.monitor.watch import watch_run

    store, run = _open_run(workspace, run_id)
    with store:
        watch_run(store, run["run_id"], interval=interval)


@runs_app.command("report")
def runs_report(run_id: str = RUN_ID, workspace: Optional[Path] = WORKSPACE_OPTION,
                out: Optional[Path] = typer.Option(None, metavar="FILE", help="HTML file to write (default: in "
                                                   "the run's folder).")) -> None:
    """Write one self-contained HTML report of a run (opens offline)."""
    from rlmpipe.monitor.report import write_report

    store, run = _open_run(workspace, run_id)
    with store:
        path = write_report(store, run["run_id"], out or store.workspace / "runs" / run["run_id"] / "report.html")
    typer.echo(str(path))


if __name__ == "__main__":
    app()
