"""Figure 4's comparisons under the test-record intervals (featureinterp/figures/comparisons.py)."""

import math

import polars as pl
import pytest

from featureinterp.figures.comparisons import comparisons_caption, fig4_comparisons


def _cell(method, condition, mean, hw, layer="L00", n=2):
    return {"method": method, "condition": condition, "layer": layer, "n": n, "mean_score": mean, "record_halfwidth": hw}


def test_a_comparison_overlaps_when_the_gap_is_within_the_summed_half_widths():
    summary = pl.DataFrame(
        [
            _cell("one_shot", "structured", 0.2, 0.05),
            _cell("tree", "structured", 0.31, 0.05),  # gap 0.11 > 0.10: separable
            _cell("one_shot", "unstructured", 0.15, 0.05),  # gap 0.05 to structured: not
            _cell("tree", "unstructured", 0.3, math.nan),  # no interval stored: no verdict
            _cell("tree", "structured_holistic", 0.9, 0.1, n=0),  # an empty cell is no comparison
        ]
    )
    table = fig4_comparisons(summary)
    verdict = {(r["kind"], r["b_method"], r["b_condition"]): r["overlap"] for r in table.iter_rows(named=True)}
    assert verdict == {
        ("tree vs one-shot", "tree", "structured"): False,
        ("tree vs one-shot", "tree", "unstructured"): None,
        ("unstructured vs structured", "one_shot", "unstructured"): True,
        ("unstructured vs structured", "tree", "unstructured"): None,
    }
    gap = table.filter(kind="tree vs one-shot", b_condition="structured")
    assert gap["difference"].item() == pytest.approx(0.11) and gap["reach"].item() == pytest.approx(0.1)
    assert "1 of 2 comparisons" in comparisons_caption(table)
    assert comparisons_caption(table.filter(pl.col("overlap").is_null())) == ""
