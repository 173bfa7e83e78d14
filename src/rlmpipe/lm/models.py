"""Choosing a model by one string, and building its DSPy LM with the settings it needs.

The model is, in order of precedence: the ``--lm`` flag, the ``RLMPIPE_LM`` environment variable,
the ``lm`` key of a config file (``./rlmpipe.toml``, then ``~/.config/rlmpipe/config.toml``), and
finally the command's default (the embedded local model; for ``contracts analyze``, no model: the
trained clause finder alone). Strings are DSPy/litellm model strings (``openai/gpt-4o-mini``,
``anthropic/claude-...``, ``ollama_chat/llama3.1``, ``openai/NAME`` with an ``api_base`` for any
OpenAI-compatible server), ``local`` / ``local/<name>`` for the embedded model, or ``none``.

Everything that would make every call fail is found before a run starts (:func:`preflight`): a
model file that is missing, unreadable or not a GGUF, a missing API key, an unknown provider, an
``api_base`` nobody answers at. Policy that depends on the model lives here too
(:func:`prepare_model`): the small local model answers reliably only under a JSON-schema grammar
(DSPy's JSONAdapter) and with a completion cap.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rlmpipe.lm.errors import FatalLMError

LOCAL = "local"
NONE = "none"  # no language model: the pipeline does what it can without one
#: the embedded model's completion cap when none is given (its answers are short; a cap stops loops)
LOCAL_MAX_OUTPUT_TOKENS = 1024
CONFIG_FILES = (Path("rlmpipe.toml"), Path.home() / ".config" / "rlmpipe" / "config.toml")


@dataclass(frozen=True)
class ModelChoice:
    model: str
    source: str  # "flag", "environment", "config <path>", "default"
    api_base: str | None = None
    model_path: str | None = None

    @property
    def is_local(self) -> bool:
        return self.model == LOCAL or self.model.startswith(LOCAL + "/")

    @property
    def is_none(self) -> bool:
        return self.model == NONE

    def to_dict(self) -> dict:
        return {"lm": self.model, "source": self.source, "api_base": self.api_base, "model_path": self.model_path}


def _config_file() -> tuple[dict, Path] | None:
    for path in CONFIG_FILES:
        if path.is_file():
            with open(path, "rb") as handle:
                try:
                    return tomllib.load(handle), path
                except tomllib.TOMLDecodeError as exc:
                    raise FatalLMError(f"{path}: invalid TOML ({exc})") from None
    return None


def choose_model(flag: str | None = None, api_base: str | None = None, model_path: str | None = None,
                 default: str = LOCAL) -> ModelChoice:
    """Apply the precedence flag > environment > config file > ``default``."""
    found = _config_file()
    config, config_path = found if found else ({}, None)
    api_base = api_base or os.environ.get("RLMPIPE_API_BASE") or config.get("api_base")
    model_path = model_path or config.get("model_path")
    if flag:
        return ModelChoice(flag, "flag", api_base, model_path)
    if os.environ.get("RLMPIPE_LM"):
        return ModelChoice(os.environ["RLMPIPE_LM"], "environment", api_base, model_path)
    if config.get("lm"):
        return ModelChoice(str(config["lm"]), f"config {config_path}", api_base, model_path)
    if model_path and default == NONE:  # a model file given means: use it
        default = LOCAL
    return ModelChoice(default, "default", api_base, model_path)


def check_provider(model: str, api_base: str | None = None) -> None:
    """Fail fast, with what to set, when a hosted model cannot possibly work."""
    from rlmpipe.offline import import_litellm

    litellm = import_litellm()  # quiet: its own hint about providers goes to stdout otherwise
    try:
        _, provider, _, _ = litellm.get_llm_provider(model=model, api_base=api_base)
    except Exception as exc:
        raise FatalLMError(
            f"unknown model {model!r}",
            "use a litellm model string such as openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest, "
            "ollama_chat/llama3.1, or openai/NAME with --api-base URL; or 'local' for the embedded model",
            kind="unknown_model",
        ) from exc
    if api_base:  # a self-hosted OpenAI-compatible server may need no key
        return
    check = litellm.validate_environment(model=model)
    missing = check.get("missing_keys") or []
    if missing and not check.get("keys_in_environment"):
        raise FatalLMError(
            f"no API key for {provider} (model {model})",
            f"set {' or '.join(missing)} in the environment",
            kind="not_configured",
        )


def preflight(choice: ModelChoice, *, connect_timeout: float = 3.0) -> None:
    """Raise :class:`FatalLMError` (saying what to do) if every call to this model would fail."""
    if choice.is_none:
        return
    if choice.is_local:
        from rlmpipe.lm.local import LocalModelMissing, default_model_path

        try:
            path = default_model_path(choice.model_path)
        except LocalModelMissing as exc:
            raise FatalLMError(str(exc), kind="not_configured") from None
        _check_gguf(path, given=bool(choice.model_path))
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise FatalLMError("the local model needs llama-cpp-python",
                               "pip install 'rlmpipe[local]' (it compiles llama.cpp, about 10 minutes), or "
                               "choose a hosted model with --lm", kind="not_configured") from None
        return
    check_provider(choice.model, choice.api_base)
    if choice.api_base:
        _check_reachable(choice.api_base, connect_timeout)


def _check_gguf(path: Path, given: bool) -> None:
    flag = "--model-path " if given else "the embedded model "
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError:
        raise FatalLMError(f"{flag}{path}: no such file", "give the path of a .gguf model file",
                           kind="not_configured") from None
    except OSError as exc:
        raise FatalLMError(f"{flag}{path}: cannot read it ({exc.strerror or exc})",
                           "give the path of a readable .gguf model file", kind="not_configured") from None
    if magic != b"GGUF":
        raise FatalLMError(f"{flag}{path}: not a GGUF model file (it starts with {magic!r}, not b'GGUF')",
                           "give the path of a .gguf file (llama.cpp's format)", kind="not_configured")


def _check_reachable(api_base: str, timeout: float) -> None:
    """A TCP connection to the server's host and port (no request: not every server lists models)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(api_base if "://" in api_base else f"http://{api_base}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FatalLMError(f"--api-base {api_base!r} is not an http(s) URL",
                           "give it as http://HOST:PORT/v1", kind="configuration")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FatalLMError(f"cannot reach --api-base {api_base} ({reason})",
                           "start the server, or check the address and port", kind="configuration") from None


