import numpy as np
import torch

from featureinterp.activations.latents import sae_activations
from featureinterp.activations.sae import LoadedSae
from tests.helpers import random_sae, tiny_llama


def test_values_and_statistics_match_direct_encoding():
    model = tiny_llama(n_layers=4)
    saes = {
        layer: LoadedSae.bind(random_sae(32, layer=layer, seed=layer), model, layer) for layer in (1, 2)
    }  # not the last layer: its hidden state is normed
    rows = torch.randint(2, 101, (10, 9), generator=torch.Generator().manual_seed(0)).numpy()
    rows[:, 0] = 1
    features = [0, 5, 9]
    out = sae_activations(model, saes, rows, features, batch_size=4)
    full = model(torch.as_tensor(rows, dtype=torch.long), output_hidden_states=True).hidden_states
    for layer, sae in saes.items():
        ref = sae.encode(full[layer + 1], features).permute(2, 0, 1).numpy()  # [F, N, T]
        got = out[layer]
        assert got.acts.shape == (3, 10, 9) and got.acts.dtype == np.float16
        assert np.abs(got.acts.astype(np.float32) - ref).max() <= 2e-3 * max(1.0, np.abs(ref).max())
        body = ref[:, :, 1:]
        np.testing.assert_allclose(got.max, body.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.token_freq, (body > 0).mean(axis=(1, 2)))
        np.testing.assert_array_equal(got.row_count, (body > 0).any(axis=2).sum(axis=1))


def test_dead_feature_is_reported_not_crashed():
    model = tiny_llama()
    raw = random_sae(32, layer=1)
    with torch.no_grad():
        raw.b_enc[2] = -1e4  # latent 2 can never win the top-k with a positive value
    sae = LoadedSae.bind(raw, model, 1)
    rows = torch.randint(2, 101, (6, 7), generator=torch.Generator().manual_seed(0)).numpy()
    out = sae_activations(model, {1: sae}, rows, [0, 2], batch_size=4)[1]
    assert out.dead() == [2]
    assert out.max[1] == 0 and np.isfinite(out.max).all()


def test_a_bfloat16_subject_model_feeds_float32_saes():
    """The embedded default's ``auto`` dtype puts the subject model in bfloat16 where the CPU has
    it natively, while the SAEs stay float32: the SAE passes (activations, holistic values) take
    the bfloat16 residual stream and give the float32 model's values up to bfloat16 rounding."""
    import copy

    from featureinterp.activations.holistic import holistic_activations

    model = tiny_llama(n_layers=4)
    half = copy.deepcopy(model).to(torch.bfloat16)
    raw = random_sae(32, layer=2, seed=2)
    rows = torch.randint(2, 101, (6, 9), generator=torch.Generator().manual_seed(1)).numpy()
    rows[:, 0] = 1
    features = list(range(32))  # every latent: a TopK SAE fires k of them per token
    full = sae_activations(model, {2: LoadedSae.bind(raw, model, 2)}, rows, features, batch_size=4)[2]
    approx = sae_activations(half, {2: LoadedSae.bind(raw, half, 2)}, rows, features, batch_size=4)[2]
    scale = float(np.abs(full.acts.astype(np.float32)).max())
    diff = np.abs(full.acts.astype(np.float32) - approx.acts.astype(np.float32)).max()
    assert full.acts.any() and 0 < diff <= 0.02 * scale, diff  # bfloat16 rounding, not float32 in disguise nor garbage
    h32 = holistic_activations(model, LoadedSae.bind(raw, model, 2), rows[:3], features, batch_size=2)
    h16 = holistic_activations(half, LoadedSae.bind(raw, half, 2), rows[:3], features, batch_size=2)
    assert h32.any() and h16.dtype == np.float32 and np.abs(h32 - h16).max() <= 0.02 * float(np.abs(h32).max())
