"""Map: one step per chunk, run in parallel, results back in chunk order.

Chunks are pulled from their (streaming) iterator only as fast as results are taken, with at most twice
the run's concurrency submitted at once: memory is bounded by the chunks in flight, not by the document.
"""

from __future__ import annotations

import contextlib
from collections import deque
from functools import partial
from typing import Any, Callable, Iterable, Iterator

from rlmpipe.chunking import Chunk


@contextlib.contextmanager
def consumed(chunks: Iterable[Chunk]) -> Iterator[Iterable[Chunk]]:
    """A pattern's chunk stream, closed as soon as the pattern ends, early (a failed step, a stopping run)
    or not: left to the garbage collector, a stream would be closed later in whatever thread that runs,
    with its tokenizer threads and its open document."""
    try:
        yield chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def map_chunks(run, doc_id: str, chunks: Iterable[Chunk], name: str, fn: Callable[[Chunk], Any], *,
               failures: str = "raise") -> Iterator[tuple[Chunk, str, Any]]:
    """Yield ``(chunk, step_key, result)`` in order.

    A failed step raises when its turn comes (``failures="raise"``; the steps after it keep
    running and are saved, so a resume does not redo them), or is yielded as its ``StepFailed``
    in place of the result (``failures="yield"``) so the caller can go on without that chunk.
    A stopping run always raises.
    """
    from rlmpipe.runtime.runner import StepFailed

    limit = 2 * run.options.concurrency
    window: deque = deque()

    def take():
        chunk_done, key_done, future = window.popleft()
        try:
            return chunk_done, key_done, future.result()
        except StepFailed as failure:
            if failures == "raise":
                raise
            return chunk_done, key_done, failure

    with consumed(chunks):
        for chunk in chunks:
            key = run.key(name, doc_id, chunk.chunk_id)
            window.append((chunk, key, run.submit(name, partial(fn, chunk), doc_id=doc_id,
                                                  chunk_id=chunk.chunk_id, key=key)))
            while len(window) >= limit:
                yield take()
    while window:
        yield take()
