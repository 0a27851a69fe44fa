"""Figure 3's detection view: does a similar-but-quiet source lower detection precision as it
raises the simulation's false positives?

Figure 3 shows, per record source, how often the simulator predicts activation on quiet tokens. A
too-broad explanation should show the same weakness under the detection scorer
(featureinterp.simulate.scorers.detection): the scorer model labels similar-but-quiet records as
activating, so detection precision on that source drops. This figure puts the two side by side,
per method (one-shot, tree) and layer: detection precision, detection recall and the simulation's
false positives per sentence, one line per complementary source, from the same figure table
(``fig3_detection.png`` and its summary parquet, next to ``fig3.png``).
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure

from featureinterp.figures import common as F

__all__ = ["fig3_detection"]

_ROWS = (
    ("mean_detection_precision", "Detection precision"),
    ("mean_detection_recall", "Detection recall"),
    ("mean_fp_per_sentence", "Simulation false positives / sentence"),
)


def fig3_detection(
    df: pl.DataFrame,
    out_dir: Path | str,
    expected: int | None = None,
    *,
    condition: str = "structured",
    tokens_per_record: int = 32,
    rule_cap: int | None = None,
) -> F.FigureResult | None:
    """The detection view of Figure 3's grid, or None when no explanation of it has a detection
    score yet (an older table, or detection not run for these conditions)."""
    name = "fig3_detection"
    if "detection_precision" not in df.columns or "detection_recall" not in df.columns:
        return None
    required = ("layer", "feature", "method", "condition", "rule_cap", "source", "fp_rate")
    optional = ("detection_precision", "detection_recall")
    frame = F.prepare(df, name, required, optional, {"condition": condition}, expected)
    frame = F._select_cap(frame, name, rule_cap).with_columns(
        pl.col("detection_precision", "detection_recall").cast(pl.Float64).fill_null(math.nan)
    )
    frame = frame.filter(pl.col("source").is_in(list(F.SOURCES)))
    if frame.filter(pl.col("detection_recall").is_not_nan()).is_empty():
        return None
    aggs = [
        pl.len().alias("n"),
        pl.col("detection_precision").is_nan().sum().alias("n_nan"),
        F._nanmean("detection_precision").alias("mean_detection_precision"),
        F._nanmean("detection_recall").alias("mean_detection_recall"),
        (F._nanmean("fp_rate") * tokens_per_record).alias("mean_fp_per_sentence"),
    ]
    levels = {
        "method": F._order(frame["method"], F.METHODS),
        "source": F._order(frame["source"], F.SOURCES),
        "layer": F._layers(frame["layer"]),
    }
    summary = F._grid(frame.group_by("method", "source", "layer").agg(aggs), levels, expected, ("n", "n_nan"))
    caption, incomplete = F._coverage(summary, expected, "method x source x layer")
    caption += f"; {int(summary['n_nan'].sum())} undefined precisions (no record labelled 1) dropped"
    sns = F._seaborn()
    methods, sources, layers = levels["method"], levels["source"], levels["layer"]
    xs = F._layer_positions(layers)
    with F._style(sns):
        fig = Figure(figsize=(0.6 + 3.4 * len(methods), 7.8), layout="constrained")
        axes = fig.subplots(len(_ROWS), len(methods), sharex=True, sharey="row", squeeze=False)
        for j, method in enumerate(methods):
            for i, (column, ylabel) in enumerate(_ROWS):
                ax = axes[i, j]
                for source in sources:
                    part = summary.filter((pl.col("method") == method) & (pl.col("source") == source))
                    ys = dict(zip(part["layer"], part[column].to_numpy(), strict=True))
                    ax.plot(xs, [ys[layer] for layer in layers], **F._source_style(source))
                if j == 0:
                    ax.set_ylabel(ylabel)
                if i == 0:
                    ax.set_title(F._METHOD_LABELS.get(method, method))
                if i == len(_ROWS) - 1:
                    ax.set_xlabel("Layer")
                    if isinstance(xs[0], str):
                        ax.tick_params(axis="x", rotation=90)
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
        F._title(fig, f"Detection vs simulation false positives ({F._cap_label(frame)})", caption, incomplete)
    return F._write(name, fig, summary, {}, out_dir, caption, incomplete)
