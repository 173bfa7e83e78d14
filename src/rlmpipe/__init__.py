"""rlmpipe: language-model programs over documents larger than a context window, reliably.

    import dspy, rlmpipe
    result = rlmpipe.run(dspy.Predict("text -> summary"), "reports/", lm="openai/gpt-4o-mini")

The public names are below (``__all__``); everything else is internal. Layers, left to right
(each imports only those to its left, and ``lm``)::

    ingest -> chunking -> runtime -> monitor      apps/ use everything; api and cli are front doors

Importing rlmpipe has no side effects: it changes no environment variable, starts no thread and
imports DSPy only when a name that needs it is first used. To keep litellm and tiktoken off the
network, rlmpipe sets ``LITELLM_LOCAL_MODEL_COST_MAP`` and ``TIKTOKEN_CACHE_DIR`` (unless you set
them) only around its own import of litellm and loads of tiktoken encodings, and removes them
afterwards (``rlmpipe.offline``); the ``rlmpipe`` command sets them for its whole process. A run,
once started, serialises ``ast.parse`` on Python < 3.13 (``rlmpipe.runtime.threadsafe_ast``).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    # running programs
    "run": "rlmpipe.api",
    "resume": "rlmpipe.api",
    "summarize": "rlmpipe.api",
    "analyze_contracts": "rlmpipe.api",
    "ask": "rlmpipe.api",
    "RunResult": "rlmpipe.api",
    "DocumentResult": "rlmpipe.api",
    "RunOptions": "rlmpipe.runtime.runner",
    "ModulePipeline": "rlmpipe.patterns.module",
    # documents and chunks
    "open_document": "rlmpipe.ingest",
    "open_documents": "rlmpipe.ingest",
    "chunk": "rlmpipe.chunking",
    "chunk_text": "rlmpipe.chunking",
    "chunk_document": "rlmpipe.chunking",
    "ChunkingConfig": "rlmpipe.chunking",
    "Chunk": "rlmpipe.chunking",
    # errors
    "DocumentError": "rlmpipe.ingest",
    "BudgetExceeded": "rlmpipe.lm.errors",
    "FatalLMError": "rlmpipe.lm.errors",
    "StepFailed": "rlmpipe.runtime.runner",
    "ConfigurationChanged": "rlmpipe.runtime.runner",
    "WorkspaceBusy": "rlmpipe.runtime.store",
    "NotStorable": "rlmpipe.runtime.jsonable",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlmpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
