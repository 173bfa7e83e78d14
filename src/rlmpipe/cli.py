"""The ``rlmpipe`` command: thin commands over library calls."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from rlmpipe.offline import configure_offline_defaults

configure_offline_defaults()  # the command owns its process: litellm and tiktoken use their bundled files

app = typer.Typer(
    name="rlmpipe",
    help="Run language-model programs over documents larger than a context window, reliably.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.callback()
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        from rlmpipe import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.command()
def chunk(
    paths: List[Path] = typer.Argument(..., help="Files or folders (.txt .md .html .pdf .docx)."),
    strategy: str = typer.Option("structure", help="fixed | structure"),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Hard limit of tokens per chunk."),
    overlap: int = typer.Option(0, help="Tokens shared by consecutive chunks."),
    tokenizer: str = typer.Option(
        "cl100k_base", help="cl100k_base, o200k_base, an OpenAI model name, 'local' or gguf:PATH."
    ),
    out: Optional[Path] = typer.Option(None, help="Write JSON Lines here instead of stdout."),
    stats: bool = typer.Option(False, "--stats", help="Print counts and the token distribution (stderr)."),
) -> None:
    """Cut documents into token-exact chunks, as JSON Lines (one chunk per line)."""
    from rlmpipe.chunking import Chunk, ChunkingConfig, chunk_paths, get_tokenizer
    from rlmpipe.chunking.stats import ChunkStats
    from rlmpipe.ingest import Document, DocumentError

    try:
        config = ChunkingConfig(strategy=strategy, max_tokens=max_tokens, overlap=overlap, tokenizer=tokenizer)
        get_tokenizer(config.tokenizer)
    except ValueError as exc:
        fail(str(exc))
    totals = ChunkStats()
    sink = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        for item in chunk_paths(paths, config):
            if isinstance(item, Chunk):
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
        if out:
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


# --- commands that run LM pipelines ---------------------------------------------------------------

LM_HELP = "Model: a litellm model string (openai/gpt-4o-mini, ollama_chat/llama3.1, ...) or 'local'."


@contextlib.contextmanager
def _observability(events, otel: Optional[str], otlp_endpoint: Optional[str], metrics_port: Optional[int]):
    """--otel / --metrics-port: OpenTelemetry traces and a Prometheus endpoint fed by the run's events."""
    closers = []
    try:
        if otel is not None:
            try:
                from rlmpipe.monitor.otel import TraceListener, configure_tracing

                provider = configure_tracing(otel, otlp_endpoint)
            except ImportError as exc:
                fail(f"--otel needs the 'otel' extra: pip install 'rlmpipe[otel]' ({exc})")
            listener = TraceListener(provider)
            events.subscribe(listener)
            closers.append(lambda: (listener.close(), provider.shutdown()))  # ends leftovers, flushes
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
            closers.append(server.stop)
        yield
    finally:
        for close in reversed(closers):
            close()


