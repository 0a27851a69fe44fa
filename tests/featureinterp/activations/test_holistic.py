import numpy as np
import pytest
import torch

from featureinterp.activations.holistic import holistic_activations, holistic_activations_naive
from featureinterp.activations.models import residuals
from featureinterp.activations.sae import LoadedSae
from tests.helpers import random_sae, tiny_gpt2, tiny_llama

FEATURES = [0, 3, 7, 11]


def _rows(n: int, t: int, bos: int | None = 1, seed: int = 0) -> np.ndarray:
    rows = torch.randint(2, 101, (n, t), generator=torch.Generator().manual_seed(seed)).numpy()
    if bos is not None:
        rows[:, 0] = bos
    return rows


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("definition", ["mean", "sum"])
def test_equals_naive_definition(build, definition):
    model = build()
    sae = LoadedSae.bind(random_sae(32, layer=1), model, 1)
    rows = _rows(5, 13)
    fast = holistic_activations(model, sae, rows, FEATURES, batch_size=2, definition=definition)
    naive = holistic_activations_naive(model, sae, rows, FEATURES, definition=definition)
    assert np.abs(naive).max() > 1e-3  # the check below is not vacuous
    assert np.abs(fast - naive).max() <= 1e-4
    assert (fast[:, :, 0] == 0).all()  # BOS is never dropped


def test_without_bos_every_position_is_dropped():
    model = tiny_llama()
    sae = LoadedSae.bind(random_sae(32, layer=1), model, 1)
    rows = _rows(3, 9, bos=None)
    fast = holistic_activations(model, sae, rows, FEATURES, skip_first=False)
    naive = holistic_activations_naive(model, sae, rows, FEATURES, skip_first=False)
    assert np.abs(fast - naive).max() <= 1e-4 and np.abs(fast[:, :, 0]).max() > 0


def test_mean_definition_matches_the_formula_by_hand():
    """H_d = mean(a(x)[1:]) - mean(a(x without d)[1:]) for one hand-checked position."""
    model = tiny_gpt2()
    sae = LoadedSae.bind(random_sae(32, layer=1), model, 1)
    row = _rows(1, 8)
    h = holistic_activations(model, sae, row, [3])
    ids = torch.as_tensor(row, dtype=torch.long)
    a = sae.encode(residuals(model, ids, [1], stop=False)[1], [3])[0, :, 0]
    dropped = torch.cat([ids[:, :4], ids[:, 5:]], dim=1)
    a_drop = sae.encode(residuals(model, dropped, [1], stop=False)[1], [3])[0, :, 0]
    assert abs(h[0, 0, 4] - (a[1:].mean() - a_drop[1:].mean()).item()) <= 1e-6


def test_embedded_model_equals_naive(embedded_model, embedded_rows):
    model = embedded_model[0]
    sae = LoadedSae.bind(random_sae(576, d_sae=256, k=16, layer=5), model, 5)
    rows = embedded_rows[:3]
    fast = holistic_activations(model, sae, rows, [0, 1, 2, 3, 4, 5], batch_size=3)
    naive = holistic_activations_naive(model, sae, rows, [0, 1, 2, 3, 4, 5])
    assert np.abs(naive).max() > 1e-3
    assert np.abs(fast - naive).max() <= 1e-4 * max(1.0, float(np.abs(naive).max()))
