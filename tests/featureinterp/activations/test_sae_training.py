import numpy as np
import torch

from featureinterp.activations.models import residuals
from featureinterp.activations.sae import LoadedSae, load_sae_from_disk
from featureinterp.activations.sae_training import collect_residuals, sae_metadata, save_sae, train_topk_sae
from featureinterp.config import SaeTrainConfig


def test_trained_sae_reloads_with_sae_lens_and_reconstructs(embedded_model, embedded_rows, tmp_path):
    model = embedded_model[0]
    res = collect_residuals(model, embedded_rows, [5], n_tokens=12_000, batch_size=32, skip_first=True)[5]
    assert res.shape == (12_000, 576)
    cfg = SaeTrainConfig(
        expansion=2, k=16, n_tokens=12_000, epochs=3, batch_tokens=512, live_freq=(1e-3, 0.2)
    )
    result = train_topk_sae(res, cfg, sae_metadata("SmolLM2-135M-Instruct", 5, True, 33))
    assert result.explained_variance > 0.5, result  # a working SAE, not noise
    assert result.l0 <= 16 and 0 <= result.dead_fraction < 1

    reloaded = load_sae_from_disk(save_sae(result.sae, tmp_path / "L05"))
    assert reloaded.cfg.metadata.hook_name == "blocks.5.hook_resid_post"
    x = res[:300]
    assert torch.equal(reloaded.encode(x), result.sae.encode(x))

    # live latents come first: the studied F0000... fire within the band
    acts = LoadedSae.bind(reloaded, model, 5).encode(
        residuals(model, torch.as_tensor(embedded_rows[:64], dtype=torch.long), [5])[5][:, 1:]
    )
    freq = (acts > 0).float().mean(dim=(0, 1)).numpy()
    n_live = result.live_count
    assert n_live > 0 and (freq[: min(n_live, 5)] > 0).all()
    assert np.mean(freq[:n_live] > 0) > np.mean(freq[n_live:] > 0) if n_live < len(freq) else True
