"""Any ``dspy.Module`` as a pipeline: the module a DSPy user already has, run over chunks of
documents of any size by the same engine (checkpoints, retries, budgets, monitoring).

Three patterns:

* ``map``: the module once per chunk (in parallel);
* ``window``: the module once per chunk, in order, each call seeing a running context carried
  from the call before (clipped to ``window_tokens``): the module takes a context input and
  returns the next context as an output field;
* ``map_reduce``: ``map``, then the per-chunk outputs merged by a second module, as a tree (every
  merge call fits in ``reduce_tokens``; merged outputs are merged again until one is left).

The chunk text goes to the module's input field (detected when the module has one input, or
one of the usual names; else name it with ``input_field=``). Outputs are stored as JSON: a
``dspy.Prediction`` becomes the dict of its fields.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

from rlmpipe.chunking import ChunkingConfig, chunk_document, get_tokenizer
from rlmpipe.ingest import Document
from rlmpipe.patterns.map import map_chunks
from rlmpipe.patterns.reduce import TreeReducer
from rlmpipe.patterns.window import sliding_window
from rlmpipe.runtime.jsonable import to_json_value

PATTERNS = ("map", "window", "map_reduce")
TEXT_NAMES = ("text", "chunk", "excerpt", "passage", "document", "content", "input", "document_text",
              "contract_text", "source")
CONTEXT_NAMES = ("context", "running_context", "previous_context", "context_so_far", "summary_so_far",
                 "memory", "notes_so_far", "state")
CARRY_NAMES = ("new_context", "next_context", "updated_context", "context", "running_context", "summary")


def _forward(module):
    """``module.forward``, bound, without reading the attribute from the instance: DSPy warns
    ("Calling module.forward(...) on ChainOfThought directly is discouraged") whenever it is read so."""
    function = getattr(type(module), "forward", None)
    return function.__get__(module, type(module)) if function is not None else None


def _signature(module):
    """The signature a module answers: its own (a predictor), or that of its only predictor when
    its forward just passes keyword arguments on (``ChainOfThought`` and the like)."""
    signature = getattr(module, "signature", None)
    if signature is not None and hasattr(signature, "input_fields"):
        return signature
    try:
        parameters = list(inspect.signature(_forward(module)).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    if all(p.kind == p.VAR_KEYWORD for p in parameters) and hasattr(module, "named_predictors"):
        predictors = [predictor for _, predictor in module.named_predictors()]
        if len(predictors) == 1:
            return predictors[0].signature
    return None


def input_fields(module) -> list[str]:
    """The names a module's forward takes: its signature's input fields for a predictor, else the
    parameters of ``forward`` (without ``self``, ``*args`` and ``**kwargs``)."""
    signature = _signature(module)
    if signature is not None:
        return list(signature.input_fields)
    try:
        parameters = inspect.signature(_forward(module)).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def output_fields(module) -> list[str] | None:
    signature = _signature(module)
    if signature is not None:
        return [name for name in signature.output_fields if name != "reasoning"]
    return None  # a custom module: known only from what it returns


def _pick(names: list[str], preferred: tuple[str, ...], what: str, argument: str, module) -> str:
    if len(names) == 1:
        return names[0]
    for name in preferred:
        if name in names:
            return name
    raise ValueError(f"cannot tell which input of {type(module).__name__} takes the {what} (it has "
                     f"{', '.join(names) or 'no named inputs'}): name it with {argument}=")


def code_digest(function) -> str:
    """A digest of a function's compiled code (nested functions included), stable across processes:
    a module whose ``forward`` changed must not reuse stored results. Works where the source is
    not available (notebooks)."""
    digest = hashlib.sha256()

    def add(code) -> None:
        digest.update(code.co_code)
        digest.update(repr(code.co_names).encode())
        for constant in code.co_consts:
            if inspect.iscode(constant):
                add(constant)
            else:
                digest.update(repr(constant).encode())

    code = getattr(function, "__code__", None)
    if code is None:
        return ""
    add(code)
    return digest.hexdigest()[:16]


class ModulePipeline:
    """A ``dspy.Module`` run per chunk of every document, in one of :data:`PATTERNS`."""

    def __init__(self, module, *, pattern: str = "map", chunking: ChunkingConfig | None = None,
                 input_field: str | None = None, context_field: str | None = None, carry: str | None = None,
                 window_tokens: int = 512, reduce=None, reduce_field: str | None = None, reduce_tokens: int = 3000):
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r} (choose from: {', '.join(PATTERNS)})")
        if pattern == "map_reduce" and reduce is None:
            raise ValueError("the map_reduce pattern needs reduce=: a dspy.Module that merges a list of outputs")
        self.module, self.pattern, self.reduce = module, pattern, reduce
        self.chunking = chunking or ChunkingConfig(strategy="structure", chunk_tokens=1024)
        self.window_tokens, self.reduce_tokens = window_tokens, reduce_tokens
        names = input_fields(module)
        if pattern == "window":
            self.context_field = context_field or _pick([n for n in names if n in CONTEXT_NAMES] or names,
                                                        CONTEXT_NAMES, "running context", "context_field", module)
            rest = [n for n in names if n != self.context_field]
            self.input_field = input_field or _pick(rest, TEXT_NAMES, "chunk text", "input_field", module)
            outputs = output_fields(module)
            self.carry = carry or (_pick([n for n in outputs if n in CARRY_NAMES] or outputs, CARRY_NAMES,
                                         "next context (an output)", "carry", module) if outputs else "context")
        else:
            self.input_field = input_field or _pick(names, TEXT_NAMES, "chunk text", "input_field", module)
            self.context_field = self.carry = None
        self.reduce_field = None
        if reduce is not None:
            self.reduce_field = reduce_field or _pick(input_fields(reduce), ("parts", "summaries", "outputs", "items",
                                                                             "results", "notes"),
                                                      "list of outputs to merge", "reduce_field", reduce)
        self.name = f"module:{type(module).__qualname__}"

    def config(self) -> dict:
        return {"pattern": self.pattern, "chunking": self.chunking.key(), "input_field": self.input_field,
                "context_field": self.context_field, "carry": self.carry, "window_tokens": self.window_tokens,
                "reduce_field": self.reduce_field, "reduce_tokens": self.reduce_tokens,
                "code": {"module": f"{type(self.module).__module__}.{type(self.module).__qualname__}",
                         "forward": code_digest(getattr(type(self.module), "forward", None)),
                         "reduce": code_digest(getattr(type(self.reduce), "forward", None)) if self.reduce else None}}

    def programs(self) -> dict:
        return {"module": self.module, **({"reduce": self.reduce} if self.reduce is not None else {})}

    def process(self, run, document: Document) -> dict:
        chunks = chunk_document(document, self.chunking)
        if self.pattern == "window":
            outputs, context = [], ""
            for _chunk, result, context in sliding_window(
                    run, document.doc_id, chunks, "window", self._window_step, max_context_tokens=self.window_tokens,
                    tokenizer=self.chunking.tokenizer):
                outputs.append(result)
            return {"chunks": outputs, "output": {"context": context}}
        reducer = None
        if self.pattern == "map_reduce":
            tokenizer = get_tokenizer(self.chunking.tokenizer)
            reducer = TreeReducer(run, document.doc_id, "reduce", merge=self._merge,
                                  size=lambda part: tokenizer.count(_as_text(part)) + 8,
                                  max_input_tokens=self.reduce_tokens)
        outputs = []
        for _chunk, key, result in map_chunks(run, document.doc_id, chunks, "map", self._map_step):
            outputs.append(result)
            if reducer is not None:
                reducer.add(key, result)
        return {"chunks": outputs, "output": reducer.finish() if reducer is not None else None}

    # --- the steps ------------------------------------------------------------------------------
    def _map_step(self, chunk) -> Any:
        return self.module(**{self.input_field: chunk.text})

    def _window_step(self, chunk, context: str) -> dict:
        output = to_json_value(self.module(**{self.input_field: chunk.text, self.context_field: context}),
                               "the module's output")
        if not isinstance(output, dict) or self.carry not in output:
            shown = ", ".join(output) if isinstance(output, dict) else type(output).__name__
            raise ValueError(f"the window pattern carries the output field {self.carry!r} to the next chunk, "
                             f"but the module returned {shown}: return it, or name another with carry=")
        return {"result": output, "context": str(output[self.carry] or "")}

    def _merge(self, parts: list) -> Any:
        return self.reduce(**{self.reduce_field: [_as_text(part) for part in parts]})


def _as_text(part: Any) -> str:
    """One output as the text a merge reads: a single field's value, else the JSON of all fields."""
    if isinstance(part, dict) and len(part) == 1:
        return str(next(iter(part.values())))
    return part if isinstance(part, str) else json.dumps(part, ensure_ascii=False, sort_keys=True)
