"""Train a small TopK SAE on the subject model's residual stream (embedded preset).

A plain PyTorch loop (Gao et al. 2024 TopK SAE with the AuxK loss for dead latents) over residual
vectors gathered with the stop-at-layer hook, saved in sae-lens's on-disk format so it loads back
with ``SAE.load_from_disk`` like any released SAE. After training, latents are reordered so the
ones firing on a sensible fraction of tokens come first: studied features F0000... are then live,
interpretable latents in every layer (a permutation of latents leaves the SAE's function unchanged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from featureinterp.activations.models import hook_name, residuals, row_batches
from featureinterp.config import Preset, SaeTrainConfig
from featureinterp.progress import Progress
from featureinterp.storage import atomic_dir

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = [
    "SaeTrainResult",
    "collect_residuals",
    "sae_metadata",
    "save_sae",
    "train_layer_saes",
    "train_topk_sae",
]

logger = logging.getLogger(__name__)


@dataclass
class SaeTrainResult:
    sae: SAE
    explained_variance: float
    """1 - SSE / total variance on held-out tokens."""
    l0: float
    """Mean active latents per held-out token."""
    dead_fraction: float
    """Latents that never fire on held-out tokens."""
    live_count: int
    """Latents firing within ``live_freq``; they occupy indices 0..live_count-1."""
    steps: int


@torch.no_grad()
def collect_residuals(
    model: torch.nn.Module,
    tokens: np.ndarray,
    layers: list[int],
    n_tokens: int,
    batch_size: int,
    skip_first: bool,
    log: Callable[[str], None] | None = None,
) -> dict[int, torch.Tensor]:
    """Residual vectors of the first rows of ``tokens`` at each layer (one pass for all layers).

    The BOS position is skipped: its residual has a huge norm and carries no text.
    """
    start = int(skip_first)
    rows = min(len(tokens), -(-n_tokens // (tokens.shape[1] - start)))
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    progress = Progress("SAE training activations", rows, log=log)
    for _, ids in row_batches(model, tokens, batch_size, progress, rows):
        res = residuals(model, ids, layers)
        for layer in layers:
            out[layer].append(res[layer][:, start:].reshape(-1, res[layer].shape[-1]).float().cpu())
    return {layer: torch.cat(chunks)[:n_tokens] for layer, chunks in out.items()}


def _topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


def train_topk_sae(
    resid: torch.Tensor,
    cfg: SaeTrainConfig,
    metadata: dict,
    log: Callable[[str], None] | None = None,
) -> SaeTrainResult:
    """Train on ``resid`` [n, d]; 5% of the vectors are held out for the metrics."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(cfg.seed)
    resid = resid[torch.randperm(len(resid), generator=gen)]
    n_eval = max(256, len(resid) // 20)
    train, held_out = resid[n_eval:], resid[:n_eval]
    n, d = train.shape
    m = cfg.expansion * d

    w_dec = torch.randn(m, d, generator=gen)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    params: dict[str, torch.Tensor] = {  # nn.Parameters (typed as Tensors: the in-place "/=" below)
        "W_dec": torch.nn.Parameter(w_dec.clone()),
        "W_enc": torch.nn.Parameter(w_dec.T.clone()),
        "b_enc": torch.nn.Parameter(torch.zeros(m)),
        "b_dec": torch.nn.Parameter(train.mean(0).clone()),
    }
    opt = torch.optim.Adam(params.values(), lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch = max(1, n // cfg.batch_tokens)
    total = steps_per_epoch * cfg.epochs
    last_fired = torch.zeros(m, dtype=torch.long)
    dead_after = max(50, steps_per_epoch // 2)  # steps without firing before a latent counts as dead
    k_aux = min(d // 2, m)
    variance = (train - train.mean(0)).pow(2).sum(-1).mean()
    progress = Progress("SAE training", total, unit="steps", log=log)
    step = 0
    for _epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            x = train[order[i * cfg.batch_tokens : (i + 1) * cfg.batch_tokens]]
            pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
            acts = _topk(pre, cfg.k)
            recon = acts @ params["W_dec"] + params["b_dec"]
            err = x - recon
            loss = err.pow(2).sum(-1).mean() / variance
            fired = (acts > 0).any(0)
            last_fired[fired] = step
            dead = (step - last_fired) > dead_after
            if dead.any():  # AuxK: dead latents learn to explain the residual error
                aux_pre = pre.masked_fill(~dead, float("-inf"))
                aux = _topk(aux_pre, min(k_aux, int(dead.sum())))
                aux_loss = (aux @ params["W_dec"] - err.detach()).pow(2).sum(-1).mean() / variance
                loss = loss + aux_loss / 32
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True)
            step += 1
            progress.update(1)

    with torch.no_grad():
        pre = (held_out - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        acts = _topk(pre, cfg.k)
        recon = acts @ params["W_dec"] + params["b_dec"]
        ev = 1 - (held_out - recon).pow(2).sum() / (held_out - held_out.mean(0)).pow(2).sum()
        freq = (acts > 0).float().mean(0)
        lo, hi = cfg.live_freq
        live = (freq >= lo) & (freq <= hi)
        order = torch.cat([torch.nonzero(live).flatten(), torch.nonzero(~live).flatten()])
        state = {
            "W_enc": params["W_enc"][:, order].contiguous(),
            "b_enc": params["b_enc"][order].contiguous(),
            "W_dec": params["W_dec"][order].contiguous(),
            "b_dec": params["b_dec"].detach().clone(),
        }
    sae_cfg = TopKSAEConfig(
        d_in=d,
        d_sae=m,
        k=cfg.k,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        metadata=SAEMetadata(**metadata, featureinterp_training=asdict(cfg)),
    )
    sae = TopKSAE(sae_cfg)
    sae.load_state_dict(state)
    return SaeTrainResult(
        sae=sae.eval(),
        explained_variance=float(ev),
        l0=float((acts > 0).sum(-1).float().mean()),
        dead_fraction=float((freq == 0).float().mean()),
        live_count=int(live.sum()),
        steps=step,
    )


def sae_metadata(model_name: str, layer: int, prepend_bos: bool, context_size: int) -> dict:
    """sae-lens metadata for an SAE trained on raw Hugging Face hidden states (never centred)."""
    return {
        "model_name": model_name,
        "hook_name": hook_name(layer),
        "hook_head_index": None,
        "prepend_bos": prepend_bos,
        "context_size": context_size,
        "model_class_name": "AutoModelForCausalLM",  # raw transformers hidden states: never centred
    }


def save_sae(sae: SAE, path: Path | str) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` atomically (sae-lens's layout)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        sae.save_model(tmp)
    return path


def train_layer_saes(
    model: torch.nn.Module,
    tokens: np.ndarray,
    preset: Preset,
    layers: list[int],
    out_dir: Path,
    log: Callable[[str], None] | None = None,
) -> dict[int, tuple[Path, SaeTrainResult]]:
    """Train and save one SAE per layer; residuals for all layers come from one forward pass."""
    cfg = preset.sae.train
    res = collect_residuals(model, tokens, layers, cfg.n_tokens, preset.batch_size, preset.prepend_bos, log)
    out = {}
    for layer in layers:
        meta = sae_metadata(preset.model.name, layer, preset.prepend_bos, tokens.shape[1])
        result = train_topk_sae(res.pop(layer), cfg, meta, log)
        out[layer] = (save_sae(result.sae, Path(out_dir) / f"L{layer:02d}"), result)
    return out
