"""``runs report``: one self-contained HTML file of a run (``write_report``).

Everything comes from the run store (through :func:`rlmpipe.monitor.metrics.run_tables`) plus the
session boundaries and notes of the run's event log, if it is still there. The plots are
:mod:`rlmpipe.monitor.plots` (inline SVG drawn on the server side); the only script is a few lines
that sort tables on a click. Nothing is loaded from anywhere: no fonts, no images, no stylesheets,
no scripts by URL, so the file opens offline and can be mailed around.

Size stays bounded for large runs: the plots keep bars, bins and sums, not calls, and long tables
are cut (and say so). So does the memory it takes to write: the calls and steps are streamed from
the store.

All text that comes from the store or the event log (paths, errors, step names, reasons) is
escaped (:func:`rlmpipe.monitor.html.esc`); the page is assembled by the report kit,
:mod:`rlmpipe.monitor.html`.

Two halves: the data model, :class:`RunReport`, which :func:`collect` reads from the store and the
event log (the only reading done here), and the page, :func:`render`: a template whose parts
(facts, cards, notes, sessions, plots, tables) are each one function of the model.
"""

from __future__ import annotations

import datetime
import itertools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rlmpipe.lm.usage import FREE_OUTCOMES
from rlmpipe.monitor.formats import cost_text, duration, usd, when
from rlmpipe.monitor import html
from rlmpipe.monitor.html import Column, count, esc, markup, page, table
from rlmpipe.monitor.metrics import run_tables
from rlmpipe.monitor.plots import (MAX_TIMELINE_BARS, BarRow, FailureCounts, LatencyHistogram, Session,
                                   Timeline, build_sessions, failures_plot, latency_plot, outside_documents,
                                   short_path, timeline_plot, tokens_cost_plot)
from rlmpipe.monitor.render import run_state
from rlmpipe.monitor.trajectory import Recursion
from rlmpipe.monitor.trajectory import build as build_recursion
from rlmpipe.monitor.trajectory import render as render_recursion
from rlmpipe.runtime.eventlog import read_events
from rlmpipe.runtime.store import Store

MAX_TABLE_ROWS = 500  # rows of the per-document table (failed documents first)
MAX_PLOT_DOCUMENTS = 20  # documents drawn in the tokens-by-document plot; the rest are one row
MAX_NOTES = 30
MAX_TRAJECTORIES = 20  # RLM steps drawn as trees (an `ask --each` over 500 documents has 500)


