"""The Ray executor: the same runs on a Ray cluster, one document per Ray task.

What stays the same: the pipeline, the steps, the store as the one source of truth, resume. What
Ray adds: documents run on every node's workers (each task chunks and processes one document, with
its own step threads for the I/O-bound LM calls; the driver sends paths, never chunk texts).

Two actors per run, both on the driver's node:

* :class:`StoreActor` owns the run's SQLite store. A worker commits each step through it *before*
  the step returns, so a step is done when it is in the store; at a document's start the worker
  reads all of that document's done steps in one call, and asks again before any other step.
  Workers' events come back through it to the driver, which logs and shows them as for threads.
* :class:`LimitsActor` holds what must be global: the per-minute windows, the budget counters
  (seeded from the store on resume), the stop flag and reason, the circuit breaker, and a "hold
  until" time so a ``Retry-After`` seen by one worker pauses all of them. Every method answers at
  once (a blocking acquire inside an actor can deadlock a cluster): callers sleep locally.

Ray re-executes tasks whose worker or node died, and may run a finished task again after a node
loss (lineage). Correctness never relies on Ray: a re-executed document replays its committed
steps from the store, and only the steps that were in flight at the failure call the model again.

Ray reaches for the network at start-up even with usage stats off (a cloud-metadata probe, DNS
lookups); rlmpipe's own tests run it in a loopback-only network namespace.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from rlmpipe.lm.control import RunControl
from rlmpipe.lm.errors import BudgetExceeded, one_line
from rlmpipe.lm.limits import Reservation, wait_until_free
from rlmpipe.lm.usage import LMCall
from rlmpipe.runtime.limits import Limits, local_limits
from rlmpipe.runtime.store import Store

#: the object store of a local Ray started here: small (the driver sends paths, results are JSON)
LOCAL_OBJECT_STORE_BYTES = 128 << 20


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'rlmpipe[ray]'") from None
    return ray


def connect(options) -> "Cluster":
    """Join ``options.ray_address`` (or a Ray already initialised in this process), else start a
    local Ray; usage statistics off unless the user set otherwise."""
    ray = _ray()
    owned = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        settings: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if options.ray_address:
            ray.init(address=options.ray_address, **settings)
        else:
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **settings)
        owned = True
    return Cluster(ray, owned, options)


# --- the actors -----------------------------------------------------------------------------------------------
class StoreActorImpl(Store):
    """The run's store (every :class:`Store` method), for the whole cluster; and the mailbox of workers'
    events for the driver."""

    def __init__(self, workspace: str):
        super().__init__(workspace)
        self.events: deque = deque(maxlen=500_000)

    def emit(self, events: list[dict]) -> None:
        self.events.extend(events)

    def drain_events(self) -> list[dict]:
        taken = list(self.events)
        self.events.clear()
        return taken


class LimitsActorImpl:
    """The run's global limits; every method answers at once."""

    def __init__(self, settings: SimpleNamespace, carried_tokens: int, carried_cost: float):
        limits = local_limits(settings, carried_tokens, carried_cost)
        self.budget, self.limiter = limits.budget, limits.limiter
        self.control, self.breaker = limits.control, limits.breaker

    def admit(self, tokens: int, cost: float | None, depth: int) -> dict:
        """{"ok": True}, {"wait": True} (ask again: calls in flight hold the rest), or the refusal."""
        try:
            admitted = self.budget.admit(tokens, cost, depth)
        except BudgetExceeded as exc:
            return {"refused": {"what": exc.what, "used": exc.used, "limit": exc.limit, "needed": exc.needed}}
        return {"ok": True} if admitted is not None else {"wait": True}

    def admit_replayed(self, depth: int, completion_tokens: int = 0) -> dict:
        try:
            self.budget.admit_replayed(depth, completion_tokens)
        except BudgetExceeded as exc:
            return {"refused": {"what": exc.what, "used": exc.used, "limit": exc.limit, "needed": exc.needed}}
        return {"ok": True}

    def remaining(self) -> dict:
        return self.budget.remaining()

    def release(self, tokens: int, cost: float) -> None:
        self.budget.release(Reservation(tokens, cost))

    def charge(self, call: LMCall) -> None:
        self.budget.charge(call)

    def expected_completion(self, cap: int | None) -> int:
        return self.budget.expected_completion(cap)

    def try_acquire(self, tokens: int) -> float:
        return self.limiter.try_acquire(tokens)

    def hold(self, seconds: float) -> None:
        self.limiter.hold(seconds)

    def stop(self, reason: str) -> bool:
        return self.control.stop(reason)

    def state(self) -> tuple[bool, str | None, float]:
        """(stopping, why, the time before which no request may start): what every process polls."""
        return self.control.stopping, self.control.reason, self.limiter.hold_until

    def breaker_record(self, error_type: str | None, error: str) -> None:
        opened = self.breaker.record(error_type, error)
        if opened:
            self.control.stop(f"provider unavailable: {opened}")


