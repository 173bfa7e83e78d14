"""Run fingerprints and step keys.

A run's fingerprint covers everything that changes what its steps would return: the pipeline and
its configuration, every DSPy program's signatures (instructions, fields, types) and demos, the
model and its generation settings, and rlmpipe's version. A step's key is the fingerprint plus the
document's hash, the chunk id and the step's name (plus, for steps whose inputs are other steps'
results, those results' keys). Nothing stored is named by Python's ``hash()``.
"""

from __future__ import annotations

import hashlib
import json
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


def run_fingerprint(pipeline: str, config: dict, programs: dict, model: str, lm_kwargs: dict) -> str:
    from rlmpipe import __version__

    return digest({
        "pipeline": pipeline,
        "config": config,
        "programs": {name: program_description(program) for name, program in sorted(programs.items())},
        "model": model,
        "generation": {key: lm_kwargs.get(key) for key in GENERATION_SETTINGS if key in lm_kwargs},
        "rlmpipe": __version__,
    })


def step_key(fingerprint: str, doc_id: str | None, chunk_id: str | None, name: str, *inputs: str) -> str:
    return digest([fingerprint, doc_id, chunk_id, name, *inputs])
