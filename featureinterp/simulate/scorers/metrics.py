"""The test items every secondary scorer judges, and the metrics it reports per record source.

Every scorer (detection, fuzzing, embedding) sees the same test records as the simulation score
(``simulate.evaluate``): the test positives and the test rows of each complementary source. An
item's label is whether the feature *fires anywhere in the record* (its raw row maximum > 0), not
which source it came from: a ``random`` or ``similar`` row may activate, and calling it a negative
would punish an explanation for being right. Metrics are reported on the pooled items and, per
complementary source, on the positives together with that source's records (the same sets as the
per-source simulation scores), so Figure 3's question — does a similar-but-quiet source lower
precision? — can be asked of every scorer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featureinterp.names import COMPLEMENTARY_SOURCES, POSITIVE_SOURCE, PRIMARY_SOURCE

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "ALL_SOURCES",
    "Item",
    "auroc",
    "binary_metrics",
    "by_source",
    "headline",
    "spearman",
    "split_items",
]

ALL_SOURCES = "all"
"""Key of the metrics over every test item (next to the per-source keys)."""


@dataclass(frozen=True, eq=False)
class Item:
    """One test record as a scorer sees it."""

    source: str
    row: int
    """Corpus row id (kept so an export can say exactly which rows were judged)."""
    tokens: tuple[str, ...]
    acts: np.ndarray
    """Raw activation per token [T]."""

    @property
    def active(self) -> bool:
        """The label: the feature fires somewhere in the record."""
        return bool(self.acts.size and float(self.acts.max()) > 0)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def split_items(frame: pl.DataFrame, split: str = "test") -> list[Item]:
    """The records of one split of a feature's records table (featureinterp.records.sources.records_frame):
    positives first, then each complementary source in the documented order, by rank."""
    import polars as pl

    test = frame.filter(pl.col("split") == split)
    out: list[Item] = []
    for source in (POSITIVE_SOURCE, *COMPLEMENTARY_SOURCES):
        for r in test.filter(pl.col("source") == source).sort("rank").iter_rows(named=True):
            out.append(Item(source, int(r["row"]), tuple(r["tokens"]), np.asarray(r["acts"], np.float32)))
    return out


def binary_metrics(labels: Sequence[bool], predicted: Sequence[bool]) -> dict[str, float]:
    """Balanced accuracy, precision, recall and F1 of yes/no predictions (NaN where undefined:
    no predicted positives -> precision; no true positives -> recall; a single class ->
    balanced accuracy), with the counts they came from."""
    y, p = np.asarray(labels, dtype=bool), np.asarray(predicted, dtype=bool)
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} predictions")
    tp, fp = int((y & p).sum()), int((~y & p).sum())
    fn, tn = int((y & ~p).sum()), int((~y & ~p).sum())
    recall = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    precision = tp / (tp + fp) if tp + fp else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else math.nan
    return {
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n": len(y),
        "n_positive": int(y.sum()),
    }


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties
    count half; the Mann-Whitney U statistic). NaN with only one class."""
    y, s = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties (1-based)
    start = 0
    for end in range(1, len(s) + 1):
        if end == len(s) or sorted_s[end] != sorted_s[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def by_source(
    items: Sequence[Item],
    metric: Callable[[list[bool], list[Any]], Any],
    values: Sequence[Any],
    labels: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """``metric(labels, values)`` on every item (key ``all``) and, per complementary source present,
    on the positives plus that source's items. ``values``: one prediction or score per item;
    ``labels``: the truth per item (default: whether the feature fires in it)."""
    if len(values) != len(items):
        raise ValueError(f"{len(items)} items but {len(values)} values")
    labels = [it.active for it in items] if labels is None else [bool(v) for v in labels]
    if len(labels) != len(items):
        raise ValueError(f"{len(items)} items but {len(labels)} labels")
    out = {ALL_SOURCES: metric(labels, list(values))}
    for source in COMPLEMENTARY_SOURCES:
        idx = [i for i, it in enumerate(items) if it.source in (POSITIVE_SOURCE, source)]
        if any(items[i].source == source for i in idx):
            out[source] = metric([labels[i] for i in idx], [values[i] for i in idx])
    return out


def headline(per_source: Mapping, key: str | None = None) -> float:
    """The one number of a scorer: its metric on the primary set (positives + similar-but-quiet
    rows, like the simulation score), else on every item; ``key``: which metric of a dict."""
    value = per_source.get(PRIMARY_SOURCE, per_source.get(ALL_SOURCES, math.nan))
    return float(value[key] if key is not None and isinstance(value, Mapping) else value)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, int]:
    """Spearman rank correlation of the pairs where both are finite, and how many pairs that was
    (NaN below 3 pairs or when either side is constant)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    n = int(keep.sum())
    if n < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan, n
    from scipy.stats import spearmanr

    return float(spearmanr(a[keep], b[keep]).statistic), n