# --- the proxies workers (and the driver) use instead of the local objects ----------------------------------
class RemoteBudget:
    """The run's budget, in the LimitsActor. Without caps nothing needs asking: admission is free."""

    def __init__(self, actor, options):
        self.actor, self.max_cost = actor, options.max_cost
        self.capped = any(getattr(options, cap) is not None
                          for cap in ("max_run_tokens", "max_cost", "max_seconds", "max_sub_calls"))
        self._expected, self._asked = 0, 0.0

    def expected_completion(self, cap: int | None) -> int:
        if cap:
            return int(cap)
        if time.monotonic() - self._asked > 1.0:  # the cluster's expectation, refreshed each second
            self._expected, self._asked = _ray().get(self.actor.expected_completion.remote(None)), time.monotonic()
        return self._expected

    def admit(self, tokens: int, cost: float | None, depth: int = 0) -> Reservation | None:
        if not self.capped:
            return Reservation(0, 0.0)
        answer = _ray().get(self.actor.admit.remote(tokens, cost, depth))
        if "refused" in answer:
            raise BudgetExceeded(**answer["refused"])
        return Reservation(tokens, cost or 0.0) if answer.get("ok") else None

    def admit_replayed(self, depth: int = 0, completion_tokens: int = 0) -> None:
        if self.capped:
            answer = _ray().get(self.actor.admit_replayed.remote(depth, completion_tokens))
            if "refused" in answer:
                raise BudgetExceeded(**answer["refused"])

    def remaining(self) -> dict:
        if not self.capped:
            return {"tokens": None, "cost": None, "seconds": None, "sub_calls": None}
        return _ray().get(self.actor.remaining.remote())

    def release(self, reservation: Reservation) -> None:
        if self.capped:
            self.actor.release.remote(reservation.tokens, reservation.cost)

    def charge(self, call: LMCall) -> None:
        if self.capped:
            self.actor.charge.remote(call)


class RemoteLimiter:
    """The per-minute windows, in the LimitsActor; a pause (Retry-After) is seen through the stop
    flag's poll, so without windows nothing needs asking."""

    def __init__(self, actor, control: "RemoteControl", windowed: bool):
        self.actor, self.control, self.windowed = actor, control, windowed

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> float:
        def ask() -> float:
            if self.windowed:
                return _ray().get(self.actor.try_acquire.remote(tokens))
            return self.control.hold_until - time.time()

        # sleep here, not in the actor, and ask again after a second at most (others may have waited too)
        return wait_until_free(ask, stop, most=1.0)

    def hold(self, seconds: float) -> None:
        self.control.hold_until = max(self.control.hold_until, time.time() + seconds)
        self.actor.hold.remote(seconds)


class RemoteControl(RunControl):
    """The run's stop flag as seen from one process: a local event, raised when the actor's is."""

    POLL_SECONDS = 0.25

    def __init__(self, actor):
        super().__init__()
        self.actor = actor
        self.hold_until = 0.0  # the cluster's pause, as of the last poll
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="rlmpipe-ray-stop", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._closed.wait(self.POLL_SECONDS):
            if self.sync():
                return

    def sync(self) -> bool:
        """Read the actor's flag now; True once the run is stopping (or the actor is gone). The driver
        calls it when the last task has settled: a worker's stop may be newer than the last poll."""
        if self.event.is_set():
            return True
        try:
            stopping, reason, hold_until = _ray().get(self.actor.state.remote())
        except Exception:  # the actor is gone (the run ended): nothing more to stop
            return True
        self.hold_until = max(self.hold_until, hold_until)
        if stopping:
            self.reason = reason
            self.event.set()
        return stopping

    def stop(self, reason: str) -> bool:
        first = _ray().get(self.actor.stop.remote(reason))
        if not self.event.is_set():
            self.reason = reason if first else _ray().get(self.actor.state.remote())[1]
            self.event.set()
        return first

    def close(self) -> None:
        self._closed.set()


