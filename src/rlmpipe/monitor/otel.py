"""OpenTelemetry traces of runs: an :class:`~rlmpipe.runtime.events.EventBus` listener that turns the
engine's events into spans, run -> document -> step -> LM call, with the GenAI semantic conventions.

Needs the optional extra ``otel`` (``opentelemetry-api``, ``opentelemetry-sdk``, and
``opentelemetry-exporter-otlp-proto-http`` for ``--otel otlp``)::

    provider = configure_tracing("otlp")          # honours OTEL_EXPORTER_OTLP_* variables
    events.subscribe(TraceListener(provider))
    execute(..., events=events)
    provider.shutdown()                           # flushes the spans still queued

Spans
    ``invoke_workflow {pipeline}`` (INTERNAL) from ``run_start`` to ``run_end``;
    ``document`` (INTERNAL) from ``document_start`` to ``document_done|partial|failed|stopped``;
    ``step {name}`` (INTERNAL) from ``step_start`` to ``step_done|failed|stopped`` (a step reused from
    an earlier session is a zero-length span with ``rlmpipe.reused=true`` and its stored usage);
    ``chat {model}`` (CLIENT), one per attempt of an LM call, from ``started`` to ``started + latency``.

Attribute names follow the GenAI semantic conventions as of semconv 1.37+ (the version shipped with
``opentelemetry-semantic-conventions`` 0.66b2 is schema 1.44.0, which moved them to the separate
semantic-conventions-genai repository unchanged): ``gen_ai.provider.name`` (it replaced the
deprecated ``gen_ai.system``), ``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``/``output_tokens``, and ``error.type``. Usage appears as
``gen_ai.usage.*`` on LM-call spans only, so adding them up over all spans never double counts;
steps carry theirs as ``rlmpipe.usage.*``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from functools import partialmethod
from typing import Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

log = logging.getLogger("rlmpipe.otel")

TRACER_NAME = "rlmpipe"

# GenAI semantic conventions (semconv >= 1.37; kept as literals: the Python constants are deprecated
# in opentelemetry-semantic-conventions since the GenAI conventions moved to their own repository).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_WORKFLOW_NAME = "gen_ai.workflow.name"
ERROR_TYPE = "error.type"

# litellm provider prefixes -> gen_ai.provider.name well-known values (others are passed through).
_PROVIDERS = {
    "openai": "openai", "text-completion-openai": "openai", "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference", "anthropic": "anthropic", "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai", "vertex_ai_beta": "gcp.vertex_ai", "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock", "cohere": "cohere", "cohere_chat": "cohere", "groq": "groq",
    "mistral": "mistral_ai", "deepseek": "deepseek", "xai": "x_ai", "perplexity": "perplexity",
    "watsonx": "ibm.watsonx.ai", "ollama": "ollama", "ollama_chat": "ollama", "local": "rlmpipe.local",
}


def split_model(model: str) -> tuple[str, str]:
    """(gen_ai.provider.name, gen_ai.request.model) of a litellm model string such as ``openai/gpt-4o``."""
    if model == "local" or model.startswith("local/"):
        return "rlmpipe.local", model
    prefix, slash, name = model.partition("/")
    if not slash:
        return "openai" if model.startswith(("gpt-", "o1", "o3", "o4")) else "_OTHER", model
    return _PROVIDERS.get(prefix, prefix), name


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _clean(attributes: dict) -> dict:
    """OpenTelemetry attributes cannot be None."""
    return {key: value for key, value in attributes.items() if value is not None}


def _step_attributes(event: dict) -> dict:
    return {
        "rlmpipe.run_id": event.get("run_id"),
        "rlmpipe.step.name": event.get("name"),
        "rlmpipe.step_key": event.get("step_key"),
        "rlmpipe.doc_id": event.get("doc_id"),
        "rlmpipe.chunk_id": event.get("chunk_id"),
        "rlmpipe.depth": event.get("depth"),
        "rlmpipe.worker": event.get("worker"),
    }


def _usage_attributes(event: dict) -> dict:
    """A step's usage, as its span's attributes (``rlmpipe.usage.*``, not ``gen_ai.usage.*``: see above)."""
    return {
        "rlmpipe.usage.input_tokens": event.get("prompt_tokens"),
        "rlmpipe.usage.output_tokens": event.get("completion_tokens"),
        "rlmpipe.cost_usd": event.get("cost"),
    }


def _error_type_of(message: str | None) -> str:
    """A low-cardinality error.type from an engine message such as ``path: StepFailed: ...``."""
    for part in (message or "").split(": ")[:3]:
        word = part.strip()
        if word.isidentifier() and word[:1].isupper():  # an exception's class name
            return word
    return "_OTHER"


class TraceListener:
    """EventBus listener: engine events -> OpenTelemetry spans (thread-safe; never raises).

    Open spans are kept by ``run_id``, ``(run_id, doc_id)`` and ``(run_id, step_key)``. An LM call
    is a child of its step, else of its document, else of its run; a step of its document (else its
    run); a document of its run. Whatever is still open at ``run_end`` is ended there, with status
    ERROR ``unfinished``.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None):
        from rlmpipe import __version__

        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME, __version__)
        self._lock = threading.Lock()
        self._runs: dict[str, Span] = {}
        self._documents: dict[tuple[str, str | None], Span] = {}
        self._steps: dict[tuple[str, str], Span] = {}
        self._queued: dict[tuple[str, str | None], float] = {}
        # (run_id, doc_id) -> error_type of its failed step
        self._step_errors: dict[tuple[str, str | None], str] = {}
        self._fatal: dict[str, str] = {}  # run_id -> error_type of the failure that stopped the run
        self._notes: dict[str | None, list[dict]] = {}  # notes that came before their run_start
        self._broken = False

    # --- the listener -----------------------------------------------------------------------------
    def __call__(self, event: dict) -> None:
        handler = getattr(self, "_on_" + str(event.get("type")), None)
        if handler is None:
            return
        try:
            handler(event)
        except Exception:  # tracing must never break (or silence itself for) the run it watches
            if not self._broken:
                self._broken = True
                log.warning("could not trace event %s", event.get("type"), exc_info=True)

    def close(self, end_time: float | None = None) -> None:
        """End every span still open (a run that never emitted ``run_end``)."""
        with self._lock:
            run_ids = {*self._runs, *(key[0] for key in self._documents), *(key[0] for key in self._steps)}
        for run_id in run_ids:
            self._end_run(run_id, end_time, None)

    # --- helpers ----------------------------------------------------------------------------------
    def _start(self, name: str, parent: Span | None, start: float, kind: SpanKind = SpanKind.INTERNAL,
               attributes: dict | None = None) -> Span:
        # no parent: a root span (an empty context), even if the emitting thread is inside another span
        context = trace.set_span_in_context(parent) if parent is not None else Context()
        return self._tracer.start_span(name, context=context, kind=kind, attributes=_clean(attributes or {}),
                                       start_time=_ns(start))

    def _parent(self, run_id: str | None, doc_id: str | None = None,
                step_key: str | None = None) -> Span | None:
        with self._lock:
            if step_key is not None and (run_id, step_key) in self._steps:
                return self._steps[(run_id, step_key)]
            if (run_id, doc_id) in self._documents:
                return self._documents[(run_id, doc_id)]
            return self._runs.get(run_id)

    # --- run --------------------------------------------------------------------------------------
    def _on_run_start(self, event: dict) -> None:
        run_id = event["run_id"]
        with self._lock:
            stale = run_id in self._runs
        if stale:  # a second session on the same bus without run_end for the first
            self._end_run(run_id, event["time"], None)
        provider, model = split_model(str(event.get("model") or ""))
        span = self._start(f"invoke_workflow {event.get('pipeline')}", None, event["time"], attributes={
            GEN_AI_OPERATION_NAME: "invoke_workflow",
            GEN_AI_WORKFLOW_NAME: event.get("pipeline"),
            GEN_AI_PROVIDER_NAME: provider,
            GEN_AI_REQUEST_MODEL: model,
            "rlmpipe.run_id": run_id,
            "rlmpipe.session": event.get("session"),
            "rlmpipe.pipeline": event.get("pipeline"),
            "rlmpipe.model": event.get("model"),
            "rlmpipe.fingerprint": event.get("fingerprint"),
            "rlmpipe.concurrency": event.get("concurrency"),
        })
        with self._lock:
            self._runs[run_id] = span
            notes = self._notes.pop(run_id, [])
        for note in notes:
            span.add_event("note", {"message": str(note.get("message"))}, timestamp=_ns(note["time"]))

    def _on_note(self, event: dict) -> None:
        with self._lock:
            span = self._runs.get(event.get("run_id"))
            if span is None:  # the engine's notes about the plan come before run_start
                self._notes.setdefault(event.get("run_id"), []).append(event)
                return
        span.add_event("note", {"message": str(event.get("message"))}, timestamp=_ns(event["time"]))

    def _on_run_stopping(self, event: dict) -> None:
        span = self._parent(event.get("run_id"))
        if span is not None:
            span.add_event("stopping", {"reason": str(event.get("reason"))}, timestamp=_ns(event["time"]))

    def _on_run_end(self, event: dict) -> None:
        self._end_run(event["run_id"], event["time"], event)

    def _end_run(self, run_id: str, end: float | None, event: dict | None) -> None:
        """End the run's span and whatever of it is still open; without its run_end ``event``, as
        ``unfinished``."""
        with self._lock:
            run = self._runs.pop(run_id, None)
            steps = [span for key, span in self._steps.items() if key[0] == run_id]
            self._steps = {key: span for key, span in self._steps.items() if key[0] != run_id}
            documents = [span for key, span in self._documents.items() if key[0] == run_id]
            self._documents = {key: span for key, span in self._documents.items() if key[0] != run_id}
            self._queued = {key: value for key, value in self._queued.items() if key[0] != run_id}
            self._step_errors = {key: value for key, value in self._step_errors.items() if key[0] != run_id}
            fatal = self._fatal.pop(run_id, None)
        end_ns = _ns(end) if end is not None else None
        for span in [*steps, *documents]:
            span.set_attribute("rlmpipe.status", "unfinished")
            span.set_status(Status(StatusCode.ERROR, "unfinished"))
            span.end(end_time=end_ns)
        if run is None:
            return
        if event is not None:
            status = event.get("status")
            run.set_attribute("rlmpipe.status", status)
            for kind, count in (event.get("documents") or {}).items():
                run.set_attribute(f"rlmpipe.documents.{kind}", count)
            for kind, count in (event.get("steps") or {}).items():
                run.set_attribute(f"rlmpipe.steps.{kind}", count)
            if event.get("reason"):
                run.set_attribute("rlmpipe.reason", str(event["reason"]))
            if status == "failed":
                run.set_attribute(ERROR_TYPE, fatal or _error_type_of(event.get("reason")))
                run.set_status(Status(StatusCode.ERROR, str(event.get("reason"))))
            elif status == "done":
                run.set_status(Status(StatusCode.OK))
        else:
            run.set_attribute("rlmpipe.status", "unfinished")
            run.set_status(Status(StatusCode.ERROR, "unfinished"))
        run.end(end_time=end_ns)

    # --- documents --------------------------------------------------------------------------------
    def _on_document_queued(self, event: dict) -> None:
        with self._lock:
            self._queued[(event["run_id"], event.get("doc_id"))] = event["time"]

    def _on_document_start(self, event: dict) -> None:
        key = (event["run_id"], event.get("doc_id"))
        with self._lock:
            queued = self._queued.pop(key, None)
        span = self._start("document", self._parent(event["run_id"]), event["time"], attributes={
            "rlmpipe.run_id": event["run_id"],
            "rlmpipe.doc_id": event.get("doc_id"),
            "rlmpipe.document.path": event.get("path"),
            "rlmpipe.document.size_bytes": event.get("size"),
            "rlmpipe.document.queued_seconds": None if queued is None else round(event["time"] - queued, 6),
        })
        with self._lock:
            self._documents[key] = span

    def _end_document(self, event: dict, status: str) -> None:
        key = (event["run_id"], event.get("doc_id"))
        with self._lock:
            span = self._documents.pop(key, None)
            self._queued.pop(key, None)
            step_error = self._step_errors.pop(key, None)
        if span is None:  # failed before it started (an unreadable file): a zero-length span
            span = self._start("document", self._parent(event["run_id"]), event["time"], attributes={
                "rlmpipe.run_id": event["run_id"], "rlmpipe.doc_id": event.get("doc_id"),
                "rlmpipe.document.path": event.get("path")})
        span.set_attribute("rlmpipe.status", status)
        if status in ("failed", "partial"):  # partial: some of it failed, and the error says what is missing
            span.set_attribute(ERROR_TYPE, step_error or _error_type_of(event.get("error")))
            span.set_status(Status(StatusCode.ERROR, str(event.get("error"))))
        elif status == "done":
            span.set_status(Status(StatusCode.OK))
        span.end(end_time=_ns(event["time"]))

    _on_document_done = partialmethod(_end_document, status="done")
    _on_document_partial = partialmethod(_end_document, status="partial")
    _on_document_failed = partialmethod(_end_document, status="failed")
    _on_document_stopped = partialmethod(_end_document, status="stopped")

    # --- steps ------------------------------------------------------------------------------------
    def _on_step_start(self, event: dict) -> None:
        parent = self._parent(event["run_id"], event.get("doc_id"))
        span = self._start(f"step {event.get('name')}", parent, event["time"], attributes={
            **_step_attributes(event), "rlmpipe.reused": False})
        with self._lock:
            self._steps[(event["run_id"], event["step_key"])] = span

    def _on_reask(self, event: dict) -> None:
        span = self._parent(event.get("run_id"), event.get("doc_id"), event.get("step_key"))
        if span is not None:
            span.add_event("reask", {"error": str(event.get("error"))}, timestamp=_ns(event["time"]))

    def _end_step(self, event: dict, status: str) -> None:
        with self._lock:
            span = self._steps.pop((event["run_id"], event["step_key"]), None)
        if span is None:
            return
        span.set_attribute("rlmpipe.status", status)
        if status == "done":
            span.set_attributes(_clean(_usage_attributes(event)))
        elif status == "failed":
            error_type = str(event.get("error_type") or "_OTHER")
            with self._lock:
                self._step_errors[(event["run_id"], event.get("doc_id"))] = error_type
                if event.get("fatal"):
                    self._fatal.setdefault(event["run_id"], error_type)
            span.set_attribute(ERROR_TYPE, error_type)
            span.set_attribute("rlmpipe.fatal", bool(event.get("fatal")))
            span.set_status(Status(StatusCode.ERROR, str(event.get("error"))))
        span.end(end_time=_ns(event["time"]))

    _on_step_done = partialmethod(_end_step, status="done")
    _on_step_failed = partialmethod(_end_step, status="failed")
    _on_step_stopped = partialmethod(_end_step, status="stopped")

    def _on_step_reused(self, event: dict) -> None:
        parent = self._parent(event["run_id"], event.get("doc_id"))
        span = self._start(f"step {event.get('name')}", parent, event["time"], attributes={
            **_step_attributes(event),
            "rlmpipe.reused": True,
            "rlmpipe.status": "reused",
            **_usage_attributes(event),
        })
        span.end(end_time=_ns(event["time"]))

    # --- LM calls ---------------------------------------------------------------------------------
    def _on_lm_call(self, event: dict) -> None:
        provider, model = split_model(str(event.get("model") or ""))
        outcome = event.get("outcome")
        started = float(event.get("started") or event["time"])
        parent = self._parent(event.get("run_id"), event.get("doc_id"), event.get("step_key"))
        span = self._start(f"chat {model}", parent, started, SpanKind.CLIENT, attributes={
            GEN_AI_OPERATION_NAME: "chat",
            GEN_AI_PROVIDER_NAME: provider,
            GEN_AI_REQUEST_MODEL: model,
            GEN_AI_USAGE_INPUT_TOKENS: int(event.get("prompt_tokens") or 0),
            GEN_AI_USAGE_OUTPUT_TOKENS: int(event.get("completion_tokens") or 0),
            "rlmpipe.model": event.get("model"),
            "rlmpipe.depth": event.get("depth"),
            "rlmpipe.attempt": event.get("attempt"),
            "rlmpipe.outcome": outcome,
            "rlmpipe.cached": outcome == "cached",
            "rlmpipe.replayed": outcome == "replayed",
            "rlmpipe.cost_usd": event.get("cost"),
            "rlmpipe.call_id": event.get("call_id") or None,
            "rlmpipe.run_id": event.get("run_id"),
            "rlmpipe.step_key": event.get("step_key"),
            "rlmpipe.step.name": event.get("step_name"),
            "rlmpipe.doc_id": event.get("doc_id"),
            "rlmpipe.worker": event.get("worker") or None,
        })
        if outcome == "error":
            span.set_attribute(ERROR_TYPE, str(event.get("error_type") or "_OTHER"))
            span.set_status(Status(StatusCode.ERROR, str(event.get("error") or event.get("error_type"))))
        span.end(end_time=_ns(started + float(event.get("latency") or 0.0)))


