"""What Figures 3-5 (featureinterp/figures/paper.py) and the calibration figure share, kept apart so
the figure module holds only the figures themselves.

- the figures' input: ``RESULT_SCHEMA``, the long table of per-feature results (one row per layer
  x feature x condition x test source) that ``result_rows`` builds from a stored score, and that
  ``prepare`` checks (columns, types, filters) before any figure aggregates it;
- aggregation helpers: the full grid of cells (empty cells with n = 0), coverage captions, the
  canonical orders (methods, conditions, sources from featureinterp.names, numeric layers);
- drawing and writing: the headless backend, the no-LaTeX style, atomic PNG / parquet writes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import matplotlib
import polars as pl
from matplotlib.figure import Figure

from featureinterp.names import COMPLEMENTARY_SOURCES, GENERATED_SOURCE
from featureinterp.storage import atomic_write

if TYPE_CHECKING:
    from featureinterp.config import ExplainSettings, ScoreSettings

# Headless workers have no display. Only pick the backend while pyplot is not loaded: switching it
# under a running pyplot session (a notebook) would close that session's figures.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

__all__ = [
    "ALL_LAYERS",
    "definitions_note",
    "BASELINE_KINDS",
    "CONDITIONS",
    "METHODS",
    "RESULT_SCHEMA",
    "SOURCES",
    "FigureResult",
    "result_frame",
    "result_rows",
    "t_quantile",
]

METHODS = ("one_shot", "tree")
CONDITIONS = ("unstructured", "structured", "structured_train_negatives", "structured_holistic")
"""Fig. 4's conditions in the paper's bar order."""
SOURCES = COMPLEMENTARY_SOURCES
"""Complementary sources of the test set (section 1.5), in Figure 3's order: exactly the sources
featureinterp/records/sources.py produces; ``*_negative*`` = non-activating records only."""
ALL_LAYERS = "all layers"


def definitions_note(figure: str, scores: ScoreSettings, explain: ExplainSettings) -> str:
    """The caption's note of the definitions a figure's numbers depend on (paper-method.md §12):
    the false-positive rule (Figure 3), the tree's stop rule (Figures 3 and 4), the score NaN rule."""
    parts = []
    if figure == "fig3":
        parts.append(scores.fp_definition())
    if figure in ("fig3", "fig4"):
        parts.append(
            "tree stop score tested on the roots too"
            if explain.tree_stop_on_roots
            else "tree stop score tested after each level (paper)"
        )
    parts.append("scores: paper's definitions" if scores.metrics == "paper" else "scores: rescaled (ours)")
    return "; ".join(parts)
"""Value of ``layer`` in fig4's rows pooled over layers."""

DPI = 120
_METHOD_COLORS = {"one_shot": "#49419c", "tree": "#fa9e3b"}
_METHOD_LABELS = {"one_shot": "one-shot", "tree": "tree"}
_SOURCE_COLORS = {"random": "#120789", "similar": "#FA9E3B", "projected": "#C23D80"}
_HATCHES = {
    "unstructured": "",
    "structured": "//",
    "structured_train_negatives": "\\\\",
    "structured_holistic": "--",
}
_CONDITION_LABELS = {
    "unstructured": "unstructured",
    "structured": "structured",
    "structured_train_negatives": "structured + train negatives",
    "structured_holistic": "structured + holistic",
}
_FLOATS = ("score", "fp_rate", "complexity", "null_score")


@dataclass(frozen=True)
class FigureResult:
    """What a figure function produced: its tables, the files written and the caption it drew."""

    name: str
    """"fig3", "fig4" or "fig5"; also the stem of the files written."""
    summary: pl.DataFrame
    """One row per plotted cell (including cells without results, ``n`` = 0), with ``n`` and
    ``expected`` columns; stored as ``<name>.parquet``."""
    caption: str
    """The coverage and NaN note printed on the figure ("... 40 of 50 features ...")."""
    incomplete: bool
    """True when some cell has fewer than ``expected`` results."""
    png: Path
    files: Mapping[str, Path]
    """Every file written, by role: "png", "summary", "panels" (fig3, fig5: the paper's other
    panels, featureinterp.figures.panels) and, for fig5, "features" and "layers"."""
    tables: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    """Extra tables beyond the summary (fig5: "features", the per-feature monotone scores)."""


