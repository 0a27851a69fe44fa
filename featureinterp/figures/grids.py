"""The experiment grid of each paper figure, as the paper's scripts ran it (paper-method.md 9.1-9.3).

A figure is a grid: the model's layers and features it covers, the conditions it compares, the
explainer that wrote the explanations and the tree search's size. The paper's three figures use
different grids (Figure 3: 21 layers x 50 features of Gemma-2-9B with a Gemini explainer and a
depth-3 tree; Figures 4-5: 8 layers x 30 features of each model with Llama-4-Scout), so one preset-
wide grid cannot reproduce them. ``featureinterp plan --json`` prints these grids with their cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from featureinterp.config import Preset, feature_key, layer_key
from featureinterp.errors import ConfigError
from featureinterp.explain.conditions import FIG3_EXPLAINER, TreeSize
from featureinterp.names import SYNTHETIC_KEY

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "secondary_conditions",
    "FigureGrid",
    "TreeSize",
    "condition_scope",
    "figure_cells",
    "figure_conditions",
    "figure_grids",
    "paper_conditions",
    "paper_grid",
    "paper_layers",
    "select_grid",
]

PAPER_MODELS = {"gpt2-small": 12, "gemma-2-9b": 42, "llama-3.1-8b": 32}
"""Paper preset -> number of layers of its subject model."""

FIG4_VARIANTS = ("unstructured", "structured", "structured_holistic", "structured_train_negatives")
FIG4_CONDITIONS = tuple(
    f"{method}{'' if v == 'structured' else '_' + v}"
    for method in ("one_shot", "tree")
    for v in FIG4_VARIANTS
)
FIG5_CONDITIONS = ("one_shot_cap1", "one_shot_cap2", "one_shot_cap3", "one_shot_cap4", "one_shot")
FIG3_CONDITIONS = ("fig3_one_shot", "fig3_tree")


@dataclass(frozen=True)
class FigureGrid:
    """One figure's experiment as the paper ran it."""

    figure: str
    layers: tuple[int, ...]
    features: tuple[int, ...]
    conditions: tuple[str, ...]
    """Condition names (featureinterp.explain.conditions.CONDITIONS)."""
    explainer: str
    tree: TreeSize | None = None
    complexity: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)


def paper_layers(n_layers: int, points: int = 8) -> tuple[int, ...]:
    """``round(linspace(0, L-1, 8))``: the paper's 8 layers of a model (``get_layer_indices``)."""
    return tuple(int(x) for x in np.round(np.linspace(0, n_layers - 1, points)))


def figure_grids(preset: Preset) -> dict[str, FigureGrid]:
    """The paper figures' grids for a paper preset (or its stand-in); {} for other presets."""
    name = preset.name.removesuffix("-standin")
    if name not in PAPER_MODELS:
        return {}
    layers8 = paper_layers(PAPER_MODELS[name])
    scout = "meta-llama/llama-4-scout"
    grids = {
        "fig4": FigureGrid(
            "fig4",
            layers8,
            tuple(range(30)),
            FIG4_CONDITIONS,
            scout,
            TreeSize(depth=2, width=2),
            notes=("unstructured + holistic is not run",),
        ),
        "fig5": FigureGrid(
            "fig5",
            layers8,
            tuple(range(30)),
            FIG5_CONDITIONS,
            scout,
            complexity=True,
            notes=("one explanation per (feature, rule cap)",),
        ),
    }
    if name == "gemma-2-9b":  # Figure 3 is a Gemma-2-9B experiment only
        grids = {
            "fig3": FigureGrid(
                "fig3",
                tuple(range(0, 41, 2)),
                tuple(range(50)),
                FIG3_CONDITIONS,
                FIG3_EXPLAINER,
                TreeSize(depth=3, width=3),
                complexity=True,
                notes=(
                    "train 10 positives; valid 10 + 10 similar-negative; test per source 10 + 10",
                    "false positives: raw activation < 10 and predicted > 1, per 32-token sentence",
                ),
            ),
            **grids,
        }
    return grids


def paper_conditions() -> tuple[str, ...]:
    """Every condition of the paper's three figures, in figure order (the paper presets' default)."""
    return tuple(dict.fromkeys(FIG3_CONDITIONS + FIG4_CONDITIONS + FIG5_CONDITIONS))


def figure_conditions(
    figure: str, present: Iterable[str], scored: Iterable[str] | None = None
) -> tuple[str, ...]:
    """The conditions a figure draws from those a preset materializes (``present``), when it shows
    the preset's own grid: Figure 3 its ``fig3_*`` runs if the preset has them (and, given
    ``scored``, the conditions with scores, any of them is scored: a run of the structured cells
    alone still draws Figure 3 from them), else the preset's structured one-shot and tree;
    Figure 4 its 2 x 4 cells; Figure 5 its rule caps."""
    present = tuple(present)
    if figure == "fig3":
        own = tuple(c for c in FIG3_CONDITIONS if c in present)
        if scored is not None and not set(scored) & set(own):
            own = ()
        return own or tuple(c for c in ("one_shot", "tree") if c in present)
    wanted = {"fig4": FIG4_CONDITIONS, "fig5": FIG5_CONDITIONS}.get(figure)
    return tuple(c for c in present if wanted is None or c in wanted)


