"""The patterns close the chunk stream they consume as soon as they end, early or not, in the thread that
ran them: left to the garbage collector, a stream was closed later in whatever thread that ran, with its
tokenizer threads and its document (a join in such a finalizer deadlocked a Ray worker)."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from rlmpipe.chunking import ChunkingConfig, chunk_text
from rlmpipe.patterns import map_chunks, sliding_window
from rlmpipe.runtime.runner import StepFailed

CHUNKS = chunk_text(" ".join(f"word{index}" for index in range(400)), ChunkingConfig(chunk_tokens=32, overlap=0), doc_id="d")


class FakeRun:
    """The few members of a Run the patterns use; the step named ``fail`` fails."""

    options = SimpleNamespace(concurrency=2)

    def __init__(self, fail: int):
        self.fail, self.count = fail, 0

    def key(self, name, doc_id=None, chunk_id=None, inputs=()):
        return f"{name}/{chunk_id}/{len(list(inputs))}"

    def step(self, name, fn, **_):
        self.count += 1
        if self.count == self.fail:
            raise StepFailed(name, "d", ValueError("the model said no"))
        return fn()

    def submit(self, name, fn, **kwargs):
        future: Future = Future()
        try:
            future.set_result(self.step(name, fn, **kwargs))
        except StepFailed as failure:
            future.set_exception(failure)
        return future


def stream(state: dict):
    """A chunk stream that tells whether, and in which state, it was closed."""
    try:
        for chunk in CHUNKS:
            state["pulled"] += 1
            yield chunk
        state["finished"] = True
    finally:
        state["closed"] = True


@pytest.mark.parametrize("pattern", ["map", "window"])
def test_a_failed_step_closes_the_chunk_stream_at_once(pattern):
    assert len(CHUNKS) > 8
    state = {"pulled": 0, "closed": False, "finished": False}
    run = FakeRun(fail=3)
    if pattern == "map":
        steps = map_chunks(run, "d", stream(state), "map", lambda chunk: chunk.index)
    else:
        steps = sliding_window(run, "d", stream(state), "window", lambda chunk, seen: {"result": 1, "context": ""})
    with pytest.raises(StepFailed):
        for _ in steps:
            pass
    assert state["closed"] and not state["finished"] and state["pulled"] < len(CHUNKS)


def test_a_caller_that_stops_early_closes_the_stream_with_the_pattern():
    state = {"pulled": 0, "closed": False, "finished": False}
    steps = map_chunks(FakeRun(fail=0), "d", stream(state), "map", lambda chunk: chunk.index)
    assert next(steps)[2] == 0
    steps.close()
    assert state["closed"] and not state["finished"]


def test_a_list_of_chunks_needs_no_closing():
    results = [result for _, _, result in map_chunks(FakeRun(fail=0), "d", CHUNKS, "map", lambda c: c.index)]
    assert results == list(range(len(CHUNKS)))
