"""What a new user meets in the first hour, as they type it: the version, where runs live, Ctrl-C,
mistakes that must stop a run before it starts, one line per failed document, the displays."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from rlmpipe.runtime.store import Store
from tests.support.cli import ROOT, error_lines, rlmpipe, start
from tests.support.contract_replies import extraction_reply
from tests.support.replies import summary_reply
from tests.support.scripted_lm import ScriptedLM, chat_reply

CONTRACTS = ROOT / "examples" / "contracts"


@pytest.fixture
def contracts(tmp_path) -> Path:
    folder = tmp_path / "project" / "contracts"
    shutil.copytree(CONTRACTS, folder)
    return folder


def test_version(tmp_path):
    from rlmpipe import __version__

    result = rlmpipe("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"rlmpipe {__version__}\n"


def test_runs_are_found_from_anywhere_in_the_project_without_flags(openai_server, contracts):
    project = contracts.parent
    openai_server.set_default(extraction_reply)
    analyzed = rlmpipe("contracts", "analyze", "contracts", "--lm", "openai/test-model", "--api-base",
                       openai_server.base_url, "--out", "out", "--quiet", cwd=project)
    assert analyzed.returncode == 0, analyzed.stderr
    run_id = Store(project / ".rlmpipe").list_runs()[0]["run_id"]
    deeper = project / "notes" / "2026"
    deeper.mkdir(parents=True)
    listed = rlmpipe("runs", "list", cwd=deeper)
    assert run_id in listed.stdout
    shown = rlmpipe("runs", "show", run_id[:6], cwd=deeper)
    assert shown.returncode == 0 and f"run {run_id}" in shown.stdout
    report = rlmpipe("runs", "report", run_id, cwd=deeper)
    assert report.returncode == 0 and Path(report.stdout.strip()).is_file()
    calls = len(openai_server.chat_calls)
    again = rlmpipe("contracts", "analyze", "contracts", "--lm", "openai/test-model", "--api-base",
                    openai_server.base_url, "--out", "out", "--quiet", cwd=project)
    assert again.returncode == 0 and len(openai_server.chat_calls) == calls, "the same run, resumed: no call repeated"
    elsewhere = rlmpipe("runs", "list", cwd=project.parent)
    assert "no runs in .rlmpipe (runs live in the nearest .rlmpipe folder here or above)" in elsewhere.stdout


# --- mistakes that would make every call fail: refused before the run starts ----------------------------------
@pytest.mark.parametrize(("arguments", "environment", "message"), [
    (["--lm", "local", "--model-path", "{text_file}"], {},
     "error: --model-path {text_file}: not a GGUF model file (it starts with b'This', not b'GGUF'): give the path "
     "of a .gguf file (llama.cpp's format)"),
    (["--lm", "local", "--model-path", "{missing}"], {},
     "error: --model-path {missing}: no such file: give the path of a .gguf model file"),
    (["--lm", "openai/gpt-4o-mini"], {"OPENAI_API_KEY": None},
     "error: no API key for openai (model openai/gpt-4o-mini): set OPENAI_API_KEY in the environment"),
    (["--lm", "nosuchprovider/model"], {},
     "error: unknown model 'nosuchprovider/model': use a litellm model string"),
    (["--lm", "openai/my-model", "--api-base", "http://127.0.0.1:9/v1"], {},
     "error: cannot reach --api-base http://127.0.0.1:9/v1 (Connection refused): start the server, or check the "
     "address and port"),
])
def test_what_would_make_every_call_fail_stops_the_run_before_it_starts(contracts, tmp_path, arguments, environment,
                                                                         message):
    text_file = tmp_path / "model.gguf"
    text_file.write_text("This is not a model.\n")
    missing = tmp_path / "nothere.gguf"
    values = {"text_file": text_file, "missing": missing}
    arguments = [a.format(**values) for a in arguments]
    env = {k: v for k, v in os.environ.items() if k not in {name for name, value in environment.items() if value is None}}
    env.pop("PYTHONPATH", None)
    result = rlmpipe("contracts", "analyze", contracts, *arguments, "--out", tmp_path / "out", cwd=tmp_path,
                     env={**env, **{k: v for k, v in environment.items() if v is not None}})
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr)[0].startswith(message.format(**values)), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "one line"
    assert not (tmp_path / ".rlmpipe" / "runs.sqlite").exists() or not Store(tmp_path / ".rlmpipe").list_runs()


def test_ask_without_deno_says_what_to_install_before_the_run_starts(openai_server, contracts, tmp_path):
    """Issue 28: without Deno, `ask` started, failed its step with "DenoNotFoundError ... (check the model
    name (--lm))" and exited 2 with nothing saying to install the rlm extra."""
    result = rlmpipe("ask", contracts, "Who may terminate?", "--lm", "openai/test-model", "--api-base",
                     openai_server.base_url, "--workspace", tmp_path / "ws", cwd=tmp_path,
                     env={"RLMPIPE_DENO": str(tmp_path / "no-deno-here")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: rlmpipe ask runs the model's code in a Deno sandbox, and no working Deno was found: "
        "pip install 'rlmpipe[rlm]' (or put deno on PATH, or set RLMPIPE_DENO)"]
    assert openai_server.chat_calls == [], "no call was made"
    assert not (tmp_path / "ws" / "runs.sqlite").exists() or not Store(tmp_path / "ws").list_runs()


@pytest.mark.slow
def test_quiet_hides_the_libraries_notices_too(openai_server, contracts, tmp_path, pyodide_cache):
    """Issue 28: with -q, DSPy's "RLM reached max iterations" still came through. The model here never
    submits: after its one REPL round DSPy extracts an answer, and says so, unless the run is quiet."""
    openai_server.set_default(chat_reply(reasoning="Look.", code="print(len(documents))", answer="Nobody.",
                                         sources=["none"]))
    said = {}
    for quiet in (False, True):
        result = rlmpipe("ask", contracts, "Who may terminate?", "--max-iters", "1", "--lm", "openai/test-model",
                         "--api-base", openai_server.base_url, "--workspace", tmp_path / f"ws-{quiet}",
                         *(["-q"] if quiet else []), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Nobody."), result.stdout
        said[quiet] = result.stderr
    assert "RLM reached max iterations" in said[False], "the notice is there to hide"
    assert "RLM reached max iterations" not in said[True] and "WARNING" not in said[True], said[True]


# --- nothing to read: an error before the run, not an empty success --------------------------------------------
@pytest.mark.parametrize("command", ["contracts", "summarize", "ask", "chunk"])
def test_a_folder_with_nothing_to_read_is_an_error_not_an_empty_success(openai_server, tmp_path, command):
    empty, other = tmp_path / "empty", tmp_path / "scans"
    empty.mkdir()
    other.mkdir()
    (other / "old.doc").write_bytes(b"\xd0\xcf\x11\xe0")
    model = ["--lm", "openai/test-model", "--api-base", openai_server.base_url, "--workspace", tmp_path / "ws"]
    arguments = {"contracts": ["contracts", "analyze", "{folder}", "--out", tmp_path / "out", "--workspace",
                               tmp_path / "ws"],
                 "summarize": ["summarize", "{folder}", *model], "ask": ["ask", "{folder}", "Who pays?", *model],
                 "chunk": ["chunk", "{folder}"]}[command]
    for folder, detail in ((empty, ""), (other, f"; {other}: skipped 1 file(s) of unsupported types (.doc x1)")):
        result = rlmpipe(*[str(folder) if a == "{folder}" else a for a in arguments], cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"error: no documents to read in {folder} (rlmpipe reads .docx, .htm, "
                                              f".html, .markdown, .md, .pdf, .text, .txt files){detail}"]
        assert result.stdout == ""
    assert not (tmp_path / "out").exists() and openai_server.chat_calls == []
    assert not (tmp_path / "ws" / "runs.sqlite").exists() or not Store(tmp_path / "ws").list_runs()


# --- documents that fail: one line each, in every command -----------------------------------------------------
def test_a_missing_file_and_a_misnamed_one_get_their_line(openai_server, contracts, tmp_path):
    openai_server.set_default(extraction_reply)
    (contracts / "notes.pdf").write_text("Section 1. This is a text file with a .pdf name.\n")
    for command in (["contracts", "analyze"], ["summarize"]):
        result = rlmpipe(*command, contracts, tmp_path / "missing.txt", "--lm", "openai/test-model", "--api-base",
                         openai_server.base_url, "--out", tmp_path / ("out" if command[0] == "contracts" else "s.jsonl"),
                         "--quiet", "--workspace", tmp_path / command[0], cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert f"error: {tmp_path / 'missing.txt'}: no such file" in error_lines(result.stderr)
        assert (f"note: {contracts / 'notes.pdf'}: the file is plain text, not a PDF as its name says: read as "
                "plain text") in result.stderr.splitlines()
        assert "document(s) failed, 0 partial; details: rlmpipe runs show" in result.stderr


def test_chunk_stats_prints_the_statistics_only(tmp_path):
    result = rlmpipe("chunk", CONTRACTS, "--stats", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.startswith("documents 3  failed 0  chunks ")


def test_old_flag_names_still_work_with_a_notice(openai_server, contracts, tmp_path):
    openai_server.set_default(summary_reply)
    result = rlmpipe("summarize", contracts, "--lm", "openai/test-model", "--api-base", openai_server.base_url,
                     "--max-tokens", "1500", "--quiet", cwd=tmp_path)
    assert result.returncode == 3
    assert "note: --max-tokens is deprecated and will go away: use --max-run-tokens" in result.stderr
    chunked = rlmpipe("chunk", CONTRACTS / "ip_agreement_msci.txt", "--max-tokens", "64", "--stats", cwd=tmp_path)
    assert "note: --max-tokens is deprecated and will go away: use --chunk-tokens" in chunked.stderr
    assert "max 64" in chunked.stderr


def test_the_plain_display_shows_calls_at_the_model_apart_from_queued_ones_and_ends_before_wrote(
        openai_server, contracts, tmp_path):
    openai_server.set_default(extraction_reply)
    result = rlmpipe("contracts", "analyze", contracts, "--lm", "openai/test-model", "--api-base",
                     openai_server.base_url, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    progress = [i for i, line in enumerate(lines) if line.startswith("[rlmpipe] docs ")]
    wrote = [i for i, line in enumerate(lines) if line.startswith("wrote ")]
    assert progress and wrote and progress[-1] < wrote[0], "the final progress line comes before 'wrote'"
    assert re.search(r"at the model \d+, queued \d+", lines[progress[-1]])
    shown = rlmpipe("runs", "show", Store(tmp_path / ".rlmpipe").list_runs()[0]["run_id"], cwd=tmp_path)
    assert "model s" in shown.stdout and "queued s" in shown.stdout


# --- Ctrl-C --------------------------------------------------------------------------------------------------
def test_ctrl_c_stops_the_queue_at_once_and_only_the_call_at_the_model_finishes(tmp_path):
    """The embedded model answers one call at a time: with 8 workers, 7 calls queue for it. Stopping must
    not wait for the queue (it waited 279 s): nothing more reaches the model after the stop."""
    import rlmpipe
    from rlmpipe.apps.summarize import SummarizePipeline
    from rlmpipe.chunking import ChunkingConfig

    steps_started = threading.Semaphore(0)
    a_queued_call_is_at_the_model = threading.Event()

    def reply(request):
        """At the model (its one slot held): the first call holds it until two more steps have started
        (their calls queue behind it, however slowly a loaded machine starts steps), then 1 s more. A
        call that had queued stops the run while it is at the model. (The slot is not first-come
        first-served: a thread that just finished a call may take it again before a waiting one, so
        which call gets it next is not known; the one that queued is found by its event.)"""
        if len(lm.calls) == 1:
            for _ in range(3):
                assert steps_started.acquire(timeout=60), "three steps started"
            time.sleep(1.0)
        if a_queued_call_is_at_the_model.is_set() and "calls_at_stop" not in current:
            current["run"].request_stop("interrupted")
            current["calls_at_stop"] = len(lm.calls)  # no other call can be at the model now
        return chat_reply(summary="s")

    lm = ScriptedLM(default=reply, latency=1.0)
    lm.parallel_calls = 1  # as the embedded model declares
    current = {}

    def listen(event):
        if event["type"] == "step_start":
            steps_started.release()
        elif event["type"] == "lm_call_start" and event["queued"] > 0.5:
            a_queued_call_is_at_the_model.set()

    def on_start(run):
        current.update(run=run)
        run.events.subscribe(listen)

    result = rlmpipe.run(SummarizePipeline(ChunkingConfig(chunk_tokens=64)), CONTRACTS, lm=lm,
                         workspace=tmp_path / "ws", on_start=on_start)
    assert result.status == "stopped" and result.reason == "interrupted"
    assert len(lm.calls) == current["calls_at_stop"], "no queued call was sent after the stop"
    with Store(tmp_path / "ws") as store:
        calls = store.calls(result.run_id)
    queued = [c for c in calls if c["queued"] > 0.5]
    assert queued, "calls that waited for the model's slot say so"
    assert all(c["latency"] < 1.9 for c in queued), "the wait is not counted as the model's latency"


def test_a_run_whose_documents_all_finished_is_done_even_if_stopped_after(tmp_path):
    import rlmpipe

    lm = ScriptedLM(default=chat_reply(summary="s"))
    current = {}

    class StopAtTheEnd:
        name = "stop-at-the-end"

        def config(self):
            return {}

        def programs(self):
            return {}

        def process(self, run, document):
            return {"chars": document.size_bytes}

        def finish(self, run, results):
            current["run"].request_stop("interrupted")  # Ctrl-C after the last document was saved
            return {"documents": len(results)}

    result = rlmpipe.run(StopAtTheEnd(), CONTRACTS, lm=lm, workspace=tmp_path / "ws",
                         on_start=lambda run: current.update(run=run))
    assert result.status == "done" and result.reason is None


def test_ctrl_c_through_the_cli_says_what_happens_and_ends_resumable(openai_server, contracts, tmp_path):
    openai_server.set_default(summary_reply)
    openai_server.set_latency(0.3)
    process = start("summarize", contracts, "--lm", "openai/test-model", "--api-base", openai_server.base_url,
                    "--chunk-tokens", "64", "--concurrency", "2", "--quiet", cwd=tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and len(openai_server.chat_calls) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    # 115 chunks of 64 tokens are queued behind 2 slots: the calls at the model finish, none of the queue starts
    assert len(openai_server.chat_calls) < 40, "it did not wait for the queue"
    assert process.returncode == 3
    assert "stopping: nothing new starts; waiting for the calls at the model to finish" in stderr
    assert "stopped (interrupted); resume with: rlmpipe resume" in stderr
