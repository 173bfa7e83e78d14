"""Run fingerprints and step keys.

A run's fingerprint covers everything that changes what its steps would return: the pipeline and
its configuration (chunking included), every DSPy program's signatures (instructions, fields,
types) and demos, the model, where it is served (``api_base``, the local model's file) and its
generation settings, the adapter and its settings, and the versions of rlmpipe, DSPy and litellm.
A step's key is the fingerprint plus the document's hash, the chunk id and the step's name (plus,
for steps whose inputs are other steps' results, those results' keys). Nothing stored is named by
Python's ``hash()``.

The fingerprint is kept with the run in parts, so that a changed configuration can be told in
words ("model openai/a -> openai/b") rather than as two opaque hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

GENERATION_SETTINGS = ("temperature", "max_tokens", "top_p", "n", "stop", "seed", "response_format")


def digest(value: Any, size: int = 32) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def program_description(program) -> dict:
    """What a DSPy module asks: per predictor, its instructions, fields (with types) and demos."""
    described = {}
    for name, predictor in program.named_predictors():
        signature = predictor.signature
        fields = {}
        for field_name, field in {**signature.input_fields, **signature.output_fields}.items():
            extra = field.json_schema_extra or {}
            fields[field_name] = {
                "type": repr(field.annotation),
                "desc": extra.get("desc"),
                "prefix": extra.get("prefix"),
                "io": extra.get("__dspy_field_type"),
            }
        described[name] = {
            "instructions": signature.instructions,
            "fields": fields,
            "demos": [dict(demo) if hasattr(demo, "items") else repr(demo) for demo in predictor.demos],
        }
    return described


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def adapter_description(adapter) -> dict | None:
    """An adapter's class and settings (None: DSPy's default, ChatAdapter)."""
    if adapter is None:
        return None
    settings = {key: value for key, value in sorted(vars(adapter).items())
                if isinstance(value, (str, int, float, bool, type(None))) and not key.startswith("_")}
    return {"type": f"{type(adapter).__module__}.{type(adapter).__qualname__}", "settings": settings}


def lm_description(lm) -> dict:
    """What of an LM changes its answers: model, endpoint, generation settings, local model file."""
    kwargs = getattr(lm, "kwargs", {}) or {}
    described = {
        "model": lm.model,
        "api_base": kwargs.get("api_base") or kwargs.get("base_url"),
        "generation": {key: kwargs.get(key) for key in GENERATION_SETTINGS if key in kwargs},
    }
    model_path = getattr(lm, "model_path", None)
    if model_path:
        try:
            described["model_file"] = {"path": str(model_path), "bytes": os.path.getsize(model_path)}
        except OSError:
            described["model_file"] = {"path": str(model_path)}
    return described


def fingerprint_parts(pipeline, lm, adapter=None) -> tuple[dict, dict]:
    """(parts, described): the fingerprint's parts, and the few of them a person reads."""
    from rlmpipe import __version__

    versions = {"rlmpipe": __version__, "dspy": _version("dspy"), "litellm": _version("litellm")}
    model = lm_description(lm)
    parts = {
        "pipeline": pipeline.name,
        "config": pipeline.config(),
        "programs": {name: program_description(program) for name, program in sorted(pipeline.programs().items())},
        "model": model,
        "adapter": adapter_description(adapter),
        "versions": versions,
    }
    described = {"model": model["model"], "api_base": model["api_base"], "versions": versions,
                 "adapter": (parts["adapter"] or {}).get("type", "ChatAdapter (DSPy's default)")}
    return parts, described


class FingerprintChange:
    """What differs between two runs' fingerprint parts, in words."""

    LABELS = {"pipeline": "pipeline", "config": "configuration (chunking, settings)", "programs": "prompts",
              "model": "model or its settings", "adapter": "adapter", "versions": "versions"}

    def __init__(self, before: dict, after: dict, described_before: dict, described_after: dict):
        self.changed = [key for key in self.LABELS if before.get(key) != after.get(key)] if before else ["unknown"]
        self.before, self.after = described_before, described_after

    def __str__(self) -> str:
        if self.changed == ["unknown"]:
            return "made by an rlmpipe that did not record its configuration"
        words = []
        for key in self.changed:
            if key == "model":
                for field in ("model", "api_base"):
                    if self.before.get(field) != self.after.get(field):
                        words.append(f"{field} {self.before.get(field)} -> {self.after.get(field)}")
                if not words:
                    words.append("the model's generation settings")
            elif key == "versions":
                old, new = self.before.get("versions") or {}, self.after.get("versions") or {}
                words += [f"{name} {old.get(name)} -> {new.get(name)}" for name in new if old.get(name) != new.get(name)]
            elif key == "adapter":
                words.append(f"adapter {self.before.get('adapter')} -> {self.after.get('adapter')}")
            else:
                words.append(self.LABELS[key])
        return ", ".join(words) or "settings"


def step_key(fingerprint: str, doc_id: str | None, chunk_id: str | None, name: str, *inputs: str) -> str:
    return digest([fingerprint, doc_id, chunk_id, name, *inputs])
