"""OpenTelemetry traces of a real run (dspy.LM -> HTTP -> loopback server) with retries and a resume:
nesting run -> document -> step -> LM call, GenAI attributes, exact usage."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from rlmpipe.apps.summarize import SummarizePipeline  # noqa: E402
from rlmpipe.chunking import ChunkingConfig  # noqa: E402
from rlmpipe.lm.models import ModelChoice, make_lm  # noqa: E402
from rlmpipe.lm.recording import RetryPolicy  # noqa: E402
from rlmpipe.monitor.metrics import run_tables  # noqa: E402
from rlmpipe.monitor.otel import TraceListener, configure_tracing, split_model  # noqa: E402
from rlmpipe.runtime.events import EventBus  # noqa: E402
from rlmpipe.runtime.runner import RunOptions, execute  # noqa: E402
from rlmpipe.runtime.store import Store  # noqa: E402
from tests.support.replies import summary_reply  # noqa: E402

CONTRACTS = Path(__file__).resolve().parents[2] / "examples" / "contracts"
CHUNKING = ChunkingConfig(strategy="structure", chunk_tokens=30)
FAST_RETRY = RetryPolicy(max_attempts=12, initial_wait=0.01, max_wait=0.05, jitter=0.01, max_retry_after=0.05)
PROMPT, COMPLETION = 7, 3


def traced_session(server, paths, workspace, **options):
    """One session of the summarize pipeline with its own tracer provider; (summary, finished spans)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    events = EventBus()
    events.subscribe(TraceListener(provider))
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url), timeout=5.0)
    summary = execute(SummarizePipeline(CHUNKING, merge_input_tokens=200), [str(p) for p in paths], lm,
                      events=events, options=RunOptions(workspace=workspace, concurrency=4, retry=FAST_RETRY,
                                                        **options))
    provider.shutdown()
    return summary, list(exporter.get_finished_spans())


def server_usage(server, since: int = 0) -> tuple[int, int]:
    """Tokens the loopback server reported in its replies (errors report none)."""
    answered = [call for call in server.chat_calls[since:] if call.status == 200]
    return PROMPT * len(answered), COMPLETION * len(answered)


def by_kind(spans):
    lm = [s for s in spans if s.name.startswith("chat ")]
    steps = [s for s in spans if s.name.startswith("step ")]
    documents = [s for s in spans if s.name == "document"]
    runs = [s for s in spans if s.name.startswith("invoke_workflow ")]
    assert len(lm) + len(steps) + len(documents) + len(runs) == len(spans)
    return lm, steps, documents, runs


def check_tree(spans, lm, steps, documents, runs):
    by_id = {s.context.span_id: s for s in spans}
    assert len(runs) == 1 and runs[0].parent is None
    run = runs[0]
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}, "one trace per session"
    for span in lm:
        step = by_id[span.parent.span_id]
        assert step.name.startswith("step "), f"{span.name} is a child of {step.name}"
        assert step.attributes["rlmpipe.step_key"] == span.attributes["rlmpipe.step_key"]
        assert step.start_time <= span.start_time and span.end_time <= step.end_time
    for span in steps:
        document = by_id[span.parent.span_id]
        assert document.name == "document"
        assert document.attributes["rlmpipe.doc_id"] == span.attributes["rlmpipe.doc_id"]
    for span in documents:
        assert span.parent.span_id == run.context.span_id
        assert run.start_time <= span.start_time <= span.end_time <= run.end_time


def token_sums(lm_spans) -> tuple[int, int]:
    return (sum(s.attributes["gen_ai.usage.input_tokens"] for s in lm_spans),
            sum(s.attributes["gen_ai.usage.output_tokens"] for s in lm_spans))


