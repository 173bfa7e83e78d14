"""``runs report``: the self-contained HTML report of a run.

A real run (the summarize pipeline through dspy.LM -> HTTP -> the loopback server, with injected
rate limits, server errors and a request the server rejects, 4 workers, stopped by a token budget
and resumed: two sessions) is reported, and the report is checked against the server's own
counts and ``run_tables``; then Chromium (headless, offline) loads it and must render every plot
without a console error. A synthetic run of 100,000 LM calls checks that the file stays small.
"""

from __future__ import annotations

import random
import re
import shutil
import time
from pathlib import Path

import pytest

from rlmpipe.apps.summarize import SummarizePipeline
from rlmpipe.chunking import ChunkingConfig
from rlmpipe.lm.models import ModelChoice, make_lm
from rlmpipe.lm.recording import RetryPolicy
from rlmpipe.lm.usage import LMCall
from rlmpipe.monitor.formats import cost_text
from rlmpipe.monitor.metrics import run_tables
from rlmpipe.monitor.plots import MAX_TIMELINE_BARS, clock
from rlmpipe.monitor.report import write_report
from rlmpipe.runtime.runner import RunOptions, execute
from rlmpipe.runtime.store import Store
from tests.support import browser
from tests.support.openai_server import running_server
from tests.support.replies import numbered_document, summary_reply

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "contracts"
PLOTS = ("plot-timeline", "plot-latency", "plot-tokens-depth", "plot-tokens-document", "plot-failures")
USAGE = (7, 3)  # the server reports these prompt/completion tokens for every answer
ODD_NAME = 'odd <b>&amp; "name" \'x\'.txt'
FAST_RETRY = RetryPolicy(max_attempts=12, initial_wait=0.01, max_wait=0.05, jitter=0.01, max_retry_after=0.1)

needs_chromium = pytest.mark.skipif(browser.find_chromium() is None,
                                    reason="chromium is not installed (apt-get install -y chromium)")


