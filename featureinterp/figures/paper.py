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

The input table, its checks and the shared drawing helpers are in featureinterp/figures/common.py,
the paper's extra panels in featureinterp/figures/panels.py, and which layers, features and
conditions each figure plots in featureinterp/figures/grids.py.

Text is drawn by matplotlib itself (never LaTeX), so figures build on machines without TeX, and
figures are built as ``matplotlib.figure.Figure`` objects (no pyplot state), so repeated calls in a
long-lived worker neither leak figures nor need a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from featureinterp.figures.common import (
    _CONDITION_LABELS,
    _HATCHES,
    _METHOD_COLORS,
    _METHOD_LABELS,
    ALL_LAYERS,
    CONDITIONS,
    METHODS,
    SOURCES,
    FigureResult,
    _cap_label,
    _check_unique,
    _coverage,
    _grid,
    _layer_positions,
    _layers,
    _nanmean,
    _order,
    _seaborn,
    _select_cap,
    _source_style,
    _style,
    _title,
    _with_panels,
    _write,
    prepare,
    t_quantile,
)
from featureinterp.figures.comparisons import comparisons_caption, fig4_comparisons
from featureinterp.figures.panels import monotone_scores
from featureinterp.names import GENERATED_SOURCE, PRIMARY_SOURCE

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


def fig3(
    df: pl.DataFrame,
    out_dir: Path | str,
    expected: int | None = None,
    *,
    grid: str = "",
    tokens_per_record: int = 32,
    condition: str = "structured",
    rule_cap: int | None = None,
    definitions: str = "",
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
    frame = prepare(df, name, required, ("complexity", "n_rules"), {"condition": condition}, expected)
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
    # the generated source (ours) runs on a slice of features of one condition: completeness is
    # judged on the paper's six sources, and the caption says how many features it covers
    paper_sources = summary.filter(pl.col("source") != GENERATED_SOURCE)
    caption, incomplete = _coverage(paper_sources, expected, "method x source x layer")
    generated = summary.filter(pl.col("source") == GENERATED_SOURCE)
    if generated.height:
        counts = [n for n in generated["n"].to_list() if n]
        caption += (
            f"; generated counterexamples (ours, dotted): {min(counts, default=0)}-{max(counts, default=0)} "
            f"features per cell, {len(counts)} cells"
        )
    caption += f"; {int(summary['n_nan'].sum())} undefined scores dropped" + (f"; {grid}" if grid else "")
    caption += f"; {definitions}" if definitions else ""

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
        _title(fig, f"Complementary test sentences ({_cap_label(frame)})", caption, incomplete)
    result = _write(name, fig, summary, {}, out_dir, caption, incomplete)
    from featureinterp.figures.panels import fig3_panels  # the paper's combined one-shot vs tree plots

    return _with_panels(result, fig3_panels(summary, Path(out_dir), caption, incomplete, PRIMARY_SOURCE))


def fig4(
    df: pl.DataFrame,
    out_dir: Path | str,
    confidence: float = 0.90,
    expected: int | None = None,
    *,
    grid: str = "",
    source: str = PRIMARY_SOURCE,
    rule_cap: int | None = None,
    definitions: str = "",
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
        prepare(df, name, required, ("null_score", "ci_low", "ci_high"), {"source": source}, expected),
        name,
        rule_cap,
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
            null[ALL_LAYERS] = cast(float, per_feature["null_score"].mean())  # Float64, not empty

    frame = frame.with_columns(pl.when(pl.col("score").is_nan()).then(0.0).otherwise("score").alias("score0"))
    if "ci_low" not in frame.columns:  # a table from before intervals were stored
        frame = frame.with_columns(ci_low=pl.lit(math.nan), ci_high=pl.lit(math.nan))
    # each feature's test-record interval as a half-width (NaN: not stored or undefined)
    frame = frame.with_columns(_hw=(pl.col("ci_high") - pl.col("ci_low")) / 2)
    finite_hw = pl.col("_hw").filter(pl.col("_hw").is_finite())
    aggs = [
        pl.len().alias("n"),
        pl.col("score").is_nan().sum().alias("n_nan"),
        pl.col("score0").mean().alias("mean_score"),
        pl.col("score0").std(ddof=1).alias("_sd"),
        # the mean's half-width from test-record sampling alone: features' intervals are
        # independent, so sqrt(sum of squared half-widths) / n (the summary's record_halfwidth)
        ((finite_hw**2).sum().sqrt() / finite_hw.len()).alias("record_halfwidth"),
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
    comparisons = fig4_comparisons(summary)
    caption, incomplete = _coverage(per_layer, expected, "method x condition x layer")
    caption += f"; {int(per_layer['n_nan'].sum())} undefined scores counted as 0" + (
        f"; {grid}" if grid else ""
    )
    caption += f"; {definitions}" if definitions else ""
    if null:
        caption += (
            f"; dashed: empty explanation (simulator prior), {null.get(ALL_LAYERS, math.nan):.2f} pooled"
        )
    caption += comparisons_caption(comparisons)

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
            rec = np.array([by_layer[g]["record_halfwidth"] for g in groups], dtype=float)
            shown = np.isfinite(rec) & np.isfinite(mean)
            ax.errorbar(x[shown], mean[shown], yerr=rec[shown], fmt="none", ecolor="grey", elinewidth=3.5, alpha=0.6)
            ok = np.isfinite(ci) & np.isfinite(mean)  # no error bar rather than a misleading zero-width one
            ax.errorbar(x[ok], mean[ok], yerr=ci[ok], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
            if method == "tree":  # ≈: within test-record intervals of one-shot under this condition
                same = comparisons.filter(
                    (pl.col("kind") == "tree vs one-shot") & (pl.col("b_condition") == condition) & pl.col("overlap").fill_null(False)
                )
                for i, g in enumerate(groups):
                    if g in set(same["layer"].to_list()) and np.isfinite(mean[i]):
                        top = mean[i] + max(rec[i] if np.isfinite(rec[i]) else 0.0, ci[i] if np.isfinite(ci[i]) else 0.0)
                        ax.text(x[i], top + 0.01, "≈", ha="center", va="bottom", fontsize=8)
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
        condition_handles: list[Artist] = [
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
            f"Explainer comparison (source {source}, {_cap_label(frame)})",
            caption,
            incomplete,
        )
    return _write(name, fig, summary, {"comparisons": comparisons}, out_dir, caption, incomplete)


def fig5(
    df: pl.DataFrame,
    out_dir: Path | str,
    expected: int | None = None,
    *,
    grid: str = "",
    method: str = "one_shot",
    condition: str = "structured",
    source: str = PRIMARY_SOURCE,
    definitions: str = "",
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
    frame = prepare(df, name, required, (), filters, expected)
    _check_unique(frame, ("layer", "feature", "rule_cap"), name)
    low, high = cast(int, frame["rule_cap"].min()), cast(int, frame["rule_cap"].max())  # Int64, not empty
    if low < 1:
        raise ValueError(f"{name}: rule caps start at 1, found {low}")

    caps = list(range(1, high + 1))
    layers = _layers(frame["layer"])
    features = monotone_scores(frame, caps, layers)
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
    caption += f"; {definitions}" if definitions else ""
    n_skipped, n_features = int(per_layer["n_skipped"].sum()), features["layer", "feature"].n_unique()
    caption += (
        f"; {int(summary['n_nan'].sum())} undefined scores dropped; {n_skipped} of {n_features} features "
        "skipped in the monotone scores (cap-1 score undefined or best score <= 0)"
    )

    from featureinterp.figures.panels import (  # + the paper's other panels
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
