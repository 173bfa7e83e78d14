"""The run engine: documents through a pipeline, with bounded concurrency, retries, budgets,
durable checkpoints and resume.

A *pipeline* says what to do with one document, in terms of *steps*: ``run.step(name, fn, ...)``
runs ``fn`` (DSPy calls) once for its key and stores the result; ``run.submit`` does the same on
the worker pool. A step whose key is already done in the store is never run again: its stored
result is returned and no LM call is made. That is all resume is.

Threads: one pool of ``concurrency`` workers runs steps; documents are driven by a second, small
pool whose threads only orchestrate (submit steps and wait for them), so a driver never holds a
worker while it waits. A semaphore keeps at most ``concurrency`` steps executing, wherever they
were started from.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import dspy

from rlmpipe.ingest import Document, DocumentError, Notice, open_documents
from rlmpipe.lm.context import call_context, current
from rlmpipe.lm.control import RunControl
from rlmpipe.lm.errors import BudgetExceeded, classify, one_line
from rlmpipe.lm.journal import JournalSummary, Replay
from rlmpipe.lm.recording import RecordingLM, RetryPolicy, RunStopping, without_own_retries
from rlmpipe.lm.usage import FREE_OUTCOMES, LMCall, Pricing, UsageRecorder
from rlmpipe.runtime.eventlog import EventLogWriter
from rlmpipe.runtime import events as ev
from rlmpipe.runtime import threadsafe_ast
from rlmpipe.runtime.events import EventBus
from rlmpipe.runtime.fingerprint import FingerprintChange, digest, fingerprint_parts, step_key
from rlmpipe.runtime.jsonable import NotStorable, json_roundtrip, to_json_value
from rlmpipe.runtime.limits import Limits, local_limits
from rlmpipe.runtime.store import StepRow, Store, find_workspace


class Pipeline(Protocol):
    """What the engine needs from a pipeline."""

    name: str

    def config(self) -> dict:
        """Everything that decides its results (goes into the run fingerprint)."""

    def programs(self) -> dict:
        """Its DSPy modules by name (their signatures go into the fingerprint)."""

    def process(self, run: "Run", document: Document) -> Any:
        """Run one document through the steps; return its JSON-able result (or a :class:`Partial`)."""

    # Optional: ``finish(run, results) -> Any`` runs once all documents are done, for work over the
    # whole corpus (``rlmpipe ask``); its result is the run's ``final``.


@dataclass(frozen=True)
class StepOutput:
    """What a step function may return to store detail next to its result (e.g. an RLM trajectory).

    ``stopped``: the step had to stop part-way (a budget ran out) with a partial result worth
    keeping; it is stored as a step that is *not* done (a resume runs it again), and the run stops
    for this reason."""

    result: Any
    extra: Any = None
    stopped: str | None = None


@dataclass(frozen=True)
class Partial:
    """What ``process`` returns for a document it could only partly do (e.g. some chunks failed):
    its result is kept, and the document is counted, reported and exited on as *partial*."""

    result: Any
    problem: str


class StepFailed(RuntimeError):
    def __init__(self, name: str, doc_id: str | None, cause: BaseException):
        self.name, self.doc_id, self.cause = name, doc_id, cause
        super().__init__(f"step {name} failed: {one_line(cause, 400)}")


@dataclass
class RunOptions:
    concurrency: int = 8
    documents_in_flight: int | None = None  # default: concurrency
    max_run_tokens: int | None = None  # the run's token budget (prompt + completion, all calls)
    max_cost: float | None = None  # the run's USD budget
    max_seconds: float | None = None  # this session's time budget
    max_sub_calls: int | None = None  # RLM sub-queries, all recursion depths together
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_reasks: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    workspace: Path | None = None  # None: found as rlmpipe.runtime.store.find_workspace says
    adapter: Any = None  # a DSPy adapter for every step (None: DSPy's default, ChatAdapter)
    dspy_history: bool = False  # keep DSPy's trace and LM history during steps (memory grows with the run)
    force_resume: bool = False  # reuse an earlier run's finished steps although its fingerprint differs
    fresh: bool = False  # ignore earlier runs: new fingerprint, everything computed again
    resume_run_id: str | None = None  # continue exactly this run (``rlmpipe resume``)
    #: USD per million (input, output) tokens, by model: for models litellm has no price for
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: the circuit breaker: this many failed attempts in a row, over at least this many seconds
    breaker_failures: int = 8
    breaker_seconds: float = 30.0
    executor: str = "threads"  # threads | ray
    ray_address: str | None = None  # ray: an existing cluster ("auto", "ray://HOST:10001"); None: start one

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1 (got {self.concurrency})")
        self.workspace = find_workspace(self.workspace)


@dataclass
class RunSummary:
    run_id: str
    status: str  # done | stopped | failed
    reason: str | None
    documents: dict[str, int]  # done, partial, failed, stopped
    steps: dict[str, int]
    usage: dict
    session: int
    results: list[dict]  # {doc_id, path, status, result, problem?} of every document with a result
    notes: list[str]
    final: Any = None

    @property
    def resumable(self) -> bool:
        return self.status != "done"


class Run:
    """One session of a run, as pipelines see it."""

    def __init__(self, *, run_id: str, fingerprint: str, session: int, store: Store, lm: RecordingLM,
                 recorder: UsageRecorder, events: EventBus, options: RunOptions, control: RunControl):
        self.id = run_id
        self.fingerprint = fingerprint
        self.session = session
        self.store = store
        self.lm = lm
        self.events = events
        self.options = options
        self.control = control
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="rlmpipe-step")
        self._slots = threading.BoundedSemaphore(options.concurrency)
        self._calls: dict[str | None, list[LMCall]] = {}
        self._calls_lock = threading.Lock()
        self._unsubscribe = recorder.subscribe(self._collect)

    # --- stopping -------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.control.stopping

    @property
    def stop_reason(self) -> str | None:
        return self.control.reason

    def request_stop(self, reason: str) -> None:
        if self.control.stop(reason):
            self.events.emit(ev.StopRequested(run_id=self.id, reason=reason))

    # --- steps ----------------------------------------------------------------------------------
    def key(self, name: str, doc_id: str | None = None, chunk_id: str | None = None, inputs: Iterable[str] = ()) -> str:
        return step_key(self.fingerprint, doc_id, chunk_id, name, *inputs)

    def step(self, name: str, fn: Callable[[], Any], *, doc_id: str | None = None, chunk_id: str | None = None,
             inputs: Iterable[str] = (), depth: int = 0, key: str | None = None) -> Any:
        """Run ``fn`` as the step ``name`` (once per key, ever) and return its stored result."""
        key = key or self.key(name, doc_id, chunk_id, inputs)
        done = self.store.done_step(key)
        if done is not None:
            self.events.emit(ev.StepReused(run_id=self.id, step_key=key, name=name, doc_id=doc_id,
                             chunk_id=chunk_id, depth=done.depth, prompt_tokens=done.prompt_tokens,
                             completion_tokens=done.completion_tokens, cost=done.cost))
            return done.result
        self._check_running()
        while not self._slots.acquire(timeout=0.25):  # queued: leave at once when the run stops
            self._check_running()
        try:
            self._check_running()
            return self._execute(name, fn, key, doc_id, chunk_id, depth)
        finally:
            self._slots.release()

    def _check_running(self) -> None:
        if self.stopping:
            raise RunStopping(self.stop_reason or "stopping")

    def submit(self, name: str, fn: Callable[[], Any], **kwargs) -> Future:
        """``step`` on the worker pool."""
        return self._pool.submit(self.step, name, fn, **kwargs)

    def _journal(self, key: str, doc_id: str | None) -> Replay | None:
        """The step's call journal: what it was answered in earlier sessions (served again, free), and
        where each new answer is kept before the step's program sees it. (None: no journal; only
        ``bench/rlm_durability.py`` asks for that, to measure what the journal costs.)"""

        def keep(claim, outputs: str, call: LMCall | None, preview: str) -> None:
            context = current()
            self.store.keep_answer(self.id, key, claim, outputs, call, preview, context.depth, context.parent,
                                   self.session)

        return Replay(self.store.journal(key), keep)

    def _execute(self, name, fn, key, doc_id, chunk_id, depth) -> Any:
        started = time.time()
        worker = threading.current_thread().name
        self.events.emit(ev.StepStart(run_id=self.id, step_key=key, name=name, doc_id=doc_id,
                         chunk_id=chunk_id, depth=depth, worker=worker))
        reasks, feedback = 0, ""
        journal = self._journal(key, doc_id)
        try:
            # Pool threads do not inherit the caller's DSPy settings: give every step the run's LM.
            settings = {"lm": self.lm, **({"adapter": self.options.adapter} if self.options.adapter else {})}
            if not self.options.dspy_history:
                # DSPy keeps the last 10,000 traces and LM calls (prompts and replies) in memory: over a
                # long run that is hundreds of MB. Usage is recorded here; the store holds the results.
                settings.update(trace=None, disable_history=True)
            with dspy.context(**settings), call_context(run_id=self.id, step_key=key, step_name=name,
                                                        doc_id=doc_id, depth=depth, journal=journal):
                while True:
                    try:
                        with call_context(reask_feedback=feedback) if reasks else contextlib.nullcontext():
                            result = fn()
                        break
                    except Exception as exc:
                        if classify(exc).kind != "reask" or reasks >= self.options.max_reasks:
                            raise
                        reasks += 1
                        feedback = one_line(exc, 400)
                        self.events.emit(ev.Reask(run_id=self.id, step_key=key, name=name, doc_id=doc_id,
                                         error=feedback))
            extra, stopped = None, None
            if isinstance(result, StepOutput):
                result, extra, stopped = result.result, result.extra, result.stopped
            # JSON now, inside the step: a result that cannot be stored fails this step, with its calls
            result = to_json_value(result, f"the result of step {name!r}")
            extra = to_json_value(extra, f"the detail of step {name!r}")
        except BaseException as exc:
            calls = self._take_calls(key)
            replay = self._replay_told(journal, name, doc_id)
            if isinstance(exc, (RunStopping, BudgetExceeded, KeyboardInterrupt)):
                self.store.forget_answers(key, _stale(journal))
                if isinstance(exc, BudgetExceeded):
                    self.request_stop(f"budget: {exc}")
                self.events.emit(ev.StepStopped(run_id=self.id, step_key=key, name=name, doc_id=doc_id))
                raise RunStopping(self.stop_reason or str(exc)) from exc
            info = classify(exc)
            detail = None if info.type != "unexpected" and not isinstance(exc, NotStorable) else _traceback(exc)
            row = self._row(key, name, doc_id, chunk_id, depth, "failed", None, calls, reasks, started, worker,
                            one_line(exc, 400), detail=detail, replay=replay)
            # an answer that did not parse would fail the same way when replayed: the next try asks afresh
            self.store.commit_step(row, forget=_stale(journal), forget_all=info.kind == "reask")
            if info.stops_run:
                self.request_stop(f"failed: {one_line(exc, 400)}" + (f" ({info.hint})" if info.hint else ""))
            self.events.emit(ev.StepFailedEvent(run_id=self.id, step_key=key, name=name, doc_id=doc_id,
                             error=one_line(exc, 400), error_type=info.type, fatal=info.stops_run, traceback=detail))
            raise StepFailed(name, doc_id, exc) from exc
        calls = self._take_calls(key)
        replay = self._replay_told(journal, name, doc_id)
        if stopped is not None:  # keep the best partial answer, as a step that is not done
            row = self._row(key, name, doc_id, chunk_id, depth, "stopped", result, calls, reasks, started, worker,
                            stopped, extra=extra, replay=replay)
            self.store.commit_step(row, forget=_stale(journal))
            self.request_stop(stopped)
            self.events.emit(ev.StepStopped(run_id=self.id, step_key=key, name=name, doc_id=doc_id))
            raise RunStopping(self.stop_reason or stopped)
        row = self._row(key, name, doc_id, chunk_id, depth, "done", result, calls, reasks, started, worker,
                        None, extra=extra, replay=replay)
        self.store.commit_step(row, forget=_stale(journal))
        self.events.emit(ev.StepDone(run_id=self.id, step_key=key, name=name, doc_id=doc_id, chunk_id=chunk_id,
                         depth=depth, prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
                         cost=row.cost, seconds=row.finished - started, worker=worker))
        return json_roundtrip(result)  # exactly what a resume will read back from the store

    def _replay_told(self, journal: Replay | None, name: str, doc_id: str | None) -> JournalSummary:
        """How the step's replay went; a replay that parted from its journal is said, once, as a note."""
        summary = journal.summary() if journal is not None else JournalSummary(0, 0, None)
        if summary.unused:
            self.events.emit(ev.Note(run_id=self.id, message=(
                f"step {name}{f' of {doc_id[:12]}' if doc_id else ''}: its replay parted from the call journal "
                f"after {summary.parted_at} replayed call(s) (the program or its inputs changed, or its code is "
                f"not deterministic): {summary.unused} earlier answer(s) were not asked for again, and the rest "
                "ran live")))
        return summary

    def _row(self, key, name, doc_id, chunk_id, depth, status, result, calls, reasks, started, worker,
             error, *, extra: Any = None, detail: str | None = None,
             replay: JournalSummary | None = None) -> StepRow:
        reached = [c for c in calls if c.outcome not in FREE_OUTCOMES]
        unknown = any(c.cost is None and c.total_tokens for c in reached)
        return StepRow(
            step_key=key, run_id=self.id, doc_id=doc_id, chunk_id=chunk_id, name=name, depth=depth,
            status=status, result=result,
            prompt_tokens=sum(c.prompt_tokens for c in reached),
            completion_tokens=sum(c.completion_tokens for c in reached),
            cost=None if unknown else sum(c.cost or 0.0 for c in reached),
            calls=len({c.call_id for c in calls}), attempts=len(calls), reasks=reasks, error=error,
            started=started, finished=time.time(), worker=worker, extra=extra, detail=detail,
            replayed=replay.replayed if replay else 0, unused=replay.unused if replay else 0,
        )

    def _collect(self, call: LMCall) -> None:
        """Every attempt of this run is stored as it ends (what was billed survives a crash), and kept
        for its step's row until the step ends."""
        if call.run_id not in (None, self.id):
            return
        self.store.record_calls([call], self.session)
        if call.step_key is None:
            return
        with self._calls_lock:
            self._calls.setdefault(call.step_key, []).append(call)

    def _take_calls(self, key: str | None) -> list[LMCall]:
        with self._calls_lock:
            return self._calls.pop(key, [])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._unsubscribe()


