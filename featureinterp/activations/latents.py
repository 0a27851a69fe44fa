"""SAE activations of the studied features over every corpus row (paper-method.md section 1.2).

One forward pass per batch captures every requested layer and stops after the deepest one
(the paper runs to the logits and caches every hook). Output is feature-major ``[F, N, T]`` in
float16 so one feature's table is one contiguous slice. With ``stage_dir`` each layer's table is
streamed to a .npy file batch by batch (``storage.NpyStream``), so peak memory is one batch, not
rows x layers x features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featureinterp.activations.models import residuals, row_batches
from featureinterp.activations.sae import LoadedSae, check_features
from featureinterp.progress import Progress
from featureinterp.storage import NpyStream, StagedNpy

__all__ = ["FeatureActivations", "sae_activations"]


@dataclass
class FeatureActivations:
    """Activations of ``features`` at one layer."""

    acts: np.ndarray | StagedNpy
    """[F, N, T] float16, BOS position included (it is ignored by every statistic below); a staged
    .npy file when streamed (``stage_dir``)."""
    features: list[int]
    max: np.ndarray
    """[F] max activation over non-BOS tokens (from the fp32 values)."""
    token_freq: np.ndarray
    """[F] fraction of non-BOS tokens where the feature fires (> 0)."""
    row_count: np.ndarray
    """[F] rows where the feature fires on at least one token."""

    def dead(self) -> list[int]:
        return [f for f, m in zip(self.features, self.max, strict=False) if not m > 0]


@torch.no_grad()
def sae_activations(
    model: torch.nn.Module,
    saes: Mapping[int, LoadedSae],
    tokens: np.ndarray,
    features: Sequence[int],
    batch_size: int = 32,
    skip_first: bool = True,
    log: Callable[[str], None] | None = None,
    stage_dir: Path | None = None,
) -> dict[int, FeatureActivations]:
    """Encode every row of ``tokens`` [N, T] with every SAE in ``saes`` ({layer: LoadedSae});
    with ``stage_dir``, each layer's activations stream to ``stage_dir/<layer>.npy``."""
    layers = sorted(saes)
    for layer in layers:
        check_features(features, saes[layer].d_sae, layer)
    n, t = tokens.shape
    f = len(features)
    start = int(skip_first)
    dense: dict[int, np.ndarray] = {}
    streams: dict[int, NpyStream] = {}
    if stage_dir is None:
        dense = {layer: np.zeros((f, n, t), dtype=np.float16) for layer in layers}
    else:
        streams = {
            layer: NpyStream(Path(stage_dir) / f"{layer}.npy", (f, n, t), np.float16) for layer in layers
        }
    max_ = {layer: np.zeros(f, dtype=np.float32) for layer in layers}
    fired = {layer: np.zeros(f, dtype=np.int64) for layer in layers}
    rows = {layer: np.zeros(f, dtype=np.int64) for layer in layers}
    progress = Progress(f"SAE activations (layers {', '.join(map(str, layers))})", n, log=log)
    for lo, ids in row_batches(model, tokens, batch_size, progress):
        res = residuals(model, ids, layers)
        for layer in layers:
            acts = saes[layer].encode(res[layer], features).float()  # [B, T, F]
            body = acts[:, start:]
            max_[layer] = np.maximum(max_[layer], body.amax(dim=(0, 1)).cpu().numpy())
            fired[layer] += (body > 0).sum(dim=(0, 1)).cpu().numpy()
            rows[layer] += (body > 0).any(dim=1).sum(dim=0).cpu().numpy()
            block = acts.permute(2, 0, 1).cpu().numpy().astype(np.float16)  # [F, B, T]
            if stage_dir is None:
                dense[layer][:, lo : lo + len(ids)] = block
            else:
                streams[layer].write_rows(lo, block)
    n_tok = n * (t - start)
    return {
        layer: FeatureActivations(
            acts=dense[layer] if stage_dir is None else streams[layer].finish(),
            features=list(features),
            max=max_[layer],
            token_freq=fired[layer] / n_tok,
            row_count=rows[layer],
        )
        for layer in layers
    }
