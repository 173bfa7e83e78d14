"""Keep litellm and tiktoken from waiting on the network, without touching the host's environment.

litellm downloads its model price map when it is imported (and retries for seconds offline);
tiktoken downloads its BPE files the first time an encoding is loaded. Both have bundled copies,
chosen by environment variables. Importing rlmpipe changes nothing: :func:`offline_imports` sets
the variables (only those the user has not set) around rlmpipe's own imports of litellm and
loads of tiktoken encodings, and takes them away afterwards. The ``rlmpipe`` command owns its
process and sets them for good (:func:`configure_offline_defaults`); a program may do the same.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

_LOCK = threading.RLock()


def _litellm_bundled_tokenizers() -> Path | None:
    """litellm ships tiktoken's cl100k/o200k files; find them without importing litellm (slow)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None


def _defaults() -> dict[str, str]:
    values = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    folder = _litellm_bundled_tokenizers()
    if folder is not None:
        values["TIKTOKEN_CACHE_DIR"] = str(folder)
    return values


def configure_offline_defaults() -> None:
    """Set the variables for the whole process (unless already set): for programs that own it."""
    for key, value in _defaults().items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def offline_imports() -> Iterator[None]:
    """Within the block, litellm's import and tiktoken's loads use their bundled files; the
    variables rlmpipe set are removed afterwards (not those the user set, and not
    ``TIKTOKEN_CACHE_DIR`` once litellm has set it itself, as its import always does)."""
    with _LOCK:
        added = {key: value for key, value in _defaults().items() if key not in os.environ}
        os.environ.update(added)
        try:
            yield
        finally:
            for key, value in added.items():
                if key == "TIKTOKEN_CACHE_DIR" and "litellm.litellm_core_utils.default_encoding" in sys.modules:
                    continue
                if os.environ.get(key) == value:
                    del os.environ[key]


def import_litellm():
    """litellm, imported without a network wait (and quiet: it prints provider hints to stdout)."""
    if "litellm" not in sys.modules:
        with offline_imports():
            import litellm  # noqa: F401
    import litellm

    litellm.suppress_debug_info = True
    return litellm