def _traceback(error: BaseException) -> str:
    """The traceback of an error that is a bug somewhere (kept in the store and the event log)."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))[-8000:]


def _inputs_identity(paths: Iterable[str | os.PathLike]) -> list[str]:
    return sorted({str(Path(p).resolve()) for p in paths})


@dataclass
class RunPlan:
    run_id: str
    fingerprint: str
    parts: dict  # the fingerprint's parts, each digested (to say what changed later)
    described: dict  # the parts a person reads: model, api_base, versions
    notes: list[str]


class ConfigurationChanged(RuntimeError):
    """Resuming a run whose configuration changed, without ``force_resume``: the message says what changed."""


def plan_run(store: Store, pipeline: Pipeline, paths: list, lm, options: RunOptions,
             outputs: dict | None = None) -> RunPlan:
    """The run's id, fingerprint and notes: the same command and configuration always name the
    same run; a changed configuration never reuses stale results unless told to (and says so).
    ``outputs`` (where the command writes, e.g. ``--out``) name the run too, not its steps: the same
    command writing elsewhere is a run of its own that reuses every finished step."""
    parts, described = fingerprint_parts(pipeline, lm, options.adapter)
    fingerprint = digest(parts)
    part_digests = {key: digest(value) for key, value in parts.items()}
    inputs = _inputs_identity(paths)
    notes: list[str] = []
    if options.fresh:
        fingerprint = digest([fingerprint, time.time_ns()])
    written = {key: value for key, value in (outputs or {}).items() if value}
    run_id = digest([pipeline.name, inputs, fingerprint, *([written] if written else [])], 12)

    def change_since(earlier: dict) -> FingerprintChange:
        return FingerprintChange(earlier["config"].get("fingerprint_parts") or {}, part_digests,
                                 earlier["config"].get("described") or {}, described)

    def earlier_plan(earlier: dict, how: str) -> RunPlan:
        change = change_since(earlier)
        if not options.force_resume:
            raise ConfigurationChanged(
                f"run {earlier['run_id']} was made with another configuration ({change}); its finished steps "
                "would not be what this configuration computes: pass --force-resume to reuse them anyway, "
                "or --fresh to start over")
        notes.append(f"{how} run {earlier['run_id']} although its configuration changed ({change}) "
                     "(--force-resume): its finished steps are reused")
        return RunPlan(earlier["run_id"], earlier["fingerprint"], part_digests, described, notes)

    if options.resume_run_id:
        earlier = store.get_run(options.resume_run_id)
        if earlier is None:
            raise ConfigurationChanged(f"no run {options.resume_run_id} in {store.workspace}")
        if earlier["fingerprint"] == fingerprint:
            notes.append(f"resuming run {earlier['run_id']}: same configuration, its finished steps are reused")
            return RunPlan(earlier["run_id"], fingerprint, part_digests, described, notes)
        return earlier_plan(earlier, "resuming")
    if options.fresh:
        return RunPlan(run_id, fingerprint, part_digests, described, notes)
    existing = store.get_run(run_id)
    if existing is not None:
        if existing["status"] != "done":
            notes.append(f"resuming run {run_id} ({existing['status']}): its finished steps are reused")
        return RunPlan(run_id, fingerprint, part_digests, described, notes)
    # a run of the same pipeline over the same inputs with another configuration?
    for earlier in store.list_runs(limit=200):
        if earlier["pipeline"] == pipeline.name and earlier["config"].get("inputs") == inputs:
            if earlier["fingerprint"] == fingerprint:  # the same configuration, written elsewhere
                notes.append(f"run {earlier['run_id']} of this command writes elsewhere: this is run {run_id} "
                             "(the finished steps of the same configuration are reused)")
                break
            if options.force_resume:
                return earlier_plan(earlier, "continuing")
            notes.append(f"configuration changed since run {earlier['run_id']} ({change_since(earlier)}): "
                         f"starting a new run {run_id} (pass --force-resume to reuse the earlier run's "
                         "finished steps)")
            break
    return RunPlan(run_id, fingerprint, part_digests, described, notes)


def check_prices(options: RunOptions, model: str, pricing: Pricing) -> None:
    """A cost cap is only a cap if every call can be priced: refuse to start otherwise."""
    if options.max_cost is not None and not pricing.known(model):
        raise ValueError(
            f"--max-cost needs the price of {model}, which litellm does not know: give it with "
            "--price INPUT,OUTPUT (USD per million tokens), or cap tokens with --max-run-tokens instead")


def execute(pipeline: Pipeline, paths: list, lm, *, options: RunOptions | None = None,
            store: Store | None = None, events: EventBus | None = None, run_config: dict | None = None,
            on_start: Callable[[Run], None] | None = None) -> RunSummary:
    """Run ``pipeline`` over the documents under ``paths`` with the DSPy LM ``lm``.

    Raises before anything runs when the run cannot start: ``ValueError`` (a cost cap without a
    price), :class:`~rlmpipe.runtime.store.WorkspaceBusy` (another run holds the workspace),
    :class:`ConfigurationChanged` (resuming a run whose configuration changed, unforced).
    """
    options = options or RunOptions()
    threadsafe_ast.install()  # DSPy parses in every step thread
    if options.executor not in ("threads", "ray"):
        raise ValueError(f"unknown executor {options.executor!r} (choose from: threads, ray)")
    own_store = store is None
    store = store or Store(options.workspace)
    recorder = UsageRecorder()
    events = events or EventBus()
    inner_lm = without_own_retries(lm.inner if isinstance(lm, RecordingLM) else lm)
    pricing = Pricing(options.prices)
    check_prices(options, inner_lm.model, pricing)
    try:
        command_record = (run_config or {}).get("command", {})
        plan = plan_run(store, pipeline, paths, inner_lm, options,  # reads only: the lock is taken next
                        outputs=command_record.get("outputs"))
        command = command_record.get("name") or pipeline.name
        with store.run_lock({"run_id": plan.run_id, "command": f"rlmpipe {command}" if command != "run" else
                             f"rlmpipe.run({pipeline.name})"}):
            return _execute_locked(pipeline, paths, inner_lm, options, store, recorder, events, run_config,
                                   on_start, pricing, plan)
    finally:
        if own_store:
            store.close()


def recording_lm(lm, recorder: UsageRecorder, limits: Limits, events: EventBus, run_id: str,
                 retry: RetryPolicy, pricing: Pricing) -> tuple[RecordingLM, list[Callable[[], None]]]:
    """``lm`` held to the run's limits and recorded: every call of this run (or of no run) is charged
    to its budget and told as events. Returned with the functions that stop that listening."""

    def ours(call_run_id: str | None) -> bool:
        return call_run_id in (None, run_id)

    unsubscribe = [
        recorder.subscribe(lambda call: limits.budget.charge(call) if ours(call.run_id) else None),
        recorder.subscribe(lambda call: events.emit(ev.LMCallEvent.of(call)) if ours(call.run_id) else None),
        recorder.subscribe_starts(
            lambda start: events.emit(ev.LMCallStart(**start)) if ours(start["run_id"]) else None),
    ]
    recording = RecordingLM(lm, recorder, retry=retry, limiter=limits.limiter, budget=limits.budget,
                            control=limits.control, breaker=limits.breaker, pricing=pricing)
    return recording, unsubscribe


@dataclass
class DocumentOutcome:
    status: str  # done | partial | failed | stopped
    entry: dict | None = None  # {doc_id, path, status, result, problem?} when there is a result


def process_document(pipeline: Pipeline, run: Run, document: Document) -> DocumentOutcome:
    """One document through the pipeline, its state kept in the run's store and told as events. The
    same for every executor: threads call it in this process, Ray workers in theirs."""
    store, events, run_id, path = run.store, run.events, run.id, str(document.path)
    if run.stopping:
        store.set_document(run_id, document.doc_id, path, "stopped")
        return DocumentOutcome("stopped")
    store.set_document(run_id, document.doc_id, path, "running")
    events.emit(ev.DocumentStart(run_id=run_id, doc_id=document.doc_id, path=path, size=document.size_bytes))
    try:
        with dspy.context(lm=run.lm):
            outcome = pipeline.process(run, document)
        partial = outcome if isinstance(outcome, Partial) else None
        result = to_json_value(partial.result if partial else outcome, f"the result of {path}")
    except RunStopping:
        store.set_document(run_id, document.doc_id, path, "stopped")
        events.emit(ev.DocumentStopped(run_id=run_id, doc_id=document.doc_id, path=path))
        return DocumentOutcome("stopped")
    except Exception as exc:  # StepFailed, a DocumentError found while streaming, a pipeline bug
        message = str(exc) if isinstance(exc, DocumentError) else f"{path}: {one_line(exc, 400)}"
        detail = None if isinstance(exc, (DocumentError, StepFailed)) else _traceback(exc)
        store.set_document(run_id, document.doc_id, path, "failed", error=message, detail=detail)
        events.emit(ev.DocumentFailed(run_id=run_id, doc_id=document.doc_id, path=path, error=message,
                    traceback=detail))
        return DocumentOutcome("failed")
    status = "partial" if partial else "done"
    problem = (partial.problem or "only partly done") if partial else None
    store.set_document(run_id, document.doc_id, path, status, result=result, error=problem)
    events.emit(ev.EVENT_TYPES[f"document_{status}"](run_id=run_id, doc_id=document.doc_id, path=path,
                                                      **({"error": f"{path}: {problem}"} if problem else {})))
    return DocumentOutcome(status, {"doc_id": document.doc_id, "path": path, "status": status, "result": result,
                                    **({"problem": problem} if problem else {})})


class Tally:
    """Documents counted by status, and the results, as drivers finish them (from any thread)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.results: list[dict] = []
        self.unread = False  # stopped before every input was looked at
        self._lock = threading.Lock()

    def add(self, outcome: DocumentOutcome) -> None:
        with self._lock:
            self.counts[outcome.status] += 1
            if outcome.entry is not None:
                self.results.append(outcome.entry)