def test_traces_of_a_run_with_retries_and_a_resume(openai_server, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_usage(PROMPT, COMPLETION)
    faults = [openai_server.fail("rate_limit", probability=0.12, seed=1, retry_after=0.01),
              openai_server.fail("server_error", probability=0.08, seed=2)]
    paths = sorted(CONTRACTS.glob("*.txt"))[:2]
    workspace = tmp_path / "ws"

    # --- session 1: stopped by its token budget ---------------------------------------------------
    first, spans = traced_session(openai_server, paths, workspace, max_run_tokens=1200)
    assert first.status == "stopped" and "budget" in first.reason
    assert sum(f.fired for f in faults) > 0, "the faults fired: there were retries"
    lm, steps, documents, runs = by_kind(spans)
    check_tree(spans, lm, steps, documents, runs)
    assert len(lm) == len(openai_server.chat_calls), "one LM span per request the server received"

    run = runs[0]
    assert run.name == "invoke_workflow summarize" and run.kind == SpanKind.INTERNAL
    assert run.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert run.attributes["rlmpipe.run_id"] == first.run_id and run.attributes["rlmpipe.status"] == "stopped"

    for span in lm:
        assert span.name == "chat test-model" and span.kind == SpanKind.CLIENT
        attributes = span.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "test-model"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["rlmpipe.depth"] == 0 and attributes["rlmpipe.attempt"] >= 1
        assert attributes["rlmpipe.cached"] is False
        assert span.end_time >= span.start_time
    errors = [s for s in lm if s.attributes["rlmpipe.outcome"] == "error"]
    oks = [s for s in lm if s.attributes["rlmpipe.outcome"] == "ok"]
    assert len(errors) == sum(f.fired for f in faults) and len(errors) + len(oks) == len(lm)
    assert all(s.status.status_code == StatusCode.ERROR for s in errors)
    assert {s.attributes["error.type"] for s in errors} == {"rate_limit", "server"}  # rlmpipe.lm.errors types
    assert all("error.type" not in s.attributes and s.status.status_code != StatusCode.ERROR for s in oks)
    assert any(s.attributes["rlmpipe.attempt"] > 1 for s in oks), "a retried call succeeded"
    assert all(s.attributes["gen_ai.usage.input_tokens"] == PROMPT for s in oks)

    expected = server_usage(openai_server)
    assert token_sums(lm) == expected
    totals = run_tables(Store(workspace), first.run_id)["totals"]
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == expected
    assert totals["calls"] == len(lm) and totals["errors"] == len(errors)
    statuses = Counter(s.attributes["rlmpipe.status"] for s in steps)
    assert statuses["done"] > 0 and set(statuses) <= {"done", "stopped", "unfinished"}
    assert statuses["unfinished"] == 0, "every step that started ended with an event"
    done_steps = [s for s in steps if s.attributes["rlmpipe.status"] == "done"]
    assert sum(s.attributes["rlmpipe.usage.input_tokens"] for s in done_steps) <= expected[0]

    # --- session 2: resumes; finished steps are reused, not called again ----------------------------
    before = len(openai_server.chat_calls)
    second, spans2 = traced_session(openai_server, paths, workspace)
    assert second.run_id == first.run_id and second.status == "done" and second.session == 2
    lm2, steps2, documents2, runs2 = by_kind(spans2)
    check_tree(spans2, lm2, steps2, documents2, runs2)
    assert runs2[0].status.status_code == StatusCode.OK
    reused = [s for s in steps2 if s.attributes["rlmpipe.reused"]]
    assert len(reused) == len(done_steps)
    def keys(spans):
        return {s.attributes["rlmpipe.step_key"] for s in spans}

    assert keys(reused) == keys(done_steps)
    assert all(s.start_time == s.end_time and s.attributes["rlmpipe.status"] == "reused" for s in reused)
    assert sum(s.attributes["rlmpipe.usage.input_tokens"] for s in reused) == \
        sum(s.attributes["rlmpipe.usage.input_tokens"] for s in done_steps)
    reused_ids = {s.context.span_id for s in reused}
    assert not [s for s in lm2 if s.parent.span_id in reused_ids], "no LM call under a reused step"
    assert token_sums(lm2) == server_usage(openai_server, before)
    totals = run_tables(Store(workspace), first.run_id)["totals"]
    both = token_sums(lm + lm2)
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == both == server_usage(openai_server)
    assert len(documents2) == 2 and all(d.attributes["rlmpipe.status"] == "done" for d in documents2)


def test_failed_step_and_unfinished_spans(openai_server, tmp_path):
    """A fatal error: the step span is ERROR with error.type; what is open at run_end is ended."""
    openai_server.fail("auth")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    listener = TraceListener(provider)
    events = EventBus()
    events.subscribe(listener)
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url), timeout=5.0)
    path = str(min(CONTRACTS.glob("*.txt")))
    summary = execute(SummarizePipeline(CHUNKING, merge_input_tokens=200), [path], lm, events=events,
                      options=RunOptions(workspace=tmp_path / "ws", concurrency=2, retry=FAST_RETRY))
    assert summary.status == "failed"
    lm_spans, steps, documents, runs = by_kind(exporter.get_finished_spans())
    failed = [s for s in steps if s.attributes["rlmpipe.status"] == "failed"]
    assert failed and all(s.status.status_code == StatusCode.ERROR for s in failed)
    assert {s.attributes["error.type"] for s in failed} == {"auth"}
    assert {s.attributes["error.type"] for s in lm_spans} == {"auth"}
    assert all(s.attributes["rlmpipe.fatal"] for s in failed)
    assert documents[0].status.status_code == StatusCode.ERROR
    assert documents[0].attributes["error.type"] == "auth"
    assert runs[0].status.status_code == StatusCode.ERROR and runs[0].attributes["error.type"] == "auth"
    assert "LMAuthError" in runs[0].status.description

    # a step still open when its run ends (events as the engine would send them, without step_done)
    exporter.clear()
    t = 1_700_000_000.0
    listener({"type": "note", "time": t - 1, "run_id": "r", "message": "configuration changed"})
    listener({"type": "run_start", "time": t, "run_id": "r", "pipeline": "p", "model": "anthropic/claude-x"})
    listener({"type": "document_start", "time": t + 1, "run_id": "r", "doc_id": "d", "path": "x.txt"})
    listener({"type": "step_start", "time": t + 2, "run_id": "r", "doc_id": "d", "step_key": "k",
              "name": "s"})
    listener({"type": "lm_call", "time": t + 4, "run_id": "r", "doc_id": "d", "step_key": "k",
              "model": "anthropic/claude-x", "prompt_tokens": 5, "completion_tokens": 2, "cost": 0.001,
              "latency": 1.5, "started": t + 2.5, "outcome": "ok", "attempt": 1, "depth": 1})
    listener({"type": "run_end", "time": t + 9, "run_id": "r", "status": "stopped", "reason": "interrupted"})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    call = spans["chat claude-x"]
    assert call.start_time == int((t + 2.5) * 1e9) and call.end_time == int((t + 4) * 1e9)
    assert call.attributes["gen_ai.provider.name"] == "anthropic"
    assert call.attributes["rlmpipe.cost_usd"] == 0.001
    for name in ("step s", "document"):
        assert spans[name].status.status_code == StatusCode.ERROR
        assert spans[name].status.description == "unfinished"
        assert spans[name].end_time == int((t + 9) * 1e9)
    assert spans["step s"].start_time == int((t + 2) * 1e9)
    run = spans["invoke_workflow p"]
    assert [(e.name, e.attributes["message"]) for e in run.events] == [("note", "configuration changed")]
    assert run.attributes["rlmpipe.status"] == "stopped" and run.status.status_code == StatusCode.UNSET
    assert call.parent.span_id == spans["step s"].context.span_id


