"""Shared fixtures: real assets from ../shared (or $QUIKTOOL_SHARED), tiny models built from configs,
and the gpu marker's skip when no CUDA GPU is present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    return Path(os.environ.get("QUIKTOOL_SHARED", REPO.parent / "shared"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on the device); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared()
    if not d.is_dir():
        pytest.skip(f"shared assets not found at {d}; set QUIKTOOL_SHARED")
    return d


@pytest.fixture(scope="session")
def data_dir(shared_dir) -> Path:
    d = shared_dir / "data"
    if not (d / "wikitext2" / "wiki.test.raw").is_file():
        pytest.skip(f"{d}/wikitext2/wiki.test.raw not found; set QUIKTOOL_SHARED")
    return d


@pytest.fixture(scope="session")
def stories_path(shared_dir) -> Path:
    p = shared_dir / "models" / "stories260K"
    if not (p / "config.json").is_file():
        pytest.skip(f"stories260K not found at {p}; set QUIKTOOL_SHARED")
    return p


def tiny_config(family: str):
    """A small randomly initialisable config of each supported family (no download)."""
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
                              tie_word_embeddings=True)
    if family == "mistral":
        return tf.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
    if family == "qwen2":
        return tf.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
    if family == "opt":
        return tf.OPTConfig(hidden_size=64, ffn_dim=172, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                            max_position_embeddings=256, word_embed_proj_dim=64)
    if family == "falcon":
        return tf.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                               new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False)
    raise ValueError(family)


FAMILIES = ("llama", "mistral", "qwen2", "opt", "falcon")


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32).eval()
    m.config.use_cache = False
    return m


@pytest.fixture
def tiny():
    return tiny_model
