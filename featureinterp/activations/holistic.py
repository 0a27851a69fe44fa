"""Holistic (leave-one-token-out) activations (paper-method.md section 1.3).

For a row ``x`` of length T with content positions ``s..T-1`` (``s = 1`` after a BOS) and a
feature with activations ``a_t``:

    H_d(x) = mean_{t=s..T-1} a_t(x) - mean_{t=s..T-2} a_t(x without token d),   H_t = 0 for t < s

(``definition="sum"`` uses sums instead, which removes the 32-vs-31 positions artefact the paper's
means carry; the default reproduces the paper.)

Exact and cheaper than the paper's 32 full passes per row: the baseline and the variants come from
the same forward computation, the model stops after the SAE's layer, and the variant that drops
token ``d`` reuses the key/value cache of the unchanged prefix ``x[:d]`` (causal attention makes
it identical) so only its ``T-1-d`` suffix tokens are recomputed: about half the tokens of the
naive method. Only the rows asked for are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from featureinterp.activations import kv_cache
from featureinterp.activations.models import residuals, row_batches
from featureinterp.activations.sae import LoadedSae, check_features
from featureinterp.progress import Progress

__all__ = ["holistic_activations", "holistic_activations_naive", "holistic_corpus_max"]

Definition = Literal["mean", "sum"]


def _reduce(acts: torch.Tensor, definition: Definition) -> torch.Tensor:
    return acts.sum(1) if definition == "sum" else acts.mean(1)


@torch.no_grad()
def holistic_activations(
    model: torch.nn.Module,
    sae: LoadedSae,
    tokens: np.ndarray,
    features: Sequence[int],
    batch_size: int = 32,
    skip_first: bool = True,
    definition: Definition = "mean",
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Holistic activations [F, R, T] (float32) of ``features`` for the rows ``tokens`` [R, T]."""
    check_features(features, sae.d_sae, sae.layer)
    r, t = tokens.shape
    s = int(skip_first)
    device = next(model.parameters()).device
    out = np.zeros((len(features), r, t), dtype=np.float32)
    progress = Progress("holistic activations", r, log=log)
    for lo, ids in row_batches(model, tokens, batch_size, progress):
        b = len(ids)
        full_cache = kv_cache.new_cache(model, keep_past=True)  # sliding layers keep x[:d] for every d
        resid = residuals(model, ids, [sae.layer], use_cache=True, cache=full_cache)[sae.layer]
        acts = sae.encode(resid, features).float()  # [B, T, F]
        base = _reduce(acts[:, s:], definition)  # [B, F]
        h = torch.zeros(b, t, len(features), device=device)
        for d in range(s, t):
            if d == t - 1:  # dropping the last token changes nothing before it
                variant = acts[:, s : t - 1]
            else:
                suffix = ids[:, d + 1 :]
                kwargs: dict[str, Any] = {"position_ids": torch.arange(d, t - 1, device=device).expand(b, -1)}
                if d > 0:
                    kwargs |= {"cache": kv_cache.prefix(full_cache, d), "use_cache": True}
                res = residuals(model, suffix, [sae.layer], **kwargs)[sae.layer]
                variant = torch.cat([acts[:, s:d], sae.encode(res, features).float()], dim=1)
            h[:, d] = base - _reduce(variant, definition)
        out[:, lo : lo + b] = h.permute(2, 0, 1).cpu().numpy()
    return out


def holistic_corpus_max(
    model: torch.nn.Module,
    sae: LoadedSae,
    tokens: np.ndarray,
    features: Sequence[int],
    batch_size: int = 32,
    skip_first: bool = True,
    chunk_rows: int = 4096,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """[F] the maximum holistic value of each feature over every row of ``tokens`` [N, T] and
    every position: the paper's 0..5 scale of holistic values (it computes them for the whole
    corpus, paper-method.md 1.3 and §12.10). One drop-one-token sweep serves all ``features``;
    rows go through in chunks so memory stays [F, chunk_rows, T]."""
    out = np.full(len(features), -np.inf, dtype=np.float32)
    for lo in range(0, len(tokens), chunk_rows):
        h = holistic_activations(
            model, sae, tokens[lo : lo + chunk_rows], features, batch_size, skip_first, log=log
        )  # [F, chunk, T]
        out = np.maximum(out, h.reshape(len(features), -1).max(axis=1))
    return out


@torch.no_grad()
def holistic_activations_naive(
    model: torch.nn.Module,
    sae: LoadedSae,
    tokens: np.ndarray,
    features: Sequence[int],
    skip_first: bool = True,
    definition: Definition = "mean",
) -> np.ndarray:
    """The definition taken literally: one full-model run per row and per dropped token.

    Reference for tests and benchmarks only.
    """
    r, t = tokens.shape
    s = int(skip_first)
    device = next(model.parameters()).device
    out = np.zeros((len(features), r, t), dtype=np.float32)

    def acts_of(ids: torch.Tensor) -> torch.Tensor:
        res = residuals(model, ids[None], [sae.layer], stop=False)[sae.layer]
        return sae.encode(res, features).float()[0]  # [len, F]

    for i in range(r):
        ids = torch.as_tensor(tokens[i], dtype=torch.long, device=device)
        base = _reduce(acts_of(ids)[None, s:], definition)[0]
        for d in range(s, t):
            dropped = torch.cat([ids[:d], ids[d + 1 :]])
            out[:, i, d] = (base - _reduce(acts_of(dropped)[None, s:], definition)[0]).cpu().numpy()
    return out
