"""``rlmpipe ask PATH... QUESTION``: a Recursive Language Model answers a question over documents of any
size. The documents never enter the prompt: they are one variable in the sandboxed REPL, with an
index of where each one starts, and the model reads them with code and sub-queries.

Two shapes: one recursion over all the documents together (the default: a corpus-level step once
every document has been read), or one per document (``each``: the shape of a document analyzer over
a corpus; documents run in parallel, each its own durable step with its own answer)."""

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

    def __init__(self, question: str, *, each: bool = False, max_depth: int = 2, max_iters: int = 12,
                 max_llm_calls: int = 40, sandbox: dict | None = None):
        if not question.strip():
            raise ValueError("the question is empty")
        self.question, self.each = question, each
        self.max_depth, self.max_iters, self.max_llm_calls = max_depth, max_iters, max_llm_calls
        self.sandbox = sandbox or {}
        # the very module rlm_step runs (its prompts include the sandbox's instructions): fingerprinted
        self.program = rlm_module(AnswerFromDocuments, max_depth=max_depth, max_iters=max_iters,
                                  max_llm_calls=max_llm_calls, sandbox=self.sandbox)

    def config(self) -> dict:
        return {"question": self.question, "max_depth": self.max_depth, "max_iters": self.max_iters,
                "max_llm_calls": self.max_llm_calls, "sandbox": self.sandbox,
                **({"each": True} if self.each else {})}  # (a run of the corpus shape keeps its old id)

    def settings(self) -> dict:
        """What rebuilds this pipeline (``rlmpipe resume``): all of its configuration."""
        return self.config()

    @classmethod
    def from_settings(cls, settings: dict) -> "AskPipeline":
        return cls(settings["question"], each=settings.get("each", False), max_depth=settings["max_depth"],
                   max_iters=settings["max_iters"], max_llm_calls=settings["max_llm_calls"],
                   sandbox=settings.get("sandbox"))

    def programs(self) -> dict:
        return {"rlm": self.program}

    def process(self, run, document: Document) -> dict:
        """Per document: its own recursion (``each``), else only checking it can be read (the question is
        then asked over all of them, once they are)."""
        if not self.each:
            characters = sum(len(block.text) for block in document.blocks())
            return {"characters": characters}
        part, line = framed(Path(document.path).name, document.text(), 0)
        return self._ask(run, part, line, [digest(self.question)], doc_id=document.doc_id)

    def finish(self, run, results: list[dict]) -> dict | None:
        """The corpus-level recursion over every document read (None when each had its own)."""
        if self.each:
            return None
        parts, index, position = [], [], 0
        for item in sorted(results, key=lambda r: r["path"]):
            part, line = framed(Path(item["path"]).name, open_document(item["path"]).text(), position)
            parts.append(part)
            index.append(line)
            position += len(part)
        return self._ask(run, "".join(parts), "\n".join(index),
                         [digest(self.question), *sorted(r["doc_id"] for r in results)])

    def _ask(self, run, documents: str, index: str, key_inputs: list[str], doc_id: str | None = None) -> dict:
        return rlm_step(run, "ask", AnswerFromDocuments,
                        {"documents": documents, "index": index, "question": self.question},
                        key_inputs=key_inputs, doc_id=doc_id, max_depth=self.max_depth, max_iters=self.max_iters,
                        max_llm_calls=self.max_llm_calls, sandbox=self.sandbox)


def framed(name: str, text: str, position: int) -> tuple[str, str]:
    """A document as it sits in the ``documents`` variable (a header line, its text, a newline) starting
    at ``position``, and its line of the ``index``: name, start, end of its text."""
    header = f"===== {name} =====\n"
    start = position + len(header)
    return header + text + "\n", f"{name}\t{start}\t{start + len(text)}"
