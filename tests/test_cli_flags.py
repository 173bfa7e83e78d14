"""Every flag a user types, as issue 28 found them: every numeric flag of every command has a range
checked before anything runs (one line, exit code 2), --recall means the same with or without a
model, a run id prefix is a prefix, and --help speaks in words, not Python types."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import pytest

from rlmpipe.runtime.store import Store
from tests.support.cli import ROOT, rlmpipe

CONTRACTS = ROOT / "examples" / "contracts"


def clean_env(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "RLMPIPE_LM": "", "RLMPIPE_API_BASE": ""}


# -- ranges ---------------------------------------------------------------------------------------------------
OUT_OF_RANGE = [
    (["contracts", "analyze", "{docs}", "--context-chars", "1000000"], "--context-chars 1,000,000: must be 0 to 2000"),
    (["contracts", "analyze", "{docs}", "--context-chars", str(2**63)],
     "--context-chars 9,223,372,036,854,775,808: must be 0 to 2000"),
    (["contracts", "analyze", "{docs}", "--context-chars", "-1"], "--context-chars -1: must be 0 to 2000"),
    (["contracts", "analyze", "{docs}", "--chunk-tokens", "0"], "--chunk-tokens 0: must be 8 to 1,000,000"),
    (["contracts", "analyze", "{docs}", "--chunk-tokens", "-5"], "--chunk-tokens -5: must be 8 to 1,000,000"),
    (["contracts", "analyze", "{docs}", "--overlap", "-1"], "--overlap -1: must be 0 to 1,000,000"),
    (["summarize", "{docs}", "--chunk-tokens", "0"], "--chunk-tokens 0: must be 8 to 1,000,000"),
    (["summarize", "{docs}", "--window-tokens", "0"], "--window-tokens 0: must be 1 to 1,000,000"),
    (["summarize", "{docs}", "--concurrency", "0"], "--concurrency 0: must be 1 to 1024"),
    (["summarize", "{docs}", "--max-run-tokens", "0"], "--max-run-tokens 0: must be 1 to 10^15"),
    (["summarize", "{docs}", "--max-tokens", "0"], "--max-tokens 0: must be 1 to 10^15"),  # the old name
    (["summarize", "{docs}", "--max-cost", "0"], "--max-cost 0: must be more than 0, at most 1,000,000"),
    (["summarize", "{docs}", "--max-cost", "nan"], "--max-cost nan: must be more than 0, at most 1,000,000"),
    (["summarize", "{docs}", "--max-time", "inf"], "--max-time inf: must be more than 0, at most 2,592,000"),
    (["summarize", "{docs}", "--max-output-tokens", "0"], "--max-output-tokens 0: must be 1 to 1,000,000"),
    (["summarize", "{docs}", "--rpm", "0"], "--rpm 0: must be 1 to 10^9"),
    (["summarize", "{docs}", "--tpm", "-3"], "--tpm -3: must be 1 to 10^15"),
    (["summarize", "{docs}", "--metrics-port", "70000"], "--metrics-port 70000: must be 0 to 65535"),
    (["ask", "{docs}", "?", "--max-depth", "-1"], "--max-depth -1: must be 0 to 10"),
    (["ask", "{docs}", "?", "--max-iters", "0"], "--max-iters 0: must be 1 to 1000"),
    (["ask", "{docs}", "?", "--max-sub-calls", "-1"], "--max-sub-calls -1: must be 0 to 1,000,000"),
    (["ask", "{docs}", "?", "--exec-timeout", "0"], "--exec-timeout 0: must be more than 0, at most 86400"),
    (["chunk", "{docs}", "--chunk-tokens", "0"], "--chunk-tokens 0: must be 8 to 1,000,000"),
    (["chunk", "{docs}", "--max-tokens", "3"], "--max-tokens 3: must be 8 to 1,000,000"),  # the old name
    (["contracts", "train-finder", "{docs}", "--out", "m.npz", "--folds", "1"], "--folds 1: must be 2 to 20"),
    (["resume", "abc", "--max-time", "-1"], "--max-time -1: must be more than 0, at most 2,592,000"),
    (["runs", "watch", "abc", "--interval", "0"], "--interval 0: must be 0.1 to 3600"),
]


@pytest.mark.parametrize(("arguments", "message"), OUT_OF_RANGE, ids=[" ".join(a[:1] + a[-2:]) for a, _ in OUT_OF_RANGE])
def test_a_number_out_of_its_range_is_refused_before_anything_runs(tmp_path, arguments, message):
    result = rlmpipe(*[str(CONTRACTS) if a == "{docs}" else a for a in arguments], cwd=tmp_path,
                     env=clean_env(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert not (tmp_path / ".rlmpipe").exists(), "no run was started"


def _commands():
    from rlmpipe import cli

    for group in (cli.app, cli.contracts_app, cli.runs_app):
        for info in group.registered_commands:
            yield info.name or info.callback.__name__, info.callback


def test_every_numeric_flag_of_every_command_has_a_range():
    checked = []
    for name, callback in _commands():
        for parameter in inspect.signature(callback).parameters.values():
            annotation = str(parameter.annotation)
            if re.search(r"\b(int|float)\b", annotation) and not re.search(r"\bstr\b", annotation):
                bounds = getattr(getattr(parameter.default, "callback", None), "bounds", None)
                assert bounds is not None, f"{name}: {parameter.name} has no range"
                checked.append((name, parameter.name))
    assert ("contracts", "context_chars") not in checked  # (the analyze command is named "analyze")
    assert ("analyze", "context_chars") in checked and ("summarize", "alias_max_run_tokens") in checked
    assert len(checked) > 40


def test_the_context_chars_bound_is_the_pipelines_and_keeps_a_window_within_its_limit():
    from rlmpipe import cli
    from rlmpipe.apps.contracts import cascade, passages, pipeline

    assert cli.MAX_CONTEXT_CHARS == pipeline.MAX_CONTEXT_CHARS
    assert 2 * pipeline.MAX_CONTEXT_CHARS + passages.MAX_CHARS <= cascade.MAX_WINDOW_CHARS
    with pytest.raises(ValueError, match="context_chars must be from 0 to 2000"):
        pipeline.ContractsPipeline(mode="full", context_chars=pipeline.MAX_CONTEXT_CHARS + 1)


def test_chunk_tokens_zero_is_refused_by_the_library_as_minus_five_is(tmp_path):
    """`--chunk-tokens 0` silently meant the default while -5 was refused."""
    from rlmpipe import api
    from tests.support.scripted_lm import ScriptedLM

    for value in (0, -5):
        with pytest.raises(ValueError, match=f"chunk_tokens must be at least 8 \\(got {value}\\)"):
            api.analyze_contracts(CONTRACTS, tmp_path / "out", lm=ScriptedLM(), read="all", chunk_tokens=value,
                                  workspace=tmp_path / "ws")


# -- --recall: the same with or without a model ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["finder", "cascade", "full"])
def test_a_recall_level_means_the_same_in_every_mode(mode):
    from rlmpipe.apps.contracts.pipeline import ContractsPipeline

    for given in ("0.9", "recall0.9", "recall0.90", " 0.90 "):
        assert ContractsPipeline(mode=mode, recall=given).recall == "recall0.90"
    for wrong in ("0.8", "0.949", "ninety", "", "recall0.955"):
        with pytest.raises(ValueError, match=r"unknown recall level .* \(--recall; choose from: recall0.85, "
                                             r"recall0.90, recall0.93, recall0.95, recall0.97, recall0.99\)"):
            ContractsPipeline(mode=mode, recall=wrong)


def test_recall_is_refused_alike_with_and_without_a_model(openai_server, tmp_path):
    """`--recall 0.9` was accepted without a model and refused with one."""
    env = clean_env(tmp_path)
    model = ["--lm", "openai/test-model", "--api-base", openai_server.base_url]
    lines = set()
    for extra in ([], model, [*model, "--read", "all"]):
        result = rlmpipe("contracts", "analyze", CONTRACTS, "--recall", "0.8", "--out", tmp_path / "out", *extra,
                         cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        lines.add(result.stderr.strip())
    assert len(lines) == 1 and "unknown recall level 'recall0.80'" in lines.pop()
    without = rlmpipe("contracts", "analyze", CONTRACTS, "--recall", "0.9", "--out", tmp_path / "out", "--quiet",
                      cwd=tmp_path, env=env)
    assert without.returncode == 0, without.stderr
    assert openai_server.chat_calls == []


# -- run ids -----------------------------------------------------------------------------------------------------
def test_a_run_id_prefix_is_a_prefix_not_a_pattern(tmp_path):
    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder)
    made = rlmpipe("contracts", "analyze", folder, "--out", tmp_path / "out", "--quiet", cwd=tmp_path,
                   env=clean_env(tmp_path))
    assert made.returncode == 0, made.stderr
    run_id = Store(tmp_path / ".rlmpipe").list_runs()[0]["run_id"]
    assert rlmpipe("runs", "show", run_id[:4], cwd=tmp_path).returncode == 0
    for pattern in ("%", "_", "_" * len(run_id), run_id[:3] + "%"):
        shown = rlmpipe("runs", "show", pattern, cwd=tmp_path)
        assert shown.returncode == 2 and shown.stderr.startswith(f"error: no run {pattern!r} in "), shown.stderr
    for command in (["runs", "show", ""], ["resume", ""]):
        result = rlmpipe(*command, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            "error: give a run id, or its first characters (rlmpipe runs list shows them)"], result.stderr


# -- --help --------------------------------------------------------------------------------------------------------
HELP = [["--help"], ["chunk", "--help"], ["summarize", "--help"], ["ask", "--help"], ["resume", "--help"],
        ["contracts", "analyze", "--help"], ["contracts", "train-finder", "--help"], ["runs", "show", "--help"],
        ["runs", "watch", "--help"], ["runs", "report", "--help"], ["runs", "list", "--help"]]


@pytest.mark.parametrize("arguments", HELP, ids=[" ".join(a) for a in HELP])
def test_help_speaks_in_words_not_python_types(tmp_path, arguments):
    result = rlmpipe(*arguments, cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    types = re.findall(r"<(?:int|float|bool|str|path|list\[[^\]]*\])>", result.stdout, re.I)
    assert types == [], result.stdout


def test_help_lists_choices_ranges_and_the_defaults_the_library_applies(tmp_path):
    from rlmpipe.apps.contracts import pipeline

    shown = " ".join(rlmpipe("contracts", "analyze", "--help", cwd=tmp_path, env={"COLUMNS": "400"}).stdout.split())
    assert "--read candidates|all" in shown
    assert f"(0 to 2000; default {pipeline.DEFAULT_CONTEXT_CHARS})" in shown
    assert f"(8 to 1,000,000; default {pipeline.DEFAULT_CHUNKING.chunk_tokens})" in shown
    assert f"(default {pipeline.DEFAULT_RECALL})" in shown
