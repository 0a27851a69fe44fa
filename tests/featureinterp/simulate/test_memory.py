"""Records per simulator pass from free memory (featureinterp.simulate.memory)."""

from __future__ import annotations


def test_batch_size_follows_free_memory_and_the_models_shape():
    from transformers import Gemma2Config

    from featureinterp.simulate.memory import batch_size_for_memory

    # gemma-2-27b's shape: 46 layers, 32 heads (16 kv) of 128, MLP 36864
    cfg = Gemma2Config(
        num_hidden_layers=46, num_attention_heads=32, num_key_value_heads=16, head_dim=128,
        hidden_size=4608, intermediate_size=36864,
    )  # fmt: skip
    per_record = 46 * 2 * 16 * 128 * 256 * 2 + 3 * 36864 * 256 * 2 + 32 * 256 * (1500 + 256) * 4
    gib = 2**30
    assert batch_size_for_memory(cfg, 20 * gib, 1500, 256) == (10 * gib) // per_record
    assert batch_size_for_memory(cfg, 40 * gib, 1500, 256) > batch_size_for_memory(cfg, 20 * gib, 1500, 256)
    assert batch_size_for_memory(cfg, 1, 1500, 256) == 1  # never zero
    assert batch_size_for_memory(cfg, 10**15, 1500, 256) == 64  # capped


def test_no_cuda_means_the_papers_two_records_per_pass(embedded_model):
    from featureinterp.simulate.memory import batch_for_free_memory
    from featureinterp.simulate.simulator import LocalSimulator
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    sim = LocalSimulator(tiny_llama_for(tok, seed=0, max_positions=2048), tok, batch_size=8)
    assert batch_for_free_memory(sim) == (2, 0.0)
