"""Terminal tables for ``runs list`` and ``runs show`` (rich)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlmpipe.monitor.formats import cost_text, when
from rlmpipe.runtime.store import Store


def run_state(run: dict) -> str:
    """The stored status, except that a 'running' run whose process is gone (killed, crashed) says so."""
    import os

    if run["status"] == "running" and run.get("pid"):
        try:
            os.kill(run["pid"], 0)
        except ProcessLookupError:
            return "interrupted (process gone; resume it)"
        except PermissionError:
            pass
    return run["status"]


def seconds(value: float | None) -> str:
    """A figure of a column whose heading says its unit (``model s``)."""
    return "" if value is None else f"{value:.2f}"


def print_run_list(store: Store) -> None:
    table = Table(title="runs")
    for column in ("run", "pipeline", "model", "status", "reason", "sessions", "documents", "started", "updated"):
        table.add_column(column)
    for run in store.list_runs():
        documents = (run.get("totals") or {}).get("documents") or {}
        table.add_row(run["run_id"], run["pipeline"], run["model"] or "", run_state(run), run["stop_reason"] or "",
                      str(run["sessions"]), " ".join(f"{k} {v}" for k, v in sorted(documents.items())),
                      when(run["created"]), when(run["updated"]))
    _console().print(table)


LM_COLUMNS = [("calls", "calls"), ("errors", "err"), ("retries", "retry"), ("cached", "cache"), ("replayed", "replay"),
              ("prompt_tokens", "tok in"), ("completion_tokens", "tok out"), ("cost", "cost"),
              ("seconds", "model s"), ("queued_seconds", "queued s"), ("p50_latency", "p50"), ("p95_latency", "p95")]


def _lm_cells(row: dict) -> list[str]:
    cells = []
    for key, _ in LM_COLUMNS:
        value = row.get(key)
        if key == "cost":
            cells.append(cost_text(value, row.get("unpriced_calls") or 0))
        elif key in ("seconds", "queued_seconds", "p50_latency", "p95_latency"):
            cells.append(seconds(value))
        else:
            cells.append(f"{value:,}" if isinstance(value, int) else str(value))
    return cells


def executor_line(run: dict) -> str:
    """Where the run ran: 'executor threads', or 'executor ray (2 nodes: ...)'."""
    executor = (run.get("config") or {}).get("executor") or {"name": "threads"}
    if executor.get("name") != "ray":
        return "executor threads"
    nodes = executor.get("nodes") or []
    shown = ", ".join(f"{n.get('address')} {n.get('cpus'):g} CPU{'' if n.get('alive') else ' (dead)'}" for n in nodes)
    return (f"executor ray ({len(nodes)} node{'s' if len(nodes) != 1 else ''}: {shown}; "
            f"cluster {executor.get('address')})")


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)  # pipes and files: no wrapping


def _first_lines(text: str, lines: int = 4, width: int = 100) -> str:
    from rich.markup import escape

    kept = [line[:width] for line in str(text).splitlines()[:lines]]
    more = len(str(text).splitlines()) - lines
    return escape("\n".join(kept) + (f"\n... ({more} more lines)" if more > 0 else ""))


def print_run_tables(tables: dict) -> None:
    console = _console()
    run, totals = tables["run"], tables["totals"]
    console.print(f"[bold]run {run['run_id']}[/bold]  {run['pipeline']}  model {run['model']}  "
                  f"status {run_state(run)}" + (f" ({run['stop_reason']})" if run["stop_reason"] else "")
                  + f"  sessions {run['sessions']}")
    console.print(executor_line(run))
    if not totals["cost_known"]:
        console.print("cost: '≥ $x' is a lower bound, 'unknown' means no call had a known price: some "
                      "calls were to models whose price litellm does not know")
    console.print(f"totals: {totals['calls']} calls, {totals['prompt_tokens']:,} tokens in, "
                  f"{totals['completion_tokens']:,} out, "
                  f"cost {cost_text(totals['cost'], totals['unpriced_calls'])}, "
                  f"{totals['retries']} retries, {totals['errors']} errors, {totals['cached']} cached, "
                  f"{totals['replayed']} replayed")
    replay = tables.get("replay") or {}
    if replay.get("replayed") or replay.get("parted_steps"):
        console.print(f"replay: {replay['replayed']} calls answered from the call journal (not billed again)"
                      + (f"; replay parted from the journal in {replay['parted_steps']} step(s), leaving "
                         f"{replay['unused']} earlier answer(s) unused (the rest ran live)"
                         if replay.get("parted_steps") else ""))
    for title, rows, first in (("by step", tables["steps"], ["step", "done", "failed"]),
                               ("by recursion depth", tables["depths"], ["depth"]),
                               ("by document", tables["documents"] + tables.get("other_documents", []),
                                ["path", "status", "steps"])):
        table = Table(title=title)
        for column in first:
            table.add_column(column)
        for _, label in LM_COLUMNS:
            table.add_column(label, justify="right")
        for row in rows:
            cells = [str(row.get(column, "")) for column in first]
            if first[0] == "path" and not cells[0].startswith("("):
                cells[0] = Path(cells[0]).name
            table.add_row(*cells, *_lm_cells(row))
        console.print(table)
    for trajectory in tables.get("trajectories", []):
        table = Table(title=f"RLM trajectory of step {trajectory['step']} ({trajectory['status']}): "
                            + ", ".join(f"{n} at depth {d}" for d, n in trajectory["by_depth"].items()))
        for column in ("#", "depth", "seconds", "code", "output"):
            table.add_column(column)
        for number, entry in enumerate(trajectory["entries"], start=1):
            table.add_row(str(number), str(entry["depth"]), f"{entry['seconds']:.2f}",
                          _first_lines(entry["code"]), ("[red]" if entry["error"] else "") + _first_lines(entry["output"]))
        console.print(table)
    from rich.markup import escape

    for row in tables["documents"]:
        if row.get("error"):
            label = "partial" if row["status"] == "partial" else row["status"]
            console.print(f"[red]{label}[/red] {escape(row['error'])}")
            if row.get("detail"):  # a pipeline bug: where it happened
                console.print(escape(_tail(row["detail"])), style="dim")
    details = [step for step in tables.get("failed_steps", []) if step.get("detail")]
    for step in details[:5]:
        console.print(f"[red]step {escape(step['step'])} failed[/red] {escape(step['error'] or '')}")
        console.print(escape(_tail(step["detail"])), style="dim")
    if len(details) > 5:
        console.print(f"... and {len(details) - 5} more failed steps with tracebacks (runs show --json)")


def _tail(traceback_text: str, lines: int = 12) -> str:
    kept = traceback_text.rstrip().splitlines()
    return "\n".join((["  ..."] if len(kept) > lines else []) + kept[-lines:])
