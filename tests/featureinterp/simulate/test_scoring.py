"""featureinterp.simulate.scoring: pooled (not per-record) Pearson correlation, its scale invariance, the
two definitions (the paper's by default; ``rescaled``) and their NaN rules with reasons. Hand-worked
parity cases of the paper's definitions are in test_paper_parity.py."""

import math

import numpy as np
import pytest

from featureinterp.simulate.scoring import score


def test_pooled_correlation_not_mean_of_records():
    true = [[0, 0, 1, 3], [0, 2, 0, 0]]
    pred = [[0, 1, 1, 2], [1, 2, 0, 0]]
    s = score(true, pred)
    t, p = np.ravel(true).astype(float), np.ravel(pred).astype(float)
    assert s.correlation == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert s.r_squared == pytest.approx(1 - np.mean((t - p) ** 2) / np.mean(t**2))
    assert s.n_tokens == 8 and s.reason is None
    assert score(true, pred, "rescaled").r_squared == pytest.approx(s.correlation**2)


@pytest.mark.parametrize("metrics", ["paper", "rescaled"])
def test_scale_invariant_and_nan_with_reasons(metrics):
    true = [[0.0, 1.5, 7.0, 0.2]]
    a, b = score(true, [[0, 1, 5, 0]], metrics), score(true, [[0, 10, 50, 0]], metrics)
    assert a.correlation == pytest.approx(b.correlation)
    const_pred = score(true, [[2, 2, 2, 2]], metrics)
    assert math.isnan(const_pred.correlation) and const_pred.reason == "predictions are constant"
    assert score([[0, 0, 0]], [[1, 2, 3]], metrics).reason == "true activations are constant"
    with pytest.raises(ValueError, match="3 vs 2 tokens"):
        score([[1, 2, 3]], [[1, 2]], metrics)


def test_perfect_prediction_and_too_few_tokens():
    s = score([[0.0, 1.0, 4.0]], [[1.0, 3.0, 9.0]], "rescaled")  # an affine map of the truth
    assert s.correlation == pytest.approx(1.0) and s.abs_dev_explained == pytest.approx(1.0)
    exact = score([[0.0, 1.0, 4.0]], [[0.0, 1.0, 4.0]])  # the paper's: 1 only for p == t itself
    assert exact.r_squared == pytest.approx(1.0) and exact.abs_dev_explained == pytest.approx(1.0)
    one = score([[1.0]], [[1.0]])
    assert math.isnan(one.r_squared) and one.reason == "fewer than two tokens" and one.n_tokens == 1
    with pytest.raises(ValueError, match="unknown score metrics"):
        score([[1.0, 2.0]], [[1.0, 2.0]], "centred")  # type: ignore[arg-type]
