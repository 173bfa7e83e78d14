"""Prometheus metrics of a real run (dspy.LM -> HTTP -> loopback server), scraped over HTTP."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from rlmpipe.apps.summarize import SummarizePipeline  # noqa: E402
from rlmpipe.chunking import ChunkingConfig  # noqa: E402
from rlmpipe.lm.models import ModelChoice, make_lm  # noqa: E402
from rlmpipe.lm.recording import RetryPolicy  # noqa: E402
from rlmpipe.monitor.metrics import run_tables  # noqa: E402
from rlmpipe.monitor.prometheus import LATENCY_BUCKETS, serve_metrics  # noqa: E402
from rlmpipe.runtime.events import EventBus, LMCallEvent  # noqa: E402
from rlmpipe.runtime.runner import RunOptions, execute  # noqa: E402
from rlmpipe.runtime.store import Store  # noqa: E402
from tests.support.replies import summary_reply  # noqa: E402

CONTRACTS = Path(__file__).resolve().parents[2] / "examples" / "contracts"
FAST_RETRY = RetryPolicy(max_attempts=12, initial_wait=0.01, max_wait=0.05, jitter=0.01, max_retry_after=0.05)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a /metrics page."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_metrics_endpoint_counts_a_run_exactly(openai_server, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_usage(11, 4)
    faults = [openai_server.fail("rate_limit", probability=0.1, seed=3, retry_after=0.01),
              openai_server.fail("server_error", probability=0.1, seed=4)]
    events = EventBus()
    server = serve_metrics(events, 0)
    try:
        assert server.port > 0 and port_open(server.port)
        before = scrape(server.url)
        assert before[("rlmpipe_lm_tokens_total", (("type", "input"),))] == 0
        assert before[("rlmpipe_steps_in_flight", ())] == 0

        paths = [str(p) for p in sorted(CONTRACTS.glob("*.txt"))[:2]]
        lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url), timeout=5.0)
        chunking = ChunkingConfig(strategy="structure", chunk_tokens=30)
        pipeline = SummarizePipeline(chunking, merge_input_tokens=200)
        summary = execute(pipeline, paths, lm, events=events,
                          options=RunOptions(workspace=tmp_path / "ws", concurrency=4, retry=FAST_RETRY))
        assert summary.status == "done"
        metrics = scrape(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server()

    def value(name, **labels):
        return metrics[(name, tuple(sorted(labels.items())))]

    totals = run_tables(Store(tmp_path / "ws"), summary.run_id)["totals"]
    answered = sum(1 for call in openai_server.chat_calls if call.status == 200)
    assert value("rlmpipe_lm_tokens_total", type="input") == totals["prompt_tokens"] == 11 * answered
    assert value("rlmpipe_lm_tokens_total", type="output") == totals["completion_tokens"] == 4 * answered
    assert value("rlmpipe_lm_tokens_total", type="input") == summary.usage["prompt_tokens"]
    fired = sum(fault.fired for fault in faults)
    assert fired > 0
    assert value("rlmpipe_lm_calls_total", outcome="error") == totals["errors"] == fired
    assert value("rlmpipe_lm_calls_total", outcome="ok") == totals["calls"] - totals["errors"] == answered
    assert value("rlmpipe_lm_calls_total", outcome="cached") == totals["cached"] == 0
    assert value("rlmpipe_lm_retries_total") == totals["retries"]
    assert value("rlmpipe_lm_request_duration_seconds_count", outcome="ok") == answered
    assert value("rlmpipe_lm_request_duration_seconds_count", outcome="error") == fired
    seconds = sum(value("rlmpipe_lm_request_duration_seconds_sum", outcome=o) for o in ("ok", "error"))
    assert seconds == pytest.approx(totals["seconds"], abs=1e-3)
    assert value("rlmpipe_lm_request_duration_seconds_bucket", outcome="ok", le="120.0") == answered
    assert value("rlmpipe_lm_request_duration_seconds_bucket", outcome="ok", le="+Inf") == answered
    assert {float(le) for (name, labels) in metrics if name.endswith("_bucket")
            for key, le in labels if key == "le" and le != "+Inf"} == set(LATENCY_BUCKETS)
    assert value("rlmpipe_documents", status="done") == 2
    assert value("rlmpipe_documents_in_flight") == 0
    assert value("rlmpipe_steps", status="done") == summary.steps["done"]
    assert value("rlmpipe_steps_in_flight") == 0
    assert value("rlmpipe_runs_in_flight") == 0

    assert not port_open(server.port), "the port is closed after stop"
    server()  # stopping twice is harmless


def call_event(**fields) -> LMCallEvent:
    return LMCallEvent(model="openai/test-model", started=0.0, **fields)


def test_two_servers_have_their_own_registries():
    events = EventBus()
    first, second = serve_metrics(events, 0), serve_metrics(events, 0)
    try:
        assert first.port != second.port
        events.emit(call_event(outcome="ok", prompt_tokens=5, completion_tokens=1, cost=None, latency=0.2, attempt=2))
        events.emit(call_event(outcome="cached", prompt_tokens=0, completion_tokens=0, cost=0.0, latency=0.0, attempt=1))
        for server in (first, second):
            metrics = scrape(server.url)
            assert metrics[("rlmpipe_lm_tokens_total", (("type", "input"),))] == 5
            assert metrics[("rlmpipe_lm_calls_total", (("outcome", "cached"),))] == 1
            assert metrics[("rlmpipe_lm_unpriced_calls_total", ())] == 1
            assert metrics[("rlmpipe_lm_retries_total", ())] == 1
    finally:
        first()
        second()
    events.emit(call_event(outcome="ok", prompt_tokens=5, completion_tokens=1, cost=None, latency=0.2, attempt=1))
    tokens = first.registry.get_sample_value("rlmpipe_lm_tokens_total", {"type": "input"})
    assert tokens == 5, "a stopped server's metrics no longer count"
    assert not port_open(first.port) and not port_open(second.port)


def test_a_partial_document_leaves_the_flight_and_is_counted():
    from rlmpipe.monitor.prometheus import RunMetrics

    metrics = RunMetrics()
    document = {"run_id": "r", "doc_id": "d", "path": "x.txt"}
    metrics({"type": "document_start", **document})
    metrics({"type": "document_partial", **document, "error": "x.txt: missing"})
    assert metrics.registry.get_sample_value("rlmpipe_documents_in_flight") == 0
    assert metrics.registry.get_sample_value("rlmpipe_documents", {"status": "partial"}) == 1