def _run_pipeline(pipeline, paths, *, lm, api_base, model_path, concurrency, max_tokens, max_cost, max_time,
                  rpm, tpm, workspace, force_resume, fresh, quiet, out, command: dict, contracts_out=None,
                  max_sub_calls=None, print_results=True,
                  otel=None, otlp_endpoint=None, metrics_port=None):
    """Choose the model, run the pipeline with live progress, print the outcome, exit with its code."""
    from rlmpipe.lm.errors import FatalLMError
    from rlmpipe.lm.local import LocalModelMissing
    from rlmpipe.lm.models import choose_model, make_lm
    from rlmpipe.monitor.progress import attach_progress
    from rlmpipe.runtime.events import EventBus
    from rlmpipe.runtime.runner import RunOptions, execute, interrupt_handling
    from rlmpipe.runtime.store import Store

    try:
        choice = choose_model(lm, api_base, model_path)
        model = make_lm(choice, max_tokens=1024 if choice.is_local else None)
        adapter = None
        if choice.is_local:  # the small local model only answers reliably under a JSON-schema grammar
            import dspy

            adapter = dspy.JSONAdapter()
        options = RunOptions(concurrency=concurrency, max_tokens=max_tokens, max_cost=max_cost,
                             max_seconds=max_time, requests_per_minute=rpm, tokens_per_minute=tpm,
                             workspace=Path(workspace), force_resume=force_resume, fresh=fresh, adapter=adapter,
                             max_sub_calls=max_sub_calls)
        if otel not in (None, "console", "otlp"):
            raise ValueError(f"--otel must be console or otlp (got {otel!r})")
    except (FatalLMError, LocalModelMissing, ValueError) as exc:
        fail(str(exc))
    events = EventBus()
    progress = attach_progress(events, quiet=quiet)
    current = {}
    config = {"command": command, "model_source": choice.source}
    with interrupt_handling(lambda: current.get("run")), progress, \
            _observability(events, otel, otlp_endpoint, metrics_port):
        if contracts_out is not None:
            from rlmpipe.apps.contracts import analyze

            summary, written = analyze(list(paths), model, contracts_out, options=options, chunking=pipeline.chunking,
                                       store=Store(options.workspace), events=events, run_config=config,
                                       on_start=lambda run: current.update(run=run))
            typer.echo(f"wrote {', '.join(str(p) for p in written.values())}", err=True)
            return summary
        summary = execute(pipeline, list(paths), model, options=options, store=Store(options.workspace),
                          events=events, run_config=config, on_start=lambda run: current.update(run=run))
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            for item in summary.results:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    elif summary.results and not quiet and print_results:
        for item in summary.results:
            typer.echo(json.dumps(item, ensure_ascii=False))
    return summary


def _exit_for(summary) -> None:
    if summary.status == "failed":
        typer.echo(f"error: run {summary.run_id} failed: {summary.reason}", err=True)
        raise typer.Exit(2)
    if summary.status == "stopped":
        typer.echo(f"run {summary.run_id} stopped ({summary.reason}); resume with: rlmpipe resume {summary.run_id}",
                   err=True)
        raise typer.Exit(3)
    if summary.documents.get("failed"):
        raise typer.Exit(1)


OTEL_OPTION = typer.Option(
    None, "--otel", help="Export OpenTelemetry traces (run > document > step > LM call): console (stderr) or "
    "otlp (OTLP/HTTP; the OTEL_EXPORTER_OTLP_* variables are honoured). Needs the 'otel' extra.")
OTLP_ENDPOINT_OPTION = typer.Option(
    None, "--otlp-endpoint",
    help="OTLP/HTTP endpoint, e.g. http://localhost:4318 (default: OTEL_EXPORTER_OTLP_ENDPOINT).")
METRICS_PORT_OPTION = typer.Option(
    None, "--metrics-port", help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics while the run goes "
    "(0: any free port, printed on stderr). Needs the 'metrics' extra.")