def _summarize(server, paths, workspace, **options):
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url), timeout=5.0)
    pipeline = SummarizePipeline(ChunkingConfig(strategy="structure", chunk_tokens=30), merge_input_tokens=200)
    return execute(pipeline, [str(p) for p in paths], lm,
                   options=RunOptions(workspace=workspace, retry=FAST_RETRY, **options))


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A finished two-session run with retries, errors and one failed document; its report."""
    base = tmp_path_factory.mktemp("report")
    docs = base / "docs"
    docs.mkdir()
    shutil.copy(EXAMPLES / "hosting_agreement_freecook.txt", docs / "hosting_agreement_freecook.txt")
    (docs / "numbered.txt").write_text(numbered_document(30), encoding="utf-8")
    (docs / ODD_NAME).write_text("1. Poison. POISONPILL <script>alert(1)</script> here.\n", encoding="utf-8")
    workspace = base / "ws"
    with running_server() as server:
        server.set_default(summary_reply)
        server.set_usage(*USAGE)
        server.fail("rate_limit", probability=0.12, seed=1, retry_after=0.01)
        server.fail("server_error", probability=0.06, seed=2)
        server.fail("bad_request", pattern="POISONPILL")  # not retried: fails its step and its document
        paths = sorted(docs.iterdir())
        first = _summarize(server, paths, workspace, max_run_tokens=300, concurrency=4)
        second = _summarize(server, paths, workspace, max_run_tokens=10_000_000, concurrency=4)
        served = [(call.served, call.status) for call in server.chat_calls]
    assert first.status == "stopped" and first.reason.startswith("budget")
    assert second.run_id == first.run_id and second.session == 2 and second.status == "done"
    store = Store(workspace)
    report = write_report(store, second.run_id, base / "out" / "nested" / "report.html")
    return {"store": store, "run_id": second.run_id, "report": report, "served": served, "base": base,
            "html": report.read_text(encoding="utf-8")}


def _total(html: str, key: str) -> str:
    match = re.search(rf'data-total="{key}">([^<]*)<', html)
    assert match, f"no total {key} in the report"
    return match.group(1)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def test_totals_match_the_store_and_the_server(resumed_run):
    html, served = resumed_run["html"], resumed_run["served"]
    tables = run_tables(resumed_run["store"], resumed_run["run_id"])
    totals = tables["totals"]
    answered = sum(1 for kind, status in served if kind == "reply" and status == 200)
    failed = sum(1 for kind, _ in served if kind in ("rate_limit", "server_error", "bad_request"))
    assert answered + failed == len(served), "every request was answered or failed by an injected fault"
    # the server's own numbers ...
    assert totals["calls"] == len(served)
    assert totals["prompt_tokens"] == USAGE[0] * answered
    assert totals["completion_tokens"] == USAGE[1] * answered
    assert totals["errors"] == failed > 0 and totals["retries"] > 0
    # ... are what the report says
    assert _int(_total(html, "calls")) == totals["calls"]
    assert _int(_total(html, "prompt_tokens")) == totals["prompt_tokens"]
    assert _int(_total(html, "completion_tokens")) == totals["completion_tokens"]
    assert _int(_total(html, "errors")) == totals["errors"]
    assert _int(_total(html, "retries")) == totals["retries"]
    assert _int(_total(html, "cached")) == totals["cached"] == 0
    assert f"{totals['calls']:,}" in html and f"{totals['prompt_tokens']:,}" in html


def test_unknown_price_is_shown_as_unknown_with_a_note(resumed_run):
    html = resumed_run["html"]
    assert _total(html, "cost") == "unknown"  # openai/test-model has no price
    assert 'id="cost-note"' in html and "lower bound" in html and "no entry for model" in html


def test_header_sessions_and_stop_reason(resumed_run):
    html = resumed_run["html"]
    assert '<span id="run-sessions">2</span>' in html
    assert 'id="run-status">done<' in html
    sessions = re.search(r'<table id="table-sessions".*?</table>', html, re.DOTALL).group(0)
    assert sessions.count("<tr>") == 3  # heading + 2 sessions
    assert "budget: token budget reached" in sessions
    timeline = re.search(r'<svg id="plot-timeline".*?</svg>', html, re.DOTALL).group(0)
    assert "session 1" in timeline and "session 2" in timeline and "resumed" in timeline
    assert 'fill="url(#plot-timeline-break)"' in timeline


def test_every_plot_is_inline_svg_with_title_axes_and_caption(resumed_run):
    html = resumed_run["html"]
    for plot in PLOTS:
        figure = re.search(rf'<figure class="figure" id="figure-{plot}">(.*?)</figure>', html, re.DOTALL)
        assert figure, plot
        body = figure.group(1)
        assert re.search(r"<h3>[^<]+</h3>", body)
        assert re.search(r"<figcaption>.+</figcaption>", body, re.DOTALL)
        svg = re.search(rf'<svg id="{plot}".*?</svg>', body, re.DOTALL).group(0)
        assert svg.count("<rect") >= 2 and svg.count("<text") >= 4, plot
    timeline = re.search(r'<svg id="plot-timeline"[^>]*>', html).group(0)
    calls = resumed_run["store"].calls(resumed_run["run_id"])
    assert f'data-calls="{len(calls)}"' in timeline and 'data-per-bar="1"' in timeline
    for label in ("worker thread", "time since run start", "latency (seconds)", "calls", "tokens",
                  "cost (USD)", "attempts per bucket", "p50", "p95", "error: rate_limit", "error: server",
                  "retries (line)"):
        assert label in html, label
    for section in ("table-steps", "table-documents", "table-depths", "table-slowest", "table-costliest"):
        assert f'<table id="{section}"' in html


def test_text_from_the_store_is_escaped(resumed_run):
    html = resumed_run["html"]
    assert "<b>" not in html and "<script>alert" not in html
    assert "odd &lt;b&gt;&amp;amp; &quot;name&quot; &#x27;x&#x27;.txt" in html
    documents = re.search(r'<table id="table-documents".*?</table>', html, re.DOTALL).group(0)
    failed = re.search(r"<tr>.*?</tr>", documents.split("<tbody>")[1], re.DOTALL).group(0)
    assert "odd &lt;b&gt;" in failed and "failed" in failed, "failed documents come first"
    assert '<div class="error">' in failed and "LMInvalidRequestError" in failed


def test_no_external_resources(resumed_run):
    html = resumed_run["html"]
    assert not re.search(r"""\b(?:src|href|xlink:href|action|srcset)\s*=""", html, re.IGNORECASE)
    assert not re.search(r"""url\(\s*['"]?\s*(?:[a-z]+:)?//""", html, re.IGNORECASE)
    assert "@import" not in html and "<link" not in html and "<img" not in html and "<iframe" not in html
    assert not re.search(r"https?://", html), "no URL at all (not even an SVG namespace)"
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_write_report_creates_folders_and_writes_utf8(resumed_run):
    report = resumed_run["report"]
    assert report.parent.name == "nested" and report.read_bytes().startswith(b"<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in resumed_run["html"]
    assert "≥".encode() in report.read_bytes(), "non-ASCII text is written as UTF-8"


def test_the_page_is_made_from_the_data_model_alone(resumed_run, tmp_path):
    """collect() reads the store and the event log once; render() needs neither: the same page comes out
    of a model whose workspace is gone, and the model holds what the page shows."""
    import dataclasses

    from rlmpipe.monitor.report import RunReport, collect, render

    report = collect(resumed_run["store"], resumed_run["run_id"])
    assert isinstance(report, RunReport) and len(report.sessions) == 2
    assert report.totals["calls"] == run_tables(resumed_run["store"], resumed_run["run_id"])["totals"]["calls"]
    assert all("doc_seconds" in d for d in report.documents) and report.failed_steps
    page = render(report)
    copy = dataclasses.replace(report, documents=[dict(d) for d in report.documents])
    moved = resumed_run["base"] / "ws"
    hidden = tmp_path / "ws-hidden"
    moved.rename(hidden)  # nothing of the run is readable while the page is rendered again
    try:
        assert render(copy) == page
    finally:
        hidden.rename(moved)
    assert f"<code>{report.run['run_id']}</code>" in page and "table-failed-steps" in page


def test_cli_runs_report_writes_the_file(resumed_run, tmp_path):
    from typer.testing import CliRunner

    from rlmpipe.cli import app

    out = tmp_path / "cli" / "r.html"
    result = CliRunner().invoke(app, ["runs", "report", resumed_run["run_id"][:6], "--workspace",
                                      str(resumed_run["base"] / "ws"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out) and out.exists()


@needs_chromium
def test_chromium_renders_every_plot_without_errors(resumed_run):
    report = resumed_run["report"]
    probe = browser.probe_page(report, window_size=(1280, 1600))
    assert not probe.problems, probe.problems
    assert probe.resources == [], "the page loaded nothing"
    assert probe.title.startswith("rlmpipe run ")
    assert set(PLOTS) <= set(probe.plots)
    for plot in PLOTS:
        box = probe.plots[plot]
        assert box["width"] > 500 and box["height"] > 80, (plot, box)
        assert box["rects"] >= 2 and box["texts"] >= 4 and box["visible"] >= box["shapes"] * 0.9, (plot, box)
    # a screenshot of the whole page: every plot's area holds drawn pixels
    # (half scale: the same layout in a quarter of the pixels, quick to decode)
    height = int(min(probe.scroll_height + 20, 9000))
    png = browser.screenshot(report, report.with_suffix(".png"), window_size=(1280, height), scale=0.5)
    rows = browser.png_rows(png)
    assert rows.width == 640 and abs(rows.height - height / 2) <= 1  # Chromium rounds odd heights either way
    for plot in PLOTS:
        box = probe.plots[plot]
        drawn = rows.varied_between(box["top"] / 2, (box["top"] + box["height"]) / 2)
        assert drawn >= 0.5 * box["height"] / 2, (plot, drawn, box)
    blank_page = sum(rows.varied) < 0.2 * rows.height
    assert not blank_page


@needs_chromium
def test_the_probe_sees_errors_and_remote_loads(tmp_path):
    """The browser check itself: a broken page must fail it (else a green test proves nothing)."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body>"
                    "<img src='http://example.invalid/x.png'><script>console.error('boom');"
                    "undefinedFunction();</script></body></html>", encoding="utf-8")
    probe = browser.probe_page(page, window_size=(800, 600))
    assert any("undefinedFunction" in e for e in probe.errors)
    assert any("boom" in c for c in probe.console)
    assert any("example.invalid" in url for url in probe.failed), "the remote image was tried (and failed)"
    assert probe.problems


# --- a large synthetic run ----------------------------------------------------------------------
def _synthetic_run(workspace: Path, calls: int = 100_000) -> tuple[Store, str]:
    store = Store(workspace)
    run_id = "big0000run01"
    rng = random.Random(7)
    store.start_run(run_id, "rlm", "fp", "openai/gpt-4o-mini", {"options": {"concurrency": 32}}, 0)
    store.start_run(run_id, "rlm", "fp", "openai/gpt-4o-mini", {"options": {"concurrency": 32}}, 0)
    begin = time.time() - 3 * 86400
    sessions = [(1, begin, 3000.0, calls * 2 // 3), (2, begin + 2 * 86400, 1500.0, calls - calls * 2 // 3)]
    for session, start, seconds, n in sessions:
        batch = []
        for i in range(n):
            outcome = "error" if rng.random() < 0.04 else ("cached" if rng.random() < 0.05 else "ok")
            tokens = (0, 0) if outcome == "error" else (400, 80)
            batch.append(LMCall(
                model="openai/gpt-4o-mini", prompt_tokens=tokens[0], completion_tokens=tokens[1],
                cost=None if outcome == "ok" and rng.random() < 0.01 else (1e-4 if outcome == "ok" else 0.0),
                latency=rng.lognormvariate(0, 0.6), started=start + seconds * i / n, outcome=outcome,
                attempt=2 if rng.random() < 0.05 else 1, depth=rng.choice([0, 0, 1, 2]), run_id=run_id,
                step_key=f"k{i % 5000}", step_name=rng.choice(["rlm", "sub_lm"]), doc_id=f"d{i % 300}",
                error_type=rng.choice(["rate_limit", "server"]) if outcome == "error" else None,
                error="<img src=x onerror=alert(1)> & boom" if outcome == "error" else None,
                worker=f"rlmpipe-step_{i % 32}", call_id=f"c{session}-{i}"))
        store.record_calls(batch, session)
    for d in range(300):
        failed = d % 50 == 0
        store.set_document(run_id, f"d{d}", f"/corpus/</script><script>alert({d})</script>.pdf",
                           "failed" if failed else "done", error="<b>broken</b>" if failed else None)
    store.finish_run(run_id, "done")
    return store, run_id


@pytest.fixture(scope="module")
def big_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("big")
    store, run_id = _synthetic_run(base / "ws")
    started = time.monotonic()
    report = write_report(store, run_id, base / "big.html")
    return {"store": store, "run_id": run_id, "report": report, "seconds": time.monotonic() - started,
            "html": report.read_text(encoding="utf-8")}


def test_100k_calls_make_a_bounded_report(big_report):
    html, report = big_report["html"], big_report["report"]
    tables = run_tables(big_report["store"], big_report["run_id"])
    assert big_report["seconds"] < 30
    assert report.stat().st_size < 2_000_000, report.stat().st_size
    timeline = re.search(r'<svg id="plot-timeline"[^>]*>', html).group(0)
    bars = int(re.search(r'data-bars="(\d+)"', timeline).group(1))
    marks = int(re.search(r'data-error-marks="(\d+)"', timeline).group(1))
    per_bar = int(re.search(r'data-per-bar="(\d+)"', timeline).group(1))
    assert 0 < bars <= MAX_TIMELINE_BARS and marks <= bars and per_bar > 1
    assert "100,000 calls are more than" in html and f"merges up to {per_bar} consecutive calls" in html
    svg = re.search(r'<svg id="plot-timeline".*?</svg>', html, re.DOTALL).group(0)
    assert svg.count("<rect") <= bars + marks + 40  # + lane stripes and the session break
    assert _int(_total(html, "calls")) == tables["totals"]["calls"]
    assert _int(_total(html, "cached")) == tables["totals"]["cached"] > 0
    assert _int(_total(html, "prompt_tokens")) == tables["totals"]["prompt_tokens"]
    assert _total(html, "cost").startswith("≥ $"), "some calls unpriced: the cost is a lower bound"
    assert "Cost is a lower bound." in html
    assert "2d00h" in html, "the second session, two days later, keeps readable tick labels"
    assert "+ 280 other documents" in html
    assert "<script>alert" not in html and "<img" not in html and "<b>broken" not in html
    documents = re.search(r'<table id="table-documents".*?</table>', html, re.DOTALL).group(0)
    assert documents.count("<tr>") == 301


@needs_chromium
def test_chromium_renders_the_large_report(big_report):
    probe = browser.probe_page(big_report["report"], window_size=(1280, 1600))
    assert not probe.problems, probe.problems
    assert probe.resources == []
    for plot in PLOTS:
        assert probe.plots[plot]["width"] > 500 and probe.plots[plot]["rects"] >= 2, plot


# --- helpers ------------------------------------------------------------------------------------
def test_cost_text_is_honest():
    assert cost_text(0.5, 0) == "$0.5000"
    assert cost_text(0.5, 3) == "≥ $0.5000"
    assert cost_text(0.0, 3) == "unknown"
    assert cost_text(None, 0) == "unknown"
    assert cost_text(0.0, 0) == "$0"


def test_clock_labels():
    assert clock(0, 1) == "0s" and clock(0.25, 0.05) == "0.25s" and clock(90, 30) == "1m30s"
    assert clock(3000, 600) == "50m" and clock(2 * 86400 + 300, 300) == "2d00h05m"


# --- edge cases ---------------------------------------------------------------------------------
def _call(run_id: str, started: float, **fields) -> LMCall:
    values = {"model": "openai/gpt-4o-mini", "prompt_tokens": 100, "completion_tokens": 20, "cost": 2e-5,
              "latency": 0.4, "started": started, "outcome": "ok", "run_id": run_id, "step_key": "k",
              "step_name": "summarize", "doc_id": None, "worker": "", "call_id": f"c{started}"}
    return LMCall(**{**values, **fields})


def test_a_run_without_calls_still_has_every_section(tmp_path):
    store = Store(tmp_path / "ws")
    store.start_run("empty0000001", "summarize", "fp", None, {}, 0)
    store.finish_run("empty0000001", "failed", "failed: LMAuthError <key>")
    html = write_report(store, "empty0000001", tmp_path / "r.html").read_text(encoding="utf-8")
    for plot in PLOTS:
        assert f'<svg id="{plot}"' in html
    assert _total(html, "calls") == "0" and _total(html, "cost") == "$0"
    assert "failed: LMAuthError &lt;key&gt;" in html and "no LM calls recorded" in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "ids are unique"


def test_many_sessions_a_dead_process_and_no_event_log(tmp_path):
    store = Store(tmp_path / "ws")
    run_id = "many00000001"
    begin = time.time() - 86400
    for session in range(1, 13):
        store.start_run(run_id, "summarize", "fp", "openai/gpt-4o-mini", {}, 2**22 + 12345)  # pid long gone
        start = begin + session * 3600
        store.record_calls([_call(run_id, start + k * (session / 10), outcome="error" if k == 2 else "ok",
                                  error_type="server" if k == 2 else None, attempt=1 + (k == 3))
                            for k in range(5)], session)
    html = write_report(store, run_id, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "interrupted (process gone; resume it)" in html  # status 'running' but its process is gone
    assert _int(_total(html, "calls")) == 60 and _int(_total(html, "errors")) == 12
    assert _total(html, "cost") == "$0.001200"
    timeline = re.search(r'<svg id="plot-timeline".*?</svg>', html, re.DOTALL).group(0)
    assert "(unknown)" in timeline, "calls without a worker name get a lane of their own"
    assert timeline.count("plot-timeline-break)") == 11
    widths = [float(w) for w in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.-]+)"', timeline)]
    assert widths and min(widths) > 0


def test_more_worker_lanes_than_bars_draws_one_bar_per_lane():
    """Each (worker, session) needs a bar of its own: with more of them than ``max_bars`` the merging
    stops at one bar each (it used to loop for ever)."""
    from rlmpipe.monitor.plots import Session, Timeline, timeline_plot

    calls = [{"worker": f"w{w}", "session": 1, "started": float(i), "latency": 0.5, "outcome": "ok", "depth": 0,
              "step_name": "s", "doc_id": None, "error_type": None, "attempt": 1, "prompt_tokens": 1,
              "completion_tokens": 1, "error": None} for w in range(5) for i in range(4)]
    svg = timeline_plot(Timeline.build(lambda: calls, max_bars=3), [Session(1, 0.0, 10.0)], {})
    assert 'data-bars="5"' in svg and 'data-calls="20"' in svg
