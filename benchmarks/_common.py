"""Shared set-up for the benchmarks: the embedded model, real corpus rows, a TopK SAE, timing."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from featureinterp.config import get_preset, models_dir
from featureinterp.corpus import build_tokens
from featureinterp.models import load_subject_model
from featureinterp.sae import LoadedSae


def setup(n_rows: int, layer: int, d_sae: int = 4608, k: int = 32, seed: int = 0):
    """(model, tokenizer, rows, LoadedSae) with a seeded random TopK SAE at ``layer``.

    A random SAE costs exactly what a trained one of the same shape costs, which is all a speed
    benchmark needs; exactness is checked against the naive computation on the same SAE.
    """
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    preset = get_preset("embedded-large")  # 32-token rows, as the published numbers
    model, tok = load_subject_model(preset.model, models_dir(), device="cpu")
    rows = build_tokens(preset.replace(n_rows=max(n_rows, 1000)), tok)[:n_rows]
    d = model.config.hidden_size
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=d,
            d_sae=d_sae,
            k=k,
            metadata=SAEMetadata(
                hook_name=f"blocks.{layer}.hook_resid_post", model_class_name="AutoModelForCausalLM"
            ),
        )
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, d_sae, generator=gen) / d**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d, generator=gen) / d**0.5)
    return model, tok, rows, LoadedSae.bind(sae.eval(), model, layer)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def cache_all_hooks(model: torch.nn.Module):
    """The paper's `run_with_cache` without a names filter: every module's output is kept."""
    cache: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if name:

            def hook(_m, _a, out, name=name):
                cache[name] = out[0] if isinstance(out, tuple) else out

            handles.append(module.register_forward_hook(hook))
    return cache, handles


def report(name: str, ratios: dict, checks: dict) -> None:
    print(json.dumps({"benchmark": name, "ratios": ratios, "checks": checks}))
