"""featureinterp.figures.grids: the paper's layer choice (``paper_layers``), each preset's figure
grids (none for the embedded preset, Figures 4-5 for GPT-2 small), the conditions a figure draws
and the scopes that confine paper-only conditions."""

import dataclasses

import polars as pl
import pytest

from featureinterp.config import layer_key
from featureinterp.figures.grids import (
    FIG4_CONDITIONS,
    condition_scope,
    figure_conditions,
    figure_grids,
    paper_layers,
    select_grid,
)
from featureinterp.presets import get_preset


def test_paper_layers_spread_evenly_over_the_model():
    assert paper_layers(12) == (0, 2, 3, 5, 6, 8, 9, 11)
    assert paper_layers(42) == (0, 6, 12, 18, 23, 29, 35, 41)
    assert paper_layers(5, points=3) == (0, 2, 4)


def test_embedded_preset_has_no_paper_grid_and_runs_every_condition_everywhere():
    preset = get_preset("embedded")
    assert figure_grids(preset) == {}
    scope = condition_scope(preset)
    own = {f"{f}|{layer_key(x)}" for x in preset.layers for f in preset.feature_keys}
    only = preset.explain.synthetic_conditions
    assert only is not None  # the embedded preset runs SYN features on a few conditions only
    for cond in preset.explain.conditions:
        if cond in only:
            assert cond not in scope, "unscoped: runs on every partition, SYN included"
        else:
            assert scope[cond] == own, cond


def test_gpt2_small_grids_are_figures_4_and_5():
    grids = figure_grids(get_preset("gpt2-small"))
    assert list(grids) == ["fig4", "fig5"]
    assert grids["fig4"].layers == paper_layers(12) and grids["fig4"].features == tuple(range(30))
    assert grids["fig4"].conditions == FIG4_CONDITIONS and grids["fig5"].complexity
    assert (grids["fig4"].tree.depth, grids["fig4"].tree.width) == (2, 2) and grids["fig5"].tree is None
    assert grids["fig4"].to_dict()["tree"]["depth"] == 2


def test_figure_conditions_and_select_grid():
    present = ("one_shot", "tree", "one_shot_cap1", "tree_unstructured")
    assert figure_conditions("fig3", present) == ("one_shot", "tree")
    assert figure_conditions("fig3", present + ("fig3_tree",)) == ("fig3_tree",)
    assert figure_conditions("fig5", present) == ("one_shot", "one_shot_cap1")
    table = pl.DataFrame(
        {"layer": ["L00", "L01", "L00"], "feature": [0, 0, 40], "experiment": ["one_shot", "tree", "tree"]}
    )
    grid = figure_grids(get_preset("gpt2-small"))["fig4"]
    rows, note = select_grid(table, grid, present, "fig4")
    assert rows["layer"].to_list() == ["L00"] and "conditions not run" in note and "8 layers" in note
    rows, note = select_grid(table, None, ("one_shot",), "fig4")
    assert rows["experiment"].to_list() == ["one_shot"] and note.endswith("one_shot")
    with pytest.raises(ValueError, match="rematerialize layer_results"):
        select_grid(table.drop("experiment"), None, present, "fig4")


def test_figure3_draws_its_own_runs_only_once_they_are_scored():
    present = ("fig3_one_shot", "fig3_tree", "one_shot", "tree")
    assert figure_conditions("fig3", present) == ("fig3_one_shot", "fig3_tree")
    # a run of the structured cells alone: Figure 3 draws them rather than nothing
    assert figure_conditions("fig3", present, scored={"one_shot", "tree"}) == ("one_shot", "tree")
    assert figure_conditions("fig3", present, scored={"fig3_tree", "one_shot"}) == ("fig3_one_shot", "fig3_tree")
    table = pl.DataFrame({"layer": ["L00", "L00"], "feature": [0, 1], "experiment": ["one_shot", "tree"]})
    rows, note = select_grid(table, None, present, "fig3")
    assert len(rows) == 2 and note.endswith("one_shot, tree")


def test_figure_cells_are_the_scores_each_figure_draws():
    from featureinterp.figures.grids import figure_cells
    from featureinterp.names import SYNTHETIC_KEY

    gpt2 = get_preset("gpt2-small")
    fig4 = figure_cells(gpt2, "fig4")
    assert set(fig4) == set(FIG4_CONDITIONS)
    layers = {k.split("|")[1] for k in fig4["tree"]}
    assert layers == {layer_key(x) for x in paper_layers(12)} and len(fig4["tree"]) == 8 * 30
    # no paper grid for Figure 3 on GPT-2: the preset's layers x features, its runs or the cells
    fig3 = figure_cells(gpt2, "fig3")
    assert {"fig3_one_shot", "fig3_tree", "one_shot", "tree"} == set(fig3)
    assert all(SYNTHETIC_KEY not in k for keys in fig3.values() for k in keys)
    embedded = get_preset("embedded")
    calibration = figure_cells(embedded, "fig_calibration")
    assert set(calibration) == set(embedded.explain.conditions)
    assert all(k.endswith(f"|{SYNTHETIC_KEY}") for k in calibration["one_shot"])
    no_syn = embedded.replace(explain=dataclasses.replace(embedded.explain, synthetic=False))
    assert figure_cells(no_syn, "fig_calibration") == {}
