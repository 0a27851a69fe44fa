"""Figures 3, 4 and 5 of the paper from one long table of per-feature results (paper-method.md 9.6).

Each figure is a pure function: a polars frame in, a PNG plus its summary table (parquet, beside
the PNG) and a ``FigureResult`` out. The original figure scripts plotted whatever was on disk and
used a different NaN policy in each script; here every figure

- counts its results per cell against the number the caller expected and prints "n of m features"
  on the figure itself, so a half-finished sweep cannot pass for a finished one;
- states its NaN policy in the summary: fig3 and fig5 drop undefined scores and count them, fig4
  counts them as 0 (the paper's policy for that figure) and reports how many;
- refuses an empty, incomplete-schema or ambiguous input (``ValueError``) instead of drawing an
  empty plot or silently averaging duplicate results.

Text is drawn by matplotlib itself (never LaTeX), so figures build on machines without TeX, and
figures are built as ``matplotlib.figure.Figure`` objects (no pyplot state), so repeated calls in a
long-lived worker neither leak figures nor need a display.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

# Headless workers have no display. Only pick the backend while pyplot is not loaded: switching it
# under a running pyplot session (a notebook) would close that session's figures.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

__all__ = [
    "ALL_LAYERS",
    "CONDITIONS",
    "METHODS",
    "SOURCES",
    "FigureResult",
    "fig3",
    "fig4",
    "fig5",
    "t_quantile",
]

METHODS = ("one_shot", "tree")
CONDITIONS = ("unstructured", "structured", "structured_train_negatives", "structured_holistic")
"""Fig. 4's conditions in the paper's bar order."""
SOURCES = ("random", "random_negative", "similar", "similar_negative", "projected", "projected_negative")
"""Complementary sources of the test set (section 1.5); ``*_negative`` = non-activating records only."""
ALL_LAYERS = "all layers"
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
    panels, featureinterp.figure_panels) and, for fig5, "features" and "layers"."""
    tables: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    """Extra tables beyond the summary (fig5: "features", the per-feature monotone scores)."""


def fig3(
    df: pl.DataFrame,
    out_dir: Path | str,
    expected: int | None = None,
    *,
    grid: str = "",
    tokens_per_record: int = 32,
    condition: str = "structured",
    rule_cap: int | None = None,
) -> FigureResult:
    """Figure 3: test score and false positives per sentence vs layer, per complementary source.

    Summary per method x source x layer: ``mean_score`` (undefined scores dropped, counted in
    ``n_nan``), ``mean_fp_per_sentence`` = mean ``fp_rate`` x ``tokens_per_record`` (NaN dropped,
    counted in ``n_fp_nan``), and ``mean_complexity`` / ``mean_n_rules`` when those columns exist.
    ``rule_cap`` None takes the highest cap present. ``expected``: features per cell.
    """
    name = "fig3"
    if tokens_per_record <= 0:
        raise ValueError(f"{name}: tokens_per_record must be positive, got {tokens_per_record}")
    required = ("layer", "feature", "method", "condition", "rule_cap", "source", "score", "fp_rate")
    frame = _prepare(df, name, required, ("complexity", "n_rules"), {"condition": condition}, expected)
    frame = _select_cap(frame, name, rule_cap)
    _check_unique(frame, ("method", "source", "layer", "feature"), name)

    aggs = [
        pl.len().alias("n"),
        pl.col("score").is_nan().sum().alias("n_nan"),
        _nanmean("score").alias("mean_score"),
        pl.col("fp_rate").is_nan().sum().alias("n_fp_nan"),
        (_nanmean("fp_rate") * tokens_per_record).alias("mean_fp_per_sentence"),
    ]
    if "complexity" in frame.columns:
        aggs.append(_nanmean("complexity").alias("mean_complexity"))
    if "n_rules" in frame.columns:
        aggs.append(pl.col("n_rules").cast(pl.Float64).mean().alias("mean_n_rules"))
    keys = ("method", "source", "layer")
    levels = {
        "method": _order(frame["method"], METHODS),
        "source": _order(frame["source"], SOURCES),
        "layer": _layers(frame["layer"]),
    }
    summary = _grid(frame.group_by(keys).agg(aggs), levels, expected, ("n", "n_nan", "n_fp_nan"))
    caption, incomplete = _coverage(summary, expected, "method x source x layer")
    caption += f"; {int(summary['n_nan'].sum())} undefined scores dropped" + (f"; {grid}" if grid else "")

    sns = _seaborn()
    methods, sources, layers = levels["method"], levels["source"], levels["layer"]
    xs = _layer_positions(layers)
    with _style(sns):
        fig = Figure(figsize=(0.6 + 3.4 * len(methods), 5.6), layout="constrained")
        axes = fig.subplots(2, len(methods), sharex=True, sharey="row", squeeze=False)
        rows = (("mean_score", "Correlation score"), ("mean_fp_per_sentence", "False positives / sentence"))
        for j, method in enumerate(methods):
            for i, (column, ylabel) in enumerate(rows):
                ax = axes[i, j]
                for source in sources:
                    part = summary.filter((pl.col("method") == method) & (pl.col("source") == source))
                    ys = dict(zip(part["layer"], part[column].to_numpy(), strict=True))
                    ax.plot(xs, [ys[layer] for layer in layers], **_source_style(source))
                if j == 0:
                    ax.set_ylabel(ylabel)
                if i == 0:
                    ax.set_title(_METHOD_LABELS.get(method, method))
                else:
                    ax.set_xlabel("Layer")
        for ax in axes[-1]:
            if isinstance(xs[0], str):
                ax.tick_params(axis="x", rotation=90)
            elif len(xs) <= 12:  # a slice of a few layers: one tick per layer, none fractional
                ax.set_xticks(xs)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
        _title(
            fig, f"Complementary test sentences (rule cap {int(frame['rule_cap'][0])})", caption, incomplete
        )
    result = _write(name, fig, summary, {}, out_dir, caption, incomplete)
    from featureinterp.figure_panels import fig3_panels  # the paper's combined one-shot vs tree plots

    return _with_panels(result, fig3_panels(summary, Path(out_dir), caption, incomplete, "similar_negative"))