def _resource():
    from opentelemetry.sdk.resources import Resource

    from rlmpipe import __version__

    attributes = {"service.version": __version__}
    named = (os.environ.get("OTEL_SERVICE_NAME")
             or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    if not named:
        attributes["service.name"] = "rlmpipe"
    return Resource.create(attributes)


def _traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces``; a URL with a path is kept as given."""
    from urllib.parse import urlsplit

    return endpoint.rstrip("/") + "/v1/traces" if urlsplit(endpoint).path in ("", "/") else endpoint


def configure_tracing(exporter: Literal["console", "otlp"] | None, endpoint: str | None = None):
    """A ``TracerProvider`` (service ``rlmpipe``) exporting spans to the console (stderr) or by OTLP/HTTP.

    ``otlp`` honours the standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout,
    compression, certificates); ``endpoint`` overrides the endpoint (a bare ``http://host:4318`` gets
    ``/v1/traces`` appended). ``None`` gives a provider without exporter (add your own span processor).
    Call ``provider.shutdown()`` at the end to flush.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=_resource())
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ImportError("OTLP export needs opentelemetry-exporter-otlp-proto-http "
                              "(pip install 'rlmpipe[otel]')") from exc
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=_traces_url(endpoint) if endpoint else None)))
    elif exporter is not None:
        raise ValueError(f"unknown trace exporter {exporter!r} (console or otlp)")
    return provider