BASELINE_KINDS = ("null", "true_rule", "other_rule")
"""Baseline explanations scored per feature (featureinterp/simulate/baselines.py): ``<kind>_score`` columns."""

SECONDARY_COLUMNS = {
    "detection_balanced_accuracy": ("detection", "balanced_accuracy"),
    "detection_precision": ("detection", "precision"),
    "detection_recall": ("detection", "recall"),
    "fuzzing_balanced_accuracy": ("fuzzing", "balanced_accuracy"),
    "embedding_auroc": ("embedding", None),
}
"""Secondary-score columns of the figure table -> (scorer, metric) (featureinterp/scorers)."""

RESULT_SCHEMA: dict[str, Any] = {
    "layer": pl.String,
    "feature": pl.Int64,
    "experiment": pl.String,
    "method": pl.String,
    "condition": pl.String,
    "rule_cap": pl.Int64,
    "complexity": pl.Float64,
    "n_rules": pl.Int64,
    "source": pl.String,
    "score": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "fp_rate": pl.Float64,
    **{f"{kind}_score": pl.Float64 for kind in BASELINE_KINDS},
    **{column: pl.Float64 for column in SECONDARY_COLUMNS},
}
"""The figures' input table: one row per layer x feature x condition x test source. ``rule_cap``
is the cap the explainer ran with (null: uncapped, a free-text explanation); ``ci_low`` /
``ci_high`` the score's bootstrap interval over its test records (NaN: not stored); the secondary
columns are each scorer's metric on the positives plus that source (NaN: not scored)."""


def _reference(baseline: Mapping | None, kind: str, source: str) -> float:
    value = (baseline or {}).get(kind) or {}
    return float(value.get("per_source", {}).get(source, {}).get("score", math.nan))


def _secondary(secondary: Mapping | None, column: str, source: str) -> float:
    scorer, metric = SECONDARY_COLUMNS[column]
    value = ((secondary or {}).get(scorer) or {}).get("per_source", {}).get(source, math.nan)
    return float(value[metric] if metric is not None and isinstance(value, Mapping) else value)


def result_rows(
    score: Mapping, baseline: Mapping | None = None, secondary: Mapping | None = None
) -> list[dict]:
    """One figure-table row per test source of one stored score (with ``layer_key``), with the
    feature's baseline scores and the explanation's secondary scores (``{scorer: stored value}``)
    on the same source (NaN when not computed)."""
    cap = score.get("rule_cap")
    base = {
        "layer": score["layer_key"],
        "feature": int(score["feature"]),
        "experiment": score["condition"],
        "method": score["method"],
        "condition": score["figure_condition"],
        "rule_cap": None if cap is None else int(cap),
        "complexity": float(score.get("complexity", math.nan)),
        "n_rules": int(score.get("n_rules", 0)),
    }
    return [
        base
        | {"source": source, "score": float(v["score"]), "fp_rate": float(v["fp_rate"])}
        | {k: float(v.get(k, math.nan)) for k in ("ci_low", "ci_high")}
        | {f"{kind}_score": _reference(baseline, kind, source) for kind in BASELINE_KINDS}
        | {column: _secondary(secondary, column, source) for column in SECONDARY_COLUMNS}
        for source, v in score.get("per_source", {}).items()
    ]


def result_frame(rows: Sequence[Mapping]) -> pl.DataFrame:
    """The rows of ``result_rows`` as a frame of ``RESULT_SCHEMA`` (typed even when empty)."""
    return pl.DataFrame(rows, schema=RESULT_SCHEMA)


# ---------------------------------------------------------------- input checks and aggregation