def fig4(
    df: pl.DataFrame,
    out_dir: Path | str,
    confidence: float = 0.90,
    expected: int | None = None,
    *,
    grid: str = "",
    source: str = "similar_negative",
    rule_cap: int | None = None,
) -> FigureResult:
    """Figure 4: mean test score per method x condition, per layer and pooled over layers.

    Undefined scores count as 0 (the paper's policy; ``n_nan`` says how many). ``ci_halfwidth`` is
    the Student-t half-width ``sem * t.ppf((1 + confidence) / 2, n - 1)`` (NaN when n < 2). Pooled
    rows have ``layer`` = ``ALL_LAYERS`` and ``expected`` = ``expected`` x number of layers.
    ``rule_cap`` None takes the highest cap present. ``expected``: features per layer cell.
    """
    name = "fig4"
    if not 0 < confidence < 1:
        raise ValueError(f"{name}: confidence must lie strictly between 0 and 1, got {confidence}")
    required = ("layer", "feature", "method", "condition", "rule_cap", "source", "score")
    frame = _select_cap(
        _prepare(df, name, required, ("null_score",), {"source": source}, expected), name, rule_cap
    )
    _check_unique(frame, ("method", "condition", "layer", "feature"), name)
    # the empty explanation's score per layer (the simulator's prior), drawn as a reference line
    null = {}
    if "null_score" in frame.columns:
        per_feature = frame.unique(("layer", "feature")).filter(pl.col("null_score").is_finite())
        null = {
            r["layer"]: r["null_score"]
            for r in per_feature.group_by("layer").agg(pl.col("null_score").mean()).iter_rows(named=True)
        }
        if len(per_feature):
            null[ALL_LAYERS] = float(per_feature["null_score"].mean())

    frame = frame.with_columns(pl.when(pl.col("score").is_nan()).then(0.0).otherwise("score").alias("score0"))
    aggs = [
        pl.len().alias("n"),
        pl.col("score").is_nan().sum().alias("n_nan"),
        pl.col("score0").mean().alias("mean_score"),
        pl.col("score0").std(ddof=1).alias("_sd"),
    ]
    methods = _order(frame["method"], METHODS)
    conditions = _order(frame["condition"], CONDITIONS)
    layers = _layers(frame["layer"])
    counts = ("n", "n_nan")
    per_layer = _grid(
        frame.group_by(("method", "condition", "layer")).agg(aggs),
        {"method": methods, "condition": conditions, "layer": layers},
        expected,
        counts,
    )
    pooled = _grid(
        frame.group_by(("method", "condition")).agg(aggs).with_columns(layer=pl.lit(ALL_LAYERS)),
        {"method": methods, "condition": conditions, "layer": [ALL_LAYERS]},
        None if expected is None else expected * len(layers),
        counts,
    )
    q = (1 + confidence) / 2
    summary = pl.concat([per_layer, pooled])
    summary = summary.with_columns(
        sem=pl.col("_sd") / pl.col("n").cast(pl.Float64).sqrt(),
        t=pl.Series([t_quantile(q, n - 1) if n >= 2 else math.nan for n in summary["n"]], dtype=pl.Float64),
    )
    summary = summary.with_columns(
        sem=pl.when(pl.col("n") >= 2).then("sem").otherwise(math.nan),
        ci_halfwidth=pl.when(pl.col("n") >= 2).then(pl.col("sem") * pl.col("t")).otherwise(math.nan),
        confidence=pl.lit(confidence),
    ).drop("_sd", "t")
    summary = summary.with_columns(
        null_score=pl.col("layer").replace_strict(null, default=math.nan, return_dtype=pl.Float64)
    )
    caption, incomplete = _coverage(per_layer, expected, "method x condition x layer")
    caption += f"; {int(per_layer['n_nan'].sum())} undefined scores counted as 0" + (
        f"; {grid}" if grid else ""
    )
    if null:
        caption += (
            f"; dashed: empty explanation (simulator prior), {null.get(ALL_LAYERS, math.nan):.2f} pooled"
        )

    sns = _seaborn()
    groups = [*layers, ALL_LAYERS]
    combos = [
        (m, c)
        for m in methods
        for c in conditions
        if summary.filter((pl.col("method") == m) & (pl.col("condition") == c))["n"].sum() > 0
    ]
    width = 0.8 / len(combos)
    with _style(sns):
        fig = Figure(figsize=(max(6.0, 3.5 + 0.13 * len(groups) * len(combos)), 4.2), layout="constrained")
        ax = fig.subplots()
        x0 = np.arange(len(groups), dtype=float)
        for k, (method, condition) in enumerate(combos):
            part = summary.filter((pl.col("method") == method) & (pl.col("condition") == condition))
            by_layer = {row["layer"]: row for row in part.iter_rows(named=True)}
            mean = np.array([by_layer[g]["mean_score"] for g in groups])
            ci = np.array([by_layer[g]["ci_halfwidth"] for g in groups])
            x = x0 - 0.4 + width * (k + 0.5)
            ax.bar(
                x,
                mean,
                width,
                color=_METHOD_COLORS.get(method, "#777777"),
                hatch=_HATCHES.get(condition, ".."),
                alpha=1 - 0.15 * (CONDITIONS.index(condition) if condition in CONDITIONS else 4),
                edgecolor="black",
                linewidth=0.5,
            )
            ok = np.isfinite(ci) & np.isfinite(mean)  # no error bar rather than a misleading zero-width one
            ax.errorbar(x[ok], mean[ok], yerr=ci[ok], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ax.axhline(0, color="black", linewidth=0.6)
        for i, group in enumerate(groups):
            if group in null:
                ax.hlines(null[group], i - 0.42, i + 0.42, colors="firebrick", linestyles="--", linewidth=1.2)
        ax.set_xticks(x0, groups)
        ax.axvline(len(layers) - 0.5, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlabel("Layer")
        ax.set_ylabel(f"Test score (undefined = 0), {confidence:.0%} CI")
        method_handles = [
            Patch(color=_METHOD_COLORS.get(m, "#777777"), label=_METHOD_LABELS.get(m, m)) for m in methods
        ]
        condition_handles = [
            Patch(
                facecolor="white",
                edgecolor="black",
                hatch=_HATCHES.get(c, ".."),
                label=_CONDITION_LABELS.get(c, c),
            )
            for c in conditions
        ]
        if null:
            condition_handles.append(
                Line2D([], [], color="firebrick", linestyle="--", label="empty explanation")
            )
        ax.add_artist(
            ax.legend(handles=method_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        )
        ax.legend(handles=condition_handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8)
        _title(
            fig,
            f"Explainer comparison (source {source}, rule cap {int(frame['rule_cap'][0])})",
            caption,
            incomplete,
        )
    return _write(name, fig, summary, {}, out_dir, caption, incomplete)


def fig5(
    df: pl.DataFrame,
    out_dir: Path | str,
    expected: int | None = None,
    *,
    grid: str = "",
    method: str = "one_shot",
    condition: str = "structured",
    source: str = "similar_negative",
) -> FigureResult:
    """Figure 5: score and complexity per layer x rule cap (heatmaps) and the monotone scores.

    Summary per layer x rule cap: ``mean_score`` over every feature with a result (undefined dropped,
    counted in ``n_nan``), ``mean_complexity`` (NaN dropped), and over the *kept* features only (as
    in the paper: a feature is skipped when its cap-1 score is undefined or missing, or its best
    score over caps is <= 0; ``n_skipped`` per layer) the mean of score / best score
    (``mean_score_prop``), of the monotone score = best score over caps <= i (``mean_mono_score``)
    and of its share of the best score (``mean_mono_prop``). The per-feature values are the
    ``features`` table. ``expected``: features per layer x cap cell.
    """
    name = "fig5"
    required = ("layer", "feature", "method", "condition", "rule_cap", "source", "score", "complexity")
    filters = {"method": method, "condition": condition, "source": source}
    frame = _prepare(df, name, required, (), filters, expected)
    _check_unique(frame, ("layer", "feature", "rule_cap"), name)
    if frame["rule_cap"].min() < 1:
        raise ValueError(f"{name}: rule caps start at 1, found {frame['rule_cap'].min()}")

    caps = list(range(1, int(frame["rule_cap"].max()) + 1))
    layers = _layers(frame["layer"])
    features = _monotone(frame, caps, layers)
    stats = frame.group_by(("layer", "rule_cap")).agg(
        pl.len().alias("n"),
        pl.col("score").is_nan().sum().alias("n_nan"),
        _nanmean("score").alias("mean_score"),
        _nanmean("complexity").alias("mean_complexity"),
    )
    kept = (
        features.filter("kept")
        .group_by(("layer", "rule_cap"))
        .agg(
            _nanmean("score_prop").alias("mean_score_prop"),
            pl.col("mono_score").mean().alias("mean_mono_score"),
            pl.col("mono_prop").mean().alias("mean_mono_prop"),
        )
    )
    per_layer = (
        features.filter(pl.col("rule_cap") == 1)
        .group_by("layer")
        .agg(
            pl.col("kept").sum().cast(pl.Int64).alias("n_kept"),
            (~pl.col("kept")).sum().cast(pl.Int64).alias("n_skipped"),
        )
    )
    summary = (
        _grid(stats, {"layer": layers, "rule_cap": caps}, expected, ("n", "n_nan"))
        .join(kept, on=("layer", "rule_cap"), how="left", maintain_order="left")
        .join(per_layer, on="layer", how="left", maintain_order="left")
        .with_columns(pl.col("mean_score_prop", "mean_mono_score", "mean_mono_prop").fill_null(math.nan))
    )
    caption, incomplete = _coverage(summary, expected, "layer x rule cap")
    caption += f"; {grid}" if grid else ""
    n_skipped, n_features = int(per_layer["n_skipped"].sum()), features["layer", "feature"].n_unique()
    caption += (
        f"; {int(summary['n_nan'].sum())} undefined scores dropped; {n_skipped} of {n_features} features "
        "skipped in the monotone scores (cap-1 score undefined or best score <= 0)"
    )

    from featureinterp.figure_panels import (  # + the paper's other panels
        cap_heatmap,
        fig5_layer_table,
        fig5_panels,
    )

    sns = _seaborn()
    panels = (("mean_score", "Mean test score", 1.0), ("mean_complexity", "Mean rule complexity", 5.0))
    with _style(sns):
        fig = Figure(figsize=(1.8 + 1.5 * len(caps), 1.6 + 0.45 * len(layers)), layout="constrained")
        axes = fig.subplots(1, 2, squeeze=False)[0]
        for ax, (column, title, vmax) in zip(axes, panels, strict=True):
            cap_heatmap(sns, ax, summary, column, caps, layers, vmax, "Rule cap")
            ax.set_title(title)
        _title(fig, f"Rule caps: {_METHOD_LABELS.get(method, method)}, {condition}", caption, incomplete)
    per_layer = fig5_layer_table(frame, features, layers)
    result = _write(
        name, fig, summary, {"features": features, "layers": per_layer}, out_dir, caption, incomplete
    )
    return _with_panels(result, fig5_panels(summary, per_layer, Path(out_dir), caption, incomplete))


def t_quantile(q: float, df: int) -> float:
    """Quantile ``q`` of Student's t with ``df`` degrees of freedom (scipy when installed)."""
    try:
        from scipy.stats import t
    except ImportError:
        return _t_quantile_numeric(q, df)
    return float(t.ppf(q, df))


def _t_quantile_numeric(q: float, df: int, n_grid: int = 200_001) -> float:
    """Student-t quantile without scipy, accurate to about 1e-7 relative for q <= 0.999.

    With x = sqrt(df) tan(theta) the t density becomes proportional to cos(theta)^(df-1) on
    [0, pi/2): bounded and smooth, so a trapezoid cumulative integral inverts cleanly.
    """
    if not 0 < q < 1 or df < 1:
        raise ValueError(f"t quantile needs 0 < q < 1 and df >= 1, got q={q}, df={df}")
    if q < 0.5:
        return -_t_quantile_numeric(1 - q, df, n_grid)
    theta = np.linspace(0.0, np.pi / 2, n_grid)
    density = np.cos(theta) ** (df - 1)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    # P(0 < T < x) = (q - 1/2), i.e. share 2q - 1 of the half-line mass.
    angle = float(np.interp(2 * q - 1, cdf / cdf[-1], theta))
    return math.sqrt(df) * math.tan(angle)


# ---------------------------------------------------------------- input checks and aggregation


def _prepare(
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
    """Keep one rule cap (None: the highest present), so fig5's cap sweep never leaks into fig3/fig4."""
    if rule_cap is None:
        rule_cap = int(frame["rule_cap"].max())
    kept = frame.filter(pl.col("rule_cap") == rule_cap)
    if kept.is_empty():
        present = sorted(frame["rule_cap"].unique().to_list())
        raise ValueError(f"{name}: no results with rule_cap == {rule_cap} (present: {present})")
    return kept


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
    fewest = int(short["n"].min())
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


def _monotone(frame: pl.DataFrame, caps: Sequence[int], layers: Sequence[str]) -> pl.DataFrame:
    """Per feature and cap: score, score / best, monotone score (best over caps <= cap) and share."""
    rank = {layer: i for i, layer in enumerate(layers)}
    feats = sorted(frame.select("layer", "feature").unique().iter_rows(), key=lambda r: (rank[r[0]], r[1]))
    index = {f: i for i, f in enumerate(feats)}
    scores = np.full((len(feats), len(caps)), np.nan)
    for layer, feature, cap, value in frame.select("layer", "feature", "rule_cap", "score").iter_rows():
        scores[index[(layer, feature)], cap - 1] = value
    mono = np.fmax.accumulate(scores, axis=1)  # fmax skips NaN: the best defined score so far
    best = mono[:, -1]
    kept = ~np.isnan(scores[:, 0]) & (best > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(kept, 1.0, np.nan)[:, None] / best[:, None]
    n_caps = len(caps)
    return pl.DataFrame(
        {
            "layer": np.repeat([f[0] for f in feats], n_caps),
            "feature": np.repeat(np.array([f[1] for f in feats], dtype=np.int64), n_caps),
            "rule_cap": np.tile(np.asarray(caps, dtype=np.int64), len(feats)),
            "score": scores.ravel(),
            "kept": np.repeat(kept, n_caps),
            "score_prop": (scores * share).ravel(),
            "mono_score": np.where(kept[:, None], mono, np.nan).ravel(),
            "mono_prop": (mono * share).ravel(),
        }
    )


# ---------------------------------------------------------------- drawing and writing


def _seaborn():
    import seaborn as sns  # imports pyplot, so only after the backend choice above

    return sns


@contextmanager
def _style(sns):
    """Seaborn's whitegrid look and no LaTeX, for this figure only (global rcParams untouched)."""
    with (
        matplotlib.rc_context({"text.usetex": False, "font.family": "sans-serif"}),
        sns.axes_style("whitegrid"),
    ):
        yield


def _source_style(source: str) -> dict:
    """Paper style: the non-activating variant solid and strong, the unfiltered one dashed and faint."""
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
    _atomic_write(files["png"], lambda p: fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight"))
    _atomic_write(files["summary"], summary.write_parquet)
    for role, table in tables.items():
        files[role] = out_dir / f"{name}_{role}.parquet"
        _atomic_write(files[role], table.write_parquet)
    return FigureResult(name, summary, caption, incomplete, files["png"], files, dict(tables))


def _with_panels(result: FigureResult, panels: Path) -> FigureResult:
    return dataclasses.replace(result, files={**result.files, "panels": panels})


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temp sibling and rename, so readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
