"""Test-time evaluation of one explanation (paper-method.md sections 6, 9).

The explanation is simulated once over every test record (positives and the six complementary
sources), and each figure's subset is scored from that one simulation, instead of re-simulating
the shared positives once per source as the paper's Figure 3 script does. False positives are
counted per source as ``ScoreSettings`` defines them. Each score carries a bootstrap interval
over its test records (ours; ``ScoreSettings.interval_resamples``), from a generator seeded per
feature and source, so an interval never depends on which sources or features ran with it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from featureinterp.config import ScoreSettings
from featureinterp.explanations.rules import Explanation
from featureinterp.names import COMPLEMENTARY_SOURCES, POSITIVE_SOURCE, PRIMARY_SOURCE
from featureinterp.records.sources import Record, split_records
from featureinterp.simulate.scoring import bootstrap_interval, score

if TYPE_CHECKING:
    import polars as pl

__all__ = ["INTERVAL_KEYS", "Evaluation", "evaluate", "false_positives", "source_interval"]


@dataclass(frozen=True)
class Evaluation:
    score: float
    """Pooled correlation on the primary test set (NaN when undefined; ``reason`` says why)."""
    reason: str | None
    per_source: dict[str, dict[str, float]]
    """source -> {score, fp_rate, n_records, n_fp, n_quiet, n_tokens}: ``fp_rate`` is defined by
    the ``ScoreSettings`` (``fp_definition()`` names it; the paper's: complementary tokens with raw
    activation below 10 that the simulation predicts above 1, over every complementary token)."""
    predictions: dict[str, list[list[float]]]
    """source -> per-record simulated values of the complementary records, and ``positive``."""
    interval: dict[str, float] = field(default_factory=dict)
    """The primary score's bootstrap interval: {ci_low, ci_high, ci_undefined (share of resamples
    with an undefined correlation), ci_level}; empty when intervals are off or not seeded."""


def false_positives(
    true: np.ndarray, guess: np.ndarray, max_act: float, settings: ScoreSettings
) -> tuple[float, int, int]:
    """(rate, false positives, quiet tokens) of one source's complementary tokens (flat arrays).

    A false positive is a quiet token (``settings.fp_quiet``) predicted above
    ``fp_predicted_above``; the rate divides by every token (``fp_denominator = "all"``, the
    paper: times 32 it is false positives per sentence) or by the quiet ones (``"quiet"``). NaN
    when the denominator is empty."""
    below = settings.fp_quiet_below if settings.fp_quiet == "absolute" else settings.fp_quiet_fraction * max_act
    quiet = true < below
    n_fp = int((quiet & (guess > settings.fp_predicted_above)).sum())
    denominator = len(true) if settings.fp_denominator == "all" else int(quiet.sum())
    return (n_fp / denominator if denominator else float("nan")), n_fp, int(quiet.sum())


def evaluate(
    simulate: Callable[[Explanation, list[list[str]]], list[np.ndarray]],
    explanation: Explanation,
    frame: pl.DataFrame,
    max_act: float,
    settings: ScoreSettings | None = None,
    interval_seed: int | None = None,
    sources: tuple[str, ...] = COMPLEMENTARY_SOURCES,
) -> Evaluation:
    """Score ``explanation`` on the test split, per complementary source, with one simulation;
    ``settings``: the score and false-positive definitions (None: the paper's); ``interval_seed``:
    the feature's seed for the bootstrap intervals (None: no intervals); ``sources``: the
    complementary sources to score (the ``generated`` source is scored by the same code on a
    frame of positives + candidates)."""
    settings = settings or ScoreSettings()
    pos = split_records(frame, POSITIVE_SOURCE, "test", None)
    comp = {s: split_records(frame, s, "test", None) for s in sources}
    everything = pos + [r for recs in comp.values() for r in recs]
    preds = simulate(explanation, [list(r.tokens) for r in everything]) if everything else []
    pos_pred, at = preds[: len(pos)], len(pos)
    per_source: dict[str, dict[str, float]] = {}
    predictions: dict[str, list[list[float]]] = {POSITIVE_SOURCE: [p.tolist() for p in pos_pred]}
    primary: tuple[float, str | None] = (float("nan"), "no test records")
    for source, recs in comp.items():
        sp, at = preds[at : at + len(recs)], at + len(recs)
        predictions[source] = [p.tolist() for p in sp]
        s = score([r.acts for r in pos + recs], [*pos_pred, *sp], settings.metrics)
        true = np.concatenate([r.acts for r in recs]) if recs else np.zeros(0)
        guess = np.concatenate(sp) if recs else np.zeros(0)
        fp, n_fp, n_quiet = false_positives(true, guess, max_act, settings)
        per_source[source] = {
            "score": s.correlation,
            "fp_rate": fp,
            "n_records": len(pos) + len(recs),
            "n_fp": n_fp,
            "n_quiet": n_quiet,
            "n_tokens": len(true),
        } | source_interval(pos, pos_pred, recs, sp, source, settings, interval_seed)
        if source == PRIMARY_SOURCE:
            primary = (s.correlation, s.reason)
    interval = {k: per_source[PRIMARY_SOURCE][k] for k in INTERVAL_KEYS if k in per_source.get(PRIMARY_SOURCE, {})}
    return Evaluation(primary[0], primary[1], per_source, predictions, interval)


INTERVAL_KEYS = ("ci_low", "ci_high", "ci_undefined", "ci_level")


def source_interval(
    pos: list[Record],
    pos_pred: list[np.ndarray],
    recs: list[Record],
    rec_pred: list[np.ndarray],
    source: str,
    settings: ScoreSettings,
    interval_seed: int | None,
) -> dict[str, float]:
    """The bootstrap interval of one source's score (positives + that source's records), keyed by
    ``INTERVAL_KEYS``; empty when intervals are off. The generator is seeded by the feature's seed
    and the source's name (crc32), so adding a source leaves every other interval as it was."""
    if interval_seed is None or not settings.interval_resamples or not pos + recs:
        return {}
    rng = np.random.default_rng([interval_seed, zlib.crc32(source.encode())])
    low, high, undefined = bootstrap_interval(
        [r.acts for r in pos + recs],
        [*pos_pred, *rec_pred],
        [0] * len(pos) + [1] * len(recs),
        rng,
        settings.interval_resamples,
        settings.interval_level,
    )
    return {"ci_low": low, "ci_high": high, "ci_undefined": undefined, "ci_level": settings.interval_level}


