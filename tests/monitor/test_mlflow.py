"""``mlflow.dspy.autolog()`` alongside rlmpipe's engine: nothing breaks, usage is not counted twice, and
MLflow records its traces (offline, a file tracking store in tmp_path)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("mlflow.dspy")

import dspy  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402  (mlflow depends on the OpenTelemetry SDK)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from rlmpipe.apps.summarize import SummarizePipeline  # noqa: E402
from rlmpipe.chunking import ChunkingConfig  # noqa: E402
from rlmpipe.lm.models import ModelChoice, make_lm  # noqa: E402
from rlmpipe.lm.recording import RetryPolicy  # noqa: E402
from rlmpipe.monitor.metrics import run_tables  # noqa: E402
from rlmpipe.monitor.otel import TraceListener  # noqa: E402
from rlmpipe.runtime.events import EventBus  # noqa: E402
from rlmpipe.runtime.runner import RunOptions, execute  # noqa: E402
from rlmpipe.runtime.store import Store  # noqa: E402
from tests.support.replies import summary_reply  # noqa: E402

CONTRACTS = Path(__file__).resolve().parents[2] / "examples" / "contracts"
FAST_RETRY = RetryPolicy(max_attempts=12, initial_wait=0.01, max_wait=0.05, jitter=0.01, max_retry_after=0.05)


def search_traces() -> list:
    """Every trace logged so far, after waiting for MLflow's asynchronous trace export."""
    if "flush" in inspect.signature(mlflow.search_traces).parameters:  # MLflow >= 3.x (recent)
        return mlflow.search_traces(return_type="list", max_results=10_000, flush=True)
    mlflow.flush_trace_async_logging()
    return mlflow.search_traces(return_type="list", max_results=10_000)


@pytest.fixture
def autolog(tmp_path, monkeypatch):
    # MLflow 3.x refuses the file store unless asked (its default would be sqlite, which needs the full
    # mlflow package's SQLAlchemy); the file store keeps this test to mlflow-skinny.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    previous_uri = mlflow.get_tracking_uri()
    previous_track_usage = dspy.settings.track_usage
    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    mlflow.dspy.autolog(silent=True)
    try:
        yield
    finally:
        mlflow.dspy.autolog(disable=True, silent=True)
        dspy.settings.configure(track_usage=previous_track_usage)  # autolog turns it on and leaves it on
        mlflow.set_tracking_uri(previous_uri)


def test_autolog_traces_a_run_without_double_counting(autolog, openai_server, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_usage(13, 5)
    fault = openai_server.fail("rate_limit", probability=0.1, seed=7, retry_after=0.01)
    # rlmpipe's own OpenTelemetry traces at the same time (MLflow 3 tracing is built on OpenTelemetry too)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    events = EventBus()
    events.subscribe(TraceListener(provider))
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url), timeout=5.0)
    pipeline = SummarizePipeline(ChunkingConfig(strategy="structure", chunk_tokens=30), merge_input_tokens=200)
    summary = execute(pipeline, [str(min(CONTRACTS.glob("*.txt")))], lm, events=events,
                      options=RunOptions(workspace=tmp_path / "ws", concurrency=4, retry=FAST_RETRY))
    provider.shutdown()
    assert summary.status == "done", summary.reason
    assert fault.fired > 0

    answered = sum(1 for call in openai_server.chat_calls if call.status == 200)
    expected = (13 * answered, 5 * answered)
    assert (summary.usage["prompt_tokens"], summary.usage["completion_tokens"]) == expected, "not doubled"
    totals = run_tables(Store(tmp_path / "ws"), summary.run_id)["totals"]
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == expected
    assert totals["calls"] == len(openai_server.chat_calls)

    traces = search_traces()
    assert len(traces) == summary.steps["done"], "one MLflow trace per DSPy program call (one per step)"
    assert all(trace.info.state == "OK" for trace in traces)
    span_types = {span.span_type for trace in traces for span in trace.data.spans}
    assert {"LLM", "CHAT_MODEL"} <= span_types
    # MLflow's own token counts (from DSPy's usage tracker, fed by rlmpipe's per-attempt capture) agree
    usage = [trace.info.token_usage or {} for trace in traces]
    assert (sum(u.get("input_tokens", 0) for u in usage),
            sum(u.get("output_tokens", 0) for u in usage)) == expected

    # the two tracers do not see each other's spans
    assert not any(span.name.startswith(("chat ", "step ", "invoke_workflow"))
                   for trace in traces for span in trace.data.spans)
    ours = exporter.get_finished_spans()
    assert len({span.context.trace_id for span in ours}) == 1, "rlmpipe's spans stay in one trace"
    calls = [span for span in ours if span.name == "chat test-model"]
    assert len(calls) == len(openai_server.chat_calls)
    assert sum(span.attributes["gen_ai.usage.input_tokens"] for span in calls) == expected[0]
