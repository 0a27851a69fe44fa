"""How many records one simulator forward pass takes: from the free accelerator memory.

The paper runs 2 records per pass. On a GPU with room to spare that wastes it: the batch that
fits is computed from the simulator's config and the prompt sizes (``batch_size_for_memory``), and
``batch_for_free_memory`` asks CUDA what is free. Runs (``simulator_batch = 0``) and
``scripts/gpu-check`` call the same function, so the check measures the batch runs use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

    from featureinterp.simulate.simulator import LocalSimulator

__all__ = ["batch_for_free_memory", "batch_size_for_memory"]


def batch_size_for_memory(
    config: PreTrainedConfig, free_bytes: int, prefix_tokens: int, record_tokens: int,
    bytes_per_value: int = 2, cap: int = 64,
) -> int:
    """Records per forward pass that fit in ``free_bytes`` of accelerator memory (half of it, for
    fragmentation and the allocator's reserve).

    Per record a pass holds the new tokens' keys and values in every layer (the shared prefix is a
    view, not copied), one layer's MLP activations, and one layer's attention scores in float32
    (eager attention, as soft-capped Gemma models need) over prefix + record. ``config`` is the
    simulator's transformers config; weights are already resident and not counted.
    """
    text = getattr(config, "text_config", config)
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    inter = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    t, total = record_tokens, prefix_tokens + record_tokens
    kv = layers * 2 * kv_heads * head_dim * t * bytes_per_value
    mlp = 3 * inter * t * bytes_per_value
    scores = heads * t * total * 4
    per_record = kv + mlp + scores
    return int(max(1, min(cap, (free_bytes // 2) // per_record)))


def batch_for_free_memory(simulator: LocalSimulator, record_tokens: int = 64 * 4) -> tuple[int, float]:
    """``(batch, free GiB)``: the simulator batch that the free CUDA memory holds for paper-sized
    prompts (header + a generous 64-token rule + a record of ``record_tokens`` prompt tokens);
    the paper's 2 (and 0 GiB) on other devices."""
    device = simulator.device
    if device.type != "cuda":
        return 2, 0.0
    free, _ = torch.cuda.mem_get_info(device)
    rule = 64
    size = batch_size_for_memory(simulator.model.config, free, len(simulator.header_ids) + rule, record_tokens)
    return size, free / 2**30
