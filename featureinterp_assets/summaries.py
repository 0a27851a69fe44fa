"""The summaries at the end of `featureinterp run`: per-layer result tables, figures and exports,
rebuilt where they are behind what is stored.

Every layer of the preset is looked at, not only the run's slice: a slice adds cells to the
figures, never removes them. A figure with no scores in its grid is said (``outcome.not_drawn``),
never drawn empty and never reported as failed.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from featureinterp.config import Preset
from featureinterp.figures.grids import figure_cells
from featureinterp_assets.eta import estimate
from featureinterp_assets.freshness import Freshness
from featureinterp_assets.outcome import not_drawn

Failures = dict[tuple[str, str | None], str]
Build = Callable[[list[str], "str | None", float], Failures]
"""Materialize a selection on one partition (None: unpartitioned) with a progress estimate of
``units`` seconds; returns what failed: (asset, partition) -> reason."""


def rebuild_summaries(fresh: Freshness, preset: Preset, figures: list[str], force: bool, build: Build) -> Failures:
    """Rebuild the layer tables, figures and exports that are behind what is stored; returns what
    failed."""
    per_feature = [a for a, p in fresh.partitions.items() if isinstance(p, dg.MultiPartitionsDefinition)]
    failed: Failures = {}
    tables = []  # layers with anything stored (a paper preset's unexplained layers draw nothing)
    for layer in preset.layer_keys:
        inputs: dict[str, list[str] | None] = {a: [f"{f}|{layer}" for f in preset.feature_keys] for a in per_feature}
        if fresh.stored(inputs) or fresh.stored({"layer_results": [layer]}):
            tables.append(layer)
            if force or fresh.behind("layer_results", layer, inputs):
                failed |= build(["layer_results"], layer, estimate("layer_results", 1))
    cells = {f: {f"scores/{c}": keys for c, keys in figure_cells(preset, f).items()} for f in figures}
    drawn = [f for f in figures if fresh.stored(cells[f])]  # the others have nothing to draw yet
    for figure in figures:
        if figure not in drawn:
            print(not_drawn(figure, preset, cells[figure]), flush=True)
    if drawn and (force or any(fresh.behind(f, None, {"layer_results": None}) for f in drawn)):
        failed |= build(drawn, None, estimate("figures", len(drawn)))
    exported = False
    for layer in tables:
        if force or fresh.behind("export", layer, {"layer_results": [layer]}):
            failed |= build(["export"], layer, estimate("export", 1))
            exported = True
    if exported or fresh.behind("export_all", None, {"export": None}):
        failed |= build(["export_all"], None, estimate("export", 1))
    return failed
