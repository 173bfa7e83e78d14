"""The README stays true: its rubric table is the one the code applies; its two set-up commands exist."""

from pathlib import Path

from rlmpipe.apps.contracts.risk import rubric_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_rubric_is_the_code_rubric():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- BEGIN rubric")[1].split("-->", 1)[1].split("<!-- END rubric -->")[0]
    assert block.strip() == rubric_markdown().strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/run-example.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
