"""Tiny random-weight models of the architectures the paper presets run on, quirks included.

Stand-in runs (``featureinterp run --standin``) and the architecture conformance tests need models
that are *shaped* like GPT-2, Llama-3.1, Gemma-2 (the ``gemma-2-9b`` subject and the paper's
gemma-2-27b-it simulator), Gemma-3 and Qwen2, with every config quirk that changes a code path:

- Gemma-2: attention and final-logit soft-capping, ``query_pre_attn_scalar`` different from the head
  width, alternating sliding-window / global layers (eager attention: SDPA drops the soft-capping);
- Gemma-3: hybrid stacks (five sliding layers per global one), separate local/global RoPE bases;
- Qwen2: sliding windows above ``max_window_layers`` only (another hybrid), attention biases;
- Llama-3.1: grouped-query attention and llama3 RoPE scaling;
- GPT-2: LayerNorm and learned absolute positions (TransformerLens centres its residual stream).

Only the widths are tiny; the classes are the real transformers classes, so loading, caching,
masking and soft-capping run the same code as on the real checkpoints. Weights come from a private
generator seeded by the caller (the global RNG is never touched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["ARCHITECTURES", "Architecture", "TinySpec", "tiny_config", "tiny_model"]

Architecture = Literal["gpt2", "llama", "qwen2", "gemma2", "gemma3"]
ARCHITECTURES: tuple[Architecture, ...] = ("gpt2", "llama", "qwen2", "gemma2", "gemma3")


@dataclass(frozen=True)
class TinySpec:
    """The shape of a tiny model; everything not named here is the architecture's real default."""

    arch: Architecture
    vocab_size: int
    n_layers: int = 4
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    sliding_window: int | None = 4096
    """Window of the sliding layers (Gemma-2/3, Qwen2); the real models use 4096 (Gemma) / 4096."""
    max_positions: int = 8192
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None


def tiny_config(spec: TinySpec) -> Any:
    """A transformers config of ``spec.arch`` with tiny widths and the architecture's quirks."""
    from transformers import Gemma2Config, Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

    ids: dict[str, Any] = {
        k: v
        for k, v in {
            "bos_token_id": spec.bos_token_id,
            "eos_token_id": spec.eos_token_id,
            "pad_token_id": spec.pad_token_id,
        }.items()
        if v is not None
    }
    head_dim = spec.hidden // spec.heads
    if spec.arch == "gpt2":
        ids = {"bos_token_id": spec.vocab_size - 1, "eos_token_id": spec.vocab_size - 1} | ids
        return GPT2Config(
            vocab_size=spec.vocab_size,
            n_embd=spec.hidden,
            n_layer=spec.n_layers,
            n_head=spec.heads,
            n_positions=spec.max_positions,
            **ids,
        )
    common: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden,
        "intermediate_size": 2 * spec.hidden,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": spec.max_positions,
        **ids,
    }
    if spec.arch == "llama":
        return LlamaConfig(
            **common,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": min(8192, spec.max_positions // 2),
            },
        )
    if spec.arch == "qwen2":
        return Qwen2Config(
            **common,
            use_sliding_window=spec.sliding_window is not None,
            sliding_window=spec.sliding_window,
            max_window_layers=spec.n_layers // 2,  # layers from here on slide: a hybrid stack
        )
    if spec.arch == "gemma2":
        return Gemma2Config(
            **common,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim * 3 // 2,  # != head_dim, as on gemma-2-27b (144 vs 128)
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            sliding_window=spec.sliding_window,
            attn_implementation="eager",  # type: ignore[call-arg]  # accepted; the stub omits it
        )
    if spec.arch == "gemma3":
        pattern = ["sliding_attention"] * 5 + ["full_attention"]
        return Gemma3TextConfig(
            **common,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=spec.sliding_window,
            layer_types=[pattern[i % 6] for i in range(spec.n_layers)],
            attn_implementation="eager",  # type: ignore[call-arg]  # accepted; the stub omits it
        )
    raise ValueError(f"unknown architecture {spec.arch!r}; choose one of {', '.join(ARCHITECTURES)}")


@torch.no_grad()
def tiny_model(spec: TinySpec, seed: int = 0, std: float = 0.1) -> PreTrainedModel:
    """A random-weight causal LM of ``spec`` in eval mode (float32).

    Matrices are drawn from ``N(0, std)`` with a private generator; vectors (norm weights, biases)
    keep the class's deterministic initialisation, so the model is a pure function of ``seed``.
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(spec)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    for _, param in sorted(model.named_parameters()):
        if param.dim() >= 2:
            param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model.eval()
