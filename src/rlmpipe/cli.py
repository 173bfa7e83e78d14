"""The ``rlmpipe`` command: thin commands over library calls."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

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


if __name__ == "__main__":
    app()
