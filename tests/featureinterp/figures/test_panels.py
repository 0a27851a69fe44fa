"""featureinterp.figures.panels: the paper's other panels beside Figures 3 and 5.

The numbers first (the rule count a feature needs for 90% of its best score, the per-layer means
and 80% Student-t bands, checked by hand), then the drawing: one layer x rule-cap heatmap with its
values in the cells, and the two panel PNGs, which have as many panels as their inputs allow.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import seaborn as sns
from matplotlib.figure import Figure
from PIL import Image

from featureinterp.figures.panels import (
    cap_heatmap,
    fig3_panels,
    fig5_layer_table,
    fig5_panels,
    rules_for_share,
)

T_90_DF1 = 3.0776835371752544  # Student t quantile 0.9 with 1 degree of freedom (the 80% band)


def features_table() -> pl.DataFrame:
    """fig5's ``features`` table: monotone score / best per layer x feature x rule cap."""
    mono = {
        ("L00", 0): [0.4, 1.0, 1.0],  # 90% first reached at cap 2
        ("L00", 1): [0.5, 0.5, 1.0],  # at cap 3
        ("L00", 2): [1.0, 1.0, 1.0],  # not kept (its best score was <= 0): never counted
        ("L01", 3): [0.9 - 1e-13, 0.95, 1.0],  # 90% up to rounding: cap 1
    }
    return pl.DataFrame(
        [
            {"layer": layer, "feature": f, "rule_cap": cap, "kept": f != 2, "mono_prop": p}
            for (layer, f), props in mono.items()
            for cap, p in enumerate(props, start=1)
        ]
    )


def test_rules_for_share_is_the_smallest_cap_reaching_the_share() -> None:
    def needed(share: float) -> dict[tuple[str, int], int]:
        table = rules_for_share(features_table(), share)
        return {(r["layer"], r["feature"]): r["rules_needed"] for r in table.iter_rows(named=True)}

    assert needed(0.9) == {("L00", 0): 2, ("L00", 1): 3, ("L01", 3): 1}
    assert needed(0.5) == {("L00", 0): 2, ("L00", 1): 1, ("L01", 3): 1}
    assert rules_for_share(features_table()).columns == ["layer", "feature", "rules_needed"]


def test_fig5_layer_table_means_and_80_percent_bands_by_hand() -> None:
    frame = pl.DataFrame(
        {
            "layer": ["L00", "L00", "L00", "L00", "L01"],
            "rule_cap": [3, 3, 3, 1, 3],
            "complexity": [1.0, 3.0, math.nan, 100.0, 4.0],  # NaN dropped; cap 1 is not the highest cap
        }
    )
    table = fig5_layer_table(frame, features_table(), ["L00", "L01", "L02"])
    rows = {r["layer"]: r for r in table.iter_rows(named=True)}

    l0 = rows["L00"]  # complexity (1, 3): sem 1; rules needed (2, 3): sem 0.5
    assert (l0["rule_cap"], l0["n_complexity"], l0["n_rules_for_share"]) == (3, 2, 2)
    assert l0["mean_complexity"] == 2.0 and l0["complexity_ci"] == pytest.approx(T_90_DF1)
    assert l0["mean_rules_for_share"] == 2.5 and l0["rules_for_share_ci"] == pytest.approx(0.5 * T_90_DF1)
    l1 = rows["L01"]  # one value each: a mean without a band
    assert (l1["mean_complexity"], l1["n_complexity"], l1["mean_rules_for_share"]) == (4.0, 1, 1.0)
    assert math.isnan(l1["complexity_ci"]) and math.isnan(l1["rules_for_share_ci"])
    l2 = rows["L02"]  # a layer without results keeps its row
    assert (l2["n_complexity"], l2["n_rules_for_share"]) == (0, 0)
    assert math.isnan(l2["mean_complexity"]) and math.isnan(l2["mean_rules_for_share"])
    assert table["layer"].to_list() == ["L00", "L01", "L02"]


def test_cap_heatmap_writes_each_cell_value_in_layer_and_cap_order() -> None:
    summary = pl.DataFrame(
        [
            {"layer": layer, "rule_cap": cap, "mean_score": 0.1 * i + 0.01 * cap}
            for i, layer in enumerate(["L00", "L05"])
            for cap in (1, 2, 3)
        ]
    )
    fig = Figure()
    ax = fig.subplots()
    cap_heatmap(sns, ax, summary, "mean_score", [1, 2, 3], ["L05", "L00"], 1.0, "Rule count")

    assert [t.get_text() for t in ax.texts] == ["0.11", "0.12", "0.13", "0.01", "0.02", "0.03"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L05", "L00"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Rule count", "Layer")
    assert ax.collections[0].get_clim() == (0.0, 1.0)


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        return image.size


def test_fig3_panels_draws_one_panel_per_available_column(tmp_path: Path) -> None:
    summary = pl.DataFrame(
        [
            {"layer": layer, "source": source, "method": method, "mean_score": 0.3, "mean_complexity": 2.0,
             "mean_n_rules": 3.0}
            for layer in ("L02", "L10")
            for source in ("similar_negative", "random")
            for method in ("one_shot", "tree")
        ]
    )  # fmt: skip
    for folder in ("full", "score"):  # the figure that draws the panels made its folder
        (tmp_path / folder).mkdir()
    full = fig3_panels(summary, tmp_path / "full", "caption", False, "similar_negative")
    score_only = fig3_panels(
        summary.drop("mean_complexity", "mean_n_rules"),
        tmp_path / "score",
        "caption",
        True,
        "similar_negative",
    )
    assert full == tmp_path / "full" / "fig3_panels.png" and score_only.name == "fig3_panels.png"
    (w3, h3), (w1, h1) = _png_size(full), _png_size(score_only)
    assert w3 > 2 * w1 and abs(h3 - h1) < 0.2 * h3  # three panels side by side, against one
    unnumbered = fig3_panels(
        summary.with_columns(layer=pl.lit("SYN")), tmp_path / "score", "c", False, "random"
    )
    assert _png_size(unnumbered)[0] > 0  # layers without an index are drawn as labels


def test_fig5_panels_writes_the_four_heatmaps_and_three_line_panels(tmp_path: Path) -> None:
    layers = ["L00", "L01"]
    summary = pl.DataFrame(
        [
            {"layer": layer, "rule_cap": cap, "mean_score": 0.2 * cap, "mean_score_prop": 0.3 * cap,
             "mean_mono_score": 0.2 * cap, "mean_mono_prop": 0.3 * cap}
            for layer in layers
            for cap in (1, 2, 3)
        ]
    )  # fmt: skip
    frame = pl.DataFrame(
        {"layer": ["L00", "L00", "L01"], "rule_cap": [3, 3, 3], "complexity": [1.0, 3.0, 4.0]}
    )
    layer_table = fig5_layer_table(frame, features_table(), layers)
    path = fig5_panels(summary, layer_table, tmp_path, "2 of 4 features skipped", False)

    assert path == tmp_path / "fig5_panels.png"
    width, height = _png_size(path)
    assert width > 1200 and height > 500  # 4 heatmaps over 3 line panels, 16 inches wide at 120 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig5_panels.png"]  # no temp file left