def queued_documents(run: Run, paths: list, tally: Tally) -> Iterator[tuple[Document, str | None]]:
    """The inputs as documents to drive, with the path of an earlier document of the same bytes (to
    wait for: its steps are shared); unreadable inputs are counted as failed here. Stops yielding
    once the run is stopping."""
    events, run_id = run.events, run.id
    first_of: dict[str, str] = {}
    for item in open_documents(paths):
        if run.stopping:
            tally.unread = True
            return
        if isinstance(item, Notice):
            events.emit(ev.Note(run_id=run_id, message=str(item)))
            continue
        if isinstance(item, DocumentError):
            fail_unopened(run, tally, item.path, str(item))
            continue
        events.emit(ev.DocumentQueued(run_id=run_id, doc_id=item.doc_id, path=str(item.path), size=item.size_bytes))
        first = first_of.setdefault(item.doc_id, str(item.path))
        if first != str(item.path):
            events.emit(ev.Note(run_id=run_id, message=f"{item.path}: the same content as {first}: "
                                                        "analysed once (its steps are shared)"))
        yield item, (first if first != str(item.path) else None)


def fail_unopened(run: Run, tally: Tally, path: str, message: str) -> None:
    """A document that failed before it had an id (unreadable, or its Ray task failed for good)."""
    run.store.set_document(run.id, "", path, "failed", error=message)
    run.events.emit(ev.DocumentFailed(run_id=run.id, doc_id=None, path=path, error=message))
    tally.add(DocumentOutcome("failed"))


