"""Choosing a model by one string, and building its DSPy LM.

The model is, in order of precedence: the ``--lm`` flag, the ``RLMPIPE_LM`` environment variable,
the ``lm`` key of a config file (``./rlmpipe.toml``, then ``~/.config/rlmpipe/config.toml``), and
finally the embedded local model. Strings are DSPy/litellm model strings
(``openai/gpt-4o-mini``, ``anthropic/claude-...``, ``ollama_chat/llama3.1``, ``openai/NAME`` with
an ``api_base`` for any OpenAI-compatible server), or ``local`` / ``local/<name>`` for the
embedded model. Problems that make every call fail (a missing API key, an unknown provider) are
found here, before the run starts.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rlmpipe.lm.errors import FatalLMError

LOCAL = "local"
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


def _config_file() -> tuple[dict, Path] | None:
    for path in CONFIG_FILES:
        if path.is_file():
            with open(path, "rb") as handle:
                try:
                    return tomllib.load(handle), path
                except tomllib.TOMLDecodeError as exc:
                    raise FatalLMError(f"{path}: invalid TOML ({exc})") from None
    return None


def choose_model(flag: str | None = None, api_base: str | None = None, model_path: str | None = None) -> ModelChoice:
    """Apply the precedence flag > environment > config file > embedded default."""
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
    return ModelChoice(LOCAL, "default", api_base, model_path)


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


def make_lm(choice: ModelChoice, *, temperature: float | None = 0.0, max_tokens: int | None = None,
            cache: bool = False, timeout: float = 120.0, **kwargs):
    """The DSPy LM for a choice, with DSPy's own retries off (rlmpipe retries and counts them)."""
    import dspy

    if choice.is_local:
        from rlmpipe.lm.local import LocalLM

        return LocalLM(model_path=choice.model_path, temperature=temperature or 0.0,
                       max_tokens=max_tokens or 512)
    check_provider(choice.model, choice.api_base)
    options = dict(kwargs)
    if choice.api_base:
        options["api_base"] = choice.api_base
        if choice.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            options.setdefault("api_key", "not-needed")  # self-hosted servers usually ignore it
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    return dspy.LM(choice.model, temperature=temperature, cache=cache, num_retries=0, timeout=timeout, **options)