def prepare(
    df: pl.DataFrame,
    name: str,
    required: Sequence[str],
    optional: Sequence[str],
    filters: Mapping[str, str],
    expected: int | None,
) -> pl.DataFrame:
    """Check the schema, normalise types (layer str, NaN for null floats) and apply the filters."""
    if expected is not None and (isinstance(expected, bool) or int(expected) != expected or expected < 1):
        raise ValueError(f"{name}: expected must be a positive number of features per cell, got {expected!r}")
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"{name}: expected a polars DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: the results table lacks required column(s) {', '.join(missing)}")
    if df.is_empty():
        raise ValueError(f"{name}: the results table is empty; there are no feature results to plot")
    columns = [*required, *(c for c in optional if c in df.columns)]
    frame = df.select(columns).with_columns(
        pl.col("layer").cast(pl.String),
        pl.col("feature").cast(pl.Int64),
        pl.col("rule_cap").cast(pl.Int64),
        *(pl.col(c).cast(pl.Float64).fill_null(math.nan) for c in _FLOATS if c in columns),
    )
    for column, value in filters.items():
        kept = frame.filter(pl.col(column) == value)
        if kept.is_empty():
            present = sorted(frame[column].unique().to_list())
            raise ValueError(f"{name}: no results with {column} == {value!r} (present: {present})")
        frame = kept
    return frame


def _select_cap(frame: pl.DataFrame, name: str, rule_cap: int | None) -> pl.DataFrame:
    """Keep one rule cap (None: the highest present), so fig5's cap sweep never leaks into fig3/fig4;
    uncapped results (null ``rule_cap``: free-text explanations) belong to every cap."""
    if rule_cap is None:
        top = cast("int | None", frame["rule_cap"].max())  # an Int64 column (``prepare``)
        if top is None:  # only uncapped results
            return frame
        rule_cap = int(top)
    kept = frame.filter(pl.col("rule_cap").is_null() | (pl.col("rule_cap") == rule_cap))
    if kept.is_empty():
        present = sorted(frame["rule_cap"].unique().to_list())
        raise ValueError(f"{name}: no results with rule_cap == {rule_cap} (present: {present})")
    return kept


def t_quantile(q: float, df: int) -> float:
    """Quantile ``q`` of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def _cap_label(frame: pl.DataFrame) -> str:
    """ "rule cap 5" for the cap a figure shows, "uncapped" when only free-text results remain."""
    top = cast("int | None", frame["rule_cap"].max())  # an Int64 column (``prepare``)
    return "uncapped" if top is None else f"rule cap {int(top)}"


def _check_unique(frame: pl.DataFrame, keys: Sequence[str], name: str) -> None:
    """Refuse duplicate results: averaging two experiments' rows would pass for one experiment."""
    dup = frame.group_by(keys).len().filter(pl.col("len") > 1)
    if dup.height:
        example = {k: dup[k][0] for k in keys}
        raise ValueError(
            f"{name}: {dup.height} ({', '.join(keys)}) combination(s) occur more than once, e.g. {example}; "
            "pass the results of one experiment per figure"
        )


def _nanmean(column: str) -> pl.Expr:
    return pl.col(column).filter(pl.col(column).is_not_nan()).mean()


def _grid(
    stats: pl.DataFrame,
    levels: Mapping[str, Sequence],
    expected: int | None,
    counts: Iterable[str],
) -> pl.DataFrame:
    """Stats on the full grid of levels, in order: cells without results get n = 0 and NaN means."""
    keys = list(levels)
    grid = pl.DataFrame(
        list(product(*levels.values())), schema={k: stats.schema[k] for k in keys}, orient="row"
    )
    out = grid.join(stats, on=keys, how="left", maintain_order="left")
    counts = list(counts)
    floats = [c for c, t in out.schema.items() if c not in keys and t == pl.Float64]
    out = out.with_columns(
        *(pl.col(c).fill_null(0).cast(pl.Int64) for c in counts),
        *(pl.col(c).fill_null(math.nan) for c in floats),
        expected=pl.lit(expected, dtype=pl.Int64),
    )
    return out.select(*keys, "n", "expected", *(c for c in out.columns if c not in (*keys, "n", "expected")))


