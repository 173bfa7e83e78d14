"""Live progress of a run, from its events alone.

``RunProgress`` folds events into counts (documents, steps, calls at the model and queued, tokens,
cost, calls per minute, retries, failures) and an ETA from *recent* throughput. Work is measured
in steps; how many steps a document will need is not known until it has been chunked, so
unfinished documents are estimated from their size at the steps-per-byte rate seen so far.

A step that is running is not necessarily at the model: it may wait for a rate-limit window or
for the model's one slot (the embedded model answers one call at a time). Only calls that were
sent count as *at the model*; the rest are *queued*. Calls answered from a step's call journal
(a step run again after a crash or a stop) are *replayed*: counted apart, never at the model.

A recursion (an RLM step) is shown while it runs: the iteration each of its RLMs is at, by depth,
and its calls by depth (:class:`Recursion`, from ``rlm_iteration``/``rlm_output`` and the calls'
depths). A run's event log holds every session of it: each ``run_start`` begins the figures again.

``attach_progress`` shows it: a rich live panel on a terminal, a plain line every few seconds
otherwise (CI logs, pipes), nothing with ``--quiet``. Whatever the display, every note and every
document that fails gets one line on stderr (``note: ...``, ``error: <file>: <why>``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from rlmpipe.lm.models import NONE
from rlmpipe.lm.usage import FREE_OUTCOMES, Usage
from rlmpipe.monitor.formats import cost_text, duration

RECENT_SECONDS = 60.0
#: recursions shown at once in the live panel (the others are counted)
SHOWN_RECURSIONS = 3


@dataclass
class Recursion:
    """One RLM step while it runs: the iteration its RLM at each depth is at, and its calls by depth."""

    name: str
    doc_id: str | None
    iterations: dict[int, int] = field(default_factory=dict)  # depth -> iteration of the RLM running there
    running: set[int] = field(default_factory=set)  # depths whose code is executing now
    calls: Counter = field(default_factory=Counter)  # depth -> calls answered (live)
    replayed: Counter = field(default_factory=Counter)  # depth -> calls answered from the journal
    at_model: Counter = field(default_factory=Counter)  # depth -> calls sent, not answered yet
    rlm: bool = False  # an RLM's code has run in this step (other steps are not shown as recursions)

    def text(self) -> str:
        where = ", ".join(f"depth {d} iteration {n}{' (code running)' if d in self.running else ''}"
                          for d, n in sorted(self.iterations.items()))
        depths = sorted(set(self.calls) | set(self.replayed) | set(self.at_model))
        calls = " ".join(f"d{d}: {self.calls[d]}" + (f" (+{self.replayed[d]} replayed)" if self.replayed[d] else "")
                         + (f" [{self.at_model[d]} at the model]" if self.at_model[d] else "") for d in depths)
        return f"{self.name}: {where or 'starting'}; calls {calls or 'none yet'}"


@dataclass
class RunProgress:
    started: float = field(default_factory=time.time)
    ended: float | None = None
    run_id: str = ""
    model: str = ""
    documents_total: int = 0
    documents_done: int = 0
    documents_failed: int = 0
    documents_stopped: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    steps_done: int = 0
    steps_reused: int = 0
    steps_failed: int = 0
    steps_running: int = 0  # steps started and not ended (at the model, or queued for it)
    at_model: int = 0  # calls sent and not answered yet
    documents_partial: int = 0
    usage: Usage = field(default_factory=Usage)  # this session's LM attempts, by the one usage rule
    reused_tokens: tuple[int, int] = (0, 0)  # (in, out) of the finished steps a resumed run reused
    reused_cost: float = 0.0
    recursions: dict = field(default_factory=dict)  # step_key -> Recursion, while the step runs (a call's
    # depth is counted from the step's start: its first call comes before its RLM's first iteration)
    status: str = "running"
    stop_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _sizes: dict = field(default_factory=dict)
    _doc_steps: dict = field(default_factory=dict)
    _recent_steps: deque = field(default_factory=deque)
    _recent_calls: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, event: dict) -> None:
        with self._lock:
            self._apply(event)

    def _apply(self, event: dict) -> None:
        kind = event["type"]
        now = event.get("time", time.time())
        if kind == "run_start":
            if self.run_id:  # a later session of the run (an event log holds them all): count afresh
                self._restart()
            self.run_id, self.model = event["run_id"], event.get("model", "")
            self.started = event.get("time") or self.started
        elif kind == "document_queued":
            self.documents_total += 1
            self.bytes_total += event.get("size") or 0
            self._sizes[event["doc_id"]] = event.get("size") or 0
        elif kind in ("document_done", "document_partial", "document_failed", "document_stopped"):
            if kind == "document_done":
                self.documents_done += 1
            elif kind == "document_partial":
                self.documents_partial += 1
                self.errors.append(event.get("error", ""))
            elif kind == "document_failed":
                self.documents_failed += 1
                if event.get("doc_id") is None:  # failed before it could be queued (bad input)
                    self.documents_total += 1
                self.errors.append(event.get("error", ""))
            else:
                self.documents_stopped += 1
            self.bytes_done += self._sizes.pop(event.get("doc_id"), 0)
        elif kind == "step_start":
            self.steps_running += 1
            self.recursions[event.get("step_key")] = Recursion(event.get("name") or "", event.get("doc_id"))
            self._doc_steps[event.get("doc_id")] = self._doc_steps.get(event.get("doc_id"), 0) + 1
        elif kind in ("step_done", "step_failed", "step_stopped"):
            self.steps_running = max(0, self.steps_running - 1)
            self.recursions.pop(event.get("step_key"), None)
            if kind == "step_done":
                self.steps_done += 1
                self._recent_steps.append(now)
            elif kind == "step_failed":
                self.steps_failed += 1
        elif kind == "step_reused":
            self.steps_reused += 1
            self._doc_steps[event.get("doc_id")] = self._doc_steps.get(event.get("doc_id"), 0) + 1
            self.reused_tokens = (self.reused_tokens[0] + (event.get("prompt_tokens") or 0),
                                  self.reused_tokens[1] + (event.get("completion_tokens") or 0))
            self.reused_cost += event.get("cost") or 0.0
        elif kind == "lm_call_start":
            self.at_model += 1
            if event.get("step_key") in self.recursions:
                self.recursions[event["step_key"]].at_model[event.get("depth") or 0] += 1
        elif kind == "lm_call":
            self.usage.add(event)
            recursion = self.recursions.get(event.get("step_key"))
            depth = event.get("depth") or 0
            if event["outcome"] not in FREE_OUTCOMES:
                self.at_model = max(0, self.at_model - 1)
                self._recent_calls.append(now)
                if recursion is not None:
                    recursion.at_model[depth] = max(0, recursion.at_model[depth] - 1)
                    recursion.calls[depth] += event["outcome"] == "ok"
            elif recursion is not None and event["outcome"] == "replayed":
                recursion.replayed[depth] += 1
        elif kind == "rlm_iteration":
            recursion = self.recursions.setdefault(event["step_key"], Recursion(event.get("name") or "",
                                                                              event.get("doc_id")))
            recursion.rlm = True
            recursion.iterations[event["depth"]] = event["iteration"]
            recursion.running.add(event["depth"])
        elif kind == "rlm_output":
            recursion = self.recursions.get(event["step_key"])
            if recursion is not None:
                recursion.running.discard(event["depth"])
        elif kind == "note":
            self.notes.append(event["message"])
        elif kind == "run_stopping":
            self.stop_reason = event.get("reason")
        elif kind == "run_end":
            self.status = event["status"]
            self.stop_reason = event.get("reason")
            self.ended = now
        for recent in (self._recent_steps, self._recent_calls):
            while recent and now - recent[0] > RECENT_SECONDS:
                recent.popleft()

    def _restart(self) -> None:
        fresh = RunProgress()
        for name in self.__dataclass_fields__:
            if name != "_lock":
                setattr(self, name, getattr(fresh, name))

    # --- derived figures ------------------------------------------------------------------------
    def rate(self, recent: deque) -> float:
        """Events per second over the recent window (or since start, if younger)."""
        if not recent:
            return 0.0
        span = max(1.0, min(RECENT_SECONDS, time.time() - self.started))
        return len(recent) / span

    @property
    def calls_per_minute(self) -> float:
        return self.rate(self._recent_calls) * 60

    def eta_seconds(self) -> float | None:
        """Remaining steps (estimated) over the recent step rate; for a run without steps (the
        finder alone), remaining bytes over the bytes rate so far; 0 once every document is
        finished; None until there is a rate."""
        with self._lock:
            if self.documents_total and self.documents_finished >= self.documents_total:
                return 0.0
            rate = self.rate(self._recent_steps)
            if rate <= 0:
                if self.steps_done or self.steps_running or not self.bytes_done:
                    return None
                elapsed = max(1e-3, time.time() - self.started)
                return sum(self._sizes.values()) / (self.bytes_done / elapsed)
            steps_seen = self.steps_done + self.steps_reused
            bytes_seen = self.bytes_done or 0
            finished_steps = sum(n for doc, n in self._doc_steps.items() if doc not in self._sizes)
            per_byte = (finished_steps / bytes_seen) if bytes_seen and finished_steps else None
            remaining_bytes = sum(self._sizes.values())
            if per_byte is None:  # no document finished yet: assume the current ones are half done
                expected = max(steps_seen * 2, steps_seen + self.steps_running)
                if self.documents_total > 1 and self._sizes:
                    expected = expected * self.bytes_total / max(1, sum(self._sizes.values()))
            else:
                expected = finished_steps + remaining_bytes * per_byte
            remaining = max(0.0, expected - steps_seen)
            return remaining / rate

    # --- what the displays show: this session's calls, plus what reused steps had cost -----------
    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens + self.reused_tokens[0]

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens + self.reused_tokens[1]

    @property
    def cost(self) -> float:
        return self.usage.cost + self.reused_cost

    @property
    def documents_finished(self) -> int:
        return self.documents_done + self.documents_partial + self.documents_failed + self.documents_stopped

    @property
    def queued(self) -> int:
        """Steps running but not at the model: waiting for a slot or a rate-limit window."""
        return max(0, self.steps_running - self.at_model)

    @property
    def elapsed(self) -> float:
        """Seconds since this session started (until it ended)."""
        return (self.ended or time.time()) - self.started

    def running_recursions(self) -> list[Recursion]:
        return [r for r in list(self.recursions.values()) if r.rlm]

    def recursion_text(self) -> str:
        """The recursions running now, one clause each (empty when none is)."""
        running = self.running_recursions()
        shown = [r.text() for r in running[:SHOWN_RECURSIONS]]
        more = len(running) - len(shown)
        return "; ".join(shown) + (f"; {more} more recursions" if more > 0 else "")

    def line(self) -> str:
        partial = f", partial {self.documents_partial}" if self.documents_partial else ""
        replayed = f", {self.usage.replayed} replayed" if self.usage.replayed else ""
        recursion = self.recursion_text()
        return (
            f"docs {self.documents_finished}/{self.documents_total} (failed {self.documents_failed}{partial}, "
            f"stopped {self.documents_stopped})  steps {self.steps_done} (+{self.steps_reused} reused,"
            f" {self.steps_failed} failed)  at the model {self.at_model}, queued {self.queued}  tokens "
            f"{self.prompt_tokens:,} in / {self.completion_tokens:,} out  cost "
            f"{cost_text(self.cost, self.usage.unpriced)}  {self.calls_per_minute:.0f} calls/min{replayed}  retries "
            f"{self.usage.retries}  errors {self.usage.errors}  ETA {self.eta_text()}"
            + (f"  rlm {recursion}" if recursion else "")
        )

    def eta_text(self) -> str:
        """The ETA as people read it; '?' while there is no rate to tell it from."""
        return duration(self.eta_seconds()) or "?"


def message_line(event: dict) -> str | None:
    """The one stderr line an event deserves, if any: a note, or a document that failed (or was only
    partly done), naming it and why. Control characters are escaped (a file name cannot forge a line)."""
    from rlmpipe.ingest import printable

    kind = event["type"]
    if kind == "note":
        return printable(f"note: {event['message']}")
    if kind in ("document_failed", "document_partial"):
        return printable(f"error: {event.get('error') or event.get('path')}")
    return None


class QuietReporter:
    """No display; messages still go to stderr (``--quiet`` hides progress, never errors)."""

    def say(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class PlainReporter(QuietReporter):
    """A line to stderr every ``every`` seconds, and at the end."""

    every = 10.0

    def __init__(self, progress: RunProgress):
        self.progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rlmpipe-progress", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            if self.progress.run_id:
                print(f"[rlmpipe] {self.progress.line()}", file=sys.stderr, flush=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        if self.progress.run_id:  # (a run refused before it started has no progress to tell)
            print(f"[rlmpipe] {self.progress.line()}", file=sys.stderr, flush=True)
        return False


class LiveReporter:
    """A rich live panel on the terminal (stderr)."""

    def __init__(self, progress: RunProgress):
        from rich.console import Console
        from rich.live import Live

        self.progress = progress
        self.console = Console(stderr=True)
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False,
                         get_renderable=self._render)

    def _render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        p = self.progress
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        finished = p.documents_finished
        bar = ProgressBar(total=max(1, p.documents_total), completed=finished, width=30)
        table.add_row("run", f"{p.run_id}  {p.model}")
        table.add_row("documents", bar)
        table.add_row("", f"{finished}/{p.documents_total} ({p.documents_failed} failed"
                          + (f", {p.documents_partial} partial" if p.documents_partial else "") + ")")
        if p.model == NONE:  # nothing to count but documents
            table.add_row("LM", "none: no calls, no tokens, no cost")
        else:
            table.add_row("steps", f"{p.steps_done} done, {p.steps_reused} reused, {p.steps_failed} failed")
            table.add_row("calls now", f"{p.at_model} at the model, {p.queued} queued")
            table.add_row("tokens", f"{p.prompt_tokens:,} in / {p.completion_tokens:,} out")
            u = p.usage
            table.add_row("cost", cost_text(p.cost, u.unpriced)
                          + (f" ({u.unpriced} calls of unknown price)" if u.unpriced else ""))
            table.add_row("calls", f"{u.calls} ({p.calls_per_minute:.0f}/min), {u.cached} cached, "
                                   + (f"{u.replayed} replayed (not billed again), " if u.replayed else "")
                                   + f"{u.retries} retries, {u.errors} errors")
            running = p.running_recursions()
            for number, recursion in enumerate(running[:SHOWN_RECURSIONS]):
                table.add_row("recursion" if number == 0 else "", recursion.text())
            if len(running) > SHOWN_RECURSIONS:
                table.add_row("", f"... {len(running) - SHOWN_RECURSIONS} more recursions")
        table.add_row("ETA", p.eta_text())
        if p.stop_reason:
            table.add_row("stopping", p.stop_reason)
        return table

    def say(self, line: str) -> None:
        from rich.markup import escape

        self.console.print(escape(line), highlight=False, soft_wrap=True)  # above the live panel

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        return self.live.__exit__(*exc)


def attach_progress(events, quiet: bool = False):
    """Subscribe a :class:`RunProgress` to ``events``; returns a context manager that shows it."""
    progress = RunProgress()
    events.subscribe(progress.update)
    if quiet:
        reporter = QuietReporter()
    elif sys.stderr.isatty():
        reporter = LiveReporter(progress)
    else:
        reporter = PlainReporter(progress)

    def messages(event: dict) -> None:
        line = message_line(event)
        if line is not None:
            reporter.say(line)

    events.subscribe(messages)
    return reporter
