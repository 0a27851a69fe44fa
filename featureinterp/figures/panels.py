"""The paper figure scripts' other panels (paper-method.md 9.6), beside each figure's main PNG.

The paper drew more than the figures in its body: ``complementary_sentences_figs.py`` compares
one-shot with tree on the similar-negative test set, on mean rule complexity and on the number of
rules ("polysemanticity") per layer; ``polysemanticity_figs.py`` draws four heatmaps (score,
score / best, monotone score, monotone share), the score against the rule count per layer, the
mean complexity of the cap-5 explanations with an 80% confidence band, and the rule count a
feature needs for 90% of its best score. ``featureinterp.figures.paper`` builds the main figure and its
summary; this module draws these panels from the same tables, one PNG per figure
(``fig3_panels.png``, ``fig5_panels.png``), so a figure asset shows everything the paper showed.

One model per figure here (a figure is a preset's asset), so the paper's cross-model lines
(``avgcomp.pdf``, ``line_plot.pdf``) are drawn for this preset's model only, against the layer
index rather than its percentage of the last layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import cast

import matplotlib
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from featureinterp.figures import common as F
from featureinterp.storage import atomic_write

__all__ = ["cap_heatmap", "fig3_panels", "fig5_layer_table", "fig5_panels", "monotone_scores", "rules_for_share"]

CI_LEVEL = 0.8
"""The paper's band around mean complexity and rule counts (80% Student-t)."""
SHARE = 0.9
"""``line_plot.pdf``: the rule count whose monotone score reaches this share of the best."""
_METHOD_PAIR = {"one_shot": "#120789", "tree": "#FA9E3B"}


def cap_heatmap(
    sns: ModuleType,
    ax: Axes,
    summary: pl.DataFrame,
    column: str,
    caps: Sequence[int],
    layers: Sequence[str],
    vmax: float,
    xlabel: str,
) -> None:
    """One layer x rule-cap heatmap of ``column`` in the paper's style (plasma without its
    bright end, 0..vmax, values written in the cells)."""
    cmap = ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0, 0.95, 256)))
    values = {(r["layer"], r["rule_cap"]): r[column] for r in summary.iter_rows(named=True)}
    grid = np.array([[values[(layer, cap)] for cap in caps] for layer in layers], dtype=float)
    sns.heatmap(
        grid,
        ax=ax,
        cmap=cmap,
        vmin=0.0,
        vmax=vmax,
        annot=True,
        fmt=".2f",
        annot_kws={"fontsize": 7},
        xticklabels=caps,
        yticklabels=layers,
        linewidths=0.5,
        linecolor="white",
        cbar_kws={"shrink": 0.8},
    )
    ax.tick_params(axis="y", rotation=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Layer")


def _mean_ci(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, 80% t half-width (NaN below 2 values) and count of the finite ``values``."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    if len(v) < 2:
        return float(v.mean()), float("nan"), 1
    sem = float(v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()), sem * F.t_quantile(0.5 + CI_LEVEL / 2, len(v) - 1), len(v)


def rules_for_share(features: pl.DataFrame, share: float = SHARE) -> pl.DataFrame:
    """Per kept feature (the fig5 ``features`` table): the smallest rule cap whose monotone
    score reaches ``share`` of the feature's best score (``polysemanticity_figs.py``)."""
    kept = features.filter(pl.col("kept") & (pl.col("mono_prop") >= share - 1e-12))
    return kept.group_by("layer", "feature").agg(pl.col("rule_cap").min().alias("rules_needed"))


def fig5_layer_table(frame: pl.DataFrame, features: pl.DataFrame, layers: Sequence[str]) -> pl.DataFrame:
    """Per layer: mean complexity of the highest-cap explanations and the mean rule count for
    ``SHARE`` of the best score, each with its 80% CI half-width and count."""
    top = cast(int, frame["rule_cap"].max())  # an Int64 column (``prepare``), not empty
    needed = rules_for_share(features)
    rows = []
    for layer in layers:
        comp = frame.filter((pl.col("layer") == layer) & (pl.col("rule_cap") == top))["complexity"]
        c_mean, c_ci, c_n = _mean_ci(comp.to_numpy().astype(float))
        need = needed.filter(pl.col("layer") == layer)["rules_needed"].to_numpy().astype(float)
        r_mean, r_ci, r_n = _mean_ci(need)
        rows.append(
            {
                "layer": layer,
                "rule_cap": top,
                "mean_complexity": c_mean,
                "complexity_ci": c_ci,
                "n_complexity": c_n,
                "mean_rules_for_share": r_mean,
                "rules_for_share_ci": r_ci,
                "n_rules_for_share": r_n,
            }
        )
    return pl.DataFrame(rows)


def fig5_panels(
    summary: pl.DataFrame, layer_table: pl.DataFrame, out_dir: Path, caption: str, incomplete: bool
) -> Path:
    """``fig5_panels.png``: the four heatmaps, score vs rule cap per layer, complexity and rules
    needed per layer (paper-method.md 9.6, ``polysemanticity_figs.py``)."""
    sns = F._seaborn()
    layers = F._layers(summary["layer"])
    caps = sorted(set(summary["rule_cap"].to_list()))
    heatmaps = (
        ("mean_score", "Score"),
        ("mean_score_prop", "Score / best score"),
        ("mean_mono_score", "Monotone score"),
        ("mean_mono_prop", "Monotone score / best"),
    )
    xs = F._layer_positions(layers)
    numeric = not isinstance(xs[0], str)
    with F._style(sns):
        fig = Figure(figsize=(4.0 * 4, 2.2 + 0.45 * len(layers) + 3.2), layout="constrained")
        subfigures = fig.subfigures(2, 1, height_ratios=(1.6 + 0.45 * len(layers), 3.2))
        assert isinstance(subfigures, np.ndarray)  # 2 x 1 subfigures, squeezed to a 1-D array
        top, bottom = subfigures
        for ax, (column, title) in zip(top.subplots(1, 4), heatmaps, strict=True):
            cap_heatmap(sns, ax, summary, column, caps, layers, 1.0, "Rule count")
            ax.set_title(title)
        lines, comp, need = bottom.subplots(1, 3)
        palette = sns.color_palette("viridis", len(layers))
        for color, layer in zip(palette, layers, strict=True):
            part = summary.filter(pl.col("layer") == layer).sort("rule_cap")
            lines.plot(
                part["rule_cap"], part["mean_score"], marker="o", markersize=3, color=color, label=layer
            )
        lines.set_xticks(caps)
        lines.set_xlabel("Rule count")
        lines.set_ylabel("Mean test score")
        lines.set_title("Score vs rule count")
        lines.legend(fontsize=6, ncol=2 if len(layers) > 8 else 1)
        for ax, (column, ci, ylabel, title) in (
            (comp, ("mean_complexity", "complexity_ci", "Mean complexity", "Complexity (highest cap)")),
            (
                need,
                (
                    "mean_rules_for_share",
                    "rules_for_share_ci",
                    f"Rules for {SHARE:.0%} of best",
                    "Rule count needed",
                ),
            ),
        ):
            mean = layer_table[column].to_numpy().astype(float)
            half = np.nan_to_num(layer_table[ci].to_numpy().astype(float))
            pos = np.arange(len(layers)) if not numeric else np.asarray(xs, dtype=float)
            ax.plot(pos, mean, color="#120789", marker="o", markersize=3)
            ax.fill_between(pos, mean - half, mean + half, color="#120789", alpha=0.2, linewidth=0)
            ax.set_xticks(
                pos, layers if not numeric else [str(x) for x in xs], rotation=90 if not numeric else 0
            )
            ax.set_xlabel("Layer")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}, {CI_LEVEL:.0%} CI")
        F._title(fig, "Polysemanticity sweep: all panels", caption, incomplete)
    path = Path(out_dir) / "fig5_panels.png"
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=F.DPI, bbox_inches="tight"))
    return path