class RemoteBreaker:
    """The circuit breaker, in the LimitsActor: told of every attempt without waiting; when it opens,
    the actor raises the stop flag, which every process sees at its next poll."""

    def __init__(self, actor):
        self.actor = actor

    def record(self, error_type: str | None, error: str = "") -> None:
        self.actor.breaker_record.remote(error_type, error)


class RemoteStore:
    """The store as a worker sees it: the driver node's StoreActor, with the document's done steps
    read in one call."""

    def __init__(self, actor, run_id: str, doc_id: str):
        self.actor = actor
        # every step of this document that was done before this task started: a replay costs one call
        self._done = _ray().get(actor.done_steps_of.remote(run_id, doc_id))

    def done_step(self, key: str):
        # A step not done at the start is asked about again: the task this one re-executes may still be
        # running and committing (a node declared lost keeps its processes for a moment, or for good
        # behind a network partition). One round trip per step that will call the model.
        done = self._done.get(key)
        return done if done is not None else _ray().get(self.actor.done_step.remote(key))

    def commit_step(self, row, forget=(), forget_all: bool = False) -> None:
        _ray().get(self.actor.commit_step.remote(row, list(forget or ()), forget_all))  # done means stored

    def record_calls(self, calls, session: int) -> None:
        calls = [call for call in calls if not call.stored]
        if calls:
            _ray().get(self.actor.record_calls.remote(calls, session))

    def journal(self, step_key: str) -> dict:
        return _ray().get(self.actor.journal.remote(step_key))

    def keep_answer(self, *args) -> None:
        _ray().get(self.actor.keep_answer.remote(*args))  # kept before the program sees the answer

    def forget_answers(self, step_key: str, keys) -> None:
        keys = list(keys)
        if keys:
            _ray().get(self.actor.forget_answers.remote(step_key, keys))

    def set_document(self, *args, **kwargs) -> None:
        _ray().get(self.actor.set_document.remote(*args, **kwargs))


class EventForwarder:
    """A worker's events, sent to the StoreActor in batches (and all of them when flushed)."""

    def __init__(self, actor, every: float = 0.2):
        self.actor, self.every = actor, every
        self._batch: list[dict] = []
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def __call__(self, event: dict) -> None:
        with self._lock:
            self._batch.append(event)
            due = len(self._batch) >= 200 or time.monotonic() - self._last >= self.every
        if due:
            self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        with self._lock:
            batch, self._batch, self._last = self._batch, [], time.monotonic()
        if batch:
            reference = self.actor.emit.remote(batch)
            if wait:
                _ray().get(reference)


# --- one document, on a worker -------------------------------------------------------------------------------
@dataclass
class WorkerContext:
    """Everything a worker needs to run documents of a run (sent once per task, by reference)."""

    run_id: str
    fingerprint: str
    session: int
    options: Any
    pipeline: Any
    lm: Any
    pricing: Any  # the run's Pricing, the model's price already looked up
    store: Any  # StoreActor handle
    limits: Any  # LimitsActor handle


def remote_limits(actor, options) -> Limits:
    control = RemoteControl(actor)
    windowed = bool(options.requests_per_minute or options.tokens_per_minute)
    return Limits(RemoteBudget(actor, options), RemoteLimiter(actor, control, windowed), control,
                  RemoteBreaker(actor))


def run_document(context: WorkerContext, path: str) -> tuple[str, dict | None]:
    """The body of the Ray task: open, chunk and process one document; (status, entry)."""
    from rlmpipe.ingest import open_document
    from rlmpipe.lm.usage import UsageRecorder
    from rlmpipe.offline import configure_offline_defaults
    from rlmpipe.runtime.events import EventBus
    from rlmpipe.runtime import threadsafe_ast
    from rlmpipe.runtime.runner import Run, process_document, recording_lm

    configure_offline_defaults()  # a worker process of our own: litellm and tiktoken stay offline
    threadsafe_ast.install()  # DSPy parses in every step thread
    document = open_document(path)
    events = EventBus()
    forwarder = EventForwarder(context.store)
    events.subscribe(forwarder)
    recorder = UsageRecorder()
    limits = remote_limits(context.limits, context.options)
    lm, _ = recording_lm(context.lm, recorder, limits, events, context.run_id, context.options.retry,
                         context.pricing)
    run = Run(run_id=context.run_id, fingerprint=context.fingerprint, session=context.session,
              store=RemoteStore(context.store, context.run_id, document.doc_id), lm=lm, recorder=recorder,
              events=events, options=context.options, control=limits.control)
    try:
        outcome = process_document(context.pipeline, run, document)
    finally:
        run.close()
        limits.control.close()
        forwarder.flush()
    return outcome.status, outcome.entry


