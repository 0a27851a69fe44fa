"""Scoring simulated activations against the truth (paper-method.md section 6).

Scores pool the tokens of all records and compute each metric once (not a mean of per-record
scores). The primary score is Pearson correlation. Two definitions (``Metrics``):

- ``paper`` (the default, paper-method.md §12.8): the paper code's. Every metric is NaN when the
  truth is (nearly) constant, ``var(true) < 1e-10``; the correlation is also NaN when the
  prediction is exactly constant (numpy's corrcoef divides by a zero deviation) but is computed
  for a nearly constant one. R-squared is ``1 - mean((t-p)^2) / mean(t^2)`` and absolute deviation
  explained ``1 - mean|t-p| / mean|t|``, both on the raw prediction (on the test split the
  prediction is 0..5 and the truth raw, so neither is meaningful there; the paper reports only the
  correlation downstream, as we do).
- ``rescaled`` (ours, an option): the correlation is NaN when the prediction is constant within
  ``1e-10`` (a prediction that flat carries no ranking; its correlation is rounding noise), and
  R-squared / absolute deviation explained are centred and measured after the least-squares
  rescaling of the prediction onto the truth (R-squared = correlation squared), so they compare
  across the raw and 0..5 scales.

Either way a NaN comes with its reason, so figures can count undefined scores instead of
silently dropping or zeroing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["METRICS", "Metrics", "Score", "bootstrap_interval", "mean_halfwidth", "score"]

_EPS = 1e-10

Metrics = Literal["paper", "rescaled"]
METRICS: tuple[str, ...] = ("paper", "rescaled")


@dataclass(frozen=True)
class Score:
    correlation: float
    """Pooled Pearson correlation (NaN when undefined, see ``reason``)."""
    r_squared: float
    """``paper``: 1 - mean((t-p)^2) / mean(t^2) on the raw prediction; ``rescaled``: the centred
    coefficient of determination of the least-squares rescaled prediction (= correlation**2)."""
    abs_dev_explained: float
    """``paper``: 1 - mean|t-p| / mean|t|; ``rescaled``: 1 - mean|t - fit| / mean|t - mean(t)|."""
    n_tokens: int
    reason: str | None = None
    """Why the correlation is NaN (None when it is defined)."""


_Values = Sequence[Sequence[float] | np.ndarray] | np.ndarray
"""Per-record values: a sequence of per-token sequences or arrays, or a 2-D array."""


def _pooled(values: _Values) -> np.ndarray:
    if not len(values):
        return np.zeros(0)
    return np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in values])


def score(true: _Values, pred: _Values, metrics: Metrics = "paper") -> Score:
    """Score records: ``true[i]`` and ``pred[i]`` are one record's per-token values."""
    if metrics not in METRICS:
        raise ValueError(f"unknown score metrics {metrics!r}: choose 'paper' or 'rescaled'")
    t, p = _pooled(true), _pooled(pred)
    if t.shape != p.shape:
        raise ValueError(f"true and predicted values differ in length: {t.shape[0]} vs {p.shape[0]} tokens")
    nan = float("nan")
    if t.size < 2:
        return Score(nan, nan, nan, int(t.size), "fewer than two tokens")
    if t.var() < _EPS:
        return Score(nan, nan, nan, int(t.size), "true activations are constant")
    if metrics == "paper":
        r2 = 1.0 - float(np.mean((t - p) ** 2) / np.mean(t**2))
        ade = 1.0 - float(np.mean(np.abs(t - p)) / np.mean(np.abs(t)))
        if np.ptp(p) == 0:  # numpy's corrcoef: a zero deviation gives NaN
            return Score(nan, r2, ade, int(t.size), "predictions are constant")
        return Score(float(np.corrcoef(t, p)[0, 1]), r2, ade, int(t.size))
    if p.var() < _EPS:
        return Score(nan, nan, nan, int(t.size), "predictions are constant")
    r = float(np.corrcoef(t, p)[0, 1])
    slope, intercept = np.polyfit(p, t, 1)
    fit = slope * p + intercept
    r2 = 1.0 - float(((t - fit) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    ade = 1.0 - float(np.abs(t - fit).mean() / np.abs(t - t.mean()).mean())
    return Score(r, r2, ade, int(t.size))


def bootstrap_interval(
    true: _Values,
    pred: _Values,
    groups: Sequence[int],
    rng: np.random.Generator,
    n_resamples: int = 1000,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``(low, high, undefined share)``: the percentile interval of the pooled correlation when
    the records are resampled with replacement *within* each group (``groups[i]`` labels record
    ``i``: positives and the complementary source keep their counts, since the test set's
    composition is fixed by design), and the share of resamples whose correlation is undefined.

    Each record is reduced to its token sums (n, Σt, Σp, Σt², Σp², Σtp), so a resample is a count
    vector times that table: 1,000 resamples of 20 records cost one small matrix product.
    ``rng``: the caller's generator (per layer and feature), so an interval never depends on what
    ran before it."""
    if not 0 < level < 1:
        raise ValueError(f"level {level} must be between 0 and 1")
    if not (len(true) == len(pred) == len(groups)):
        raise ValueError(f"{len(true)} true, {len(pred)} predicted records and {len(groups)} group labels")
    stats = np.zeros((len(true), 6))
    for i, (t, p) in enumerate(zip(true, pred, strict=True)):
        t, p = np.asarray(t, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
        stats[i] = (t.size, t.sum(), p.sum(), (t * t).sum(), (p * p).sum(), (t * p).sum())
    labels = np.asarray(groups)
    counts = np.zeros((n_resamples, len(true)))
    for g in np.unique(labels):
        members = np.flatnonzero(labels == g)
        picks = rng.integers(0, len(members), size=(n_resamples, len(members)))  # [R, members]
        np.add.at(counts, (np.arange(n_resamples)[:, None], members[picks]), 1.0)
    n, st, sp, stt, spp, stp = (counts @ stats).T  # each [R]
    with np.errstate(invalid="ignore", divide="ignore"):
        var_t = stt / n - (st / n) ** 2
        var_p = spp / n - (sp / n) ** 2
        r = (stp / n - st * sp / n**2) / np.sqrt(var_t * var_p)
    r[(var_t < _EPS) | (var_p <= 0) | (n < 2)] = np.nan
    defined = r[np.isfinite(r)]
    if not defined.size:
        return float("nan"), float("nan"), 1.0
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.clip(defined, -1.0, 1.0), [tail, 100 - tail])
    return float(low), float(high), 1.0 - defined.size / n_resamples


def mean_halfwidth(half_widths: Sequence[float]) -> float:
    """Half-width of the interval of a mean of independent scores with these half-widths:
    sqrt(sum of squares) / n (NaN for none). How much a condition's mean moves with its features'
    test records alone."""
    if not half_widths:
        return float("nan")
    return float(np.sqrt(sum(h * h for h in half_widths))) / len(half_widths)
