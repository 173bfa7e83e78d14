"""Sliding window: chunks in order, each seeing a bounded running context built from those before.

One LM call per chunk: the step returns both the chunk's result and the updated context. The
context is clipped to ``max_context_tokens`` (exactly, with the chunking tokenizer) whatever the
model returns, so a prompt never grows with the document. Each step's key includes the previous
step's key: the chain resumes exactly where it stopped.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from rlmpipe.chunking import Chunk, get_tokenizer
from rlmpipe.patterns.map import consumed


def clip_tokens(text: str, limit: int, tokenizer_name: str | None = None) -> str:
    """The longest prefix of ``text`` within ``limit`` tokens."""
    tokenizer = get_tokenizer(tokenizer_name)
    if tokenizer.count(text) <= limit:
        return text
    from rlmpipe.chunking.engine import hard_split

    start, end, _ = hard_split(text, limit, tokenizer)[0]
    return text[start:end]


def sliding_window(run, doc_id: str, chunks: Iterable[Chunk], name: str,
                   fn: Callable[[Chunk, str], dict], *, max_context_tokens: int = 512,
                   tokenizer: str | None = None) -> Iterator[tuple[Chunk, Any, str]]:
    """Yield ``(chunk, result, context_after)``; ``fn(chunk, context)`` returns
    ``{"result": ..., "context": "..."}``. The context a call sees is at most
    ``max_context_tokens`` tokens (of ``tokenizer``, the chunking's), whatever the model returned."""
    get_tokenizer(tokenizer)  # a bad tokenizer name fails here, before any step is paid for
    context, previous = "", ""
    with consumed(chunks):
        for chunk in chunks:
            key = run.key(name, doc_id, chunk.chunk_id, inputs=[previous])
            output = run.step(name, lambda: fn(chunk, context), doc_id=doc_id, chunk_id=chunk.chunk_id,
                              key=key)
            context = clip_tokens(str(output.get("context") or ""), max_context_tokens, tokenizer)
            previous = key
            yield chunk, output.get("result"), context
