"""featureinterp.figures.calibration: the calibration summary of the synthetic features: the reference
rules then each explainer condition per feature, its score on the chosen source, and the share of
the true rule's score it recovers."""

import math

import polars as pl
import pytest

from featureinterp.figures.calibration import REFERENCES, calibration_summary
from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES


def _frame() -> pl.DataFrame:
    rows = []
    for feature, true in ((0, 0.8), (1, 0.0)):
        for source, offset in (("similar_negative", 0.0), ("random", 0.5)):
            for experiment, score in (("tree", 0.6), ("one_shot", 0.4)):
                rows.append(
                    {
                        "source": source,
                        "feature": feature,
                        "experiment": experiment,
                        "score": score + offset,
                        "true_rule_score": true,
                        "other_rule_score": 0.1,
                        "null_score": 0.0,
                    }
                )
    return pl.DataFrame(rows)


def test_summary_rows_per_feature_and_explanation():
    summary = calibration_summary(_frame())
    first = SYNTHETIC_FEATURES[0].name
    part = summary.filter(pl.col("feature") == first)
    assert part["explanation"].to_list() == [*REFERENCES.values(), "one_shot", "tree"]
    assert part["score"].to_list() == pytest.approx([0.8, 0.1, 0.0, 0.4, 0.6])
    assert part["recovery"].to_list() == pytest.approx([1.0, 0.125, 0.0, 0.5, 0.75])
    assert summary["feature"].unique().sort().to_list() == sorted([first, SYNTHETIC_FEATURES[1].name])


def test_recovery_is_nan_without_a_positive_true_score_and_source_is_chosen():
    second = calibration_summary(_frame()).filter(pl.col("feature") == SYNTHETIC_FEATURES[1].name)
    assert all(math.isnan(r) for r in second["recovery"].to_list())
    other = calibration_summary(_frame(), source="random").filter(pl.col("explanation") == "tree")
    assert other["score"].to_list() == pytest.approx([1.1, 1.1])
    with pytest.raises(ValueError, match="no rows with source 'nowhere'"):
        calibration_summary(_frame(), source="nowhere")
