"""Tokenizers: the OpenAI encodings agree with tiktoken; model names map to encodings; the embedded
model's own tokenizer (not additive) still gives exact chunks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rlmpipe.chunking import ChunkingConfig, chunk_text, get_tokenizer
from tests.chunking.test_invariants import EXAMPLES, check_contract


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_same_ids_as_tiktoken_including_special_looking_text(name):
    import tiktoken

    text = (EXAMPLES / "ip_agreement_msci.txt").read_text(encoding="utf-8") + " <|endoftext|> héllo 😀 中文"
    assert list(get_tokenizer(name).encode(text)) == tiktoken.get_encoding(name).encode_ordinary(text)


def test_model_strings_choose_their_encoding_and_unknown_names_fail_clearly():
    assert get_tokenizer("openai/gpt-4o-mini").name == "o200k_base"
    assert get_tokenizer("gpt-4").name == "cl100k_base"
    with pytest.raises(ValueError, match="unknown tokenizer 'nonsense'"):
        get_tokenizer("nonsense")


@pytest.mark.local_model
def test_the_embedded_models_tokenizer_gives_exact_chunks():
    pytest.importorskip("llama_cpp")
    tokenizer = get_tokenizer("local")
    assert not tokenizer.additive  # every chunk is re-counted with it
    source = (EXAMPLES / "services_agreement_scoutcam.txt").read_text(encoding="utf-8")
    for strategy in ("structure", "fixed"):
        config = ChunkingConfig(strategy=strategy, chunk_tokens=200, overlap=20, tokenizer="local")
        chunks = chunk_text(source, config)
        check_contract(source, chunks, config)
        assert max(c.token_count for c in chunks) > 150


def test_importing_rlmpipe_changes_nothing_and_its_own_loads_stay_offline():
    """``import rlmpipe`` leaves the environment as it was; when rlmpipe loads a tiktoken encoding or
    looks up a price (importing litellm), the bundled files are used and the environment is restored."""
    program = (
        "import os, json\n"
        "before = dict(os.environ)\n"
        "import rlmpipe\n"
        "assert dict(os.environ) == before, 'import rlmpipe changed the environment'\n"
        "from rlmpipe.chunking import get_tokenizer\n"
        "from rlmpipe.lm.usage import price\n"
        "tokens = get_tokenizer('cl100k_base').count('hello world')\n"
        "cost = price('openai/gpt-4o-mini', 1_000_000, 0)\n"
        "from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info\n"
        "print(json.dumps({'tokens': tokens, 'cost': cost, 'source': get_model_cost_map_source_info()['source'],\n"
        "                  'cost_map_var': os.environ.get('LITELLM_LOCAL_MODEL_COST_MAP')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LITELLM_LOCAL_MODEL_COST_MAP", "TIKTOKEN_CACHE_DIR")}
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    result = __import__("json").loads(out.stdout)
    assert result["tokens"] == 2 and result["cost"] > 0
    assert result["source"] == "local", "litellm read its bundled price map, not the network"
    assert result["cost_map_var"] is None, "the variable rlmpipe set for litellm's import is gone again"
