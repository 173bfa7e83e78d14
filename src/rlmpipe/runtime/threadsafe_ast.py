"""One ``ast.parse`` at a time, on the Pythons where two at once can fail.

CPython before 3.13 (fixed in some 3.11/3.12 patch releases by python/cpython#113035, gh-106905)
keeps the AST builder's recursion depth in interpreter-wide state. When a garbage collection inside
one thread's ``ast.parse`` runs Python code (a finalizer, a ``gc`` callback) the GIL can pass to a
thread that parses too, and one of them raises ``SystemError: AST constructor recursion depth
mismatch``. DSPy parses in every step thread: a string signature (``dspy.Predict("q -> a")``) and
typed outputs (``ast.literal_eval``). A run's step threads could therefore fail a step by chance
(seen in CI: one of 40 concurrent ``dspy.Predict`` calls).

The run engine calls :func:`install` before it starts step threads (threads and Ray workers): from
then on ``ast.parse``, which ``ast.literal_eval`` uses too, holds one re-entrant lock. Parsing holds
the GIL anyway, so this costs no parallelism. Importing rlmpipe still changes nothing.
"""

from __future__ import annotations

import ast
import functools
import sys
import threading

AFFECTED = sys.version_info < (3, 13)

_LOCK = threading.RLock()  # re-entrant: a finalizer run by a collection inside a parse may parse too


def install() -> bool:
    """Serialise ``ast.parse`` in this process (once; only where needed). True if it is serialised."""
    if not AFFECTED:
        return False
    with _LOCK:
        if not getattr(ast.parse, "_rlmpipe_serialised", False):
            ast.parse = _serialised(ast.parse)
    return True


def _serialised(parse):
    @functools.wraps(parse)
    def serialised_parse(*args, **kwargs):
        with _LOCK:
            return parse(*args, **kwargs)

    serialised_parse._rlmpipe_serialised = True
    return serialised_parse
