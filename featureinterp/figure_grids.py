"""The experiment grid of each paper figure, as the paper's scripts ran it (paper-method.md 9.1-9.3).

A figure is a grid: the model's layers and features it covers, the conditions it compares, the
explainer that wrote the explanations and the tree search's size. The paper's three figures use
different grids (Figure 3: 21 layers x 50 features of Gemma-2-9B with a Gemini explainer and a
depth-3 tree; Figures 4-5: 8 layers x 30 features of each model with Llama-4-Scout), so one preset-
wide grid cannot reproduce them. ``featureinterp plan --json`` prints these grids with their cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from featureinterp.config import Preset

__all__ = ["FigureGrid", "TreeSize", "figure_grids", "paper_layers"]

PAPER_MODELS = {"gpt2-small": 12, "gemma-2-9b": 42, "llama-3.1-8b": 32}
"""Paper preset -> number of layers of its subject model."""

FIG4_VARIANTS = ("unstructured", "structured", "structured_holistic", "structured_train_negatives")


@dataclass(frozen=True)
class TreeSize:
    """The tree search of a figure (paper-method.md 4.6)."""

    roots: int = 3
    branching: int = 2
    depth: int = 2
    width: int = 2
    stop_score: float = 0.9
    temperature: float = 1.2


@dataclass(frozen=True)
class FigureGrid:
    """One figure's experiment as the paper ran it."""

    figure: str
    layers: tuple[int, ...]
    features: tuple[int, ...]
    conditions: tuple[str, ...]
    """Condition names (featureinterp.experiments.CONDITIONS)."""
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
            tuple(
                f"{method}{'' if v == 'structured' else '_' + v}"
                for method in ("one_shot", "tree")
                for v in FIG4_VARIANTS
            ),
            scout,
            TreeSize(depth=2, width=2),
            notes=("unstructured + holistic is not run",),
        ),
        "fig5": FigureGrid(
            "fig5",
            layers8,
            tuple(range(30)),
            ("one_shot_cap1", "one_shot_cap2", "one_shot_cap3", "one_shot_cap4", "one_shot"),
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
                ("one_shot", "tree"),
                "google/gemini-flash-1.5-8b",
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


def select_grid(table, grid: FigureGrid | None, present_conditions: set[str]) -> tuple[object, str]:
    """The rows of a figure table (``layer_results`` rows) inside ``grid`` and the caption note
    that names the grid; ``present_conditions``: the conditions the preset materializes. Without
    a grid the table is returned whole ("preset grid")."""
    import polars as pl

    from featureinterp.config import layer_key
    from featureinterp.experiments import get_condition

    if grid is None:
        return table, "grid: the preset's layers x features x conditions"
    wanted = [get_condition(c) for c in grid.conditions]
    cells = pl.DataFrame(
        {
            "method": [c.method for c in wanted],
            "condition": [c.figure_condition for c in wanted],
            "rule_cap": [c.rule_cap for c in wanted],
        },
        schema={"method": pl.String, "condition": pl.String, "rule_cap": pl.Int64},
    )
    rows = table.filter(
        pl.col("layer").is_in([layer_key(x) for x in grid.layers])
        & pl.col("feature").is_in(list(grid.features))
    ).join(cells, on=["method", "condition", "rule_cap"], how="semi")
    absent = [c for c in grid.conditions if c not in present_conditions]
    note = f"grid: the paper's ({len(grid.layers)} layers x {len(grid.features)} features)"
    if absent:
        note += f"; conditions not run: {', '.join(absent)}"
    return rows, note
