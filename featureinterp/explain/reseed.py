"""Re-explaining a slice with other seeds: how much a condition's mean moves with the explainer's
randomness, next to how much it moves with the test records (ours, issue 33).

A stored score has a bootstrap interval over its test records (``simulate.evaluate``). That is one
source of noise; the explainer's sampling is another: the same feature, records and condition
explained with another seed gives another explanation and another score. ``reseed`` explains
each (condition, layer, feature) of a slice again with ``k - 1`` more seeds (seed 0 is the
stored explanation), scores each on the same test records with the same interval seed, and
``seed_spread`` reports per condition the mean of each seed, the between-seed standard deviation
of that mean, and the test-record half-width of the mean beside it. A Figure 4 gap smaller than
either is noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from featureinterp.config import Preset
from featureinterp.explain.conditions import Condition, feature_records
from featureinterp.explain.config import explain_seed
from featureinterp.explain.tree import explain
from featureinterp.explanations.rules import Explanation
from featureinterp.llm.backend import ChatBackend
from featureinterp.simulate.evaluate import evaluate
from featureinterp.simulate.scoring import mean_halfwidth

__all__ = ["SeedScore", "reseed", "reseed_seed", "seed_spread"]

Simulate = Callable[[Explanation, list[list[str]]], list[np.ndarray]]


@dataclass(frozen=True)
class SeedScore:
    condition: str
    layer: int
    feature: int
    seed_index: int
    """0: the stored explanation; 1..k-1: re-explained."""
    score: float
    ci_low: float
    ci_high: float
    explanation: str


def reseed_seed(spec: Preset, condition: str, layer: int, feature: int, index: int) -> int:
    """The explainer seed of re-explanation ``index`` (>= 1); index 0 is the stored one's."""
    salt = condition if index == 0 else f"{condition}#reseed{index}"
    return explain_seed(spec.seed, spec.name, salt, layer, feature)


def reseed(
    spec: Preset,
    cond: Condition,
    backend: ChatBackend,
    simulate: Simulate,
    layer: int,
    feature: int,
    frame: pl.DataFrame,
    max_act: float,
    seeds: int,
    interval_seed: int,
    holistic: tuple[dict[int, np.ndarray], float] | None = None,
) -> list[SeedScore]:
    """Seeds 1..``seeds``-1 of one (condition, layer, feature): explained as the stored one was
    (same records and explainer settings, another seed) and scored on the same test records."""
    config = cond.explainer_config(spec.explain)
    hol, max_h = holistic if holistic is not None else (None, 0.0)
    records = feature_records(frame, max_act, cond, hol, max_h)
    out = []
    for index in range(1, seeds):
        result = explain(backend, simulate, records, config, reseed_seed(spec, cond.name, layer, feature, index))
        ev = evaluate(simulate, result.explanation, frame, max_act, spec.scores, interval_seed=interval_seed)
        out.append(
            SeedScore(
                cond.name, layer, feature, index, ev.score, ev.interval.get("ci_low", math.nan),
                ev.interval.get("ci_high", math.nan), str(result.explanation),
            )  # fmt: skip
        )
    return out


def seed_spread(scores: Sequence[SeedScore]) -> dict[str, dict[str, Any]]:
    """Per condition: ``means`` (the mean over features of each seed that scored every feature
    of the slice: a seed with an undefined score is left out, so all means are over the same
    features), ``between_seed_sd`` (n - 1; NaN for fewer than two seeds), ``record_halfwidth``
    (the seed means' test-record half-width, averaged over seeds: sqrt(sum of squared
    half-widths) / n) and ``features``."""
    by: dict[str, dict[int, dict[tuple[int, int], SeedScore]]] = {}
    for s in scores:
        by.setdefault(s.condition, {}).setdefault(s.seed_index, {})[(s.layer, s.feature)] = s
    out: dict[str, dict[str, Any]] = {}
    for cond, seeds in by.items():
        keys = set().union(*(set(v) for v in seeds.values()))
        means: dict[int, float] = {}
        widths: list[float] = []
        for index, values in sorted(seeds.items()):
            if set(values) != keys or any(not math.isfinite(v.score) for v in values.values()):
                continue
            means[index] = statistics.fmean(v.score for v in values.values())
            half = [(v.ci_high - v.ci_low) / 2 for v in values.values()]
            if all(math.isfinite(h) for h in half):
                widths.append(mean_halfwidth(half))
        out[cond] = {
            "features": len(keys),
            "means": means,
            "between_seed_sd": statistics.stdev(means.values()) if len(means) > 1 else math.nan,
            "record_halfwidth": statistics.fmean(widths) if widths else math.nan,
        }
    return out


def stored_seed_score(value: Mapping[str, Any], explanation: str) -> SeedScore:
    """Seed 0 of a slice: a stored score value (``scores/<condition>``)."""
    return SeedScore(
        value["condition"], int(value["layer"]), int(value["feature"]), 0, float(value["score"]),
        float(value.get("ci_low", math.nan)), float(value.get("ci_high", math.nan)), explanation,
    )  # fmt: skip
