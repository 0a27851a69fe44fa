"""Shared set-up for the benchmarks: the embedded model, real corpus rows, a TopK SAE, timing."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from featureinterp.activations.models import load_subject_model
from featureinterp.activations.sae import LoadedSae
from featureinterp.config import models_dir
from featureinterp.data.corpus import build_tokens
from featureinterp.presets import get_preset

QUICK_ENV = "FEATUREINTERP_BENCH_QUICK"
"""Set (to 1) by ``python -m benchmarks --quick``: each benchmark shrinks to a size that only
checks it runs end to end and prints complete JSON (its ratios mean nothing then)."""


def quick() -> bool:
    return os.environ.get(QUICK_ENV) == "1"


def sized(full: int, small: int) -> int:
    """``full`` normally, ``small`` in a quick run."""
    return small if quick() else full


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


class LayerPasses:
    """Counts the work a forward pass did: rows x decoder layers run, and rows through the LM head
    (a context manager; hooks removed on exit). Both sides of a benchmark are counted the same way,
    so the printed work says whether a side stopped early or computed logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        from featureinterp.activations.models import decoder_layers

        self.model, self.blocks = model, decoder_layers(model)
        self.layer_rows = self.head_rows = 0

    def __enter__(self) -> LayerPasses:
        def on_layer(_m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.layer_rows += x.shape[0]

        def on_head(_m, args):
            self.head_rows += args[0].shape[0]

        self.handles = [b.register_forward_pre_hook(on_layer, with_kwargs=True) for b in self.blocks]
        head = self.model.get_output_embeddings()
        if head is not None:
            self.handles.append(head.register_forward_pre_hook(on_head))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def work(self) -> dict[str, int]:
        return {"rows_x_layers": self.layer_rows, "rows_through_lm_head": self.head_rows}


def report(name: str, ratios: dict, checks: dict) -> None:
    print(json.dumps({"benchmark": name, "ratios": ratios, "checks": checks}))
