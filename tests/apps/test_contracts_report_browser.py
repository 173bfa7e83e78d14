"""The analyzer's report.html and contract pages in headless Chromium: no errors, nothing loaded from
anywhere, the chart drawn, the table sorts and filters, evidence is highlighted and linked."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from rlmpipe.api import analyze_contracts
from rlmpipe.lm.models import ModelChoice, make_lm
from tests.support import browser
from tests.support.contract_replies import extraction_reply

ROOT = Path(__file__).resolve().parents[2]
needs_chromium = pytest.mark.skipif(browser.find_chromium() is None,
                                    reason="chromium is not installed (apt-get install -y chromium)")

INTERACT = """<script>
window.addEventListener('load', function () {
  var result = {};
  var rows = function () { return Array.from(document.querySelectorAll('#corpus tbody tr')); };
  var visible = function () { return rows().filter(function (r) { return r.style.display !== 'none'; }).length; };
  result.rows = rows().length;
  var category = document.getElementById('category'), mode = document.getElementById('mode');
  category.value = 'Governing Law'; category.dispatchEvent(new Event('change'));
  result.with_law = visible();
  mode.value = 'absent'; mode.dispatchEvent(new Event('change'));
  result.without_law = visible();
  category.value = ''; category.dispatchEvent(new Event('change'));
  var header = document.querySelectorAll('#corpus th')[1];
  header.click();
  result.ascending = rows().map(function (r) { return parseInt(r.cells[1].dataset.value); });
  header.click();
  result.descending = rows().map(function (r) { return parseInt(r.cells[1].dataset.value); });
  document.body.setAttribute('data-result', JSON.stringify(result));
});
</script>"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    from tests.support.openai_server import OpenAIServer

    folder = tmp_path_factory.mktemp("analysis")
    shutil.copytree(ROOT / "examples" / "contracts", folder / "contracts")
    (folder / "contracts" / "weird <name> & co.txt").write_text(
        "SUPPLY AGREEMENT <b>not bold</b>\n\nThis Agreement shall be governed by the laws of Texas.\n",
        encoding="utf-8")
    with OpenAIServer() as server:
        server.set_default(extraction_reply)
        lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=server.base_url))
        result = analyze_contracts([folder / "contracts"], folder / "out", lm=lm, read="all", concurrency=4,
                                   workspace=folder / "ws")
    assert result.status == "done"
    return folder / "out"


@needs_chromium
def test_corpus_report_loads_cleanly_and_draws_its_chart(outputs):
    probe = browser.probe_page(outputs / "report.html", window_size=(1280, 1400))
    assert not probe.problems, probe.problems
    assert probe.resources == []
    chart = probe.plots["score-chart"]
    assert chart["width"] > 300 and chart["rects"] >= 1 and chart["texts"] >= 10


@needs_chromium
def test_corpus_table_filters_by_category_and_sorts_by_score(outputs, tmp_path):
    page = (outputs / "report.html").read_text(encoding="utf-8").replace("</body>", INTERACT + "</body>")
    copy = outputs / "report-interaction.html"
    copy.write_text(page, encoding="utf-8")
    result = browser.run_chromium(copy.as_uri(), "--dump-dom", window_size=(1280, 1000))
    data = json.loads(__import__("html").unescape(re.search(r'data-result="([^"]*)"', result.stdout).group(1)))
    records = [json.loads(line) for line in (outputs / "contracts.jsonl").read_text().splitlines()]
    with_law = sum(1 for r in records if any(c["category"] == "Governing Law" and c["present"] for c in r["categories"]))
    assert data["rows"] == 4
    assert (data["with_law"], data["without_law"]) == (with_law, 4 - with_law) and 0 < with_law < 4
    assert data["ascending"] == sorted(r["risk_score"] for r in records)
    assert data["descending"] == sorted((r["risk_score"] for r in records), reverse=True)


@needs_chromium
def test_contract_page_highlights_and_links_its_evidence(outputs):
    pages = sorted((outputs / "contracts").glob("*.html"))
    assert len(pages) == 4
    weird = next(p for p in pages if "weird" in p.name)
    text = weird.read_text(encoding="utf-8")
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text and "<b>not bold</b>" not in text
    for page in pages:
        probe = browser.probe_page(page, window_size=(1280, 1200))
        assert not probe.problems and probe.resources == [], (page.name, probe.problems)
    msci = next(p for p in pages if "msci" in p.name).read_text(encoding="utf-8")
    anchors = set(re.findall(r'href="#(clause-\d+)"', msci))
    assert anchors and all(f'id="{anchor}"' in msci for anchor in anchors)


