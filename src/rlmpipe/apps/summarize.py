"""``rlmpipe summarize``: a summary of each document of any size (map over chunks + tree reduce)."""

from __future__ import annotations

import dspy

from rlmpipe.chunking import ChunkingConfig, chunk_document, get_tokenizer
from rlmpipe.ingest import Document
from rlmpipe.patterns import TreeReducer, map_chunks


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


class SummarizePipeline:
    name = "summarize"

    def __init__(self, chunking: ChunkingConfig | None = None, merge_input_tokens: int = 3000):
        self.chunking = chunking or ChunkingConfig(strategy="structure", max_tokens=1024)
        self.merge_input_tokens = merge_input_tokens
        self.summarize = dspy.Predict(SummarizeExcerpt)
        self.merge = dspy.Predict(MergeSummaries)

    def config(self) -> dict:
        return {"chunking": self.chunking.key(), "merge_input_tokens": self.merge_input_tokens}

    def programs(self) -> dict:
        return {"summarize": self.summarize, "merge": self.merge}

    def process(self, run, document: Document) -> dict:
        tokenizer = get_tokenizer(self.chunking.tokenizer)
        reducer = TreeReducer(
            run, document.doc_id, "merge",
            merge=lambda parts: {"summary": self.merge(summaries=[p["summary"] for p in parts]).summary},
            size=lambda part: tokenizer.count(part["summary"]) + 8,
            max_input_tokens=self.merge_input_tokens,
        )
        chunks = 0
        for _chunk, key, result in map_chunks(
            run, document.doc_id, chunk_document(document, self.chunking), "summarize",
            lambda chunk: {"summary": self.summarize(excerpt=chunk.text).summary},
        ):
            reducer.add(key, result)
            chunks += 1
        final = reducer.finish()
        return {"summary": final["summary"] if final else "", "chunks": chunks, "merges": reducer.merges}