def figure_cells(preset: Preset, figure: str) -> dict[str, list[str]]:
    """Condition -> the partition keys (``"F0003|L05"``) whose scores ``figure`` draws with its
    default (``paper``) grid: a figure none of whose cells is scored has nothing to draw, which a
    run that explained other conditions must say rather than report as a failed figure.
    ``fig_calibration`` draws every condition on the synthetic ``SYN`` features."""
    if figure == "fig_calibration":
        keys = [f"{f}|{SYNTHETIC_KEY}" for f in preset.feature_keys] if SYNTHETIC_KEY in preset.layer_keys else []
        return {c: keys for c in preset.explain.conditions} if keys else {}
    grid = figure_grids(preset).get(figure)
    if grid is not None:
        own = {(layer_key(x), feature_key(f)) for x in preset.layers for f in preset.features}
        keys = [
            f"{f}|{x}" for x in map(layer_key, grid.layers) for f in map(feature_key, grid.features) if (x, f) in own
        ]
        return {c: keys for c in grid.conditions if c in preset.explain.conditions}
    keys = [f"{f}|{x}" for x in preset.layer_keys if x != SYNTHETIC_KEY for f in preset.feature_keys]
    present = preset.explain.conditions
    # Figure 3 falls back to the structured cells when its own runs have no scores
    wanted = set(figure_conditions(figure, present)) | set(figure_conditions(figure, present, scored=()))
    return {c: keys for c in present if c in wanted}


def condition_scope(preset: Preset) -> dict[str, frozenset[str]]:
    """Condition -> the (layer, feature) partition keys (``"F0003|L05"``) it is run on, for the
    conditions that only the paper figures' grids use: the paper ran Figure 3 on 21 layers x 50
    features and Figures 4-5 on 8 x 30, so running every condition on every partition of a preset
    would cost several times the paper's GPU time for cells no figure draws. Conditions missing
    here (and every condition of a preset without paper grids) run on all partitions. The
    synthetic ``SYN`` features are in every scope (the calibration figure compares conditions on
    them, and they are few) unless ``ExplainSettings.synthetic_conditions`` names the only
    conditions they run."""
    scope: dict[str, set[str]] = {}
    synthetic = {f"{f}|{SYNTHETIC_KEY}" for f in preset.feature_keys} if SYNTHETIC_KEY in preset.layer_keys else set()
    own = {(layer_key(x), feature_key(f)) for x in preset.layers for f in preset.features}
    for grid in figure_grids(preset).values():
        keys = {
            f"{f}|{x}"
            for x in map(layer_key, grid.layers)
            for f in map(feature_key, grid.features)
            if (x, f) in own
        }
        for cond in grid.conditions:
            scope.setdefault(cond, set(synthetic)).update(keys)
    only = preset.explain.synthetic_conditions
    if only is not None and synthetic:  # the SYN features run only these conditions
        everywhere = {f"{f}|{x}" for x, f in own}
        for cond in preset.explain.conditions:
            if cond not in only:
                scope[cond] = scope.get(cond, everywhere | synthetic) - synthetic
    return {c: frozenset(k) for c, k in scope.items()}


def select_grid(
    table: pl.DataFrame, grid: FigureGrid | None, present_conditions: Iterable[str], figure: str,
    scored: Iterable[str] | None = None,
) -> tuple[pl.DataFrame, str]:
    """The rows of a figure table (``layer_results`` rows) inside ``grid`` and the caption note
    that names the grid; ``present_conditions``: the conditions the preset materializes. Without
    a grid the preset's layers and features are kept, with the conditions of ``figure``
    (``figure_conditions``; ``scored``: the conditions with scores, default the table's)."""
    import polars as pl

    present = tuple(present_conditions)
    if "experiment" not in table.columns:
        raise ValueError(
            "layer_results tables without the 'experiment' column (written before conditions had "
            "their own explainers): rematerialize layer_results"
        )
    if grid is None:
        scored = set(table["experiment"].unique().to_list()) if scored is None else scored
        wanted = figure_conditions(figure, present, scored)
        rows = table.filter(pl.col("experiment").is_in(list(wanted)))
        return rows, f"grid: the preset's layers x features; conditions {', '.join(wanted)}"
    rows = table.filter(
        pl.col("layer").is_in([layer_key(x) for x in grid.layers])
        & pl.col("feature").is_in(list(grid.features))
        & pl.col("experiment").is_in(list(grid.conditions))
    )
    absent = [c for c in grid.conditions if c not in present]
    note = f"grid: the paper's ({len(grid.layers)} layers x {len(grid.features)} features, explainer {grid.explainer})"
    if absent:
        note += f"; conditions not run: {', '.join(absent)}"
    return rows, note


def secondary_conditions(preset: Preset) -> tuple[str, ...]:
    """The conditions whose explanations get the LLM scorers (``ExplainSettings.secondary_conditions``;
    default: the ones Figure 3 compares), checked against the conditions the preset explains."""
    present = preset.explain.conditions
    chosen = preset.explain.secondary_conditions
    if chosen is None:
        return figure_conditions("fig3", present)
    unknown = [c for c in chosen if c not in present]
    if unknown:
        raise ConfigError(
            f"secondary_conditions {', '.join(unknown)}: not explained by preset {preset.name!r} "
            f"(its conditions: {', '.join(present)}); add them to conditions or drop them"
        )
    return tuple(chosen)


def paper_grid(preset: Preset) -> Preset:
    """The grid the paper's Figure 4 and 5 scripts ran (paper-method.md 9.2-9.3): the 8 layers
    ``round(linspace(0, L-1, 8))`` of the model and features 0..29, without synthetic features."""
    import dataclasses

    return preset.replace(
        layers=paper_layers(max(preset.layers) + 1),
        features=tuple(range(30)),
        explain=dataclasses.replace(preset.explain, synthetic=False),
    )
