"""Holistic activations: ours vs the paper code's approach.

Paper approach (paper-method.md 1.3): for every batch of 16 rows and every dropped position d,
one full-model pass to the logits with every hook cached; the baseline mean comes from the stored
activations of a separate run; and this runs over *all* corpus rows. Ours: baseline and variants
from one computation, forward stopped at the SAE's layer, the unchanged prefix's key/value cache
reused, and only the rows the records show.

Ratios:
- ``speedup_same_rows``: both compute the same rows.
- ``speedup_paper_use``: the paper's cost for all rows of the embedded corpus vs ours for the rows
  records show (at most 210 rows per studied feature: 30 positives + 6 x 30 complementary), both
  extrapolated linearly from the measured per-row times (one full paper run would take hours).

    python -m benchmarks.holistic
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks._common import LayerPasses, cache_all_hooks, report, setup, sized, timed
from featureinterp.activations.holistic import holistic_activations, holistic_activations_naive
from featureinterp.activations.models import decoder_layers
from featureinterp.presets import get_preset

LAYER, N_ROWS, N_FEATURES = 10, sized(32, 4), 50


@torch.no_grad()
def paper_holistic(model, sae, rows, features, batch_size=16):
    cache, handles = cache_all_hooks(model)
    block = [n for n, m in model.named_modules() if m is decoder_layers(model)[sae.layer]][0]
    f = len(features)

    def run(ids):
        cache.clear()
        model(ids)  # to the logits, every hook cached
        return sae.encode(cache[block])[..., :f].float()

    n, t = rows.shape
    out = np.zeros((n, t, f), dtype=np.float32)
    try:
        stored = torch.cat(
            [run(torch.as_tensor(rows[lo : lo + 12], dtype=torch.long)) for lo in range(0, n, 12)]
        )
        for lo in range(0, n, batch_size):
            ids = torch.as_tensor(rows[lo : lo + batch_size], dtype=torch.long)
            base = stored[lo : lo + batch_size, 1:].mean(1)
            for d in range(1, t):
                dropped = torch.cat([ids[:, :d], ids[:, d + 1 :]], dim=1)
                out[lo : lo + len(ids), d] = (base - run(dropped)[:, 1:].mean(1)).numpy()
    finally:
        for h in handles:
            h.remove()
    return out.transpose(2, 0, 1)  # [F, N, T]


def main() -> None:
    model, _, rows, sae = setup(N_ROWS, LAYER)
    features = list(range(N_FEATURES))
    holistic_activations(model, sae, rows[:2], features)  # warm-up
    with LayerPasses(model) as paper_work:
        ref, t_paper = timed(paper_holistic, model, sae, rows, features)
    with LayerPasses(model) as our_work:
        ours, t_ours = timed(holistic_activations, model, sae, rows, features, 16)
    # the baseline did the paper's work: the stored pass, then one pass per dropped position, all
    # rows through every layer and the LM head
    passes = N_ROWS * rows.shape[1]  # N stored + N x (T - 1) dropped
    assert paper_work.work() == {"rows_x_layers": passes * len(decoder_layers(model)), "rows_through_lm_head": passes}
    naive = holistic_activations_naive(model, sae, rows[:2], features)
    preset = get_preset("embedded-large")  # 32-token rows, as the published numbers
    paper_rows = preset.n_rows
    our_rows = min(paper_rows, 210 * len(preset.features))
    per_row_paper, per_row_ours = t_paper / N_ROWS, t_ours / N_ROWS
    report(
        "holistic",
        {
            "speedup_same_rows": round(per_row_paper / per_row_ours, 2),
            "speedup_paper_use": round(per_row_paper * paper_rows / (per_row_ours * our_rows), 1),
        },
        {
            "max_abs_err": float(np.abs(ours[:, :2] - naive).max()),
            "max_abs_err_vs_paper": float(np.abs(ours - ref).max()),
            "max_abs_value": float(np.abs(naive).max()),
            "rows_measured": N_ROWS,
            "paper_rows": paper_rows,
            "our_rows": our_rows,
            "seconds_paper": round(t_paper, 2),
            "seconds_ours": round(t_ours, 2),
            "work": {"paper": paper_work.work(), "ours": our_work.work()},
        },
    )


if __name__ == "__main__":
    main()
