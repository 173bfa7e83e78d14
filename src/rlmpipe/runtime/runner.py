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
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait, FIRST_COMPLETED
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import dspy

from rlmpipe.ingest import Document, DocumentError, Notice, open_documents
from rlmpipe.lm.context import call_context
from rlmpipe.lm.errors import BudgetExceeded, classify
from rlmpipe.lm.limits import Budget, RateLimiter
from rlmpipe.lm.recording import RecordingLM, RetryPolicy, RunStopping
from rlmpipe.lm.usage import LMCall, UsageRecorder, price
from rlmpipe.runtime.eventlog import EventLogWriter
from rlmpipe.runtime.events import EventBus
from rlmpipe.runtime.fingerprint import digest, run_fingerprint, step_key
from rlmpipe.runtime.store import StepRow, Store


class Pipeline(Protocol):
    """What the engine needs from a pipeline."""

    name: str

    def config(self) -> dict:
        """Everything that decides its results (goes into the run fingerprint)."""

    def programs(self) -> dict:
        """Its DSPy modules by name (their signatures go into the fingerprint)."""

    def process(self, run: "Run", document: Document) -> Any:
        """Run one document through the steps; return its JSON-able result."""

    # Optional: ``finish(run, results) -> Any`` runs once all documents are done, for work over the
    # whole corpus (``rlmpipe ask``); its result is the run's ``final``.


@dataclass(frozen=True)
class StepOutput:
    """What a step function may return to store detail next to its result (e.g. an RLM trajectory)."""

    result: Any
    extra: Any = None


class StepFailed(RuntimeError):
    def __init__(self, name: str, doc_id: str | None, cause: BaseException):
        self.name, self.doc_id, self.cause = name, doc_id, cause
        super().__init__(f"step {name} failed: {_one_line(cause)}")


@dataclass
class RunOptions:
    concurrency: int = 8
    documents_in_flight: int | None = None  # default: concurrency
    max_tokens: int | None = None
    max_cost: float | None = None
    max_seconds: float | None = None
    max_sub_calls: int | None = None  # RLM sub-queries, all recursion depths together
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_reasks: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    workspace: Path = Path(".rlmpipe")
    adapter: Any = None  # a DSPy adapter for every step (None: DSPy's default, ChatAdapter)
    dspy_history: bool = False  # keep DSPy's trace and LM history during steps (memory grows with the run)
    force_resume: bool = False  # reuse an earlier run's finished steps although its fingerprint differs
    fresh: bool = False  # ignore earlier runs: new fingerprint, everything computed again

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1 (got {self.concurrency})")


@dataclass
class RunSummary:
    run_id: str
    status: str  # done | stopped | failed
    reason: str | None
    documents: dict[str, int]
    steps: dict[str, int]
    usage: dict
    session: int
    results: list[dict]
    notes: list[str]
    final: Any = None

    @property
    def resumable(self) -> bool:
        return self.status != "done"


