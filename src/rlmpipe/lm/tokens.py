"""Counting a call's tokens here, for what the provider does not tell before (admission to a
budget, tokens-per-minute windows) or at all (a reply without ``usage``).

The count uses the model's own tokenizer where tiktoken knows it (OpenAI models), else
``cl100k_base`` (close for most English text); either way a count made here is marked
*estimated* wherever it is shown.
"""

from __future__ import annotations

import functools
from typing import Any

#: tokens a chat message costs beyond its text (role and separators; OpenAI documents 3-4)
PER_MESSAGE = 4


@functools.lru_cache(maxsize=64)
def _encoding(model: str):
    from rlmpipe.offline import offline_imports

    with offline_imports():
        import tiktoken

        name = model.split("/", 1)[1] if "/" in model else model
        try:
            return tiktoken.encoding_for_model(name)
        except KeyError:
            return tiktoken.get_encoding("cl100k_base")


def count_text(model: str, text: str) -> int:
    if not text:
        return 0
    try:
        return len(_encoding(model).encode_ordinary(text))
    except BaseException as exc:  # tiktoken's Rust regex can panic (a BaseException) on odd input
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return -(-len(text) // 4)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def count_prompt(model: str, prompt: str | None, messages: list[dict] | None) -> int:
    """Tokens of a request's prompt (the messages' texts, plus each message's overhead)."""
    if messages:
        return sum(count_text(model, _content_text(m.get("content"))) + PER_MESSAGE for m in messages)
    return count_text(model, prompt or "")


def count_outputs(model: str, outputs: Any) -> int:
    """Tokens of what DSPy got back (a list of strings, or of dicts with ``text``)."""
    total = 0
    for output in outputs if isinstance(outputs, list) else [outputs]:
        if isinstance(output, dict):
            text = output.get("text") or ""
            for call in output.get("tool_calls") or []:
                text += str(call)
        else:
            text = str(output or "")
        total += count_text(model, text)
    return total
