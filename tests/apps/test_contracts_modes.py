"""The analyzer's three modes as a user meets them: the clause finder alone (no LM, the default), the
cascade (the finder chooses what the LM reads), and what is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.digest import NOTE
from rlmpipe.apps.contracts.schema import ContractRecord
from rlmpipe.runtime.store import Store
from tests.support import browser
from tests.support.cli import error_lines, rlmpipe, start
from tests.support.contract_replies import INVENTED, extraction_reply, review_excerpts
from tests.support.kills import kill_after_steps, later_calls

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "examples" / "contracts"
needs_chromium = pytest.mark.skipif(browser.find_chromium() is None,
                                    reason="chromium is not installed (apt-get install -y chromium)")


def clean_env(tmp_path: Path) -> dict:
    """No model configured anywhere: no RLMPIPE_LM, no rlmpipe.toml in the working folder or at home."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "RLMPIPE_LM": "", "RLMPIPE_API_BASE": ""}


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "contracts.jsonl").read_text(encoding="utf-8").splitlines()]


def text_of(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


# -- the finder alone --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """``rlmpipe contracts analyze DIR`` with no model configured, on the examples and one broken file."""
    tmp_path = tmp_path_factory.mktemp("offline")
    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    result = rlmpipe("contracts", "analyze", folder, "--out", tmp_path / "out", "--quiet", cwd=tmp_path,
                     env=clean_env(tmp_path))
    return tmp_path, result


def test_no_model_configured_means_the_finder_alone(offline):
    tmp_path, result = offline
    assert result.returncode == 1, result.stderr  # the broken file failed; every other contract is done
    errors = error_lines(result.stderr) + [line for line in result.stderr.splitlines() if "broken.pdf" in line]
    assert any("broken.pdf" in line for line in errors), result.stderr
    assert "Traceback" not in result.stderr
    records = read_records(tmp_path / "out")
    assert sorted(Path(r["path"]).name for r in records) == sorted(p.name for p in CONTRACTS.glob("*.txt"))
    for record in records:
        ContractRecord.model_validate(record)
        text = text_of(record["path"])
        assert record["mode"] == "finder" and record["chunks"] == 0
        assert record["clauses"], f"the finder found nothing in {record['path']}"
        assert record["risks"] == record["obligations"] == []
        assert record["needs_lm"] == ["risks", "obligations"]
        for clause in record["clauses"]:
            evidence = clause["evidence"]
            assert text[evidence["char_start"]:evidence["char_end"]] == evidence["quote"]
            assert clause["category"] in NAMES
            assert 0 <= clause["score"] <= 1 and clause["confirmed"] is None
            passage = clause["passage"]  # the clause is narrowed inside the passage it was found in
            assert text[passage["char_start"]:passage["char_end"]] == passage["quote"]
            assert passage["char_start"] <= evidence["char_start"] < evidence["char_end"] <= passage["char_end"]
        assert record["risk_score"] == sum(item["points"] for item in record["risk_breakdown"])
        # the summary is the contract's own words: every quoted snippet is a narrowed clause of it
        assert record["summary"].endswith(NOTE)
        quotes = [" ".join(c["evidence"]["quote"].split()) for c in record["clauses"]]
        for snippet in record["summary"].split("\u201c")[1:]:
            words = snippet.split("\u201d")[0].removesuffix(" ...")
            assert any(quote.startswith(words) for quote in quotes), words
    with Store(tmp_path / ".rlmpipe") as store:
        run = store.list_runs()[0]
        assert run["model"] == "none"
        assert store.usage_totals(run["run_id"])["calls"] == 0


def test_the_same_command_again_changes_nothing(offline):
    tmp_path, _ = offline
    before = (tmp_path / "out" / "contracts.jsonl").read_text()
    again = rlmpipe("contracts", "analyze", tmp_path / "contracts", "--out", tmp_path / "out", "--quiet",
                    cwd=tmp_path, env=clean_env(tmp_path))
    assert again.returncode == 1
    assert (tmp_path / "out" / "contracts.jsonl").read_text() == before


def test_the_report_says_what_the_finder_did(offline):
    tmp_path, _ = offline
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="mode-finder"' in report and "no language model" in report and "needs an LM" in report
    page = next((tmp_path / "out" / "contracts").glob("*msci*.html")).read_text(encoding="utf-8")
    assert "finder only" in page and "score 0." in page and "need a language model" in page
    assert "LM-confirmed" not in page


@needs_chromium
def test_the_finder_report_renders_cleanly_in_chromium(offline):
    tmp_path, _ = offline
    out = tmp_path / "out"
    for page in [out / "report.html", *sorted((out / "contracts").glob("*.html"))]:
        probe = browser.probe_page(page, window_size=(1280, 1400))
        assert not probe.problems and probe.resources == [], (page.name, probe.problems)
    dom = browser.run_chromium((out / "report.html").as_uri(), "--dump-dom", window_size=(1280, 1000)).stdout
    assert 'id="mode-finder"' in dom and dom.count("<tr data-categories") == 3


def test_what_needs_a_model_is_refused_with_one_line(tmp_path):
    env = clean_env(tmp_path)
    full = rlmpipe("contracts", "analyze", CONTRACTS, "--read", "all", "--out", tmp_path / "out", cwd=tmp_path,
                   env=env)
    assert full.returncode == 2 and len(error_lines(full.stderr)) == 1, full.stderr
    assert "--read all" in full.stderr and "--lm" in full.stderr
    summary = rlmpipe("summarize", CONTRACTS, "--lm", "none", cwd=tmp_path, env=env)
    assert summary.returncode == 2 and len(error_lines(summary.stderr)) == 1, summary.stderr
    assert "needs a language model" in summary.stderr
    bad = rlmpipe("contracts", "analyze", CONTRACTS, "--lm", "none", "--finder-model", tmp_path / "nothing.npz",
                  cwd=tmp_path, env=env)
    assert bad.returncode == 2 and len(error_lines(bad.stderr)) == 1 and "nothing.npz" in bad.stderr, bad.stderr


# -- the cascade -------------------------------------------------------------------------------------
def test_a_review_prompt_names_categories_by_code_and_answers_may_use_either():
    from rlmpipe.apps.contracts.cascade import Window, excerpts_text
    from rlmpipe.apps.contracts.categories import category_guide, code, normalize_category

    windows = [Window(0, 10, "first text", {"Insurance": 0.5, "Governing Law": 0.9}), Window(20, 30, "second", {})]
    text = excerpts_text(windows)
    law, insurance = code("Governing Law"), code("Insurance")
    assert f"### Excerpt 1 (suspected: {law}, {insurance})\nfirst text" in text  # CUAD's order
    assert "Governing Law" not in text
    guide = category_guide(["Insurance", "Governing Law"], codes=True)
    assert guide.splitlines()[0].startswith(f"- [{law}] Governing Law: ") and len(guide.splitlines()) == 2
    for answer in (law, f"[{law}]", " c%s " % law[1:], "governing law", "GOVERNING-LAW"):
        assert normalize_category(answer) == "Governing Law", answer
    assert normalize_category("C0") is None and normalize_category("C42") is None
    assert [normalize_category(code(name)) for name in NAMES] == list(NAMES)


def test_the_cascade_sends_only_flagged_passages_and_verifies_what_comes_back(tmp_path):
    from rlmpipe import api
    from rlmpipe.apps.contracts.cascade import candidate_windows
    from rlmpipe.apps.contracts.finder import ClauseFinder
    from rlmpipe.apps.contracts.passages import passages
    from rlmpipe.apps.contracts.pipeline import DEFAULT_CONTEXT_CHARS
    from rlmpipe.ingest import Block, open_document
    from tests.support.scripted_lm import ScriptedLM

    level = "recall0.85"  # (the examples are short: at the default level nearly all their text is flagged)
    lm = ScriptedLM(default=extraction_reply)
    result = api.analyze_contracts(CONTRACTS, tmp_path / "out", lm=lm, recall=level, workspace=tmp_path / "ws",
                                   concurrency=2)
    assert result.status == "done", result.reason
    prompts = [call.prompt for call in lm.calls]
    reviews = [call for call in lm.calls if "[[ ## excerpts ## ]]" in call.prompt]
    assert reviews and not any("[[ ## excerpt ## ]]" in p for p in prompts), "no full-read extraction call"

    finder = ClauseFinder.load()
    select, ask = finder.cascade_thresholds(level)
    assert np.all(select == select[0]), "one selection threshold for every category"
    sent = "\n".join(prompts)
    never_flagged = 0
    for path in sorted(CONTRACTS.glob("*.txt")):
        text = text_of(str(path))
        windows = list(candidate_windows(open_document(path).blocks(), finder.score, finder.categories, select,
                                         ask=ask, context_chars=DEFAULT_CONTEXT_CHARS))
        assert windows
        for window in windows:
            assert window.text == text[window.char_start:window.char_end]
            assert window.text.strip() in sent
        scored = list(finder.score([Block(text, 0)]))
        for passage, scores in scored:
            if np.any(scores >= select):  # a candidate: inside a window asked about what it clears
                window = next(w for w in windows if w.char_start <= passage.char_start < w.char_end)
                assert {finder.categories[k] for k in np.flatnonzero(scores >= np.minimum(select, ask))} <= set(
                    window.categories)
            inside = any(w.char_start < passage.char_end and passage.char_start < w.char_end for w in windows)
            if inside:
                continue
            assert not np.any(scores >= select), "a flagged passage is inside a window"
            if len(passage.text) >= 60 and text.count(passage.text) == 1:
                never_flagged += 1
                assert passage.text not in sent, f"a passage below every threshold was sent: {passage.text[:60]!r}"
        assert list(passages([Block(text, 0)]))
    assert never_flagged > 0, "the examples have passages the finder does not flag"

    # each review asked only about the categories suspected in each excerpt
    for call in reviews:
        for _number, suspected, excerpt in review_excerpts({"messages": call.messages}):
            assert set(suspected) <= set(NAMES) and excerpt.strip()
    for document in result:
        record = document.result
        ContractRecord.model_validate(record)
        text = text_of(record["path"])
        assert record["mode"] == "cascade" and record["chunks"] > 0 and record["needs_lm"] == []
        stats = record["evidence"]
        assert stats["not_asked"] >= record["chunks"], "each excerpt's unasked category was dropped and counted"
        assert stats["rejected"] >= record["chunks"], "each excerpt's invented quote was rejected and counted"
        assert stats["proposed"] == stats["verified"] + stats["rejected"] + stats["unknown_category"] + stats["not_asked"]
        for item in record["clauses"] + record["risks"] + record["obligations"]:
            evidence = item["evidence"]
            assert text[evidence["char_start"]:evidence["char_end"]] == evidence["quote"]
            assert INVENTED not in evidence["quote"]
        for clause in record["clauses"]:
            assert clause["confirmed"] is True and 0 <= clause["score"] <= 1
        assert record["summary"] and NOTE not in record["summary"]
    msci = next(d.result for d in result if "msci" in d.path)
    assert any(c["category"] == "Governing Law" and "governed by" in c["evidence"]["quote"] for c in msci["clauses"])


def test_the_cascade_costs_less_than_a_full_read_of_the_same_contracts(tmp_path):
    """Counted in characters sent (the cost); the ratio on CUAD is measured in bench/contracts_cost.py."""
    from rlmpipe import api
    from tests.support.scripted_lm import ScriptedLM

    sizes = {}
    for read in ("candidates", "all"):
        lm = ScriptedLM(default=extraction_reply)
        result = api.analyze_contracts(CONTRACTS, tmp_path / read, lm=lm, read=read, workspace=tmp_path / read,
                                       concurrency=2)
        assert result.status == "done"
        sizes[read] = sum(len(call.prompt) for call in lm.calls)
    assert sizes["candidates"] < sizes["all"]


@pytest.mark.slow
def test_kill_9_mid_cascade_then_the_same_command_repeats_no_finished_call(openai_server, tmp_path):
    folder = tmp_path / "contracts"
    folder.mkdir()
    for copy in range(3):  # distinct documents (a different last line), so more calls to cut into
        for path in sorted(CONTRACTS.glob("*.txt")):
            (folder / f"{path.stem}-{copy}.txt").write_text(text_of(str(path)) + f"\n\nCopy {copy}.\n",
                                                            encoding="utf-8")
    openai_server.set_default(extraction_reply)
    openai_server.set_latency(0.1)
    env = clean_env(tmp_path)

    def command(workspace: Path, out: Path):
        return ("contracts", "analyze", folder, "--lm", "openai/test-model", "--api-base", openai_server.base_url,
                "--out", out, "--workspace", workspace, "--concurrency", "2", "--quiet")

    reference = rlmpipe(*command(tmp_path / "ref-ws", tmp_path / "ref"), cwd=tmp_path, env=env)
    assert reference.returncode == 0, reference.stderr

    workspace = tmp_path / "ws"
    run_id, done = kill_after_steps(start(*command(workspace, tmp_path / "out"), cwd=tmp_path, env=env), workspace, 4)
    assert done, "the kill came after some calls were committed"

    resumed = rlmpipe(*command(workspace, tmp_path / "out"), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    later = later_calls(workspace, run_id)
    assert later, "the resumed session had calls left to make"
    assert not {c["step_key"] for c in later} & done, "no committed call was made again"

    def comparable(out: Path) -> list[dict]:
        return sorted(({**r, "path": Path(r["path"]).name} for r in read_records(out)), key=lambda r: r["path"])

    assert comparable(tmp_path / "out") == comparable(tmp_path / "ref"), "the same output as an uninterrupted run"