class OTLPReceiver:
    """A loopback OTLP/HTTP collector: records the spans POSTed to /v1/traces (protobuf)."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        received = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.append((self.path, dict(self.headers), request))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self):
        return [(path, resource, span) for path, _, request in self.requests
                for resource in request.resource_spans
                for scope in resource.scope_spans for span in scope.spans]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_split_model():
    assert split_model("openai/gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert split_model("gemini/gemini-2.0-flash") == ("gcp.gemini", "gemini-2.0-flash")
    assert split_model("openrouter/anthropic/claude-3") == ("openrouter", "anthropic/claude-3")
    assert split_model("gpt-4o") == ("openai", "gpt-4o")
    assert split_model("local") == ("rlmpipe.local", "local")


def test_configure_tracing_console_and_otlp(monkeypatch, capsys):
    bare = configure_tracing(None)
    assert bare.resource.attributes["service.name"] == "rlmpipe"
    bare.shutdown()
    console = configure_tracing("console")
    console.get_tracer("t").start_span("hello").end()
    console.shutdown()
    assert '"name": "hello"' in capsys.readouterr().err, "console spans go to stderr, not stdout"
    with pytest.raises(ValueError):
        configure_tracing("zipkin")

    receiver = OTLPReceiver()
    try:
        # the endpoint given explicitly (a bare base URL gets /v1/traces)
        explicit = configure_tracing("otlp", receiver.url)
        listener = TraceListener(explicit)
        t = 1_700_000_000.0
        listener({"type": "run_start", "time": t, "run_id": "r", "pipeline": "p", "model": "openai/m"})
        listener({"type": "lm_call", "time": t + 2, "run_id": "r", "model": "openai/m", "prompt_tokens": 9,
                  "completion_tokens": 4, "cost": None, "latency": 1.0, "started": t + 1, "outcome": "ok"})
        listener({"type": "run_end", "time": t + 3, "run_id": "r", "status": "done"})
        explicit.shutdown()
        spans = receiver.spans()
        assert {path for path, _, _ in spans} == {"/v1/traces"}
        names = {span.name: span for _, _, span in spans}
        assert set(names) == {"invoke_workflow p", "chat m"}
        call = names["chat m"]
        attributes = {kv.key: kv.value for kv in call.attributes}
        assert attributes["gen_ai.usage.input_tokens"].int_value == 9
        assert attributes["gen_ai.request.model"].string_value == "m"
        assert "rlmpipe.cost_usd" not in attributes, "unknown cost is left out, never 0"
        assert call.parent_span_id == names["invoke_workflow p"].span_id
        assert call.start_time_unix_nano == int((t + 1) * 1e9)
        assert call.end_time_unix_nano == int((t + 2) * 1e9)

        # the standard environment variables: endpoint, headers, service name
        receiver.requests.clear()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=docs")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "mine")
        from_env = configure_tracing("otlp")
        from_env.get_tracer("t").start_span("from-env").end()
        from_env.shutdown()
        (path, headers, request), = receiver.requests
        assert path == "/v1/traces" and headers.get("x-team") == "docs"
        service = {kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes}
        assert service["service.name"] == "mine"
    finally:
        receiver.close()


def test_a_partial_document_ends_its_span_when_it_ends():
    """``document_partial`` ends the document's span there, as an error naming what is missing, instead
    of leaving it open until run_end ("unfinished")."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    listener = TraceListener(provider)
    t = 1_700_000_000.0
    listener({"type": "run_start", "time": t, "run_id": "r", "pipeline": "p", "model": "openai/m"})
    listener({"type": "document_start", "time": t + 1, "run_id": "r", "doc_id": "d", "path": "x.txt"})
    step = {"run_id": "r", "doc_id": "d", "step_key": "k", "name": "s"}
    listener({"type": "step_start", "time": t + 2, **step})
    listener({"type": "step_failed", "time": t + 3, **step, "error": "boom", "error_type": "server"})
    listener({"type": "document_partial", "time": t + 4, "run_id": "r", "doc_id": "d", "path": "x.txt",
              "error": "x.txt: the LM failed on 1 of 2 chunks"})
    listener({"type": "run_end", "time": t + 9, "run_id": "r", "status": "done", "reason": None})
    document = next(s for s in exporter.get_finished_spans() if s.name == "document")
    assert document.attributes["rlmpipe.status"] == "partial"
    assert document.end_time == int((t + 4) * 1e9)
    assert document.status.status_code == StatusCode.ERROR
    assert document.status.description == "x.txt: the LM failed on 1 of 2 chunks"
    assert document.attributes["error.type"] == "server"