class Run:
    """One session of a run, as pipelines see it."""

    def __init__(self, *, run_id: str, fingerprint: str, session: int, store: Store, lm: RecordingLM,
                 recorder: UsageRecorder, events: EventBus, options: RunOptions, stop: threading.Event):
        self.id = run_id
        self.fingerprint = fingerprint
        self.session = session
        self.store = store
        self.lm = lm
        self.recorder = recorder
        self.events = events
        self.options = options
        self._stop = stop
        self.stop_reason: str | None = None
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="rlmpipe-step")
        self._slots = threading.BoundedSemaphore(options.concurrency)
        self._calls: dict[str | None, list[LMCall]] = defaultdict(list)
        self._calls_lock = threading.Lock()
        self._unsubscribe = recorder.subscribe(self._collect)

    # --- stopping -------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()
            self.events.emit("run_stopping", run_id=self.id, reason=reason)

    # --- steps ----------------------------------------------------------------------------------
    def key(self, name: str, doc_id: str | None = None, chunk_id: str | None = None, inputs: Iterable[str] = ()) -> str:
        return step_key(self.fingerprint, doc_id, chunk_id, name, *inputs)

    def step(self, name: str, fn: Callable[[], Any], *, doc_id: str | None = None, chunk_id: str | None = None,
             inputs: Iterable[str] = (), depth: int = 0, key: str | None = None) -> Any:
        """Run ``fn`` as the step ``name`` (once per key, ever) and return its stored result."""
        key = key or self.key(name, doc_id, chunk_id, inputs)
        done = self.store.done_step(key)
        if done is not None:
            self.events.emit("step_reused", run_id=self.id, step_key=key, name=name, doc_id=doc_id,
                             chunk_id=chunk_id, depth=done.depth, prompt_tokens=done.prompt_tokens,
                             completion_tokens=done.completion_tokens, cost=done.cost)
            return done.result
        if self.stopping:
            raise RunStopping(self.stop_reason or "stopping")
        with self._slots:
            if self.stopping:
                raise RunStopping(self.stop_reason or "stopping")
            return self._execute(name, fn, key, doc_id, chunk_id, depth)

    def submit(self, name: str, fn: Callable[[], Any], **kwargs) -> Future:
        """``step`` on the worker pool."""
        return self._pool.submit(self.step, name, fn, **kwargs)

    def _execute(self, name, fn, key, doc_id, chunk_id, depth) -> Any:
        started = time.time()
        worker = threading.current_thread().name
        self.events.emit("step_start", run_id=self.id, step_key=key, name=name, doc_id=doc_id,
                         chunk_id=chunk_id, depth=depth, worker=worker)
        reasks = 0
        try:
            # Pool threads do not inherit the caller's DSPy settings: give every step the run's LM.
            settings = {"lm": self.lm, **({"adapter": self.options.adapter} if self.options.adapter else {})}
            if not self.options.dspy_history:
                # DSPy keeps the last 10,000 traces and LM calls (prompts and replies) in memory: over a
                # long run that is hundreds of MB. Usage is recorded here; the store holds the results.
                settings.update(trace=None, disable_history=True)
            with dspy.context(**settings), call_context(run_id=self.id, step_key=key, step_name=name,
                                                        doc_id=doc_id, depth=depth):
                while True:
                    try:
                        if reasks:
                            with call_context(reask_feedback=feedback):
                                result = fn()
                        else:
                            result = fn()
                        break
                    except Exception as exc:
                        if classify(exc).kind != "reask" or reasks >= self.options.max_reasks:
                            raise
                        reasks += 1
                        feedback = _one_line(exc)[:600]
                        self.events.emit("reask", run_id=self.id, step_key=key, name=name, doc_id=doc_id,
                                         error=feedback)
        except BaseException as exc:
            calls = self._take_calls(key)
            if isinstance(exc, (RunStopping, BudgetExceeded, KeyboardInterrupt)):
                partial = getattr(exc, "partial", None)
                if partial is not None:  # keep the best partial answer, as a step that is not done
                    row = self._row(key, name, doc_id, chunk_id, depth, "stopped", partial, calls, reasks, started,
                                    worker, _one_line(exc))
                    row.extra = getattr(exc, "extra", None)
                    self.store.commit_step(row, calls, self.session)
                else:
                    self.store.record_calls(calls, self.session)
                if isinstance(exc, BudgetExceeded):
                    self.request_stop(f"budget: {exc}")
                self.events.emit("step_stopped", run_id=self.id, step_key=key, name=name, doc_id=doc_id)
                raise RunStopping(self.stop_reason or str(exc)) from exc
            info = classify(exc)
            self.store.commit_step(self._row(key, name, doc_id, chunk_id, depth, "failed", None, calls, reasks,
                                             started, worker, _one_line(exc)), calls, self.session)
            if info.stops_run:
                self.request_stop(f"failed: {_one_line(exc)}" + (f" ({info.hint})" if info.hint else ""))
            self.events.emit("step_failed", run_id=self.id, step_key=key, name=name, doc_id=doc_id,
                             error=_one_line(exc), error_type=info.type, fatal=info.stops_run)
            raise StepFailed(name, doc_id, exc) from exc
        calls = self._take_calls(key)
        extra = None
        if isinstance(result, StepOutput):
            result, extra = result.result, result.extra
        row = self._row(key, name, doc_id, chunk_id, depth, "done", result, calls, reasks, started, worker, None)
        row.extra = extra
        self.store.commit_step(row, calls, self.session)
        self.events.emit("step_done", run_id=self.id, step_key=key, name=name, doc_id=doc_id, chunk_id=chunk_id,
                         depth=depth, prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
                         cost=row.cost, seconds=row.finished - started, worker=worker)
        return result

    def _row(self, key, name, doc_id, chunk_id, depth, status, result, calls, reasks, started, worker, error) -> StepRow:
        reached = [c for c in calls if c.outcome != "cached"]
        unknown = any(c.cost is None and c.total_tokens for c in reached)
        return StepRow(
            step_key=key, run_id=self.id, doc_id=doc_id, chunk_id=chunk_id, name=name, depth=depth,
            status=status, result=result,
            prompt_tokens=sum(c.prompt_tokens for c in reached),
            completion_tokens=sum(c.completion_tokens for c in reached),
            cost=None if unknown else sum(c.cost or 0.0 for c in reached),
            calls=len({c.call_id for c in calls}), attempts=len(calls), reasks=reasks, error=error,
            started=started, finished=time.time(), worker=worker, extra=None,
        )

    def _collect(self, call: LMCall) -> None:
        if call.run_id not in (None, self.id):
            return
        with self._calls_lock:
            self._calls[call.step_key].append(call)

    def _take_calls(self, key: str) -> list[LMCall]:
        with self._calls_lock:
            return self._calls.pop(key, [])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._unsubscribe()
        self.store.record_calls(self._take_calls(None), self.session)  # calls made outside any step


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:400]}" if text else type(error).__name__