def drive_on_threads(pipeline: Pipeline, run: Run, paths: list, tally: Tally) -> None:
    """Documents on a small pool of driver threads; their steps on the run's worker pool."""
    in_flight_limit = run.options.documents_in_flight or run.options.concurrency
    drivers = ThreadPoolExecutor(in_flight_limit + 1, thread_name_prefix="rlmpipe-doc")
    pending: set[Future] = set()
    futures: dict[str, Future] = {}

    def drive(document: Document, first: Future | None) -> None:
        if first is not None:
            wait([first])
        tally.add(process_document(pipeline, run, document))

    try:
        for document, first in queued_documents(run, paths, tally):
            while len(pending) >= in_flight_limit:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            future = drivers.submit(drive, document, futures.get(first) if first else None)
            futures.setdefault(str(document.path), future)
            pending.add(future)
        while pending:  # short waits: the main thread must stay free for Ctrl-C
            _, pending = wait(pending, timeout=0.5)
    finally:
        drivers.shutdown(wait=True)


def _execute_locked(pipeline, paths, inner_lm, options, store, recorder, events, run_config, on_start,
                    pricing, plan: RunPlan) -> RunSummary:
    run_id, fingerprint = plan.run_id, plan.fingerprint
    earlier = store.get_run(run_id)
    models = list(dict.fromkeys([*((earlier or {}).get("config", {}).get("models") or []), inner_lm.model]))
    cluster = None
    if options.executor == "ray":
        from rlmpipe.runtime import ray_executor

        cluster = ray_executor.connect(options)
    config = {**(run_config or {}), "pipeline_config": pipeline.config(), "inputs": _inputs_identity(paths),
              "options": {"concurrency": options.concurrency, "max_run_tokens": options.max_run_tokens,
                          "max_cost": options.max_cost, "max_seconds": options.max_seconds,
                          "prices": options.prices},
              "fingerprint_parts": plan.parts, "described": plan.described, "models": models,
              "executor": {"name": options.executor, **(cluster.describe() if cluster else {})}}
    session = store.start_run(run_id, pipeline.name, fingerprint, ", ".join(models), config, os.getpid())
    pricing.cost(inner_lm.model, 0, 0)  # look the price up (importing litellm) now, not in the first worker
    previous = store.usage_totals(run_id)
    carried = (previous["prompt_tokens"] + previous["completion_tokens"], previous["cost"] or 0.0)
    limits = cluster.limits(options, *carried) if cluster else local_limits(options, *carried)
    recording, unsubscribe = recording_lm(inner_lm, recorder, limits, events, run_id, options.retry, pricing)
    event_log = EventLogWriter(options.workspace)
    stop_event_log = events.subscribe(event_log)

    def new_run() -> Run:  # one for the documents, another for the corpus-level finish
        return Run(run_id=run_id, fingerprint=fingerprint, session=session, store=store, lm=recording,
                   recorder=recorder, events=events, options=options, control=limits.control)

    run = new_run()
    events.emit(ev.RunStart(run_id=run_id, session=session, pipeline=pipeline.name, model=inner_lm.model,
                fingerprint=fingerprint, concurrency=options.concurrency, executor=options.executor))
    for note in plan.notes:
        events.emit(ev.Note(run_id=run_id, message=note))
    if on_start is not None:
        on_start(run)
    tally = Tally()
    deadline = None
    if options.max_seconds is not None:  # also ends the waits (rate-limit windows, queues) that admission cannot see
        deadline = threading.Timer(options.max_seconds, lambda: run.request_stop(
            f"budget: time budget reached ({options.max_seconds:g} s)"))
        deadline.daemon = True
        deadline.start()
    try:
        if cluster is not None:
            cluster.drive(pipeline, run, inner_lm, pricing, paths, tally)
        else:
            drive_on_threads(pipeline, run, paths, tally)
    finally:
        run.close()
    results = sorted(tally.results, key=lambda item: item["path"])
    final = None
    finish = getattr(pipeline, "finish", None)
    finished_corpus = finish is None or not results  # no corpus-level work, or no results for it
    try:
        if not finished_corpus and not run.stopping:
            run = new_run()
            try:
                with dspy.context(lm=recording):
                    final = to_json_value(finish(run, [r for r in results if r["status"] == "done"]),
                                          "the run's final result")
                finished_corpus = True
            except RunStopping:
                pass
            except Exception as exc:  # the corpus-level step failed: say so, keep the documents' results
                run.request_stop(f"failed: {one_line(exc, 400)}")
            finally:
                run.close()
    finally:
        for stop_listening in unsubscribe:
            stop_listening()
        if deadline is not None:
            deadline.cancel()
        if cluster is not None:
            cluster.close()
    counts = tally.counts
    totals = store.step_counts(run_id)
    usage = store.usage_totals(run_id)
    reason = run.stop_reason
    if reason and reason.startswith("failed"):
        status = "failed"
    elif counts["stopped"] or tally.unread or not finished_corpus:
        status = "stopped"
    else:
        status = "done"  # every document finished (a stop that came after the last one changed nothing)
        reason = None
    if status == "stopped" and reason and reason.startswith("budget"):
        reason = _billed(reason, options, usage)
    store.finish_run(run_id, status, reason, {"documents": dict(counts), "steps": totals})
    events.emit(ev.RunEnd(run_id=run_id, status=status, reason=reason, documents=dict(counts), steps=totals))
    stop_event_log()
    event_log.close()
    return RunSummary(run_id, status, reason, dict(counts), totals, usage, session, results, plan.notes, final)


