"""Scoring simulated activations against the truth (paper-method.md section 6).

Scores pool the tokens of all records and compute each metric once (not a mean of per-record
scores). The primary score is Pearson correlation. One NaN policy everywhere: a metric is NaN
exactly when it is undefined (the truth or the prediction is constant), and the reason is returned
with it, so figures can count and report undefined scores instead of silently dropping or zeroing
them (the original code uses three different policies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Score", "score"]

_EPS = 1e-10


@dataclass(frozen=True)
class Score:
    correlation: float
    """Pooled Pearson correlation (NaN when undefined, see ``reason``)."""
    r_squared: float
    """Centred coefficient of determination 1 - SSE / SST of the least-squares rescaled prediction
    (= correlation**2 where defined): comparable across the raw and 0..5 scales."""
    abs_dev_explained: float
    """1 - mean|true - fit| / mean|true - mean(true)| for the same rescaled prediction."""
    n_tokens: int
    reason: str | None = None
    """Why the scores are NaN (None when they are defined)."""


_Values = Sequence[Sequence[float] | np.ndarray] | np.ndarray
"""Per-record values: a sequence of per-token sequences or arrays, or a 2-D array."""


def score(true: _Values, pred: _Values) -> Score:
    """Score records: ``true[i]`` and ``pred[i]`` are one record's per-token values."""
    t = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in true]) if len(true) else np.zeros(0)
    p = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in pred]) if len(pred) else np.zeros(0)
    if t.shape != p.shape:
        raise ValueError(f"true and predicted values differ in length: {t.shape[0]} vs {p.shape[0]} tokens")
    nan = float("nan")
    if t.size < 2:
        return Score(nan, nan, nan, int(t.size), "fewer than two tokens")
    if t.var() < _EPS:
        return Score(nan, nan, nan, int(t.size), "true activations are constant")
    if p.var() < _EPS:
        return Score(nan, nan, nan, int(t.size), "predictions are constant")
    r = float(np.corrcoef(t, p)[0, 1])
    slope, intercept = np.polyfit(p, t, 1)
    fit = slope * p + intercept
    r2 = 1.0 - float(((t - fit) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    ade = 1.0 - float(np.abs(t - fit).mean() / np.abs(t - t.mean()).mean())
    return Score(r, r2, ade, int(t.size))
