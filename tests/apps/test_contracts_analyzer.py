"""The contract analyzer end to end, through the real client path against the loopback server."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.schema import ContractRecord
from tests.support.contract_replies import INVENTED, extraction_reply

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "examples" / "contracts"


def analyze(server, folder: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "rlmpipe.cli", "contracts", "analyze", str(folder), "--lm",
                           "openai/test-model", "--api-base", server.base_url, "--out", str(cwd / "out"),
                           "--concurrency", "4", "--quiet", *extra], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_corpus_analysis_with_a_bad_file_verified_evidence_outputs_and_resume(openai_server, tmp_path):
    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    openai_server.set_default(extraction_reply)
    result = analyze(openai_server, folder, tmp_path)
    assert result.returncode == 1, result.stderr  # one document failed, the others are done
    assert "Traceback" not in result.stderr

    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "contracts.jsonl").read_text().splitlines()]
    assert len(records) == 3
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert len(failed) == 1 and "broken.pdf" in failed[0]["path"] and "corrupt PDF" in failed[0]["error"]
    for record in records:
        ContractRecord.model_validate(record)
        text = Path(record["path"]).open(encoding="utf-8", newline="").read()
        assert len(record["categories"]) == 41
        for item in record["clauses"] + record["risks"] + record["obligations"]:
            evidence = item["evidence"]
            assert text[evidence["char_start"]:evidence["char_end"]] == evidence["quote"]
            assert INVENTED not in evidence["quote"]
        stats = record["evidence"]
        assert stats["rejected"] >= record["chunks"], "each chunk's invented quote was rejected and counted"
        assert stats["proposed"] == (stats["verified"] + stats["rejected"] + stats["unknown_category"]
                                     + stats["not_asked"])
        assert 0 <= record["risk_score"] <= 100
        assert record["risk_score"] == sum(item["points"] for item in record["risk_breakdown"])
        assert record["summary"]
    by_title = {Path(r["path"]).name: r for r in records}
    msci = by_title["ip_agreement_msci.txt"]
    assert any(c["category"] == "Governing Law" and "governed by" in c["evidence"]["quote"] for c in msci["clauses"])
    assert msci["title"] != "" and "Source:" not in msci["title"]

    rows = list(csv.DictReader((out / "clauses.csv").open(encoding="utf-8")))
    assert len(rows) == 3 * 41 and {row["category"] for row in rows} == set(NAMES)
    law = next(r for r in rows if r["path"].endswith("ip_agreement_msci.txt") and r["category"] == "Governing Law")
    assert law["present"] == "true" and "governed by" in law["quotes"] and "-" in law["offsets"]
    schema = json.loads((out / "contracts.schema.json").read_text())
    assert "risk_score" in schema["properties"]

    report = (out / "report.html").read_text()
    assert report.count("<tr data-categories") == 3 and "broken.pdf" in report and 'id="score-chart"' in report
    assert "http://" not in report.replace('xmlns="http://www.w3.org/2000/svg"', "")
    pages = list((out / "contracts").glob("*.html"))
    assert len(pages) == 3
    page = next(p for p in pages if "msci" in p.name).read_text()
    assert '<mark class="clause start"' in page and 'href="#clause-0"' in page and 'id="clause-0"' in page

    calls = len(openai_server.chat_calls)
    again = analyze(openai_server, folder, tmp_path)
    assert again.returncode == 1
    assert len(openai_server.chat_calls) == calls, "a second run of the same command reuses every finished step"
    assert (out / "contracts.jsonl").read_text().splitlines() == [json.dumps(r, ensure_ascii=False) for r in records]


def test_a_budget_stopped_corpus_run_resumes_with_rlmpipe_resume(openai_server, tmp_path):
    openai_server.set_default(extraction_reply)
    openai_server.set_usage(prompt_tokens=500, completion_tokens=50)
    first = analyze(openai_server, CONTRACTS, tmp_path, "--max-tokens", "1500")
    assert first.returncode == 3, first.stderr
    run_id = first.stderr.split("rlmpipe resume ")[-1].split()[0]
    before = len(openai_server.chat_calls)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    resumed = subprocess.run([sys.executable, "-m", "rlmpipe.cli", "resume", run_id, "--max-tokens", "100000000",
                              "--quiet"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "contracts.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert len(openai_server.chat_calls) > before


def test_a_contract_with_no_verified_finding_gets_no_invented_summary(openai_server, tmp_path):
    """Nothing verified means nothing to summarise: no summary call is made, and the record says why."""
    from rlmpipe.api import analyze_contracts
    from rlmpipe.apps.contracts.pipeline import NOTHING_TO_SUMMARIZE
    from rlmpipe.lm.models import ModelChoice, make_lm
    from tests.support.scripted_lm import chat_reply

    openai_server.reply(r"\[\[ ## findings ## \]\]", chat_reply(summary="An invented summary."))
    openai_server.set_default(chat_reply(clauses=[], risks=[], obligations=[]))
    lm = make_lm(ModelChoice("openai/test-model", "flag", api_base=openai_server.base_url))
    result = analyze_contracts([CONTRACTS / "ip_agreement_msci.txt"], tmp_path / "out", lm=lm, read="all",
                               concurrency=2, workspace=tmp_path / "ws")
    assert result.status == "done"
    record = json.loads((tmp_path / "out" / "contracts.jsonl").read_text())
    assert record["clauses"] == record["risks"] == record["obligations"] == []
    assert record["summary"] == NOTHING_TO_SUMMARIZE
    assert openai_server.count(r"\[\[ ## findings ## \]\]") == 0
    assert openai_server.count(r"\[\[ ## excerpt ## \]\]") == record["chunks"] > 0
