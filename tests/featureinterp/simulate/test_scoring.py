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


def test_bootstrap_interval_covers_the_score_and_narrows_with_more_records():
    """Groundwork for issue 33's error bars: resampling records within groups, from token sums."""
    from featureinterp.simulate.scoring import bootstrap_interval

    gen = np.random.default_rng(0)

    def records(n):
        true = [gen.gamma(1.0, 1.0, 16) * (gen.random(16) < 0.3) for _ in range(n)]
        pred = [t + gen.normal(0, 0.8, 16) for t in true]
        return true, pred

    true, pred = records(20)
    point = score(true, pred).correlation
    low, high, undefined = bootstrap_interval(true, pred, [0] * 10 + [1] * 10, np.random.default_rng(1))
    assert low < point < high and undefined == 0.0
    again = bootstrap_interval(true, pred, [0] * 10 + [1] * 10, np.random.default_rng(1))
    assert again == (low, high, undefined)  # the caller's generator decides, nothing global
    # the slow way agrees: pooled correlation of explicitly resampled records
    rng, slow = np.random.default_rng(1), []
    for _ in range(1000):
        picks = np.concatenate([rng.integers(0, 10, 10), 10 + rng.integers(0, 10, 10)])
        slow.append(score([true[i] for i in picks], [pred[i] for i in picks]).correlation)
    assert np.percentile(slow, [2.5, 97.5]) == pytest.approx([low, high], abs=0.03)
    big_true, big_pred = records(200)
    narrow = bootstrap_interval(big_true, big_pred, [0] * 100 + [1] * 100, np.random.default_rng(1))
    assert narrow[1] - narrow[0] < (high - low) / 2  # ~1/sqrt(10) as wide with 10x the records
    flat = bootstrap_interval([np.zeros(4)] * 3, [np.ones(4)] * 3, [0, 0, 0], np.random.default_rng(0))
    assert np.isnan(flat[0]) and flat[2] == 1.0  # constant truth: every resample undefined