def _coverage(summary: pl.DataFrame, expected: int | None, cell: str) -> tuple[str, bool]:
    """Caption text on how many results each cell has, and whether any cell is short."""
    present, cells = int(summary["n"].sum()), summary.height
    if expected is None:
        return f"{present} results over {cells} cells ({cell}), completeness not checked", False
    short = summary.filter(pl.col("n") < expected)
    if short.is_empty():
        return (
            f"complete: {present} results, at least {expected} features in each of {cells} cells ({cell})",
            False,
        )
    fewest = cast(int, short["n"].min())  # an Int64 column; ``short`` is not empty
    return (
        f"INCOMPLETE: {fewest} of {expected} features in the sparsest cell ({cell}); {short.height} of "
        f"{cells} cells short, {present} of {expected * cells} results",
        True,
    )


def _order(values: pl.Series, canonical: Sequence[str]) -> list[str]:
    """The known values in their canonical order, then any others alphabetically."""
    present = set(values.unique().to_list())
    return [v for v in canonical if v in present] + sorted(present - set(canonical))


def _layer_key(layer: str) -> tuple[int, str]:
    digits = re.search(r"\d+", layer)
    return (int(digits.group()) if digits else sys.maxsize, layer)


def _layers(values: pl.Series) -> list[str]:
    """Layer labels ordered by their integer part ("L2" before "L10"), unnumbered ones last."""
    return sorted(values.unique().to_list(), key=_layer_key)


def _layer_positions(layers: Sequence[str]) -> list:
    """x positions: the layer index when every label has one (keeps uneven spacing), else the labels."""
    keys = [_layer_key(layer)[0] for layer in layers]
    if sys.maxsize in keys or len(set(keys)) < len(keys):
        return list(layers)
    return keys


# ---------------------------------------------------------------- drawing and writing


def _seaborn() -> ModuleType:
    import seaborn as sns  # imports pyplot, so only after the backend choice above

    return sns


@contextmanager
def _style(sns: ModuleType) -> Iterator[None]:
    """Seaborn's whitegrid look and no LaTeX, for this figure only (global rcParams untouched)."""
    with (
        matplotlib.rc_context({"text.usetex": False, "font.family": "sans-serif"}),
        sns.axes_style("whitegrid"),
    ):
        yield


def _source_style(source: str) -> dict:
    """Paper style: the non-activating variant solid and strong, the unfiltered one dashed and faint;
    the generated source (ours) black and dotted, apart from the paper's six."""
    if source == GENERATED_SOURCE:
        return {"color": "black", "linestyle": ":", "alpha": 0.9, "linewidth": 2.0, "marker": "s",
                "markersize": 3, "label": "generated (ours)"}  # fmt: skip
    negative = "_negative" in source  # similar_negative, similar_negative_projected, ...
    base = source.replace("_negative", "")
    color = (
        _SOURCE_COLORS["projected"] if base.endswith("_projected") else _SOURCE_COLORS.get(base, "#555555")
    )
    base = base.replace("_", " ").replace(" projected", ", projected")
    return {
        "color": color,
        "linestyle": "-" if negative else "--",
        "alpha": 0.8 if negative else 0.35,
        "linewidth": 2.0 if negative else 1.5,
        "marker": "o",
        "markersize": 3,
        "label": f"{base} (non-activating)" if negative else base,
    }


def _title(fig: Figure, title: str, caption: str, incomplete: bool) -> None:
    fig.suptitle(title + (" [INCOMPLETE]" if incomplete else ""), fontsize=11)
    color = "firebrick" if incomplete else "dimgray"
    fig.text(0.5, 0.0, caption, ha="center", va="top", fontsize=8, wrap=True, color=color)


def _write(
    name: str,
    fig: Figure,
    summary: pl.DataFrame,
    tables: Mapping[str, pl.DataFrame],
    out_dir: Path | str,
    caption: str,
    incomplete: bool,
) -> FigureResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"png": out_dir / f"{name}.png", "summary": out_dir / f"{name}.parquet"}
    atomic_write(files["png"], lambda p: fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight"))
    atomic_write(files["summary"], summary.write_parquet)
    for role, table in tables.items():
        files[role] = out_dir / f"{name}_{role}.parquet"
        atomic_write(files[role], table.write_parquet)
    return FigureResult(name, summary, caption, incomplete, files["png"], files, dict(tables))


def _with_panels(result: FigureResult, panels: Path) -> FigureResult:
    return dataclasses.replace(result, files={**result.files, "panels": panels})
