"""``rlmpipe summarize``: a summary of each document of any size, in one of two patterns.

* ``map-reduce`` (default): every chunk summarized on its own, in parallel, then the summaries
  merged as a tree (each merge fits the model's context).
* ``window`` (the seed's sliding window): chunks in order, each summarized with the summary so far
  as context, which the call updates; the context is bounded (``window_tokens``), so no prompt
  grows with the document. One call per chunk and no merges, but no parallelism within a document.
"""

from __future__ import annotations

from dataclasses import asdict

import dspy

from rlmpipe.chunking import ChunkingConfig, chunk_document, get_tokenizer
from rlmpipe.ingest import Document
from rlmpipe.patterns import TreeReducer, map_chunks, sliding_window

PATTERNS = ("map-reduce", "window")


class SummarizeExcerpt(dspy.Signature):
    """Summarize this excerpt of a longer document faithfully and concisely. Keep names, amounts,
    dates, obligations and conditions; do not add anything the excerpt does not say."""

    excerpt: str = dspy.InputField()
    summary: str = dspy.OutputField(desc="a concise summary of the excerpt")


class MergeSummaries(dspy.Signature):
    """These are summaries of consecutive parts of one document, in order. Combine them into one
    concise summary of the whole, keeping the most important facts; do not add anything new."""

    summaries: list[str] = dspy.InputField()
    summary: str = dspy.OutputField(desc="one summary of all the parts")


class ContinueSummary(dspy.Signature):
    """You are reading a long document part by part. Given the summary of everything before this
    part, write the summary of everything up to and including it: keep what matters from before,
    add what this part says (names, amounts, dates, obligations, conditions), invent nothing."""

    summary_so_far: str = dspy.InputField(desc="the summary of the parts before this one (empty at the start)")
    excerpt: str = dspy.InputField(desc="the next part of the document")
    summary: str = dspy.OutputField(desc="the updated summary of the document so far")


class SummarizePipeline:
    name = "summarize"

    def __init__(self, chunking: ChunkingConfig | None = None, merge_input_tokens: int = 3000,
                 pattern: str = "map-reduce", window_tokens: int = 1024):
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r} (choose from: {', '.join(PATTERNS)})")
        self.chunking = chunking or ChunkingConfig(strategy="structure", chunk_tokens=1024)
        self.merge_input_tokens = merge_input_tokens
        self.pattern, self.window_tokens = pattern, window_tokens
        self.summarize = dspy.Predict(SummarizeExcerpt)
        self.merge = dspy.Predict(MergeSummaries)
        self.continue_summary = dspy.Predict(ContinueSummary)

    def config(self) -> dict:
        config = {"chunking": self.chunking.key(), "merge_input_tokens": self.merge_input_tokens}
        if self.pattern != "map-reduce":  # (the default's fingerprint stays what it was)
            config.update(pattern=self.pattern, window_tokens=self.window_tokens)
        return config

    def settings(self) -> dict:
        """What rebuilds this pipeline (``rlmpipe resume``)."""
        return {"chunking": asdict(self.chunking), "merge_input_tokens": self.merge_input_tokens,
                "pattern": self.pattern, "window_tokens": self.window_tokens}

    @classmethod
    def from_settings(cls, settings: dict) -> "SummarizePipeline":
        return cls(ChunkingConfig(**settings["chunking"]), settings["merge_input_tokens"],
                   settings.get("pattern", "map-reduce"), settings.get("window_tokens", 1024))

    def programs(self) -> dict:
        if self.pattern == "window":
            return {"continue": self.continue_summary}
        return {"summarize": self.summarize, "merge": self.merge}

    def process(self, run, document: Document) -> dict:
        chunks = chunk_document(document, self.chunking)
        if self.pattern == "window":
            summary, count = "", 0
            for _chunk, _result, summary in sliding_window(
                    run, document.doc_id, chunks, "continue",
                    lambda chunk, so_far: self._continue(chunk.text, so_far),
                    max_context_tokens=self.window_tokens, tokenizer=self.chunking.tokenizer):
                count += 1
            return {"summary": summary, "chunks": count, "merges": 0}
        tokenizer = get_tokenizer(self.chunking.tokenizer)
        reducer = TreeReducer(
            run, document.doc_id, "merge",
            merge=lambda parts: {"summary": self.merge(summaries=[p["summary"] for p in parts]).summary},
            size=lambda part: tokenizer.count(part["summary"]) + 8,
            max_input_tokens=self.merge_input_tokens,
        )
        count = 0
        for _chunk, key, result in map_chunks(
            run, document.doc_id, chunks, "summarize",
            lambda chunk: {"summary": self.summarize(excerpt=chunk.text).summary},
        ):
            reducer.add(key, result)
            count += 1
        final = reducer.finish()
        return {"summary": final["summary"] if final else "", "chunks": count, "merges": reducer.merges}

    def _continue(self, excerpt: str, so_far: str) -> dict:
        summary = self.continue_summary(summary_so_far=so_far, excerpt=excerpt).summary
        return {"result": None, "context": summary}
