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
        config = ChunkingConfig(strategy=strategy, max_tokens=200, overlap=20, tokenizer="local")
        chunks = chunk_text(source, config)
        check_contract(source, chunks, config)
        assert max(c.token_count for c in chunks) > 150


def test_importing_rlmpipe_points_litellm_and_tiktoken_at_their_bundled_files():
    program = ("import os, rlmpipe; print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP']); "
               "print(os.path.isdir(os.environ['TIKTOKEN_CACHE_DIR']))")
    env = {k: v for k, v in os.environ.items() if k not in ("LITELLM_LOCAL_MODEL_COST_MAP", "TIKTOKEN_CACHE_DIR")}
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "True"]
