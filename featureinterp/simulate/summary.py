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
    values, null, dead, undefined, missing = [], [], 0, 0, []
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
    )


def results_table(rows: Sequence[ConditionSummary]) -> str:
    """Fixed-width text: one line per layer x condition (the condition column as wide as the
    longest name, so every row's numbers stay under their headers)."""
    width = max([len("condition"), *(len(r.condition) for r in rows)])
    header = (
        f"{'layer':6s} {'condition':{width}s} {'test score':>15s} {'null':>7s} "
        f"{'explained':>9s} {'failed':>6s} {'dead':>4s} {'not run':>7s}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        score = f"{r.mean:.3f} ± {r.spread:.3f}" if r.scores else "-"
        null = f"{r.null_mean:.3f}" if r.null else "-"
        explained = f"{len(r.scores)}" + (f"+{r.undefined}nan" if r.undefined else "")
        lines.append(
            f"{r.layer:6s} {r.condition:{width}s} {score:>15s} {null:>7s} "
            f"{explained:>9s} {len(r.failed):>6d} {r.dead:>4d} {len(r.not_run):>7d}"
        )
    return "\n".join(lines)