def _inputs_identity(paths: Iterable[str | os.PathLike]) -> list[str]:
    return sorted(str(Path(p).resolve()) for p in paths)


def plan_run(store: Store, pipeline: Pipeline, paths: list, model: str, lm_kwargs: dict,
             options: RunOptions) -> tuple[str, str, list[str]]:
    """(run_id, fingerprint, notes): the same command and configuration always name the same run."""
    adapter = type(options.adapter).__name__ if options.adapter is not None else "default"
    fingerprint = run_fingerprint(pipeline.name, {**pipeline.config(), "adapter": adapter}, pipeline.programs(),
                                  model, lm_kwargs)
    inputs = _inputs_identity(paths)
    notes: list[str] = []
    if options.fresh:
        fingerprint = digest([fingerprint, time.time_ns()])
    run_id = digest([pipeline.name, inputs, fingerprint], 12)
    if options.fresh or store.get_run(run_id) is not None:
        return run_id, fingerprint, notes
    # a run of the same pipeline over the same inputs with another configuration?
    for earlier in store.list_runs(limit=200):
        if earlier["pipeline"] == pipeline.name and earlier["config"].get("inputs") == inputs:
            if options.force_resume:
                notes.append(f"configuration changed since run {earlier['run_id']}; resuming it anyway "
                             "(--force-resume): its finished steps are reused")
                return earlier["run_id"], earlier["fingerprint"], notes
            notes.append(f"configuration changed since run {earlier['run_id']}: starting a new run "
                         f"{run_id} (pass --force-resume to reuse the earlier run's finished steps)")
            break
    return run_id, fingerprint, notes


