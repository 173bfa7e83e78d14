"""``ast.parse`` serialised by the run engine: CPython < 3.13 (before its fix, gh-106905) could raise
``SystemError: AST constructor recursion depth mismatch`` when a garbage collection ran Python code
inside one thread's parse while another parsed; DSPy parses in every step thread."""

from __future__ import annotations

import ast
import difflib
import gc
import os
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from rlmpipe.runtime import threadsafe_ast

ROOT = Path(__file__).resolve().parents[2]


def test_concurrent_parses_with_python_code_in_collections_never_fail():
    """CPython's own reproduction of gh-106905 (a gc callback that runs Python code, threads parsing):
    on this machine's 3.11.7 it raised 2 SystemErrors in 80 parses unguarded."""
    threadsafe_ast.install()
    source = Path(ast.__file__).read_text(encoding="utf-8")
    errors: list[BaseException] = []

    def busy_collection(phase, info) -> None:  # Python code inside a collection: the GIL may pass
        lines = [f"{random.randint(0, 10)}\n" for _ in range(100)]
        list(difflib.unified_diff(lines, sorted(lines)))

    def parse() -> None:
        try:
            for _ in range(5):
                ast.parse(source)
                ast.literal_eval("[1, {'a': (2, 3)}]")
        except BaseException as error:
            errors.append(error)

    gc.callbacks.append(busy_collection)
    try:
        threads = [threading.Thread(target=parse) for _ in range(16)]
        [thread.start() for thread in threads]
        [thread.join() for thread in threads]
    finally:
        gc.callbacks.remove(busy_collection)
    assert not errors, errors[:3]


def test_install_wraps_once_and_only_where_needed():
    first, second = threadsafe_ast.install(), threadsafe_ast.install()
    assert first == second == threadsafe_ast.AFFECTED == (sys.version_info < (3, 13))
    if threadsafe_ast.AFFECTED:
        assert ast.parse._rlmpipe_serialised and ast.parse.__wrapped__.__module__ == "ast"
        assert not hasattr(ast.parse.__wrapped__, "_rlmpipe_serialised"), "wrapped twice"
    assert ast.literal_eval("(1, 'two')") == (1, "two")


SCRIPT = textwrap.dedent("""
    import ast, sys, tempfile
    original = ast.parse
    import rlmpipe, rlmpipe.api, rlmpipe.runtime.runner
    assert ast.parse is original, "an import changed ast.parse"
    import dspy
    from rlmpipe.patterns.module import ModulePipeline
    from rlmpipe.runtime.runner import RunOptions, execute
    from tests.support.scripted_lm import ScriptedLM, chat_reply
    folder = tempfile.mkdtemp()
    open(folder + "/a.txt", "w").write("Some words to summarise.")
    lm = ScriptedLM(default=chat_reply(summary="short"))
    summary = execute(ModulePipeline(dspy.Predict("text -> summary")), [folder + "/a.txt"], lm,
                      options=RunOptions(workspace=folder + "/ws"))
    assert summary.status == "done", summary.reason
    print(getattr(ast.parse, "_rlmpipe_serialised", False))
""")


def test_importing_rlmpipe_leaves_ast_alone_a_run_serialises_it():
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(sys.version_info < (3, 13))
