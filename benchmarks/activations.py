"""SAE activations: ours (stop after the deepest hooked layer) vs the paper code's approach.

Paper approach (paper-method.md 1.2): batches of 12 rows run the whole model to the logits with
every hook cached, the SAE encodes the layer's output, the first F latents are kept, and all batches
accumulate in RAM before one concatenation. Ours: batches of 32, forward stopped after the layer,
feature-major float16 output written in place.

    python -m benchmarks.activations          # prints one JSON line last
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks._common import LayerPasses, cache_all_hooks, report, setup, sized, timed
from featureinterp.activations.latents import sae_activations
from featureinterp.activations.models import decoder_layers

LAYER, N_ROWS, N_FEATURES = 15, sized(384, 32), 50  # a middle layer of SmolLM2's 30


@torch.no_grad()
def paper_activations(model, sae, rows, features, batch_size=12):
    cache, handles = cache_all_hooks(model)
    block = [n for n, m in model.named_modules() if m is decoder_layers(model)[sae.layer]][0]
    out = []
    try:
        for lo in range(0, len(rows), batch_size):
            cache.clear()
            model(torch.as_tensor(rows[lo : lo + batch_size], dtype=torch.long))  # to the logits
            out.append(sae.encode(cache[block])[..., : len(features)].cpu())
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out).numpy()  # [N, T, F] float32


def main() -> None:
    model, _, rows, sae = setup(N_ROWS, LAYER)
    features = list(range(N_FEATURES))
    paper_activations(model, sae, rows[:12], features)  # warm-up both paths
    sae_activations(model, {LAYER: sae}, rows[:32], features)
    with LayerPasses(model) as paper_work:
        ref, t_paper = timed(paper_activations, model, sae, rows, features)
    with LayerPasses(model) as our_work:
        ours, t_ours = timed(sae_activations, model, {LAYER: sae}, rows, features, 32)
    n_layers = len(decoder_layers(model))
    # the baseline did the paper's work: every row through every layer and the LM head
    assert paper_work.work() == {"rows_x_layers": N_ROWS * n_layers, "rows_through_lm_head": N_ROWS}
    got = ours[LAYER].acts.transpose(1, 2, 0).astype(np.float32)
    err = float(np.abs(got - ref).max())
    report(
        "activations",
        {"speedup": round(t_paper / t_ours, 2)},
        {
            "max_abs_err_fp16": err,
            "max_rel_err": err / float(np.abs(ref).max()),
            "rows": N_ROWS,
            "layer": LAYER,
            "seconds_paper": round(t_paper, 2),
            "seconds_ours": round(t_ours, 2),
            "work": {"paper": paper_work.work(), "ours": our_work.work()},
        },
    )


if __name__ == "__main__":
    main()
