"""``rlmpipe ask PATH... QUESTION``: a Recursive Language Model answers a question over documents of any
size. The documents never enter the prompt: they are one variable in the sandboxed REPL, with an
index of where each one starts, and the model reads them with code and sub-queries."""

from __future__ import annotations

from pathlib import Path

import dspy

from rlmpipe.ingest import Document, open_document
from rlmpipe.patterns.rlm import rlm_module, rlm_step
from rlmpipe.runtime.fingerprint import digest


class AnswerFromDocuments(dspy.Signature):
    """Answer the question from the documents. `documents` holds the full text of every document, one
    after the other; `index` lists each document's name and its [start, end) character range in
    `documents`. Read what you need with code; ask sub-questions about passages with llm_query.
    Say which documents the answer comes from. If the documents do not answer it, say so."""

    documents: str = dspy.InputField()
    index: str = dspy.InputField(desc="one line per document: name, start, end")
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    sources: list[str] = dspy.OutputField(desc="names of the documents the answer is based on")


class AskPipeline:
    name = "ask"

    def __init__(self, question: str, *, max_depth: int = 2, max_iters: int = 12, max_llm_calls: int = 40,
                 sandbox: dict | None = None):
        if not question.strip():
            raise ValueError("the question is empty")
        self.question = question
        self.max_depth, self.max_iters, self.max_llm_calls = max_depth, max_iters, max_llm_calls
        self.sandbox = sandbox or {}
        # the very module rlm_step runs (its prompts include the sandbox's instructions): fingerprinted
        self.program = rlm_module(AnswerFromDocuments, max_depth=max_depth, max_iters=max_iters,
                                  max_llm_calls=max_llm_calls, sandbox=self.sandbox)

    def config(self) -> dict:
        return {"question": self.question, "max_depth": self.max_depth, "max_iters": self.max_iters,
                "max_llm_calls": self.max_llm_calls, "sandbox": self.sandbox}

    def settings(self) -> dict:
        """What rebuilds this pipeline (``rlmpipe resume``): all of its configuration."""
        return self.config()

    @classmethod
    def from_settings(cls, settings: dict) -> "AskPipeline":
        return cls(settings["question"], max_depth=settings["max_depth"], max_iters=settings["max_iters"],
                   max_llm_calls=settings["max_llm_calls"], sandbox=settings.get("sandbox"))

    def programs(self) -> dict:
        return {"rlm": self.program}

    def process(self, run, document: Document) -> dict:
        """Per document: nothing but checking it can be read (the question is asked over all of them)."""
        characters = sum(len(block.text) for block in document.blocks())
        return {"characters": characters}

    def finish(self, run, results: list[dict]) -> dict:
        parts, index, position = [], [], 0
        for item in sorted(results, key=lambda r: r["path"]):
            text = open_document(item["path"]).text()
            name = Path(item["path"]).name
            header = f"===== {name} =====\n"
            parts.append(header + text + "\n")
            start = position + len(header)
            index.append(f"{name}\t{start}\t{start + len(text)}")
            position += len(header) + len(text) + 1
        documents = "".join(parts)
        return rlm_step(run, "ask", AnswerFromDocuments,
                        {"documents": documents, "index": "\n".join(index), "question": self.question},
                        key_inputs=[digest(self.question), *sorted(r["doc_id"] for r in results)],
                        max_depth=self.max_depth, max_iters=self.max_iters, max_llm_calls=self.max_llm_calls,
                        sandbox=self.sandbox)