@dataclass
class PreparedModel:
    """A model ready to run: its DSPy LM, the adapter it needs (None: DSPy's default), its choice."""

    lm: object
    adapter: object
    choice: ModelChoice


def prepare_model(choice: ModelChoice, *, max_output_tokens: int | None = None) -> PreparedModel:
    """The DSPy LM for a choice, after :func:`preflight`, with the model's own needs applied."""
    if choice.is_none:
        from rlmpipe.lm.none import NoLM

        return PreparedModel(NoLM(), None, choice)
    preflight(choice)
    if choice.is_local:
        import dspy

        lm = make_lm(choice, max_output_tokens=max_output_tokens or LOCAL_MAX_OUTPUT_TOKENS)
        return PreparedModel(lm, dspy.JSONAdapter(), choice)  # SmolLM2 answers reliably only under a grammar
    return PreparedModel(make_lm(choice, max_output_tokens=max_output_tokens), None, choice)


def make_lm(choice: ModelChoice, *, temperature: float | None = 0.0, max_output_tokens: int | None = None,
            cache: bool = False, timeout: float = 120.0, **kwargs):
    """The DSPy LM for a choice, with DSPy's own retries off (rlmpipe retries and counts them)."""
    import dspy

    if choice.is_local:
        from rlmpipe.lm.local import LocalLM

        return LocalLM(model_path=choice.model_path, temperature=temperature or 0.0,
                       max_tokens=max_output_tokens or 512)
    check_provider(choice.model, choice.api_base)
    options = dict(kwargs)
    if choice.api_base:
        options["api_base"] = choice.api_base
        if choice.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            options.setdefault("api_key", "not-needed")  # self-hosted servers usually ignore it
    if max_output_tokens is not None:
        options["max_tokens"] = max_output_tokens
    return dspy.LM(choice.model, temperature=temperature, cache=cache, num_retries=0, timeout=timeout, **options)