def test_contracts_without_a_verified_finding_are_flagged(outputs):
    """A contract where nothing was verified scores only on categories "not found": the report says so
    there and on the corpus page, and stays quiet where findings were verified."""
    from rlmpipe.apps.contracts.report import contract_page, corpus_page, slug

    records = [json.loads(line) for line in (outputs / "contracts.jsonl").read_text().splitlines()]
    found = [r for r in records if r["evidence"]["verified"] > 0]
    assert found
    for record in records:
        page = (outputs / "contracts" / f"{slug(record['path'], record['doc_id'])}.html").read_text(encoding="utf-8")
        assert ('class="warning"' in page) == (record["evidence"]["verified"] == 0)
    corpus = (outputs / "report.html").read_text(encoding="utf-8")
    if len(found) == len(records):
        assert 'class="warning"' not in corpus
    else:
        assert f"{len(records) - len(found)} of {len(records)} contract(s) have no verified finding" in corpus

    empty = {**found[0], "clauses": [], "risks": [], "obligations": [],
             "evidence": {"proposed": 3, "verified": 0, "rejected": 3, "unknown_category": 0}}
    page = contract_page(empty, text="text")
    assert "This contract has no verified finding (the model proposed 3 quote(s), 3 not found" in page
    assert 'class="warning"' not in contract_page(found[0], text="text")
    assert "1 of 2 contract(s) have no verified finding" in corpus_page([empty, found[0]], [], None)
    assert 'class="warning"' not in corpus_page(found, [], None)


HIGHLIGHTS = """<script>
window.addEventListener('load', function () {
  var marks = Array.from(document.querySelectorAll('pre.contract mark'));
  var result = marks.map(function (m) {
    var style = getComputedStyle(m);
    return {kind: m.className, title: m.title, text: m.textContent, border: parseFloat(style.borderLeftWidth),
            margin: parseFloat(style.marginLeft), background: style.backgroundColor};
  });
  var quotes = Array.from(document.querySelectorAll('ul.findings .quote')).map(function (q) { return q.textContent; });
  document.body.setAttribute('data-result', JSON.stringify({marks: result, quotes: quotes}));
});
</script>"""


@pytest.fixture(scope="module")
def finder_outputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finder-analysis")
    result = analyze_contracts([ROOT / "examples" / "contracts"], folder / "out", lm="none",
                               workspace=folder / "ws")
    assert result.status == "done"
    return folder / "out"


@needs_chromium
def test_finder_findings_are_highlighted_narrowed_named_on_hover_and_kept_apart(finder_outputs, tmp_path):
    """--lm none: each clause is its narrowed span, highlighted strongly, its passage lightly; hovering
    a highlight names its category (not an anchor id); each highlight starts with a rule of its own,
    so adjacent ones stay apart; the clause list shows the whole narrowed span."""
    records = {Path(r["path"]).name: r for r in map(json.loads, (finder_outputs / "contracts.jsonl").read_text()
                                                    .splitlines())}
    from rlmpipe.apps.contracts.report import slug

    record = records["services_agreement_scoutcam.txt"]
    page = finder_outputs / "contracts" / f"{slug(record['path'], record['doc_id'])}.html"
    probe = browser.probe_page(page, window_size=(1280, 1400))
    assert not probe.problems and probe.resources == [], probe.problems
    copy = tmp_path / "page.html"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", HIGHLIGHTS + "</body>"), encoding="utf-8")
    result = browser.run_chromium(copy.as_uri(), "--dump-dom", window_size=(1280, 1400))
    data = json.loads(__import__("html").unescape(re.search(r'data-result="([^"]*)"', result.stdout).group(1)))
    marks = data["marks"]
    categories = {c["category"] for c in record["clauses"]}
    clause_marks = [m for m in marks if m["kind"].split()[0] == "clause"]
    passage_marks = [m for m in marks if m["kind"].split()[0] == "passage"]
    assert clause_marks and passage_marks
    for mark in marks:
        assert not re.search(r"\b(clause|passage)-\d+\b", mark["title"]), mark["title"]
        names = {name.removesuffix(" (its passage)") for name in mark["title"].split("; ")}
        assert names <= categories, names
    starts = [m for m in marks if "start" in m["kind"].split()]
    assert len(starts) >= len(record["clauses"]) and all(m["border"] >= 2 and m["margin"] >= 2 for m in starts)
    assert {m["background"] for m in clause_marks}.isdisjoint({m["background"] for m in passage_marks})
    law = next(c for c in record["clauses"] if c["category"] == "Governing Law")
    assert law["evidence"]["quote"] in data["quotes"]  # whole, not clipped
    assert law["passage"] is not None and law["evidence"]["quote"] in law["passage"]["quote"]
    assert len(law["evidence"]["quote"]) < len(law["passage"]["quote"])
