"""Make importing rlmpipe (and litellm/tiktoken under it) never wait on the network.

litellm downloads its model price map at import and retries for seconds when offline;
tiktoken downloads its BPE files on first use. Both have bundled copies: we point them there
unless the user has already chosen otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def _litellm_bundled_tokenizers() -> Path | None:
    """litellm ships tiktoken's cl100k/o200k files; find them without importing litellm (slow)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None


def configure_offline_defaults() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        folder = _litellm_bundled_tokenizers()
        if folder is not None:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