def write_report(store: Store, run_id: str, path: str | Path) -> Path:
    """Write the HTML report of ``run_id`` to ``path`` (parent folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(store, run_id), encoding="utf-8")
    return path


# --- tables -------------------------------------------------------------------------------------
LM_COLUMNS = [
    Column("calls", "calls", "int"), Column("errors", "errors", "int"), Column("retries", "retries", "int"),
    Column("cached", "cached", "int"), Column("replayed", "replayed", "int"),
    Column("prompt_tokens", "tokens in", "int"),
    Column("completion_tokens", "tokens out", "int"),
    Column("cost", "cost", "num", fmt=lambda r: cost_text(r.get("cost"), r.get("unpriced_calls") or 0)),
    Column("seconds", "model time", "seconds"), Column("queued_seconds", "queued", "seconds"),
    Column("p50_latency", "p50 latency", "seconds"), Column("p95_latency", "p95 latency", "seconds"),
]
DOC_LM_COLUMNS = [c for c in LM_COLUMNS if c.key not in ("cached", "replayed", "p50_latency", "p95_latency")]


STEP_COLUMNS = [  # the slowest and the most expensive steps
    Column("step", "step"), Column("document", "document"), Column("chunk_id", "chunk", "code"),
    Column("status", "status"), Column("depth", "depth", "int"), Column("seconds", "time", "seconds"),
    Column("attempts", "attempts", "int"), Column("tokens", "tokens", "int"),
    Column("cost", "cost", "num", fmt=lambda r: usd(r["cost"])),
]


@dataclass
class RunReport:
    """What the run report shows: the data model, read from the run store and the event log by
    :func:`collect`. :func:`render` turns it into HTML and reads nothing else."""

    run: dict
    totals: dict
    calls_with_tokens: int  # attempts that used tokens: with none priced, the cost is unknown, not $0
    timeline: Timeline
    latency: LatencyHistogram | None
    failures: FailureCounts
    error_types: list[dict]  # failed attempts by error type (:func:`_error_type_rows`)
    outside_documents: list[BarRow]  # the calls made outside any document, as one row, if any
    documents: list[dict]  # run_tables' rows, with ``doc_seconds``: the document's wall time
    steps: list[dict]  # by step name
    depths: list[dict]  # by recursion depth
    slowest_steps: list[dict]
    costliest_steps: list[dict]
    failed_steps: list[dict]  # steps whose last attempt failed (at most MAX_TABLE_ROWS)
    trajectories: list[Recursion]  # RLM steps as trees (the first MAX_TRAJECTORIES)
    more_trajectories: int  # RLM steps beyond those
    sessions: list[Session]
    notes: list[str]  # the run's notes from its event log, oldest first
    store_name: str
    workspace: str
    generated: float  # when the report was written (epoch seconds)

    @property
    def doc_paths(self) -> dict:
        return {d["doc_id"]: d["path"] for d in self.documents}


def collect(store: Store, run_id: str, *, max_bars: int = MAX_TIMELINE_BARS) -> RunReport:
    """Read everything the report of ``run_id`` shows (the only function here that reads).

    The calls are streamed from the store, once per figure, and only what the page shows is kept:
    memory does not grow with the run."""
    tables = run_tables(store, run_id)
    run = tables["run"]

    def calls() -> Iterable[dict]:
        return store.each_call(run_id)
    events = read_events(store.workspace, run_id, kinds={"run_start", "run_end", "run_stopping", "note"})
    # the documents' wall time unrounded, as the page's cells hold it (run_tables' doc_seconds is rounded
    # to the millisecond, and is 0-based when a document has no start)
    wall = {d["doc_id"]: (d["finished"] - d["started"]) if d["finished"] and d["started"] else None
            for d in store.documents(run_id)}
    documents = [{**d, "doc_seconds": wall.get(d["doc_id"])} for d in tables["documents"]]
    doc_paths = {d["doc_id"]: d["path"] for d in documents}
    failed_steps = [{"name": s.name, "document": doc_paths.get(s.doc_id, s.doc_id or ""),
                     "chunk_id": s.chunk_id, "attempts": s.attempts, "error": s.error}
                    for s in itertools.islice((s for s in store.each_step(run_id) if s.status == "failed"),
                                              MAX_TABLE_ROWS)]
    sessions = build_sessions(run, calls(), events)
    return RunReport(
        run=run, totals=tables["totals"],
        calls_with_tokens=sum(1 for c in calls()
                              if c["outcome"] not in FREE_OUTCOMES and c["prompt_tokens"] + c["completion_tokens"]),
        timeline=Timeline.build(calls, max_bars),
        latency=LatencyHistogram.build(lambda: store.each_latency(run_id, outcome="ok")),
        failures=FailureCounts.build(calls(), sessions),
        error_types=_error_type_rows(store.each_call(run_id, order="call")),
        outside_documents=outside_documents(calls(), doc_paths),
        documents=documents, steps=tables["steps"],
        depths=tables["depths"], slowest_steps=tables["slowest_steps"],
        costliest_steps=tables["costliest_steps"], failed_steps=failed_steps,
        trajectories=[build_recursion({**t, "document": doc_paths.get(t["doc_id"], "")}, t["entries"],
                                      store.step_calls(t["step_key"]), store.journal_entries(t["step_key"]))
                      for t in tables.get("trajectories", [])[:MAX_TRAJECTORIES]],
        more_trajectories=max(0, len(tables.get("trajectories", [])) - MAX_TRAJECTORIES),
        sessions=sessions,
        notes=[e.get("message") or "" for e in events if e.get("type") == "note"][:MAX_NOTES],
        store_name=store.path.name, workspace=str(store.workspace),
        generated=datetime.datetime.now().timestamp())


def render_report(store: Store, run_id: str, *, max_bars: int = MAX_TIMELINE_BARS) -> str:
    """The report of ``run_id`` as one HTML string."""
    return render(collect(store, run_id, max_bars=max_bars))


def render(report: RunReport) -> str:
    """The page: templates/run_report.html, filled from the data model and what is derived here."""
    run, sessions = report.run, report.sessions
    state = run_state(run)
    start, end = ((sessions[0].start, max([s.end for s in sessions] + [run["updated"] or 0])) if sessions
                  else (run["created"], run["updated"]))  # the first start, the last end (or update)
    document_counts = Counter(d["status"] for d in report.documents)
    facts = {"state": state, "started": when(start), "ended": when(end),
             "wall": duration((end or 0) - (start or 0)),
             "in_sessions": duration(sum(s.seconds for s in sessions)) if len(sessions) > 1 else "",
             "documents": ", ".join(f"{n} {status}" for status, n in sorted(document_counts.items())) or "none",
             "concurrency": ((run.get("config") or {}).get("options") or {}).get("concurrency", "")}
    totals, total_cost = report.totals, _total_cost(report)
    unpriced = f"{count(totals['unpriced_calls'])} calls unpriced" if totals["unpriced_calls"] else ""
    cost = {"total": total_cost, "floor": usd(totals["cost"]),
            "sub": f"lower bound {usd(totals['cost'])}: {unpriced}" if total_cost == "unknown" and unpriced
            else unpriced}
    body = html.render("run_report.html", report=report, facts=facts, cost=cost,
                       sessions=markup(_sessions_table(sessions)), plots=[markup(p) for p in _plots(report)],
                       sections=[{"title": title, "id": tid, "intro": markup(intro), "body": markup(part)}
                                 for title, tid, intro, part in _sections(report)],
                       generated=when(report.generated))
    return page(f"rlmpipe run {run['run_id']} · {run['pipeline']} · {state}", body)


def _total_cost(report: RunReport) -> str:
    return cost_text(report.totals["cost"], report.totals["unpriced_calls"], report.calls_with_tokens)


def _sessions_table(sessions: list[Session]) -> str:
    rows = [{"session": s.number, "started": when(s.start), "ended": when(s.end), "seconds": s.seconds,
             "attempts": s.attempts, "errors": s.errors, "retries": s.retries, "status": s.status or "",
             "reason": s.reason or ""} for s in sessions]
    return table("table-sessions", [
        Column("session", "session", "int"), Column("started", "started"), Column("ended", "ended"),
        Column("seconds", "duration", "seconds", fmt=lambda r: duration(r["seconds"])),
        Column("attempts", "LM calls", "int"), Column("errors", "errors", "int"),
        Column("retries", "retries", "int"), Column("status", "status at end"),
        Column("reason", "stop reason", "error"),
    ], rows, empty="no session recorded")


def _plots(report: RunReport) -> list[str]:
    sessions, doc_paths = report.sessions, report.doc_paths
    depth_rows = [BarRow.total(f"depth {r['depth']}", f"depth {r['depth']}: {count(r['calls'])} calls", [r])
                  for r in report.depths]
    ranked = sorted(report.documents, key=lambda r: (r["tokens"], r["calls"]), reverse=True)
    doc_rows = [BarRow.total(short_path(r["path"]), f"{r['path']} ({r['status']}): {count(r['calls'])} "
                             "calls", [r]) for r in ranked[:MAX_PLOT_DOCUMENTS]]
    rest = ranked[MAX_PLOT_DOCUMENTS:]
    if rest:
        doc_rows.append(BarRow.total(f"+ {len(rest)} other documents",
                                     f"the {len(rest)} documents with fewer tokens", rest, aggregate=True))
    doc_rows += report.outside_documents
    unknown_note = " A cost marked ≥ is a lower bound (some calls have no known price); “unknown”: none has."
    return [
        timeline_plot(report.timeline, sessions, doc_paths),
        latency_plot(report.latency),
        tokens_cost_plot("plot-tokens-depth", "Tokens and cost by recursion depth", depth_rows,
                         "recursion depth",
                         "Tokens sent (in) and received (out) and cost of all LM calls at each recursion "
                         "depth (0: the pipeline's own calls; deeper: sub-calls)." + unknown_note),
        tokens_cost_plot("plot-tokens-document", "Tokens and cost by document", doc_rows, "document",
                         "Tokens in and out and cost of the LM calls made for each document, largest first"
                         + (f" (the {MAX_PLOT_DOCUMENTS} largest drawn; the other {len(rest)} are summed "
                            "up in the last row, as text)"
                            if rest else "") + "; hover a name for its full path." + unknown_note),
        failures_plot(report.failures, sessions),
    ]


def _sections(report: RunReport) -> list[tuple[str, str, str, str]]:
    """The tables after the plots, each as (title, id, intro, body)."""
    documents, doc_paths = report.documents, report.doc_paths
    step_columns = [Column("step", "step"), Column("done", "done", "int"), Column("failed", "failed", "int"),
                    *LM_COLUMNS, Column("step_seconds", "step time", "seconds")]
    depth_columns = [Column("depth", "depth", "int"), *LM_COLUMNS]
    failed_docs = [d for d in documents if d["status"] == "failed" or d.get("error")]
    ordered_docs = failed_docs + sorted((d for d in documents if d not in failed_docs),
                                        key=lambda d: d["path"])
    doc_table_rows = ordered_docs[:MAX_TABLE_ROWS]
    doc_columns = [Column("path", "document (and error)", "document", markup=_document_cell),
                   Column("status", "status"), Column("steps", "steps", "int"),
                   Column("doc_seconds", "time", "seconds"), *DOC_LM_COLUMNS]

    def step_rows(rows: list[dict]) -> list[dict]:
        return [{**r, "document": doc_paths.get(r["doc_id"], r["doc_id"] or "")} for r in rows]

    sections = [
        ("Steps", "table-steps",
         ("By step: LM calls (attempts), errors, retries, tokens, cost, summed model time (sending to reply), "
          "time queued before sending (rate limits, the model's one slot), p50/p95 latency, "
          "and the summed wall time of the steps."), table("table-steps", step_columns, report.steps)),
        ("Documents", "table-documents",
         "By document, failed ones first, with their one-line error."
         + (f" Showing {len(doc_table_rows)} of {len(documents)} documents (all failed ones first); "
            "<code>rlmpipe runs show</code> lists them all." if len(documents) > len(doc_table_rows) else ""),
         table("table-documents", doc_columns, doc_table_rows, empty="no documents")),
        ("Recursion depth", "table-depths", "By recursion depth.", table("table-depths", depth_columns,
                                                                        report.depths)),
        ("Slowest steps", "table-slowest", "The 10 steps that took longest (wall time, retries included).",
         table("table-slowest", STEP_COLUMNS, step_rows(report.slowest_steps))),
        ("Most expensive steps", "table-costliest",
         "The 10 steps that cost most (by cost, then tokens; a cost is unknown when a price was).",
         table("table-costliest", STEP_COLUMNS, step_rows(report.costliest_steps))),
        ("LM errors by type", "table-error-types", "Failed LM call attempts by error type, with one example.",
         table("table-error-types", [Column("type", "error type"), Column("count", "attempts", "int"),
                                     Column("retried", "retried after", "int"),
                                     Column("example", "example", "error")], report.error_types,
               empty="no LM call failed")),
        ("Failed steps", "table-failed-steps", "Steps whose last attempt failed.",
         table("table-failed-steps", [Column("name", "step"), Column("document", "document"),
                                      Column("chunk_id", "chunk", "code"),
                                      Column("attempts", "attempts", "int"),
                                      Column("error", "error", "error")],
               report.failed_steps, empty="no step failed")),
    ]
    for recursion in report.trajectories:
        sections.append((f"RLM trajectory: step {recursion.step}", f"trajectory-{recursion.step_key[:8]}",
                         "The recursion as it ran, iteration by iteration (the LM calls at each depth are also "
                         "in the tables above).", render_recursion(recursion)))
    if report.more_trajectories:
        sections.append(("More RLM trajectories", "trajectory-more",
                         f"{count(report.more_trajectories)} more RLM steps are not drawn here: "
                         "<code>rlmpipe runs show RUN_ID</code> lists every trajectory.", ""))
    return sections


def _document_cell(row: dict) -> str:
    cell = esc(row["path"])
    error = row.get("error")
    if error:
        if error.startswith(f"{row['path']}: "):  # the engine starts a document's error with its path
            error = error[len(row["path"]) + 2:]
        cell += f'<div class="error">{esc(error)}</div>'
    return cell



def _error_type_rows(calls_by_call: Iterable[dict]) -> list[dict]:
    """Failed attempts by error type, most first (then by first seen), with the earliest one's error,
    and how many of them were retried (their call made a later attempt). The calls come by call id,
    then attempt, so each call's attempts are read together and none is held after."""
    by_type: dict[str, dict] = {}
    failed: list[tuple[dict, int]] = []  # (its type's row, attempt) of the current call's failed attempts
    current, last_attempt = object(), 0
    for call in itertools.chain(calls_by_call, [None]):
        if call is None or call["call_id"] != current:
            for row, attempt in failed:  # the call before is complete: its last attempt is known
                row["retried"] += last_attempt > attempt
            failed.clear()
            if call is None:
                break
            current, last_attempt = call["call_id"], 0
        last_attempt = max(last_attempt, call["attempt"])
        if call["outcome"] == "error":
            kind = call["error_type"] or "unknown"
            row = by_type.setdefault(kind, {"type": kind, "count": 0, "retried": 0, "example": "",
                                            "first": (math.inf, 0)})
            row["count"] += 1
            if (call["started"], call["id"]) < row["first"]:
                row["first"], row["example"] = (call["started"], call["id"]), call["error"] or ""
            failed.append((row, call["attempt"]))
    ordered = sorted(by_type.values(), key=lambda r: (-r["count"], r["first"]))
    return [{key: value for key, value in row.items() if key != "first"} for row in ordered]