@app.command()
def summarize(
    paths: List[Path] = typer.Argument(..., help="Files or folders."),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    api_base: Optional[str] = typer.Option(None, "--api-base", help="URL of an OpenAI-compatible server."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="A GGUF file for the local model."),
    chunk_tokens: int = typer.Option(1024, "--chunk-tokens", help="Tokens per chunk."),
    strategy: str = typer.Option("structure", help="fixed | structure"),
    concurrency: int = typer.Option(8, help="LM calls at once."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Token budget for the whole run."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="USD budget for the whole run."),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Seconds this session may run."),
    rpm: Optional[int] = typer.Option(None, "--rpm", help="Requests per minute allowed by the provider."),
    tpm: Optional[int] = typer.Option(None, "--tpm", help="Tokens per minute allowed by the provider."),
    workspace: Path = typer.Option(Path(".rlmpipe"), help="Where runs are stored."),
    force_resume: bool = typer.Option(False, "--force-resume", help="Reuse finished steps of a run whose configuration changed."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore earlier runs and compute everything again."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    out: Optional[Path] = typer.Option(None, help="Write one JSON line per document here."),
    otel: Optional[str] = OTEL_OPTION,
    otlp_endpoint: Optional[str] = OTLP_ENDPOINT_OPTION,
    metrics_port: Optional[int] = METRICS_PORT_OPTION,
) -> None:
    """Summarize documents of any size: map over chunks, then merge the summaries as a tree."""
    from rlmpipe.apps.summarize import SummarizePipeline
    from rlmpipe.chunking import ChunkingConfig

    try:
        pipeline = SummarizePipeline(ChunkingConfig(strategy=strategy, max_tokens=chunk_tokens))
    except ValueError as exc:
        fail(str(exc))
    command = {"name": "summarize", "paths": [str(p.resolve()) for p in paths], "lm": lm, "api_base": api_base,
               "model_path": model_path, "chunk_tokens": chunk_tokens, "strategy": strategy,
               "concurrency": concurrency, "rpm": rpm, "tpm": tpm, "out": str(out.resolve()) if out else None}
    summary = _run_pipeline(pipeline, paths, lm=lm, api_base=api_base, model_path=model_path,
                            concurrency=concurrency, max_tokens=max_tokens, max_cost=max_cost, max_time=max_time,
                            rpm=rpm, tpm=tpm, workspace=workspace, force_resume=force_resume, fresh=fresh,
                            quiet=quiet, out=out, command=command, otel=otel, otlp_endpoint=otlp_endpoint,
                            metrics_port=metrics_port)
    _exit_for(summary)


# --- ask -------------------------------------------------------------------------------------------

@app.command()
def ask(
    args: List[str] = typer.Argument(..., metavar="PATH... QUESTION", help="Files or folders, then the question."),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    api_base: Optional[str] = typer.Option(None, "--api-base", help="URL of an OpenAI-compatible server."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="A GGUF file for the local model."),
    max_depth: int = typer.Option(2, "--max-depth", help="Deepest recursion level of sub-model calls."),
    max_iters: int = typer.Option(12, "--max-iters", help="REPL rounds of the top-level model."),
    max_sub_calls: Optional[int] = typer.Option(None, "--max-sub-calls", help="Sub-model calls, all depths together."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Token budget, all depths together."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="USD budget, all depths together."),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Seconds this session may run."),
    timeout: float = typer.Option(120.0, "--exec-timeout", help="Seconds one code execution may take."),
    workspace: Path = typer.Option(Path(".rlmpipe"), help="Where runs are stored."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Answer a question over documents of any size with a Recursive Language Model (dspy.RLM) in an
    offline sandbox: the documents stay out of the prompt, the model reads them with code."""
    from rlmpipe.apps.ask import AskPipeline

    if len(args) < 2:
        fail("give one or more files or folders, then the question")
    *paths, question = args
    try:
        pipeline = AskPipeline(question, max_depth=max_depth, max_iters=max_iters, sandbox={"timeout": timeout})
    except ValueError as exc:
        fail(str(exc))
    command = {"name": "ask", "paths": [str(Path(p).resolve()) for p in paths], "question": question}
    summary = _run_pipeline(pipeline, [Path(p) for p in paths], lm=lm, api_base=api_base, model_path=model_path,
                            concurrency=4, max_tokens=max_tokens, max_cost=max_cost, max_time=max_time,
                            rpm=None, tpm=None, workspace=workspace, force_resume=False, fresh=False, quiet=quiet,
                            out=None, command=command, max_sub_calls=max_sub_calls, print_results=False)
    answer = summary.final
    if answer is None:
        from rlmpipe.runtime.store import Store

        stopped = [s for s in Store(workspace).steps(summary.run_id) if s.name == "ask" and s.status == "stopped"]
        if stopped:
            partial = stopped[-1].result or {}
            typer.echo(f"partial answer ({partial.get('status')}):\n{partial.get('partial_answer') or '(none)'}")
    else:
        typer.echo(answer.get("answer", ""))
        if answer.get("sources"):
            typer.echo("sources: " + ", ".join(map(str, answer["sources"])))
        if not quiet:
            typer.echo(f"[run {summary.run_id}: {answer.get('iterations')} REPL rounds; "
                       f"details: rlmpipe runs show {summary.run_id}]", err=True)
    _exit_for(summary)


# --- contracts --------------------------------------------------------------------------------------

contracts_app = typer.Typer(help="The contract corpus analyzer.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")


@contracts_app.command("analyze")
def contracts_analyze(
    paths: List[Path] = typer.Argument(..., help="Contracts, or folders of them (.txt .md .pdf .docx .html)."),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    api_base: Optional[str] = typer.Option(None, "--api-base", help="URL of an OpenAI-compatible server."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="A GGUF file for the local model."),
    out: Path = typer.Option(Path("contracts-out"), help="Folder for contracts.jsonl, clauses.csv, report.html."),
    concurrency: int = typer.Option(8, help="LM calls at once."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="USD budget for the whole run."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Token budget for the whole run."),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Seconds this session may run."),
    chunk_tokens: int = typer.Option(1024, "--chunk-tokens", help="Tokens per chunk."),
    overlap: int = typer.Option(128, help="Tokens shared by consecutive chunks."),
    resume: bool = typer.Option(False, "--resume", help="Continue the earlier run over these inputs even if the configuration changed."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore earlier runs and analyse everything again."),
    workspace: Path = typer.Option(Path(".rlmpipe"), help="Where runs are stored."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    otel: Optional[str] = OTEL_OPTION,
    otlp_endpoint: Optional[str] = OTLP_ENDPOINT_OPTION,
    metrics_port: Optional[int] = METRICS_PORT_OPTION,
) -> None:
    """Clauses, risks, obligations, summary and risk score for every contract, with verified evidence.

    Re-running the same command resumes it: finished contracts and chunks are not analysed again."""
    from rlmpipe.apps.contracts import ContractsPipeline
    from rlmpipe.chunking import ChunkingConfig

    try:
        pipeline = ContractsPipeline(ChunkingConfig(strategy="structure", max_tokens=chunk_tokens, overlap=overlap))
    except ValueError as exc:
        fail(str(exc))
    command = {"name": "contracts", "paths": [str(p.resolve()) for p in paths], "lm": lm, "api_base": api_base,
               "model_path": model_path, "out": str(out.resolve()), "concurrency": concurrency,
               "chunk_tokens": chunk_tokens, "overlap": overlap}
    summary = _run_pipeline(pipeline, paths, lm=lm, api_base=api_base, model_path=model_path,
                            concurrency=concurrency, max_tokens=max_tokens, max_cost=max_cost, max_time=max_time,
                            rpm=None, tpm=None, workspace=workspace, force_resume=resume, fresh=fresh, quiet=quiet,
                            out=None, command=command, contracts_out=out, otel=otel, otlp_endpoint=otlp_endpoint,
                            metrics_port=metrics_port)
    _exit_for(summary)


# --- runs: what happened, live or afterwards -------------------------------------------------------

runs_app = typer.Typer(help="Inspect runs: list, show, watch, report.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
WORKSPACE_OPTION = typer.Option(Path(".rlmpipe"), "--workspace", help="Where runs are stored.")


def _open_run(workspace: Path, run_id: str):
    from rlmpipe.runtime.store import Store

    if not (workspace / "runs.sqlite").exists():
        fail(f"no runs in {workspace} (use --workspace)")
    store = Store(workspace)
    matches = store.find_runs(run_id)
    if not matches:
        fail(f"no run {run_id!r} in {workspace}")
    if len(matches) > 1:
        fail(f"{run_id!r} is ambiguous: " + ", ".join(m["run_id"] for m in matches))
    return store, matches[0]


@runs_app.command("list")
def runs_list(workspace: Path = WORKSPACE_OPTION) -> None:
    """Runs in the workspace, most recent first."""
    from rlmpipe.monitor.render import print_run_list
    from rlmpipe.runtime.store import Store

    if not (workspace / "runs.sqlite").exists():
        typer.echo(f"no runs in {workspace}")
        return
    print_run_list(Store(workspace))


@runs_app.command("show")
def runs_show(run_id: str, workspace: Path = WORKSPACE_OPTION,
              as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Totals and tables by step, by document and by recursion depth."""
    from rlmpipe.monitor.metrics import run_tables
    from rlmpipe.monitor.render import print_run_tables

    store, run = _open_run(workspace, run_id)
    tables = run_tables(store, run["run_id"])
    if as_json:
        tables.pop("calls")
        typer.echo(json.dumps(tables, indent=2, default=str))
    else:
        print_run_tables(tables)


@runs_app.command("watch")
def runs_watch(run_id: str, workspace: Path = WORKSPACE_OPTION,
               interval: float = typer.Option(1.0, help="Seconds between refreshes.")) -> None:
    """Follow a run started elsewhere (from its event log) until it ends."""
    from rlmpipe.monitor.watch import watch_run

    store, run = _open_run(workspace, run_id)
    watch_run(workspace, run["run_id"], store, interval=interval)


@runs_app.command("report")
def runs_report(run_id: str, workspace: Path = WORKSPACE_OPTION,
                out: Optional[Path] = typer.Option(None, help="HTML file to write (default: in the run's folder).")) -> None:
    """Write one self-contained HTML report of a run (opens offline)."""
    from rlmpipe.monitor.report import write_report

    store, run = _open_run(workspace, run_id)
    path = write_report(store, run["run_id"], out or workspace / "runs" / run["run_id"] / "report.html")
    typer.echo(str(path))


@app.command()
def resume(run_id: str, workspace: Path = WORKSPACE_OPTION,
           max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="New token budget."),
           max_cost: Optional[float] = typer.Option(None, "--max-cost", help="New USD budget."),
           max_time: Optional[float] = typer.Option(None, "--max-time", help="Seconds this session may run."),
           quiet: bool = typer.Option(False, "--quiet", "-q"),
           otel: Optional[str] = OTEL_OPTION,
           otlp_endpoint: Optional[str] = OTLP_ENDPOINT_OPTION,
           metrics_port: Optional[int] = METRICS_PORT_OPTION) -> None:
    """Continue a stopped or failed run where it stopped (finished steps are not run again)."""
    _, run = _open_run(workspace, run_id)
    command = dict(run["config"].get("command") or {})
    name = command.pop("name", None)
    if name not in RESUMABLE:
        fail(f"run {run['run_id']} was not started by a command that can be resumed here ({name})")
    options = run["config"].get("options") or {}
    budgets = {"max_tokens": max_tokens if max_tokens is not None else options.get("max_tokens"),
               "max_cost": max_cost if max_cost is not None else options.get("max_cost"),
               "max_time": max_time if max_time is not None else options.get("max_seconds")}
    observe = {"otel": otel, "otlp_endpoint": otlp_endpoint, "metrics_port": metrics_port}
    RESUMABLE[name](command, workspace=workspace, quiet=quiet, force_resume=True, **budgets, **observe)


def _resume_summarize(command: dict, **overrides) -> None:
    summarize(paths=[Path(p) for p in command["paths"]], lm=command.get("lm"), api_base=command.get("api_base"),
              model_path=command.get("model_path"), chunk_tokens=command.get("chunk_tokens", 1024),
              strategy=command.get("strategy", "structure"), concurrency=command.get("concurrency", 8),
              rpm=command.get("rpm"), tpm=command.get("tpm"), fresh=False, out=command.get("out"),
              **overrides)


def _resume_contracts(command: dict, **overrides) -> None:
    overrides.pop("force_resume", None)  # contracts analyze says it as --resume
    contracts_analyze(paths=[Path(p) for p in command["paths"]], lm=command.get("lm"),
                      api_base=command.get("api_base"), model_path=command.get("model_path"),
                      out=Path(command["out"]), concurrency=command.get("concurrency", 8),
                      chunk_tokens=command.get("chunk_tokens", 1024), overlap=command.get("overlap", 128),
                      resume=True, fresh=False, **overrides)


RESUMABLE = {"summarize": _resume_summarize, "contracts": _resume_contracts}


if __name__ == "__main__":
    app()
