"""Watching a recursion: the live progress and ``runs watch`` show each RLM's iteration and its calls by depth
while they happen; the run report draws each RLM step as a tree (iterations, their code and output, the
sub-calls with prompt and answer, nested RLMs), replayed calls marked, checked in headless Chromium on a
recursion of three levels and more than 60 calls, part of it replayed after a stop."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from rlmpipe.apps.ask import AskPipeline
from rlmpipe.monitor.progress import RunProgress
from rlmpipe.monitor.report import write_report
from rlmpipe.runtime.events import EventBus
from rlmpipe.runtime.runner import RunOptions, execute
from rlmpipe.runtime.store import Store
from tests.sandbox.helpers import requires_deno
from tests.support import browser
from tests.support.recursion import expected_answer, script
from tests.support.scripted_lm import ScriptedLM

pytestmark = [requires_deno, pytest.mark.slow]
SUB_CALLS = 60


@pytest.fixture(scope="module")
def recursion(tmp_path_factory, pyodide_cache) -> dict:
    """A three-level recursion (the step's RLM, a nested RLM at depth 1, its 60 sub-calls at depth 2), stopped
    by its token budget part-way, then resumed: part of it replayed, the rest live."""
    folder = tmp_path_factory.mktemp("recursion")
    docs = folder / "docs"
    docs.mkdir()
    (docs / "doc.txt").write_text("Some contract text. " * 100, encoding="utf-8")
    workspace = folder / "ws"
    lm = ScriptedLM(usage=(400, 50))
    script(lm, SUB_CALLS, "nested")
    first_events: list = []
    bus = EventBus()
    bus.subscribe(first_events.append)
    first = execute(AskPipeline("What are the items?", max_llm_calls=100), [str(docs)], lm, events=bus,
                    options=RunOptions(workspace=workspace, max_run_tokens=20_000))
    assert first.status == "stopped", first.reason
    events: list = []
    bus = EventBus()
    bus.subscribe(events.append)
    second = execute(AskPipeline("What are the items?", max_llm_calls=100), [str(docs)], lm, events=bus,
                     options=RunOptions(workspace=workspace))
    assert second.status == "done" and second.final["answer"] == expected_answer(SUB_CALLS)
    report = write_report(Store(workspace), second.run_id, folder / "report.html")
    return {"report": report, "workspace": workspace, "run_id": second.run_id, "first_events": first_events,
            "events": events}


def test_the_live_progress_shows_each_rlm_s_iteration_and_its_calls_by_depth_as_they_happen(recursion):
    progress = RunProgress()
    shown = []
    for event in recursion["first_events"]:
        progress.update(event)
        if event["type"] == "lm_call" and event.get("depth") == 2:
            shown.append(progress.line())
    assert shown, "no sub-call at depth 2 was told"
    middle = shown[len(shown) // 2]
    # while the nested RLM's code runs: the top RLM at iteration 1 (its code running, waiting on the
    # nested one), the nested RLM at iteration 1, and the calls so far at each depth
    assert "rlm ask: depth 0 iteration 1 (code running), depth 1 iteration 1 (code running)" in middle, middle
    calls = dict(re.findall(r"d(\d): (\d+)", middle))
    assert calls["0"] == "1" and calls["1"] == "1" and 0 < int(calls["2"]) < SUB_CALLS


def test_a_resumed_recursion_shows_its_replayed_calls_apart(recursion):
    progress = RunProgress()
    for event in recursion["events"]:
        progress.update(event)
        if event["type"] == "rlm_iteration" and event["depth"] == 0 and event["iteration"] == 2:
            break
    line = progress.line()
    assert re.search(r"d2: \d+ \(\+\d+ replayed\)", line), line
    assert progress.usage.replayed > 0 and f", {progress.usage.replayed} replayed" in line


def test_runs_watch_counts_each_session_afresh_and_tells_the_session_s_own_time(tmp_path):
    """(A run's event log holds every session: a three-session run of three documents is 3/3, not 9/9.)"""
    progress = RunProgress()
    for session in range(3):
        start = 1000.0 + session * 100
        progress.update({"type": "run_start", "run_id": "r", "session": session + 1, "model": "m", "time": start})
        for doc in "abc":
            progress.update({"type": "document_queued", "doc_id": doc, "path": doc, "size": 10, "time": start})
            progress.update({"type": "document_done", "doc_id": doc, "path": doc, "time": start + 5})
        progress.update({"type": "run_end", "run_id": "r", "status": "done", "reason": None, "documents": {},
                         "steps": {}, "time": start + 7})
    assert progress.line().startswith("docs 3/3 ")
    assert progress.elapsed == pytest.approx(7.0)


def test_the_report_draws_the_recursion_as_a_tree_in_chromium(recursion, tmp_path):
    if browser.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with Store(recursion["workspace"]) as store:
        step = next(s for s in store.steps(recursion["run_id"]) if s.name == "ask")
    probe = browser.probe_page(recursion["report"], window_size=(1280, 1600))
    assert not probe.problems, probe.problems
    tree = dump_tree(recursion["report"])
    # the step's RLM (2 iterations), the nested RLM (2 iterations at depth 1), 60 sub-calls at depth 2
    assert tree["executions"] == {"0": 2, "1": 2}
    assert tree["nested"] == 1 and tree["sub_calls"] == SUB_CALLS
    assert tree["calls"] == SUB_CALLS + 4  # and the four calls that wrote the code
    assert 0 < tree["replayed"] == step.replayed < SUB_CALLS + 4
    assert tree["prompts_expanded"] > 0  # a long prompt opens to its whole text
    assert "SUBQUERY 59: what is item 59?" in tree["text"] and "item 59 is 3481" in tree["text"]
    png = browser.screenshot(section_page(recursion["report"], tmp_path / "section.html"), tmp_path / "tree.png",
                             window_size=(1280, 1400), scale=0.5)
    rows = browser.png_rows(png)
    assert rows.varied_between(0, rows.height) > rows.height // 3  # the tree is drawn, not a blank page


TREE_PROBE = """<script>
window.addEventListener('load', function () {
  var section = document.querySelector('[id^="section-trajectory-"]');
  var executions = {};
  section.querySelectorAll('details.execution').forEach(function (d) {
    d.open = true;
    var depth = (d.className.match(/depth-(\\d)/) || [])[1];
    executions[depth] = (executions[depth] || 0) + 1;
  });
  section.querySelectorAll('details').forEach(function (d) { d.open = true; });
  var expanded = 0;
  section.querySelectorAll('details.said pre').forEach(function (p) {
    if (p.getBoundingClientRect().height > 0) { expanded++; }
  });
  var out = {executions: executions, nested: section.querySelectorAll('details.nested').length,
             calls: section.querySelectorAll('.call').length,
             sub_calls: section.querySelectorAll('div.call').length,
             replayed: section.querySelectorAll('.pill.replayed').length,
             prompts_expanded: expanded, text: section.innerText};
  var pre = document.createElement('pre'); pre.id = '__tree'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def section_page(report: Path, page: Path) -> Path:
    """The report's page with only its trajectory section, every part of it opened (for a screenshot)."""
    text = report.read_text(encoding="utf-8")
    start = text.index('<section id="section-trajectory-')
    end = text.index("</section>", start) + len("</section>")
    opened = text[start:end].replace("<details ", "<details open ")
    page.write_text(text[:text.index("<header>")] + opened + "</main></body></html>", encoding="utf-8")
    return page


def dump_tree(report: Path) -> dict:
    """What the trajectory section holds once every part of it is opened, read in Chromium."""
    text = report.read_text(encoding="utf-8")
    cut = text.rindex("</body>")
    page = report.with_name("tree.html")
    page.write_text(text[:cut] + TREE_PROBE + text[cut:], encoding="utf-8")
    result = browser.run_chromium(page.as_uri(), "--dump-dom", window_size=(1280, 1600))
    match = re.search(r'<pre id="__tree">(.*?)</pre>', result.stdout, re.DOTALL)
    assert match, result.stderr[-2000:]
    return {**json.loads(html.unescape(match.group(1))), "page": page}
