"""The live progress figures: the ETA of runs with and without LM steps."""

from __future__ import annotations

import time

from rlmpipe.monitor.progress import LiveReporter, RunProgress


def queue(progress: RunProgress, doc_id: str, size: int) -> None:
    progress.update({"type": "document_queued", "doc_id": doc_id, "size": size})


def test_a_run_without_steps_has_an_eta_from_its_bytes_and_zero_when_done():
    progress = RunProgress(started=time.time() - 10)
    progress.update({"type": "run_start", "run_id": "r", "model": "none"})
    for doc, size in (("a", 1000), ("b", 1000), ("c", 2000)):
        queue(progress, doc, size)
    assert progress.eta_seconds() is None  # nothing done yet: no rate
    progress.update({"type": "document_done", "doc_id": "a"})
    eta = progress.eta_seconds()
    assert eta is not None and 25 <= eta <= 35  # 3000 bytes left at about 100 bytes/s
    for doc in ("b", "c"):
        progress.update({"type": "document_done", "doc_id": doc})
    assert progress.eta_seconds() == 0.0


def test_a_run_with_steps_in_flight_waits_for_a_step_rate():
    progress = RunProgress(started=time.time() - 10)
    queue(progress, "a", 1000)
    queue(progress, "b", 1000)
    progress.update({"type": "step_start", "doc_id": "a"})
    progress.update({"type": "document_done", "doc_id": "b"})  # (no step finished: bytes say nothing)
    assert progress.eta_seconds() is None
    progress.update({"type": "step_done", "doc_id": "a"})
    assert progress.eta_seconds() is not None


def test_the_live_panel_of_a_run_without_an_lm_shows_no_token_rows():
    from rich.console import Console

    progress = RunProgress()
    progress.update({"type": "run_start", "run_id": "r", "model": "none"})
    queue(progress, "a", 10)
    progress.update({"type": "document_done", "doc_id": "a"})
    console = Console(record=True, width=100)
    console.print(LiveReporter(progress)._render())
    text = console.export_text()
    assert "no calls, no tokens, no cost" in text and " in / " not in text and "$0" not in text
    assert "ETA        0s" in text
