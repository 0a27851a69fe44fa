"""The summaries at the end of `featureinterp run`: per-layer result tables, figures and exports,
rebuilt where they are behind what is stored.

Every layer of the preset is looked at, not only the run's slice: a slice adds cells to the
figures, never removes them. A figure with no scores in its grid is said (``outcome.not_drawn``),
never drawn empty and never reported as failed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from featureinterp.config import Preset
from featureinterp.figures.grids import figure_cells
from featureinterp.simulate.summary import ConditionSummary, summarize
from featureinterp_assets.eta import estimate
from featureinterp_assets.freshness import Freshness
from featureinterp_assets.outcome import not_drawn

RESULTS_CAPTION = (
    "results: mean test score ± its spread over features (Pearson r of simulated vs true activations "
    "on positives + similar non-activating rows); records ±: half-width of the mean's 95% bootstrap "
    "interval over test records; null: the empty explanation's score"
)

Failures = dict[tuple[str, str | None], str]
Build = Callable[[list[str], "str | None", float], Failures]
"""Materialize a selection on one partition (None: unpartitioned) with a progress estimate of
``units`` seconds; returns what failed: (asset, partition) -> reason."""


def rebuild_summaries(
    fresh: Freshness, preset: Preset, figures: list[str], force: bool, build: Build, say: Callable[[str], None] = print
) -> Failures:
    """Rebuild the layer tables, figures and exports that are behind what is stored; returns what
    failed. ``say``: where a figure's "not drawn" line goes."""
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
            say(not_drawn(figure, preset, cells[figure]))
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


def results(
    preset: Preset, failed: Failures | None = None, scope: dict[str, frozenset[str]] | None = None
) -> list[ConditionSummary]:
    """The results table's rows from what is stored: every layer x condition with a score or a
    partition in scope (``scope``: asset -> partition keys, absent: every partition; default the
    preset's own, PresetScope). ``failed``: this run's failures, to tell failed from not run."""
    from featureinterp.presets.scope import PresetScope
    from featureinterp_assets.io_managers import storage_of

    storage = storage_of(preset)
    root = Path(storage.base_dir) / "scores"
    stored = {p.name for p in root.glob("*") if p.is_dir()} if root.is_dir() else set()
    conditions = list(preset.explain.conditions) + sorted(
        stored - set(preset.explain.conditions)
    )
    scope = PresetScope.of(preset).assets() if scope is None else scope
    tried: dict[tuple[str, str], list[str]] = {}  # (layer, condition) -> failed feature keys
    for asset, part in failed or {}:
        if "/" in asset and part and "|" in part:
            feature, layer = part.split("|")
            tried.setdefault((layer, asset.split("/", 1)[1]), []).append(feature)
    rows = []
    for layer in preset.layer_keys:
        base = {f: storage.stored(dg.AssetKey("baselines"), f"{f}|{layer}") for f in preset.feature_keys}
        for condition in conditions:
            within = scope.get(f"scores/{condition}")
            expected = [f for f in preset.feature_keys if within is None or f"{f}|{layer}" in within]
            if not expected:
                continue
            scores = {f: storage.stored(dg.AssetKey(["scores", condition]), f"{f}|{layer}") for f in expected}
            rows.append(summarize(layer, condition, scores, base, expected, tried.get((layer, condition), ())))
    # a paper preset's unexplained layers are left out: only layers with anything stored or failed
    shown = {r.layer for r in rows if r.scores or r.dead or r.undefined or r.failed}
    return [r for r in rows if r.layer in shown]
