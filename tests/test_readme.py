"""The README stays true: its rubric table is the one the code applies; its two set-up commands exist."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlmpipe.apps.contracts.risk import rubric_markdown
from tests.support.replies import any_reply

ROOT = Path(__file__).resolve().parents[1]


def test_readme_rubric_is_the_code_rubric():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- BEGIN rubric")[1].split("-->", 1)[1].split("<!-- END rubric -->")[0]
    assert block.strip() == rubric_markdown().strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/run-example.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_troubleshooting_points_at_passages_that_are_there():
    """Issue 28: the troubleshooting sent Ray users to a "Scale-out on Ray" passage that was not there."""
    readme = (ROOT / "README.md").read_text()
    references = re.findall(r'see "([^"]+)"', readme)
    assert references
    for name in references:
        assert f"## {name}\n" in readme or f"**{name}**" in readme, f"no section or term {name!r}"
    ray = readme.split("## Scale-out on Ray\n", 1)[1].split("\n## ", 1)[0]
    assert "loopback-only network namespace" in ray and "unshare -n" in ray


def _python_blocks(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    part = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks("Python API"))))
def test_the_readme_python_api_examples_run(index, openai_server, tmp_path):
    """Each example as a user would run it from the repository's root: `openai/gpt-4o-mini` is sent to the
    loopback server through OPENAI_API_BASE (as it would go to any OpenAI-compatible gateway)."""
    openai_server.set_default(any_reply)
    code = _python_blocks("Python API")[index]
    env = {**os.environ, "OPENAI_API_BASE": openai_server.base_url, "OPENAI_API_KEY": "test",
           "RLMPIPE_WORKSPACE": str(tmp_path / "ws"), "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, f"README example {index + 1} failed:\n{code}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), "it printed what the README says it prints"
    assert openai_server.chat_calls, "it went through the model"
    warnings = [line for line in result.stderr.splitlines() if "warn" in line.lower()]
    assert warnings == [], "the README's examples print no warning (DSPy's, Python's, rlmpipe's)"
