"""What a step returns, as JSON the store can keep (and give back identically on resume).

A step may return JSON values, a ``dspy.Prediction`` (its output fields), a pydantic model or a
dataclass, nested in lists and dicts. Anything else is refused with an error naming the step,
while the step is still running, so that its LM calls are recorded with the failure rather than
lost after it (a Prediction used to fail only when the store serialised it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


class NotStorable(TypeError):
    """A step's result has a value that cannot be stored as JSON."""


def to_json_value(value: Any, where: str = "result") -> Any:
    """``value`` as plain JSON types (dict, list, str, int, float, bool, None)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise NotStorable(f"{where} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise NotStorable(f"{where} has a key of type {type(key).__name__}; JSON keys are strings")
            out[str(key) if not isinstance(key, str) else key] = to_json_value(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    import dspy

    if isinstance(value, dspy.Prediction):
        return {key: to_json_value(item, f"{where}.{key}") for key, item in value.items()}
    if hasattr(value, "model_dump") and callable(value.model_dump):  # pydantic v2
        return to_json_value(value.model_dump(mode="json"), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value(dataclasses.asdict(value), where)
    raise NotStorable(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which cannot be stored as JSON: "
        "return a dict, a dspy.Prediction, a pydantic model, a dataclass, or lists of them")


def json_roundtrip(value: Any) -> Any:
    """The value exactly as the store will give it back (JSON has no tuples, keys are strings)."""
    return json.loads(json.dumps(value))