def fig3_panels(summary: pl.DataFrame, out_dir: Path, caption: str, incomplete: bool, source: str) -> Path:
    """``fig3_panels.png``: one-shot vs tree per layer on the ``source`` test set (the paper:
    similar-negative), mean rule complexity and mean number of rules
    (``complementary_sentences_figs.py``'s combined plots)."""
    sns = F._seaborn()
    layers = F._layers(summary["layer"])
    xs = F._layer_positions(layers)
    numeric = not isinstance(xs[0], str)
    pos = np.asarray(xs, dtype=float) if numeric else np.arange(len(layers))
    part = summary.filter(pl.col("source") == source)
    panels = [("mean_score", f"Score ({source.replace('_', '-')})")]
    panels += [
        (c, t)
        for c, t in (("mean_complexity", "Mean complexity"), ("mean_n_rules", "Rules per explanation"))
        if c in part.columns
    ]
    with F._style(sns):
        fig = Figure(figsize=(3.4 * len(panels), 3.2), layout="constrained")
        for ax, (column, ylabel) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
            for method in F._order(part["method"], F.METHODS):
                rows = part.filter(pl.col("method") == method)
                ys = dict(zip(rows["layer"], rows[column].to_numpy(), strict=True))
                ax.plot(
                    pos,
                    [ys.get(x, np.nan) for x in layers],
                    color=_METHOD_PAIR.get(method, "#555555"),
                    marker="o",
                    markersize=3,
                    label=F._METHOD_LABELS.get(method, method),
                )
            ax.set_xticks(pos, [str(x) for x in xs] if numeric else layers, rotation=0 if numeric else 90)
            if numeric and len(pos) > 12:
                ax.set_xticks(pos[:: max(1, len(pos) // 10)])
            ax.set_xlabel("Layer")
            ax.set_ylabel(ylabel)
        fig.axes[0].legend(fontsize=8)
        F._title(fig, "One-shot vs tree", caption, incomplete)
    path = Path(out_dir) / "fig3_panels.png"
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=F.DPI, bbox_inches="tight"))
    return path


def monotone_scores(frame: pl.DataFrame, caps: Sequence[int], layers: Sequence[str]) -> pl.DataFrame:
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
