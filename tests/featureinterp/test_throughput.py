"""Full-size random models from a seed, loaded through the preset's own from_pretrained path, and
the rates measured on them (tiny configs here; scripts/gpu-check runs the full sizes on a GPU)."""

from __future__ import annotations

import pytest
import torch

from featureinterp.activations.models import load_subject_model
from featureinterp.config import ModelSpec
from featureinterp.throughput import (
    FULL_SIZE,
    Calibration,
    build_folder,
    measure_simulator,
    model_config,
    parameter_count,
    seeded_state_dict,
)
from tests.conftest import CACHE


@pytest.fixture(scope="module")
def gemma_tok():
    from featureinterp.presets.standin import GEMMA_CHAT_TEMPLATE, gemma_tokenizer

    tok = gemma_tokenizer(CACHE / "models")
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    return tok


def test_full_size_configs_have_the_papers_parameter_counts(gemma_tok):
    """Counted on the meta device: nothing allocated. gemma-2-27b: 27.2B, gemma-2-9b: 9.24B (with
    Gemma-2's 256k vocabulary; the offline tokenizer's 262k adds its embedding rows)."""
    for role, billions in (("simulator", 27.2e9), ("subject", 9.24e9)):
        config = model_config(role, small=False, tokenizer=gemma_tok)
        extra = (len(gemma_tok) - 256_000) * FULL_SIZE[role]["hidden_size"]
        assert parameter_count(config) - extra == pytest.approx(billions, rel=0.01), role
        assert config.attn_logit_softcapping == 50.0 and config.sliding_window == 4096


def test_seeded_weights_load_through_from_pretrained_and_are_reproducible(tmp_path, gemma_tok):
    config = model_config("subject", small=True, tokenizer=gemma_tok)
    folder = build_folder(tmp_path / "m", config, gemma_tok)
    assert not list(folder.glob("*.safetensors"))  # the weights come as a state dict
    weights = seeded_state_dict(config, seed=3, dtype=torch.float32)
    again = seeded_state_dict(config, seed=3, dtype=torch.float32)
    other = seeded_state_dict(config, seed=4, dtype=torch.float32)
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(weights[key], again[key]) and not torch.equal(weights[key], other[key])
    # layers share the POOL tensors in turn: layer 2 uses layer 0's, layer 1 its own
    assert weights["model.layers.2.mlp.up_proj.weight"] is weights[key]
    assert not torch.equal(weights["model.layers.1.mlp.up_proj.weight"], weights[key])
    model, tok = load_subject_model(ModelSpec(name=str(folder)), CACHE / "models", "cpu", state_dict=weights)
    assert torch.equal(model.state_dict()[key], weights[key])  # loaded, not left at the class's init
    out = model(input_ids=torch.tensor([[tok.bos_token_id, 10, 11, 12]])).logits
    assert torch.isfinite(out).all()


def test_simulator_rates_with_the_paper_prompt_cached_equals_uncached(tmp_path, gemma_tok):
    config = model_config("simulator", small=True, tokenizer=gemma_tok)
    folder = build_folder(tmp_path / "s", config, gemma_tok)
    weights = seeded_state_dict(config, seed=2, dtype=torch.float32)
    model, tok = load_subject_model(ModelSpec(name=str(folder)), CACHE / "models", "cpu", state_dict=weights)
    tok.chat_template = gemma_tok.chat_template
    out = measure_simulator(model, tok, batch_size=4, n_records=6, length=8)
    assert out["cached_vs_uncached_max_abs"] < 1e-4
    # cached: the header once, each rule once, then only record tokens (padded to the batch)
    assert out["cached"]["forward_tokens"] < out["uncached"]["forward_tokens"]
    assert out["uncached"]["forward_tokens"] > 5 * 6 * out["header_tokens"]  # every prompt whole
    assert out["cached"]["tokens_per_s"] > 0


def test_calibration_rates_become_effective_flops():
    cal = Calibration(
        device="x",
        measured_on="2026-12-06",
        simulator_params=10.0,
        simulator_tokens_per_s=3.0,
        subject_params=42.0,
        subject_layers=42,
        activation_rows_per_s=2.0,
        holistic_rows_per_s=1.0,
        row_len=3,
        sae_layer=20,
    )
    assert cal.simulator_flops == 60.0
    assert cal.activation_flops == pytest.approx(2 * 42 * (21 / 42) * 2 * 3)  # layers 0-20 run
    assert cal.holistic_flops == pytest.approx(2 * 42 * (21 / 42) * 1 * 6)  # 3 + 2 + 1 tokens per row
