"""Prometheus metrics of runs, counted from the engine's events and served over HTTP.

Needs the optional extra ``metrics`` (``prometheus-client``)::

    server = serve_metrics(events, 9464)     # port 0: an ephemeral port, see server.port
    execute(..., events=events)
    server()                                 # stop serving (the port is released)

Metrics (each server has its own ``CollectorRegistry``; nothing goes to the global one):

===================================== ========= ==================================================
rlmpipe_lm_tokens_total{type}         counter   tokens the provider reported, type=input|output
rlmpipe_lm_calls_total{outcome}       counter   LM attempts, outcome=ok|error|cached|replayed
rlmpipe_lm_retries_total              counter   attempts after the first of a call
rlmpipe_lm_cost_usd_total             counter   known USD cost (a lower bound when a price is unknown)
rlmpipe_lm_unpriced_calls_total       counter   calls whose price litellm does not know
rlmpipe_lm_request_duration_seconds   histogram latency of attempts that reached the provider, by outcome
rlmpipe_documents{status}             gauge     documents done|partial|failed|stopped so far
rlmpipe_documents_in_flight           gauge     documents being processed now
rlmpipe_steps{status}                 gauge     steps done|failed|stopped|reused so far
rlmpipe_steps_in_flight               gauge     steps executing now
rlmpipe_runs_in_flight                gauge     runs between run_start and run_end
===================================== ========= ==================================================

Token and call counts are :class:`rlmpipe.lm.usage.Usage`'s (the one rule): a cache hit counts
as a ``cached`` call and adds no tokens, so ``rlmpipe_lm_tokens_total`` equals the run's usage totals.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rlmpipe.lm.usage import Usage

# LM latency: tens of milliseconds (cache-warm local servers) to minutes (long generations)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0,
                   120.0)


class RunMetrics:
    """EventBus listener counting events into Prometheus metrics in ``registry`` (thread-safe)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.tokens = Counter("rlmpipe_lm_tokens", "LM tokens reported by the provider.", ["type"],
                              registry=r)
        self.calls = Counter("rlmpipe_lm_calls", "LM call attempts by outcome.", ["outcome"], registry=r)
        self.retries = Counter("rlmpipe_lm_retries", "LM call attempts after the first.", registry=r)
        self.cost = Counter("rlmpipe_lm_cost_usd",
                            "Known LM cost in USD (a lower bound if some prices are unknown).", registry=r)
        self.unpriced = Counter("rlmpipe_lm_unpriced_calls", "LM calls whose price is unknown.", registry=r)
        self.duration = Histogram("rlmpipe_lm_request_duration_seconds",
                                  "Latency of LM attempts that reached the provider.", ["outcome"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.documents = Gauge("rlmpipe_documents", "Documents finished, by status.", ["status"], registry=r)
        self.documents_in_flight = Gauge("rlmpipe_documents_in_flight", "Documents being processed.",
                                         registry=r)
        self.steps = Gauge("rlmpipe_steps", "Steps finished, by status.", ["status"], registry=r)
        self.steps_in_flight = Gauge("rlmpipe_steps_in_flight", "Steps executing.", registry=r)
        self.runs_in_flight = Gauge("rlmpipe_runs_in_flight", "Runs in progress.", registry=r)
        for kind in ("input", "output"):  # present from the first scrape, at 0
            self.tokens.labels(type=kind)
        for outcome in ("ok", "error", "cached", "replayed"):
            self.calls.labels(outcome=outcome)
        for status in ("done", "partial", "failed", "stopped"):
            self.documents.labels(status=status)
        for status in ("done", "failed", "stopped", "reused"):
            self.steps.labels(status=status)

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "lm_call":
            self._lm_call(event)
        elif kind == "step_start":
            self.steps_in_flight.inc()
        elif kind in ("step_done", "step_failed", "step_stopped"):
            self.steps_in_flight.dec()
            self.steps.labels(status=kind[len("step_"):]).inc()
        elif kind == "step_reused":
            self.steps.labels(status="reused").inc()
        elif kind == "document_start":
            self.documents_in_flight.inc()
        elif kind in ("document_done", "document_partial", "document_failed", "document_stopped"):
            if kind != "document_failed" or event.get("doc_id") is not None:  # unreadable files never started
                self.documents_in_flight.dec()
            self.documents.labels(status=kind[len("document_"):]).inc()
        elif kind == "run_start":
            self.runs_in_flight.inc()
        elif kind == "run_end":
            self.runs_in_flight.dec()

    def _lm_call(self, event: dict) -> None:
        outcome = str(event.get("outcome"))
        self.calls.labels(outcome=outcome).inc()
        counted = Usage().add(event)  # what this attempt adds, by the one rule every table uses
        if counted.cached or counted.replayed:
            return
        self.retries.inc(counted.retries)
        self.tokens.labels(type="input").inc(counted.prompt_tokens)
        self.tokens.labels(type="output").inc(counted.completion_tokens)
        self.unpriced.inc(counted.unpriced)
        self.cost.inc(counted.cost)
        self.duration.labels(outcome=outcome).observe(counted.seconds)


class MetricsServer:
    """A running metrics endpoint; calling it (or :meth:`stop`) stops it and releases the port."""

    def __init__(self, registry: CollectorRegistry, unsubscribe, server, thread: threading.Thread, host: str):
        self.registry = registry
        self._unsubscribe, self._server, self._thread = unsubscribe, server, thread
        self.host = host
        self.port: int = server.server_address[1]
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._unsubscribe()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def __call__(self) -> None:
        self.stop()


def serve_metrics(events, port: int = 0, *, host: str = "127.0.0.1") -> MetricsServer:
    """Count ``events`` (an EventBus) into a fresh registry and serve it at ``http://host:port/metrics``.

    ``port=0`` picks a free port: read it from the returned server's ``port``. The returned object is
    the stop function (``server()``), with ``port``, ``url`` and ``registry`` attributes.
    """
    metrics = RunMetrics()
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    thread.name = "rlmpipe-metrics"
    return MetricsServer(metrics.registry, events.subscribe(metrics), server, thread, host)
