import math

import numpy as np
import pytest

from featureinterp.formatting import nonzero_fraction, quantize, record_block
from featureinterp.scoring import score


def test_quantize_floors_and_clips_on_the_global_max():
    assert quantize([0.0, 0.19, 0.2, 0.99, 1.0, 2.0, -1.0], 1.0).tolist() == [0, 0, 1, 4, 5, 5, 0]
    assert quantize([1.0, 2.0], 0.0).tolist() == [0, 0]  # dead feature: all zero, never NaN


def test_record_block_escapes_tokens_and_reveals():
    block = record_block(["a\tb", "\n", "c"], [1, 0, 3])
    assert block == "\n<start>\na\\tb\t1\n\\n\t0\nc\t3\n<end>\n"
    assert record_block(["x", "y"], [2, 4], reveal=1).splitlines()[2:4] == ["x\t2", "y\tunknown"]
    assert nonzero_fraction([[0, 1], [0, 0, 2]]) == pytest.approx(0.4)


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
