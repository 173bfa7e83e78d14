"""Token counting with the target model's own tokenizer.

Names accepted by :func:`get_tokenizer`:

* ``cl100k_base`` (default) and ``o200k_base``: OpenAI's BPE encodings, run by ``bpe-openai``
  (Rust, identical token ids to tiktoken, about 1.5x faster here) or by tiktoken if it is missing.
  Both read their bundled files; nothing is downloaded.
* a model string such as ``openai/gpt-4o-mini`` or ``gpt-4``: the encoding tiktoken knows for it.
* ``local`` (the embedded SmolLM2 model) or ``gguf:/path/model.gguf``: the GGUF model's own
  vocabulary through llama.cpp (extra ``rlmpipe[local]``).

Text that looks like a special token (``<|endoftext|>``) is counted as ordinary text.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Protocol, Sequence

import numpy as np

from rlmpipe.chunking.cuts import line_start

DEFAULT_TOKENIZER = "cl100k_base"
OPENAI_ENCODINGS = ("cl100k_base", "o200k_base")


class Tokenizer(Protocol):
    """What chunking needs from a tokenizer."""

    name: str
    #: True when the token count of a text cut at word or line boundaries (see
    #: :mod:`rlmpipe.chunking.cuts`) is the sum of the counts of its parts. It holds for the
    #: OpenAI encodings, whose pre-tokenizer never joins across those boundaries; for others
    #: every chunk is re-counted.
    additive: bool

    def encode(self, text: str) -> Sequence[int]: ...

    def count(self, text: str) -> int: ...

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 byte length of every token id (index = id)."""
        ...


class OpenAIEncoding:
    additive = True
    #: bpe-openai refuses an input of 1,000,000 characters or more, or of more than 200,000 tokens;
    #: longer texts are encoded in pieces split where a line starts (a safe cut, so ids add up).
    PIECE_CHARS = 1 << 17

    def __init__(self, name: str):
        if name not in OPENAI_ENCODINGS:
            raise ValueError(f"unknown encoding {name!r} (known: {', '.join(OPENAI_ENCODINGS)})")
        import tiktoken

        from rlmpipe.offline import offline_imports

        self.name = name
        with offline_imports():  # tiktoken's BPE file: the copy bundled with litellm, not a download
            self._tiktoken = tiktoken.get_encoding(name)
        try:
            import bpe_openai

            self._encoding = bpe_openai.get_encoding(name)
        except ImportError:
            self._encoding = self._tiktoken
        #: tiktoken releases the GIL while encoding: the chunker tokenizes the next section with it
        #: in another thread (same ids as bpe-openai, which is faster on one thread but holds the GIL)
        self.encode_in_thread = self._tiktoken.encode_ordinary
        self._lengths: np.ndarray | None = None

    def encode(self, text: str) -> list[int]:
        if len(text) <= self.PIECE_CHARS:
            return self._encode_piece(text)
        ids: list[int] = []
        start = 0
        while start < len(text):
            end = _piece_end(text, start, self.PIECE_CHARS)
            ids.extend(self._encode_piece(text[start:end]))
            start = end
        return ids

    def _encode_piece(self, text: str) -> list[int]:
        try:
            return self._encoding.encode_ordinary(text)
        except Exception:  # bpe-openai's limits (1M characters, 200k tokens: e.g. CJK, one token per character)
            return self._tiktoken.encode_ordinary(text)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def token_byte_lengths(self) -> np.ndarray:
        if self._lengths is None:
            lengths = np.zeros(self._tiktoken.max_token_value + 1, dtype=np.int64)
            for value, token in self._tiktoken._mergeable_ranks.items():  # bytes -> id
                lengths[token] = len(value)
            self._lengths = lengths
        return self._lengths


def _piece_end(text: str, start: int, size: int) -> int:
    """Where to end a piece of at most ``size`` characters starting at ``start``: just after a line
    break followed by a non-space (a cut that never joins one token piece to the next), else the
    whole rest when no such place exists (the caller then encodes it in one go)."""
    limit = start + size
    if limit >= len(text):
        return len(text)
    if line := line_start(text, start + size // 4, limit):
        return line
    word = text.rfind(" ", start + size // 4, limit)
    while word > start and not (text[word - 1].strip() and text[word + 1: word + 2].strip()):
        word = text.rfind(" ", start + size // 4, word)
    return word if word > start else len(text)


class GGUFTokenizer:
    """A GGUF model's vocabulary through llama.cpp (vocabulary only: the weights are not loaded)."""

    additive = False

    def __init__(self, model_path: str):
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ValueError(
                "the GGUF tokenizer needs llama-cpp-python: pip install 'rlmpipe[local]'"
            ) from exc
        self.name = f"gguf:{model_path}"
        with _quiet_stderr():  # llama.cpp warns about the context size of a vocabulary-only load
            self._model = Llama(model_path=model_path, vocab_only=True, verbose=False)
        self._lengths: np.ndarray | None = None

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return self._model.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def token_byte_lengths(self) -> np.ndarray:
        if self._lengths is None:
            size = self._model.n_vocab()
            self._lengths = np.array(
                [len(self._model.detokenize([token])) for token in range(size)], dtype=np.int64
            )
        return self._lengths


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what C libraries write to file descriptor 2 for the duration of a block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@functools.lru_cache(maxsize=8)
def get_tokenizer(name: str | None = None) -> Tokenizer:
    """The tokenizer for an encoding name, a model string, ``local`` or ``gguf:PATH``."""
    name = name or DEFAULT_TOKENIZER
    if name in OPENAI_ENCODINGS:
        return OpenAIEncoding(name)
    if name.startswith("gguf:"):
        return GGUFTokenizer(name[len("gguf:") :])
    if name == "local":
        from rlmpipe.embedded import default_model_path

        return GGUFTokenizer(str(default_model_path()))
    import tiktoken

    model = name.split("/", 1)[1] if "/" in name else name
    try:
        return OpenAIEncoding(tiktoken.encoding_name_for_model(model))
    except KeyError:
        raise ValueError(
            f"unknown tokenizer {name!r}: use cl100k_base, o200k_base, an OpenAI model name, "
            "'local' or gguf:PATH"
        ) from None
