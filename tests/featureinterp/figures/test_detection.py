"""Figure 3's detection view (featureinterp/figures/detection.py) from figure-table rows."""

from __future__ import annotations

import math

import polars as pl
import pytest

from featureinterp.figures.common import result_frame, result_rows
from featureinterp.figures.detection import fig3_detection
from featureinterp.names import COMPLEMENTARY_SOURCES, PRIMARY_SOURCE


def _score(layer: str, feature: int, method: str) -> dict:
    return {
        "layer_key": layer,
        "feature": feature,
        "condition": method,
        "method": method,
        "figure_condition": "structured",
        "rule_cap": 5,
        "per_source": {s: {"score": 0.5, "fp_rate": 0.1} for s in COMPLEMENTARY_SOURCES},
    }


def _detection(precision: float) -> dict:
    per_source = {s: {"precision": 1.0, "recall": 0.5, "balanced_accuracy": 0.75} for s in COMPLEMENTARY_SOURCES}
    per_source[PRIMARY_SOURCE] = {"precision": precision, "recall": 0.5, "balanced_accuracy": 0.6}
    return {"detection": {"per_source": per_source}}


def test_detection_view_averages_precision_per_source_and_method(tmp_path) -> None:
    rows = []
    for layer in ("L05", "L10"):
        for feature, precision in ((0, 0.4), (1, 0.8)):
            for method in ("one_shot", "tree"):
                rows += result_rows(_score(layer, feature, method), None, _detection(precision))
    result = fig3_detection(result_frame(rows), tmp_path, expected=2)
    assert result is not None and result.png.is_file() and (tmp_path / "fig3_detection.parquet").is_file()
    summary = result.summary
    primary = summary.filter((pl.col("source") == PRIMARY_SOURCE) & (pl.col("method") == "tree"))
    assert primary["mean_detection_precision"].to_list() == pytest.approx([0.6, 0.6])
    random = summary.filter(pl.col("source") == "random")
    assert random["mean_detection_precision"].to_list() == pytest.approx([1.0] * 4)
    assert summary["mean_fp_per_sentence"].to_list() == pytest.approx([0.1 * 32] * len(summary))
    assert not result.incomplete and set(summary["n"].to_list()) == {2}


def test_no_detection_scores_no_view(tmp_path) -> None:
    rows = result_rows(_score("L05", 0, "tree"))  # scored by simulation only
    frame = result_frame(rows)
    assert math.isnan(frame["detection_precision"][0])
    assert fig3_detection(frame, tmp_path) is None
    assert fig3_detection(frame.drop("detection_precision"), tmp_path) is None
