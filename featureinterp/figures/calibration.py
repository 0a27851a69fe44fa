"""The calibration figure: what the synthetic features (layer SYN) say about the simulator and
the explainers, drawn next to the paper's figures and never pooled into them.

A synthetic feature's activation is a known rule on tokens (featureinterp.simulate.synthetic), so its test
records can be scored under the true rule, under another synthetic feature's rule and under an
empty explanation (baselines asset). True minus other is the simulator's *discrimination*: how
much the simulator's predictions depend on the explanation at all. The explainers' scores on the
same records (scores/*) against the true rule's score show how much of the rule they recover.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from featureinterp.figures.common import FigureResult, _seaborn, _style, _title, _write
from featureinterp.names import PRIMARY_SOURCE
from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES

__all__ = ["calibration_figure", "calibration_summary"]

REFERENCES = {
    "true_rule_score": "true rule",
    "other_rule_score": "another feature's rule",
    "null_score": "empty explanation",
}


def calibration_summary(frame: pl.DataFrame, source: str = PRIMARY_SOURCE) -> pl.DataFrame:
    """One row per (synthetic feature, explanation): the reference rules, then each explainer
    condition (by its name), with its score on ``source`` and the share of the true
    rule's score it reaches (``recovery``)."""
    rows = frame.filter(pl.col("source") == source)
    if not len(rows):
        raise ValueError(f"calibration: no rows with source {source!r}")
    out = []
    for feature in sorted(set(rows["feature"].to_list())):
        part = rows.filter(pl.col("feature") == feature)
        name = SYNTHETIC_FEATURES[feature].name if feature < len(SYNTHETIC_FEATURES) else f"F{feature:04d}"
        true = float(part["true_rule_score"][0])
        scores = {label: float(part[column][0]) for column, label in REFERENCES.items()}
        for r in part.sort("experiment").iter_rows(named=True):
            scores[r["experiment"]] = float(r["score"])
        out += [
            {
                "feature": name,
                "explanation": label,
                "score": score,
                "recovery": score / true if np.isfinite(true) and true > 0 else float("nan"),
            }
            for label, score in scores.items()
        ]
    return pl.DataFrame(
        out,
        schema={"feature": pl.String, "explanation": pl.String, "score": pl.Float64, "recovery": pl.Float64},
    )


def calibration_figure(
    frame: pl.DataFrame, out_dir: Path | str, source: str = PRIMARY_SOURCE
) -> FigureResult:
    """Grouped bars per synthetic feature: the three reference explanations (hatched) and every
    explainer condition; the caption gives the mean discrimination (true minus other)."""
    summary = calibration_summary(frame, source)
    features = list(dict.fromkeys(summary["feature"].to_list()))
    labels = list(dict.fromkeys(summary["explanation"].to_list()))
    sns = _seaborn()
    palette = sns.color_palette("deep", max(1, len(labels) - len(REFERENCES)))
    refs = list(REFERENCES.values())
    true = summary.filter(pl.col("explanation") == refs[0])["score"].to_numpy()
    other = summary.filter(pl.col("explanation") == refs[1])["score"].to_numpy()
    gap = true - other
    caption = (
        f"{len(features)} synthetic features, test source {source}; simulator discrimination "
        f"(true - other rule) {np.nanmean(gap) if np.isfinite(gap).any() else float('nan'):.2f} on average; "
        "recovery = explainer score / true-rule score"
    )
    width = 0.8 / len(labels)
    with _style(sns):
        fig = Figure(
            figsize=(max(6.0, 1.2 * len(features) * max(1, len(labels)) / 3), 4.2), layout="constrained"
        )
        ax = fig.subplots()
        x0 = np.arange(len(features), dtype=float)
        for k, label in enumerate(labels):
            part = {
                r["feature"]: r["score"]
                for r in summary.filter(pl.col("explanation") == label).iter_rows(named=True)
            }
            y = np.array([part.get(f, np.nan) for f in features])
            reference = label in refs
            ax.bar(
                x0 - 0.4 + width * (k + 0.5),
                np.nan_to_num(y),
                width,
                color="white" if reference else palette[(k - len(refs)) % len(palette)],
                edgecolor="black",
                hatch=("//", "..", "xx")[refs.index(label)] if reference else None,
                linewidth=0.5,
                label=label,
            )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x0, features, rotation=20)
        ax.set_ylabel("Test score (pooled Pearson r)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        _title(fig, "Calibration on synthetic features (not part of the paper's figures)", caption, False)
    return _write("fig_calibration", fig, summary, {}, out_dir, caption, False)
