"""Random-weight stand-ins for the SAE families of the paper presets, built with sae-lens's classes.

Stand-in runs and the SAE conformance tests (``tests/featureinterp/presets/test_sae_families.py``) need SAEs of the
same *family* as the released ones, because each family takes a different code path in sae-lens:

- ``jumprelu``: Gemma Scope (per-latent thresholds, ``apply_b_dec_to_input=False``) and Llama Scope,
  which sae-lens 6.54 also loads as a JumpReLU SAE (one threshold repeated over all latents,
  ``apply_b_dec_to_input=False``, ``normalize_activations="expected_average_only_in"`` with the
  dataset-norm factor folded into the weights by ``from_pretrained``);
- ``topk``: OpenAI's GPT-2 32k SAEs (``gpt2-small-resid-post-v5-32k``) and our own trained SAEs;
- ``standard``: a ReLU SAE, the family sae-lens trains by default (dataset-norm scaling included).

The SAEs are the real sae-lens classes, so ``save_sae`` writes sae-lens's on-disk format and
``featureinterp.activations.sae.load_sae_from_disk`` reads it back like any released SAE. Weights come from a
private generator seeded by the caller (the global RNG is never touched) and are scaled so that
every latent fires on some inputs and none fires on all: sparse but alive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from featureinterp.activations.sae_training import save_sae

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = ["FAMILIES", "Family", "random_sae", "save_sae"]

Family = Literal["jumprelu", "topk", "standard"]
FAMILIES: tuple[Family, ...] = ("jumprelu", "topk", "standard")


@torch.no_grad()
def random_sae(
    family: Family,
    d_in: int,
    d_sae: int,
    hook_name: str = "blocks.0.hook_resid_post",
    seed: int = 0,
    *,
    input_scale: float = 1.0,
    metadata: dict[str, Any] | None = None,
    **cfg_overrides: Any,
) -> SAE:
    """An sae-lens SAE of ``family`` with random weights, in eval mode.

    ``input_scale`` is the RMS of one coordinate of the inputs it will see (e.g.
    ``resid.pow(2).mean().sqrt()``): encoder columns have norm 1, so a pre-activation is about
    ``input_scale`` wide, and biases / thresholds are drawn on that scale so that latents fire on
    roughly 3-40% of inputs (TopK keeps ``k`` per input, default ``d_sae // 16``).
    ``b_dec`` is non-zero, so ``apply_b_dec_to_input`` changes the latents, and decoder rows have
    norms 0.5-1.5, so folding decoder norms into the encoder (``fold_W_dec_norm``) changes them too.

    ``metadata`` extends sae-lens's ``SAEMetadata`` (``hook_name`` is always set). Without
    ``model_class_name`` the SAE counts as trained on a TransformerLens model, as sae-lens's own
    SAEs are, so ``LoadedSae.bind`` centres GPT-2 residuals for it. ``cfg_overrides`` go to the
    family's config class (``apply_b_dec_to_input``, ``normalize_activations``, ``k``, ``dtype``...).
    """
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    classes = {
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
        "topk": (TopKSAE, TopKSAEConfig),
        "standard": (StandardSAE, StandardSAEConfig),
    }
    if family not in classes:
        raise ValueError(f"unknown SAE family {family!r}; choose one of {', '.join(FAMILIES)}")
    sae_cls, cfg_cls = classes[family]
    if family == "topk":
        cfg_overrides.setdefault("k", max(1, d_sae // 16))
    meta = SAEMetadata(**{**(metadata or {}), "hook_name": hook_name})
    sae = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, metadata=meta, **cfg_overrides))

    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    def uniform(n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    w_enc = draw(d_in, d_sae)
    w_dec = draw(d_sae, d_in)
    state = {
        "W_enc": w_enc / w_enc.norm(dim=0, keepdim=True),
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True) * uniform(d_sae, 0.5, 1.5)[:, None],
        "b_dec": draw(d_in) * 0.5 * input_scale,
    }
    if family == "standard":  # ReLU fires when pre > 0: a negative bias sets each latent's rate
        state["b_enc"] = -uniform(d_sae, 0.25, 1.75) * input_scale
    else:
        state["b_enc"] = draw(d_sae) * 0.1 * input_scale
    if family == "jumprelu":  # per-latent thresholds, as Gemma Scope's
        state["threshold"] = uniform(d_sae, 0.25, 2.0) * input_scale
    dtype = sae.W_enc.dtype
    for name, value in state.items():
        getattr(sae, name).copy_(value.to(dtype))
    return sae.eval()