def _stale(journal: Replay | None) -> list:
    return journal.stale() if journal is not None else []


def _billed(reason: str, options: RunOptions, usage: dict) -> str:
    """A budget stop, told with what was billed by the end (calls in flight finish after the stop)."""
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    if "token budget" in reason and options.max_run_tokens is not None:
        return f"budget: token budget reached ({tokens:,} tokens billed of {options.max_run_tokens:,})"
    if "cost budget" in reason and options.max_cost is not None:
        return f"budget: cost budget reached (${usage['cost'] or 0:.6f} billed of ${options.max_cost:g})"
    return reason


@contextlib.contextmanager
def interrupt_handling(get_run: Callable[[], Run | None]):
    """First Ctrl-C: nothing new starts (queued steps and calls leave at once), calls already at
    the model finish and are saved, the run ends resumable. Second Ctrl-C: exit now (committed
    steps are safe in the store; calls at the model are lost)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def handler(signum, frame):
        nonlocal presses
        presses += 1
        run = get_run()
        if presses == 1 and run is not None:
            run.request_stop("interrupted")
            os.write(2, b"\nstopping: nothing new starts; waiting for the calls at the model to finish "
                        b"(Ctrl-C again to quit now)\n")
        else:
            os.write(2, b"\nquitting now; finished steps are saved, resume to go on\n")
            os._exit(130)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
