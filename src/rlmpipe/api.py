"""The public Python API: a DSPy program, or one of rlmpipe's pipelines, over documents of any
size, by the engine the ``rlmpipe`` command uses (checkpoints, retries, budgets, monitoring).

    import dspy, rlmpipe
    result = rlmpipe.run(dspy.Predict("text -> summary"), "reports/", lm="openai/gpt-4o-mini")
    for document in result:
        print(document.path, document.status, [c["summary"] for c in document.chunks])

Running the same call again makes no LM call: every finished step is read back from the
workspace. The built-in commands (``summarize``, ``analyze_contracts``, ``ask``) record how
they were made, so :func:`resume` can continue one from its run id alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rlmpipe.chunking import ChunkingConfig

EXECUTORS = ("threads", "ray")
#: what the contract analyzer's LM reads: the passages the clause finder flags, or every chunk
READS = {"candidates": "cascade", "all": "full"}


# --- results ---------------------------------------------------------------------------------------
@dataclass
class DocumentResult:
    """One input document's outcome."""

    path: str
    doc_id: str
    status: str  # done | partial | failed | stopped
    error: str | None
    result: Any  # what the pipeline returned (JSON): for a module, {"chunks": [...], "output": ...}
    usage: dict = field(default_factory=dict)  # this document's LM calls: calls, tokens, cost, ...

    @property
    def chunks(self) -> list:
        """Per-chunk outputs, as JSON-able dicts, in document order (module pipelines)."""
        return list(self.result.get("chunks") or []) if isinstance(self.result, dict) else []

    @property
    def output(self) -> Any:
        """The reduced output (``map_reduce``), the final context (``window``), or the pipeline's result."""
        if isinstance(self.result, dict) and "chunks" in self.result and "output" in self.result:
            return self.result["output"]
        return self.result


@dataclass
class RunResult:
    """A run's outcome: iterable over its documents (``for document in result``)."""

    run_id: str
    status: str  # done | stopped | failed
    reason: str | None
    documents: list[DocumentResult]
    usage: dict
    notes: list[str]
    workspace: Path
    final: Any = None  # a corpus-level result (``ask``)
    outputs: dict[str, Path] = field(default_factory=dict)  # files an app wrote (``analyze_contracts``)
    command: str = "run"  # what made it: run, summarize, contracts, ask
    settings: dict = field(default_factory=dict)  # a built-in command's settings (``ask``: ``each``, ...)

    def __iter__(self) -> Iterator[DocumentResult]:
        return iter(self.documents)

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> DocumentResult:
        return self.documents[index]

    @property
    def failed(self) -> list[DocumentResult]:
        return [d for d in self.documents if d.status in ("failed", "partial")]


# --- the model ---------------------------------------------------------------------------------------
@dataclass
class _Model:
    lm: Any
    adapter: Any
    record: dict | None  # how to make it again (None: an LM object the caller built)

    @property
    def is_none(self) -> bool:
        """No language model (``lm="none"``): only a pipeline that works without one can run."""
        return bool(self.record) and self.record.get("lm") == "none"


def _model(lm, *, api_base=None, model_path=None, max_output_tokens=None, adapter=None, default="local") -> _Model:
    """``lm`` as a ready DSPy LM: a model string (checked before the run; ``"none"`` for no model),
    a ``dspy.BaseLM``, or None (DSPy's configured LM, else rlmpipe's default: RLMPIPE_LM,
    rlmpipe.toml, then ``default``: the local model, or none for the contract analyzer)."""
    import dspy

    from rlmpipe.lm.models import ModelChoice, choose_model, prepare_model

    if isinstance(lm, dspy.BaseLM):
        return _Model(lm, adapter if adapter is not None else dspy.settings.adapter, None)
    if lm is None and dspy.settings.lm is not None and not (api_base or model_path):
        return _Model(dspy.settings.lm, adapter if adapter is not None else dspy.settings.adapter, None)
    choice = lm if isinstance(lm, ModelChoice) else choose_model(lm, api_base, model_path, default=default)
    prepared = prepare_model(choice, max_output_tokens=max_output_tokens)
    return _Model(prepared.lm, adapter if adapter is not None else prepared.adapter,
                  {**choice.to_dict(), "max_output_tokens": max_output_tokens})


def _options(options=None, *, executor: str = "threads", prices: dict | None = None, **fields):
    """The run's :class:`~rlmpipe.runtime.runner.RunOptions`: ``options`` if given, else made of the rest."""
    from rlmpipe.runtime.runner import RunOptions

    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r} (choose from: {', '.join(EXECUTORS)})")
    if options is not None:
        return options
    return RunOptions(executor=executor, prices=dict(prices or {}), **fields)


