"""featureinterp.scoring: pooled (not per-record) Pearson correlation, its scale invariance, and
the one NaN policy (NaN exactly when undefined, with the reason)."""

import math

import numpy as np
import pytest

from featureinterp.scoring import score


def test_pooled_correlation_not_mean_of_records():
    true = [[0, 0, 1, 3], [0, 2, 0, 0]]
    pred = [[0, 1, 1, 2], [1, 2, 0, 0]]
    s = score(true, pred)
    assert s.correlation == pytest.approx(np.corrcoef(np.ravel(true), np.ravel(pred))[0, 1])
    assert s.r_squared == pytest.approx(s.correlation**2) and s.n_tokens == 8 and s.reason is None


def test_scale_invariant_and_nan_with_reasons():
    true = [[0.0, 1.5, 7.0, 0.2]]
    assert score(true, [[0, 1, 5, 0]]).correlation == pytest.approx(score(true, [[0, 10, 50, 0]]).correlation)
    const_pred = score(true, [[2, 2, 2, 2]])
    assert math.isnan(const_pred.correlation) and const_pred.reason == "predictions are constant"
    assert score([[0, 0, 0]], [[1, 2, 3]]).reason == "true activations are constant"
    with pytest.raises(ValueError, match="3 vs 2 tokens"):
        score([[1, 2, 3]], [[1, 2]])


def test_perfect_prediction_and_too_few_tokens():
    s = score([[0.0, 1.0, 4.0]], [[1.0, 3.0, 9.0]])  # an affine map of the truth
    assert s.correlation == pytest.approx(1.0) and s.abs_dev_explained == pytest.approx(1.0)
    one = score([[1.0]], [[1.0]])
    assert math.isnan(one.r_squared) and one.reason == "fewer than two tokens" and one.n_tokens == 1