def execute(pipeline: Pipeline, paths: list, lm, *, options: RunOptions | None = None,
            store: Store | None = None, recorder: UsageRecorder | None = None,
            events: EventBus | None = None, run_config: dict | None = None,
            on_start: Callable[[Run], None] | None = None) -> RunSummary:
    """Run ``pipeline`` over the documents under ``paths`` with the DSPy LM ``lm``."""
    options = options or RunOptions()
    store = store or Store(options.workspace)
    recorder = recorder or UsageRecorder()
    events = events or EventBus()
    inner_lm = lm.inner if isinstance(lm, RecordingLM) else lm
    run_id, fingerprint, notes = plan_run(store, pipeline, paths, inner_lm.model, inner_lm.kwargs, options)
    config = {**(run_config or {}), "pipeline_config": pipeline.config(), "inputs": _inputs_identity(paths),
              "options": {"concurrency": options.concurrency, "max_tokens": options.max_tokens,
                          "max_cost": options.max_cost, "max_seconds": options.max_seconds}}
    session = store.start_run(run_id, pipeline.name, fingerprint, inner_lm.model, config, os.getpid())
    price(inner_lm.model, 0, 0)  # look the price up (importing litellm) now, not in the first worker
    budget = Budget(options.max_tokens, options.max_cost, options.max_seconds, options.max_sub_calls)
    previous = store.usage_totals(run_id)
    budget.carry_over(previous["prompt_tokens"] + previous["completion_tokens"], previous["cost"] or 0.0)
    unsubscribe = [recorder.subscribe(lambda call: budget.charge(call) if call.run_id in (None, run_id) else None)]
    stop = threading.Event()
    limiter = (RateLimiter(options.requests_per_minute, options.tokens_per_minute)
               if options.requests_per_minute or options.tokens_per_minute else None)
    recording = RecordingLM(inner_lm, recorder, retry=options.retry, limiter=limiter, budget=budget, stop=stop)
    event_log = EventLogWriter(options.workspace)
    stop_event_log = events.subscribe(event_log)
    run = Run(run_id=run_id, fingerprint=fingerprint, session=session, store=store, lm=recording,
              recorder=recorder, events=events, options=options, stop=stop)
    unsubscribe.append(recorder.subscribe(
        lambda call: events.emit("lm_call", **call.to_dict()) if call.run_id in (None, run_id) else None))
    for note in notes:
        events.emit("note", run_id=run_id, message=note)
    events.emit("run_start", run_id=run_id, session=session, pipeline=pipeline.name, model=inner_lm.model,
                fingerprint=fingerprint, concurrency=options.concurrency)
    if on_start is not None:
        on_start(run)
    counts: dict[str, int] = defaultdict(int)
    results: list[dict] = []
    results_lock = threading.Lock()

    def drive(document: Document) -> None:
        path = str(document.path)
        if run.stopping:
            store.set_document(run_id, document.doc_id, path, "stopped")
            with results_lock:
                counts["stopped"] += 1
            return
        store.set_document(run_id, document.doc_id, path, "running")
        events.emit("document_start", run_id=run_id, doc_id=document.doc_id, path=path, size=document.size_bytes)
        try:
            with dspy.context(lm=recording):
                result = pipeline.process(run, document)
        except RunStopping:
            store.set_document(run_id, document.doc_id, path, "stopped")
            events.emit("document_stopped", run_id=run_id, doc_id=document.doc_id, path=path)
            with results_lock:
                counts["stopped"] += 1
            return
        except Exception as exc:  # StepFailed, a DocumentError found while streaming, a pipeline bug
            message = str(exc) if isinstance(exc, DocumentError) else f"{path}: {_one_line(exc)}"
            store.set_document(run_id, document.doc_id, path, "failed", error=message)
            events.emit("document_failed", run_id=run_id, doc_id=document.doc_id, path=path, error=message)
            with results_lock:
                counts["failed"] += 1
            return
        store.set_document(run_id, document.doc_id, path, "done", result=result)
        events.emit("document_done", run_id=run_id, doc_id=document.doc_id, path=path)
        with results_lock:
            counts["done"] += 1
            results.append({"doc_id": document.doc_id, "path": path, "result": result})

    in_flight_limit = options.documents_in_flight or options.concurrency
    drivers = ThreadPoolExecutor(in_flight_limit, thread_name_prefix="rlmpipe-doc")
    pending: set[Future] = set()
    try:
        for item in open_documents(paths):
            if isinstance(item, Notice):
                events.emit("note", run_id=run_id, message=str(item))
                continue
            if isinstance(item, DocumentError):
                store.set_document(run_id, "", item.path, "failed", error=str(item))
                events.emit("document_failed", run_id=run_id, doc_id=None, path=item.path, error=str(item))
                counts["failed"] += 1
                continue
            events.emit("document_queued", run_id=run_id, doc_id=item.doc_id, path=str(item.path), size=item.size_bytes)
            while len(pending) >= in_flight_limit:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            pending.add(drivers.submit(drive, item))
        while pending:  # short waits: the main thread must stay free for Ctrl-C
            _, pending = wait(pending, timeout=0.5)
    finally:
        drivers.shutdown(wait=True)
        run.close()
    results.sort(key=lambda item: item["path"])
    final = None
    finish = getattr(pipeline, "finish", None)
    try:
        if finish is not None and not run.stopping and results:
            run = Run(run_id=run_id, fingerprint=fingerprint, session=session, store=store, lm=recording,
                      recorder=recorder, events=events, options=options, stop=stop)
            try:
                with dspy.context(lm=recording):
                    final = finish(run, results)
            except RunStopping:
                pass
            except Exception as exc:  # the corpus-level step failed: say so, keep the documents' results
                run.request_stop(f"failed: {_one_line(exc)}")
            finally:
                run.close()
    finally:
        for stop_listening in unsubscribe:
            stop_listening()
    totals = store.step_counts(run_id)
    usage = store.usage_totals(run_id)
    if run.stopping and run.stop_reason and run.stop_reason.startswith("failed"):
        status = "failed"
    elif run.stopping or counts["stopped"]:
        status = "stopped"
    else:
        status = "done"
    reason = run.stop_reason if status != "done" else None
    store.finish_run(run_id, status, reason, {"documents": dict(counts), "steps": totals})
    events.emit("run_end", run_id=run_id, status=status, reason=reason, documents=dict(counts), steps=totals)
    stop_event_log()
    event_log.close()
    return RunSummary(run_id, status, reason, dict(counts), totals, usage, session, results, notes, final)


@contextlib.contextmanager
def interrupt_handling(get_run: Callable[[], Run | None]):
    """First Ctrl-C: stop starting work, let in-flight calls finish, persist, exit resumable.
    Second Ctrl-C: exit now (committed steps are safe in the store; in-flight calls are lost)."""
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
            os.write(2, b"\nstopping: finishing calls in flight (Ctrl-C again to quit now)\n")
        else:
            os.write(2, b"\nquitting now; finished steps are saved, resume to go on\n")
            os._exit(130)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
