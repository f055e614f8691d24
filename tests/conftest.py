"""Shared fixtures: the real data directory, tiny Llama models built from a config, the default model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tests that change the working directory must still find the data, so make the path absolute.
if os.environ.get("BENCH_DATA_DIR"):
    os.environ["BENCH_DATA_DIR"] = str(Path(os.environ["BENCH_DATA_DIR"]).resolve())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("BENCH_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.fail("Set BENCH_DATA_DIR to the shared data directory (for example ../shared/data) to run the tests.")
    return Path(value)


def tiny_llama_config(vocab_size: int = 256, tie: bool = True) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
    )


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M), loaded once per session."""
    from bench.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model) -> Path:
    """A 2-layer Llama with the default model's real tokenizer, saved as a Hugging Face directory."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(default_model.tokenizer))
    config.bos_token_id = default_model.tokenizer.bos_token_id
    config.eos_token_id = default_model.tokenizer.eos_token_id
    LlamaForCausalLM(config).save_pretrained(directory)
    default_model.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Point the harness cache at a fresh directory, keeping the converted default model."""
    from bench.paths import cache_dir

    models = cache_dir() / "models"
    cache = tmp_path / "cache"
    if models.exists():
        (cache / "models").mkdir(parents=True)
        for entry in models.iterdir():
            os.symlink(entry, cache / "models" / entry.name)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    return cache


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