# --- the driver's side ----------------------------------------------------------------------------------------
class Cluster:
    """A Ray cluster this run uses: its actors, its tasks, its description for ``runs show``."""

    def __init__(self, ray, owned: bool, options):
        self.ray, self.owned, self.options = ray, owned, options
        self._actors: list = []
        self._control: RemoteControl | None = None
        self._limits_actor = None
        self.StoreActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(StoreActorImpl)
        self.LimitsActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(LimitsActorImpl)
        self.task = ray.remote(max_retries=3)(run_document)

    def describe(self) -> dict:
        nodes = [{"node_id": node["NodeID"][:12], "address": node.get("NodeManagerAddress"),
                  "cpus": node.get("Resources", {}).get("CPU", 0), "alive": node.get("Alive", False)}
                 for node in self.ray.nodes()]
        return {"address": self.options.ray_address or "local", "nodes": nodes}

    def _here(self):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=self.ray.get_runtime_context().get_node_id(), soft=False)

    def limits(self, options, carried_tokens: int, carried_cost: float) -> Limits:
        # only the options that set the limits: unpickling RunOptions would import DSPy into the actor
        settings = SimpleNamespace(**{key: getattr(options, key) for key in (
            "max_run_tokens", "max_cost", "max_seconds", "max_sub_calls", "requests_per_minute",
            "tokens_per_minute", "breaker_failures", "breaker_seconds")})
        self._limits_actor = self.LimitsActor.options(scheduling_strategy=self._here()).remote(
            settings, carried_tokens, carried_cost)
        self._actors.append(self._limits_actor)
        limits = remote_limits(self._limits_actor, options)
        self._control = limits.control
        return limits

    def drive(self, pipeline, run, inner_lm, pricing, paths, tally) -> None:
        from rlmpipe.runtime.runner import DocumentOutcome, fail_unopened, queued_documents

        store_actor = self.StoreActor.options(scheduling_strategy=self._here()).remote(str(run.store.workspace))
        self._actors.append(store_actor)
        context = self.ray.put(WorkerContext(run.id, run.fingerprint, run.session, run.options, pipeline, inner_lm,
                                             pricing.resolved(inner_lm.model), store_actor, self._limits_actor))
        cpus = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        in_flight = run.options.documents_in_flight or 2 * cpus
        pending: dict = {}  # task -> document path
        by_path: dict[str, Any] = {}

        def settle(ready) -> None:
            for reference in ready:
                path = pending.pop(reference)
                try:
                    status, entry = self.ray.get(reference)
                    tally.add(DocumentOutcome(status, entry))
                except Exception as exc:  # the task failed for good (Ray gave up retrying it)
                    message = f"{path}: {one_line(exc)}"
                    fail_unopened(run, tally, path, message)
            self._pump(store_actor, run.events)

        for document, first in queued_documents(run, paths, tally):
            if first is not None and by_path.get(first) in pending:  # the same bytes: after the first
                self.ray.wait([by_path[first]], timeout=None)
            while len(pending) >= in_flight:
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=0.25)
                settle(ready)
            reference = self.task.remote(context, str(document.path))
            pending[reference] = str(document.path)
            by_path.setdefault(str(document.path), reference)
        while pending:  # short waits: the main thread stays free for Ctrl-C
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=0.25)
            settle(ready)
        self._pump(store_actor, run.events)
        self._control.sync()  # a stop a worker raised after the driver's last poll

    def _pump(self, store_actor, events) -> None:
        """The workers' events, into this process's event bus (event log, display, traces)."""
        for event in self.ray.get(store_actor.drain_events.remote()):
            events.emit(event)

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
        for actor in self._actors:
            try:
                self.ray.kill(actor)
            except Exception:  # pragma: no cover - already gone
                pass
        self._actors.clear()
        if self.owned:
            self.ray.shutdown()
