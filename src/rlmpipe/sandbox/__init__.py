"""rlmpipe.sandbox: DSPy's ``CodeInterpreter`` protocol on Pyodide under Deno, offline, locked down.

    from rlmpipe.sandbox import DenoSandbox, ensure_pyodide, sandbox_factory

    ensure_pyodide()                      # once: fetches npm:pyodide@PYODIDE_VERSION into Deno's cache
    rlm = dspy.RLM("context, query -> answer", interpreter_factory=sandbox_factory(timeout=60))

See ``interpreter.py`` for the guarantees and ``deno.py`` for the command line and the cache.
"""

from rlmpipe.sandbox.deno import (
    PYODIDE_VERSION,
    DenoNotFoundError,
    PyodideNotCachedError,
    default_deno_dir,
    deno_available,
    ensure_pyodide,
    find_deno,
    pyodide_cached,
    pyodide_dir,
)
from rlmpipe.sandbox.interpreter import (
    DenoSandbox,
    SandboxCrashedError,
    SandboxFactory,
    SandboxMemoryError,
    SandboxTimeoutError,
    sandbox_factory,
)

__all__ = [
    "PYODIDE_VERSION",
    "DenoNotFoundError",
    "DenoSandbox",
    "PyodideNotCachedError",
    "SandboxCrashedError",
    "SandboxFactory",
    "SandboxMemoryError",
    "SandboxTimeoutError",
    "default_deno_dir",
    "deno_available",
    "ensure_pyodide",
    "find_deno",
    "pyodide_cached",
    "pyodide_dir",
    "sandbox_factory",
]
