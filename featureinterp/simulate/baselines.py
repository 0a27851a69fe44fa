"""Reference scores every explanation score should be read against (what a score means).

- **Null baseline**: the score of an explanation that says nothing, i.e. the simulator prompted
  with an empty explanation. Whatever correlation it reaches comes from the simulator's prior
  (token frequency, punctuation, position), not from any explanation; an explainer's score near it
  explains nothing. Computed once per (layer, feature) on the same test records as the scores.
- **Synthetic calibration** (layer ``SYN`` only, featureinterp.simulate.synthetic): the known true rule,
  another synthetic feature's rule and the empty explanation, scored on the feature's own test
  records. True minus other is the simulator's discrimination; the explainers' scores on the same
  partitions (scores/*) show how much of the true rule they recover.

Both use ``simulate.evaluate``, so every number is on the scale of the stored test scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featureinterp.config import ScoreSettings
from featureinterp.explanations.rules import Explanation, Rule
from featureinterp.simulate.evaluate import evaluate
from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES, wrong_explanation

if TYPE_CHECKING:
    import polars as pl

__all__ = ["baseline_scores", "free_text"]

SimulateText = Callable[[str, Sequence[Sequence[str]]], list[np.ndarray]]
"""``simulate(explanation_text, records) -> per-token predictions`` (LocalSimulator.simulate)."""


def free_text(text: str) -> Explanation:
    """A one-rule free-text explanation, as the simulator is given the synthetic true rules."""
    return Explanation((Rule(text, 5),), structured=False)


def baseline_scores(
    simulate: SimulateText,
    frame: pl.DataFrame,
    max_act: float,
    synthetic_index: int | None = None,
    settings: ScoreSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """``{"null": {score, per_source}, ...}`` for one partition's records; with
    ``synthetic_index`` also ``"true_rule"`` and ``"other_rule"``. The empty explanation is
    simulated as it is (an empty rule text), not skipped: its predictions are the prior.
    ``settings``: the preset's score definitions (None: the paper's), as the explanations use."""

    def with_text(text: str) -> Callable[[Explanation, list[list[str]]], list[np.ndarray]]:
        return lambda _explanation, records: simulate(text, records)

    kinds = {"null": ""}
    if synthetic_index is not None and 0 <= synthetic_index < len(SYNTHETIC_FEATURES):
        kinds |= {
            "true_rule": SYNTHETIC_FEATURES[synthetic_index].explanation,
            "other_rule": wrong_explanation(synthetic_index),
        }
    out: dict[str, dict[str, Any]] = {}
    for kind, text in kinds.items():
        ev = evaluate(with_text(text), free_text(text or "(empty)"), frame, max_act, settings)
        out[kind] = {"text": text, "score": ev.score, "reason": ev.reason, "per_source": ev.per_source}
    return out