def _paths(inputs) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return [str(Path(p)) for p in inputs]


def _result(summary, store, outputs=None, command="run", inputs: "SessionInputs | None" = None,
            settings: dict | None = None) -> RunResult:
    """The engine's summary and the store's documents (those of this session's inputs), as the API's result."""
    results = {(item["doc_id"], item["path"]): item for item in summary.results}
    usage = store.usage_by_document(summary.run_id)
    documents = []
    for row in store.documents(summary.run_id):
        if inputs is not None and (row["doc_id"], row["path"]) not in inputs.documents:
            continue  # a document of an earlier session that is no longer an input (edited, deleted)
        item = results.get((row["doc_id"], row["path"]))
        documents.append(DocumentResult(path=row["path"], doc_id=row["doc_id"], status=row["status"],
                                        error=row["error"], result=item["result"] if item else row["result"],
                                        usage=usage.get(row["doc_id"], {})))
    documents.sort(key=lambda d: d.path)
    return RunResult(summary.run_id, summary.status, summary.reason, documents, summary.usage, summary.notes,
                     store.workspace, summary.final, outputs or {}, command, settings or {})


class SessionInputs:
    """What this session's inputs were, told by the run's events: the documents it queued (and the
    files that failed before they had an id), and the inputs it never reached (the run stopped
    first). Outputs are rebuilt from these on every session, so a document edited or deleted since
    an earlier session of the run does not haunt them."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.documents: set[tuple[str, str]] = set()  # (doc_id, path); doc_id "" for a file that never opened

    def __call__(self, event) -> None:
        if event["type"] == "document_queued":
            self.documents.add((event["doc_id"], event["path"]))
        elif event["type"] == "document_failed" and not event.get("doc_id"):
            self.documents.add(("", event["path"]))

    def unread(self) -> list[str]:
        """The input files this session did not reach (only a run that stopped or failed leaves any)."""
        from rlmpipe.ingest import expand_paths

        reached = {path for _, path in self.documents}
        return [str(path) for path in expand_paths(self.paths) if isinstance(path, Path) and str(path) not in reached]


def _execute(pipeline, paths, model: _Model, options, *, command: dict, events=None, on_start=None,
             finish: Callable | None = None) -> RunResult:
    """One run of ``pipeline``; ``command`` (how to make it again) is kept with the run for resume.
    ``finish(summary, store, inputs)`` writes the outputs (``inputs``: the :class:`SessionInputs`)."""
    from rlmpipe.ingest import check_inputs
    from rlmpipe.lm.errors import FatalLMError
    from rlmpipe.runtime.events import EventBus
    from rlmpipe.runtime.runner import execute
    from rlmpipe.runtime.store import Store

    check_inputs(paths)  # an empty folder is a mistake to say before the run, not a run of nothing
    if model.is_none and not getattr(pipeline, "works_without_lm", False):
        raise FatalLMError(f"{command['name']} needs a language model (got 'none')",
                           "give one with --lm (e.g. --lm openai/gpt-4o-mini), RLMPIPE_LM or rlmpipe.toml; "
                           "'local' is the embedded model", kind="not_configured")
    options.adapter = options.adapter if options.adapter is not None else model.adapter
    run_config = {"command": {**command, "paths": [str(Path(p).resolve()) for p in paths], "model": model.record}}
    events = events if events is not None else EventBus()
    inputs = SessionInputs(paths)
    stop_listening = events.subscribe(inputs)
    try:
        with Store(options.workspace) as store:
            summary = execute(pipeline, paths, model.lm, options=options, store=store, events=events,
                              run_config=run_config, on_start=on_start)
            outputs = finish(summary, store, inputs) if finish is not None else None
            return _result(summary, store, outputs=outputs, command=command["name"], inputs=inputs,
                           settings=command.get("settings"))
    finally:
        stop_listening()


# --- the front door --------------------------------------------------------------------------------
def run(program, inputs, *, lm=None, input_field: str | None = None, pattern: str = "map", reduce=None,
        reduce_field: str | None = None, context_field: str | None = None, carry: str | None = None,
        window_tokens: int = 512, reduce_tokens: int = 3000, chunking: ChunkingConfig | None = None,
        strategy: str = "structure", chunk_tokens: int = 1024, overlap: int = 0, concurrency: int = 8,
        requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
        max_run_tokens: int | None = None, max_cost: float | None = None, max_seconds: float | None = None,
        prices: dict | None = None, max_output_tokens: int | None = None, api_base: str | None = None,
        adapter=None, workspace: str | os.PathLike | None = None, executor: str = "threads",
        ray_address: str | None = None, fresh: bool = False, force_resume: bool = False, options=None,
        events=None, on_start=None) -> RunResult:
    """Run ``program`` over every document under ``inputs`` (files or folders) and return a
    :class:`RunResult` with one :class:`DocumentResult` per document.

    ``program``: any ``dspy.Module`` whose forward takes a chunk's text (the input field is
    detected, or named by ``input_field``), or a pipeline (an object with ``name``, ``config()``,
    ``programs()`` and ``process(run, document)``). ``pattern``: ``map`` (the module once per
    chunk), ``window`` (per chunk in order, with a running context of at most ``window_tokens``
    carried from each call's ``carry`` output to the next call's ``context_field`` input), or
    ``map_reduce`` (``map``, then ``reduce``, a second module taking a list, merging as a tree).

    ``lm``: a model string, a ``dspy.LM`` (its own retries are turned off: rlmpipe retries and
    counts every attempt), or None (the LM configured in DSPy, else rlmpipe's default model).
    Budgets are caps: ``max_run_tokens``, ``max_cost`` (USD; ``prices`` gives USD per million
    input/output tokens for a model litellm does not price), ``max_seconds``. Runs live in
    ``workspace`` (default: the nearest ``.rlmpipe`` folder, as git finds ``.git``); the same call
    again reuses every finished step, so it makes no LM call.
    """
    from rlmpipe.patterns.module import ModulePipeline

    chunking = chunking or ChunkingConfig(strategy=strategy, chunk_tokens=chunk_tokens, overlap=overlap)
    if hasattr(program, "process") and hasattr(program, "programs"):
        pipeline = program
    else:
        pipeline = ModulePipeline(program, pattern=pattern, chunking=chunking, input_field=input_field,
                                  context_field=context_field, carry=carry, window_tokens=window_tokens,
                                  reduce=reduce, reduce_field=reduce_field, reduce_tokens=reduce_tokens)
    model = _model(lm, api_base=api_base, max_output_tokens=max_output_tokens, adapter=adapter)
    options = _options(options, concurrency=concurrency, requests_per_minute=requests_per_minute,
                       tokens_per_minute=tokens_per_minute, max_run_tokens=max_run_tokens, max_cost=max_cost,
                       max_seconds=max_seconds, prices=prices, workspace=workspace, fresh=fresh,
                       force_resume=force_resume, adapter=adapter, executor=executor, ray_address=ray_address)
    return _execute(pipeline, _paths(inputs), model, options, command={"name": "run", "pipeline": pipeline.name},
                    events=events, on_start=on_start)


def summarize(inputs, *, pattern: str = "map-reduce", strategy: str = "structure", chunk_tokens: int = 1024,
              overlap: int = 0, window_tokens: int = 1024, merge_input_tokens: int = 3000, lm: str | None = None,
              api_base: str | None = None, model_path: str | None = None, max_output_tokens: int | None = None,
              out: str | os.PathLike | None = None, events=None, on_start=None, **run_options) -> RunResult:
    """A summary of each document (``rlmpipe summarize``): ``map-reduce`` or ``window``."""
    from rlmpipe.apps.summarize import SummarizePipeline

    pipeline = SummarizePipeline(ChunkingConfig(strategy=strategy, chunk_tokens=chunk_tokens, overlap=overlap),
                                 merge_input_tokens, pattern=pattern, window_tokens=window_tokens)
    model = _model(lm, api_base=api_base, model_path=model_path, max_output_tokens=max_output_tokens)
    return _builtin("summarize", pipeline, inputs, model=model,
                    outputs={"out": str(Path(out).resolve()) if out else None},
                    events=events, on_start=on_start, finish=_write_summaries(out), **run_options)


def _write_summaries(out):
    def finish(summary, store, inputs):
        if not out:
            return None
        import json

        from rlmpipe.atomic import open_atomic

        with open_atomic(out) as handle:
            for item in summary.results:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        return {"out": Path(out)}

    return finish


def analyze_contracts(inputs, out: str | os.PathLike = "contracts-out", *, lm: str | None = None,
                      read: str = "candidates", api_base: str | None = None, model_path: str | None = None,
                      max_output_tokens: int | None = None, finder_model: str | os.PathLike | None = None,
                      recall: str | None = None, context_chars: int | None = None, batch_tokens: int | None = None,
                      chunk_tokens: int | None = None, overlap: int | None = None, events=None, on_start=None,
                      **run_options) -> RunResult:
    """Clauses, summary and risk score of every contract, with risks and obligations when there is a
    language model (``rlmpipe contracts analyze``); writes contracts.jsonl, clauses.csv,
    failed.jsonl and report.html to ``out``.

    Without a model (``lm="none"``, the default when none is configured) the trained clause finder
    works alone, in seconds. With one, ``read="candidates"`` (the default) sends it only the
    passages the finder flags at the ``recall`` threshold (``"recall0.85"`` .. ``"recall0.99"``),
    with ``context_chars`` around each, in calls of at most ``batch_tokens``; ``read="all"`` has it
    read every chunk (``chunk_tokens``, ``overlap``). The defaults are the ones bench/contracts_cost.py
    chose (bench/RESULTS.md, "contracts-cost"). ``finder_model``: a model file made by
    ``rlmpipe contracts train-finder`` instead of the shipped one."""
    from rlmpipe.apps.contracts import ContractsPipeline, write_results
    from rlmpipe.apps.contracts import pipeline as contracts

    if read not in READS:
        raise ValueError(f"unknown read {read!r} (choose from: {', '.join(READS)})")
    model = _model(lm, api_base=api_base, model_path=model_path, max_output_tokens=max_output_tokens, default="none")
    if model.is_none and read == "all":
        raise ValueError("read='all' (--read all) needs a language model: give one with --lm")
    mode = "finder" if model.is_none else READS[read]
    default = contracts.DEFAULT_CHUNKING
    chunking = ChunkingConfig(strategy="structure",  # (None: the default; 0 is refused, as -5 is)
                              chunk_tokens=default.chunk_tokens if chunk_tokens is None else chunk_tokens,
                              overlap=default.overlap if overlap is None else overlap)
    pipeline = ContractsPipeline(
        chunking, mode=mode,
        finder_model=finder_model, recall=contracts.DEFAULT_RECALL if recall is None else recall,
        context_chars=contracts.DEFAULT_CONTEXT_CHARS if context_chars is None else context_chars,
        batch_tokens=contracts.DEFAULT_BATCH_TOKENS if batch_tokens is None else batch_tokens)
    out = Path(out)
    return _builtin("contracts", pipeline, inputs, model=model, outputs={"out": str(out.resolve())}, events=events,
                    on_start=on_start, finish=lambda summary, store, inputs: write_results(summary, store, out, inputs),
                    **run_options)


def ask(inputs, question: str, *, each: bool = False, max_depth: int = 2, max_iters: int = 12,
        max_llm_calls: int = 40, exec_timeout: float = 120.0, lm: str | None = None, api_base: str | None = None,
        model_path: str | None = None, max_output_tokens: int | None = None, events=None, on_start=None,
        **run_options) -> RunResult:
    """Answer ``question`` over the documents with a Recursive Language Model (``rlmpipe ask``):
    ``result.final`` holds the answer (or, if a budget stopped it, the best partial answer). With
    ``each``, one recursion per document instead, in parallel: each document's ``result`` holds its
    answer, sources and status."""
    from rlmpipe.apps.ask import AskPipeline

    pipeline = AskPipeline(question, each=each, max_depth=max_depth, max_iters=max_iters,
                           max_llm_calls=max_llm_calls, sandbox={"timeout": exec_timeout})
    run_options.setdefault("concurrency", 4)
    model = _model(lm, api_base=api_base, model_path=model_path, max_output_tokens=max_output_tokens)
    return _builtin("ask", pipeline, inputs, model=model, outputs={}, events=events, on_start=on_start,
                    finish=None, **run_options)


_RUN_OPTION_NAMES = ("concurrency", "requests_per_minute", "tokens_per_minute", "max_run_tokens", "max_cost",
                     "max_seconds", "max_sub_calls", "prices", "workspace", "fresh", "force_resume", "executor",
                     "ray_address", "resume_run_id")
#: what the command record does not keep: the budgets and prices (resume takes them from the run's
#: stored options, and may raise the budgets), and what belongs to one session only
_NOT_RECORDED = ("max_run_tokens", "max_cost", "max_seconds", "prices", "workspace", "fresh", "force_resume",
                 "resume_run_id")


class SetupError(RuntimeError):
    """Something a command needs is not installed or cannot start; the message says what to do."""


def _check_sandbox(sandbox: dict) -> None:
    """``ask`` runs the model's code in the Deno sandbox: a sandbox that cannot start would fail
    the run at its first step, so it is checked before (and Pyodide fetched now if it must be)."""
    from rlmpipe.lm.errors import one_line
    from rlmpipe.sandbox import PyodideNotCachedError, deno_available, ensure_pyodide

    if not deno_available():
        raise SetupError("rlmpipe ask runs the model's code in a Deno sandbox, and no working Deno was found: "
                         "pip install 'rlmpipe[rlm]' (or put deno on PATH, or set RLMPIPE_DENO)")
    try:
        ensure_pyodide(sandbox.get("deno_dir"))
    except PyodideNotCachedError as exc:
        raise SetupError(f"rlmpipe ask's sandbox needs Pyodide, fetched once from the npm registry: "
                         f"{one_line(exc, 300)}") from None


def _builtin(name, pipeline, inputs, *, model: _Model, outputs, events, on_start, finish, **run_options) -> RunResult:
    unknown = set(run_options) - set(_RUN_OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if name == "ask":
        _check_sandbox(pipeline.sandbox)
    options = _options(**run_options)
    recorded = {key: value for key, value in run_options.items() if key not in _NOT_RECORDED}
    command = {"name": name, "settings": pipeline.settings(), "outputs": outputs, "options": recorded}
    return _execute(pipeline, _paths(inputs), model, options, command=command, events=events, on_start=on_start,
                    finish=finish)


def resume(run_id: str, *, workspace: str | os.PathLike | None = None, max_run_tokens: int | None = None,
           max_cost: float | None = None, max_seconds: float | None = None, force_resume: bool = False,
           events=None, on_start=None) -> RunResult:
    """Continue a run of a built-in command from its id (a prefix will do) and the record it keeps
    of how it was made; budgets may be raised. Refused, saying why, if the run was made by a
    program of your own (run it again the same way instead) or its configuration changed (unless
    ``force_resume``)."""
    from rlmpipe.runtime.store import Store

    if not run_id:
        raise LookupError("give a run id, or its first characters (rlmpipe runs list shows them)")
    with Store(workspace) as store:
        matches = store.find_runs(run_id)
        if not matches:
            raise LookupError(f"no run {run_id!r} in {store.workspace}")
        if len(matches) > 1:
            raise LookupError(f"{run_id!r} is ambiguous: " + ", ".join(m["run_id"] for m in matches))
        run_record = matches[0]
    command = dict(run_record["config"].get("command") or {})
    name = command.get("name")
    if name not in ("summarize", "contracts", "ask") or "settings" not in command:
        raise LookupError(f"run {run_record['run_id']} was made by a program of your own ({name or 'unknown'}), "
                          "whose code rlmpipe does not keep: run it again the same way to resume it")
    stored = run_record["config"].get("options") or {}
    run_options = {**command.get("options", {}),
                   "max_run_tokens": max_run_tokens if max_run_tokens is not None else stored.get("max_run_tokens"),
                   "max_cost": max_cost if max_cost is not None else stored.get("max_cost"),
                   "max_seconds": max_seconds if max_seconds is not None else stored.get("max_seconds"),
                   "prices": stored.get("prices") or {}, "workspace": workspace, "force_resume": force_resume,
                   "resume_run_id": run_record["run_id"]}
    return _rebuild(command, events=events, on_start=on_start, **run_options)


def _rebuild(command: dict, **run_options) -> RunResult:
    """The built-in command that ``command`` records, run again (a session of ``resume``)."""
    name, outputs, model = command["name"], command.get("outputs") or {}, command.get("model") or {}
    if name == "summarize":
        from rlmpipe.apps.summarize import SummarizePipeline as Pipeline

        finish = _write_summaries(outputs.get("out"))
    elif name == "contracts":
        from rlmpipe.apps.contracts import ContractsPipeline as Pipeline
        from rlmpipe.apps.contracts import write_results

        def finish(summary, store, inputs):
            return write_results(summary, store, Path(outputs["out"]), inputs)
    else:
        from rlmpipe.apps.ask import AskPipeline as Pipeline

        finish = None
    model = _model(model.get("lm") or "none", api_base=model.get("api_base"),
                   model_path=model.get("model_path"), max_output_tokens=model.get("max_output_tokens"))
    return _builtin(name, Pipeline.from_settings(command["settings"]), command["paths"], model=model,
                    outputs=outputs, finish=finish, **run_options)
