"""Deterministic scripted answers for pipeline tests: the same prompt always gets the same reply."""

from __future__ import annotations

import hashlib
import re

from tests.support.scripted_lm import chat_reply


def user_text(request: dict) -> str:
    messages = request.get("messages") or []
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")


def summary_reply(request: dict) -> str:
    """A ChatAdapter reply with a ``summary`` field derived from the user message (stable across runs)."""
    digest = hashlib.sha256(user_text(request).encode()).hexdigest()[:10]
    return chat_reply(summary=f"summary-{digest}")


def numbered_document(paragraphs: int, words: int = 12, label: str = "Paragraph") -> str:
    """A document of distinct paragraphs of about ``words`` + 8 tokens; every part of a paragraph is
    unique too (its number is at both ends), so no two chunks can ever have the same text."""
    vocabulary = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    lines = []
    for index in range(paragraphs):
        body = " ".join(vocabulary[(index * 7 + k * 3) % len(vocabulary)] for k in range(words))
        lines.append(f"{label} {index}: {body} (end of {label.lower()} {index}).")
    return "\n\n".join(lines) + "\n"


_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)\nAll interactions", re.S)
_FIELD = re.compile(r"^\d+\. `(\w+)` \(([^)]*)\)", re.M)


def any_reply(request: dict) -> str:
    """A ChatAdapter reply to any signature: every output field the system prompt asks for, filled
    with a value of its type derived from the user message (the same prompt, the same reply)."""
    messages = request.get("messages") or [] if isinstance(request, dict) else []
    system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
    found = _OUTPUTS.search(system)
    digest = hashlib.sha256(user_text(request).encode()).hexdigest()[:10]
    fields = {}
    for name, kind in _FIELD.findall(found.group(1) if found else ""):
        kind = kind.strip()
        if kind.startswith("list"):
            fields[name] = [f"{name}-{digest}-1", f"{name}-{digest}-2"]
        elif kind in ("int", "float"):
            fields[name] = int(digest[:4], 16) % 100
        elif kind == "bool":
            fields[name] = True
        else:
            fields[name] = f"{name}-{digest}"
    return chat_reply(**fields) if fields else chat_reply(answer=f"answer-{digest}")
