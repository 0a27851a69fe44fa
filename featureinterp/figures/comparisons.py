"""Figure 4's comparisons under the test-record intervals (ours, issue 33).

Every score carries a bootstrap interval over its test records; a Figure 4 cell's mean carries the
combined half-width of its features' intervals (``record_halfwidth``). Here: which of the figure's
comparisons those intervals cannot separate, as a table and a caption sentence.
"""

from __future__ import annotations

import math

import polars as pl

from featureinterp.figures.common import CONDITIONS, METHODS

__all__ = ["comparisons_caption", "fig4_comparisons"]


def fig4_comparisons(summary: pl.DataFrame) -> pl.DataFrame:
    """Figure 4's comparisons per layer (and pooled): tree vs one-shot under each condition, and
    each condition vs structured under each method, with the difference of means and whether the
    two means' test-record intervals overlap (|difference| <= the sum of half-widths; null when
    either half-width is unknown). An overlap says the comparison is not separable on these test
    records; no overlap is necessary, not sufficient, for a real difference (features vary too:
    ``ci_halfwidth``)."""
    cells = {(r["method"], r["condition"], r["layer"]): r for r in summary.iter_rows(named=True) if r["n"]}
    pairs = [("tree vs one-shot", ("one_shot", c), ("tree", c)) for c in CONDITIONS]
    pairs += [(f"{c} vs structured", (m, "structured"), (m, c)) for m in METHODS for c in CONDITIONS if c != "structured"]
    rows = []
    for layer in dict.fromkeys(summary["layer"].to_list()):
        for kind, a, b in pairs:
            ra, rb = cells.get((*a, layer)), cells.get((*b, layer))
            if ra is None or rb is None:
                continue
            diff = rb["mean_score"] - ra["mean_score"]
            reach = ra["record_halfwidth"] + rb["record_halfwidth"]
            rows.append(
                {
                    "layer": layer, "kind": kind, "a_method": a[0], "a_condition": a[1], "b_method": b[0],
                    "b_condition": b[1], "difference": diff, "reach": reach,
                    "overlap": bool(abs(diff) <= reach) if math.isfinite(reach) else None,
                }
            )  # fmt: skip
    schema = {
        "layer": pl.String, "kind": pl.String, "a_method": pl.String, "a_condition": pl.String,
        "b_method": pl.String, "b_condition": pl.String, "difference": pl.Float64, "reach": pl.Float64,
        "overlap": pl.Boolean,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def comparisons_caption(comparisons: pl.DataFrame) -> str:
    """The caption sentence on the comparisons (empty when no interval was stored)."""
    judged = comparisons.filter(pl.col("overlap").is_not_null())
    if not judged.height:
        return ""
    return (
        f"; grey: 95% test-record bootstrap of each mean; {int(judged['overlap'].sum())} of {judged.height} "
        "comparisons (tree vs one-shot per condition; each condition vs structured) lie within "
        "those intervals (marked ≈ for tree vs one-shot): not separable on these test records"
    )
