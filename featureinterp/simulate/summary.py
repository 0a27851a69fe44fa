"""The results table: per layer x condition, how well the explanations scored and how many exist.

What a user wants at the end of a run (and from `featureinterp scores`) is not a list of partitions
but the answer: per layer and condition, the mean test score and its spread over features, the
null baseline beside it (the empty explanation's score: an explanation near it explains nothing),
and how many features were explained, failed, were dead (never fire: nothing to explain) or were
not run yet. Stored values in, text out: no Dagster here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from featureinterp.simulate.scoring import mean_halfwidth

__all__ = ["ConditionSummary", "results_table", "summarize"]


@dataclass(frozen=True)
class ConditionSummary:
    """One row of the results table."""

    layer: str
    condition: str
    scores: tuple[float, ...]
    """Test scores (primary source: positives + similar non-activating) of the explained features."""
    null: tuple[float, ...]
    """The null baseline's score of the same features (where stored)."""
    dead: int
    """Features that never fire in the corpus (skipped: nothing to explain)."""
    undefined: int
    """Explained features whose score is undefined (NaN: e.g. a constant simulation)."""
    failed: tuple[str, ...]
    """Feature keys this run tried and failed (an older stored score may still count as explained)."""
    not_run: tuple[str, ...]
    """Feature keys in scope with no stored score that this run did not try (another slice)."""
    half_widths: tuple[float, ...] = ()
    """Half-widths of the explained features' bootstrap intervals over test records (where
    stored and defined)."""

    @property
    def record_halfwidth(self) -> float:
        """Half-width of the mean's interval from test-record sampling alone: the features'
        intervals are independent, so sqrt(sum of squared half-widths) / n (NaN when none are
        stored). ``spread`` is the other uncertainty: which features were drawn."""
        return mean_halfwidth(self.half_widths)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores) if self.scores else math.nan

    @property
    def spread(self) -> float:
        """Standard deviation over features (n - 1; 0 for one feature)."""
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    @property
    def null_mean(self) -> float:
        return statistics.fmean(self.null) if self.null else math.nan


def summarize(
    layer: str,
    condition: str,
    scores: Mapping[str, Mapping | None],
    baselines: Mapping[str, Mapping | None],
    expected: Sequence[str],
    failed: Sequence[str] = (),
) -> ConditionSummary:
    """``scores`` / ``baselines``: feature key -> stored value (None or absent: not stored);
    ``expected``: the feature keys the condition runs on in this layer; ``failed``: those this run
    failed."""
    values, null, dead, undefined, missing, half = [], [], 0, 0, [], []
    for feature in expected:
        value = scores.get(feature)
        if value is None:
            missing.append(feature)
            continue
        if value.get("skipped"):
            dead += 1
            continue
        score = value.get("score")
        if score is None or math.isnan(float(score)):
            undefined += 1
            continue
        values.append(float(score))
        low, high = value.get("ci_low"), value.get("ci_high")
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            half.append((float(high) - float(low)) / 2)
        base = (baselines.get(feature) or {}).get("null", {}).get("score")
        if base is not None and not math.isnan(float(base)):
            null.append(float(base))
    tried = set(failed)
    return ConditionSummary(
        layer,
        condition,
        tuple(values),
        tuple(null),
        dead,
        undefined,
        tuple(f for f in expected if f in tried),  # a failure is never hidden by an older value
        tuple(f for f in missing if f not in tried),
        tuple(half),
    )


def results_table(rows: Sequence[ConditionSummary]) -> str:
    """Fixed-width text: one line per layer x condition (the condition column as wide as the
    longest name, so every row's numbers stay under their headers). ``test score``: mean ± the
    spread over features; ``records ±``: the half-width of the mean's bootstrap interval over
    test records (how much the mean would move with other test records of the same features)."""
    width = max([len("condition"), *(len(r.condition) for r in rows)])
    header = (
        f"{'layer':6s} {'condition':{width}s} {'test score':>15s} {'records ±':>9s} {'null':>7s} "
        f"{'explained':>9s} {'failed':>6s} {'dead':>4s} {'not run':>7s}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        score = f"{r.mean:.3f} ± {r.spread:.3f}" if r.scores else "-"
        null = f"{r.null_mean:.3f}" if r.null else "-"
        rec = f"{r.record_halfwidth:.3f}" if r.half_widths else "-"
        explained = f"{len(r.scores)}" + (f"+{r.undefined}nan" if r.undefined else "")
        lines.append(
            f"{r.layer:6s} {r.condition:{width}s} {score:>15s} {rec:>9s} {null:>7s} "
            f"{explained:>9s} {len(r.failed):>6d} {r.dead:>4d} {len(r.not_run):>7d}"
        )
    return "\n".join(lines)
