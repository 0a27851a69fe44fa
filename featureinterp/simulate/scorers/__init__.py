"""Secondary scores of an explanation: cheap second opinions next to the simulation score.

Published interpretability numbers (delphi, SAEBench, Neuronpedia) are mostly detection and
fuzzing accuracies, not simulation correlations; these scorers make ours comparable and give a
cheap screen before the expensive simulation:

- ``detection``: a scorer model labels each test record 1/0 (does the feature fire in it?);
  balanced accuracy, precision, recall and F1 per record source (featureinterp.simulate.scorers.detection).
- ``fuzzing``: the same with tokens highlighted, correctly or at random (does it fire *there*?)
  (featureinterp.simulate.scorers.fuzzing).
- ``embedding``: AUROC of activating vs quiet records ranked by sentence-embedding similarity to
  the explanation; no LLM (featureinterp.simulate.scorers.embedding).

Every scorer judges the same test records as the simulation score (``metrics.split_items``) and
reports on the same per-source sets; ``agreement`` says per layer how far each tracks simulation.
"""

from __future__ import annotations

from featureinterp.records.sources import feature_generator
from featureinterp.simulate.scorers.agreement import SCORERS, agreement
from featureinterp.simulate.scorers.detection import detection_score
from featureinterp.simulate.scorers.embedding import embedding_score
from featureinterp.simulate.scorers.fuzzing import fuzzing_score
from featureinterp.simulate.scorers.judge import JudgeConfig, ScorerFailed
from featureinterp.simulate.scorers.metrics import Item, auroc, binary_metrics, spearman, split_items

__all__ = [
    "SCORERS",
    "Item",
    "JudgeConfig",
    "ScorerFailed",
    "agreement",
    "auroc",
    "binary_metrics",
    "detection_score",
    "embedding_score",
    "fuzzing_score",
    "scorer_seed",
    "spearman",
    "split_items",
]


def scorer_seed(run_seed: int, preset: str, condition: str, scorer: str, layer: int, feature: int) -> int:
    """The seed of one scorer's shuffle, highlights and sampling for one explanation (31 bits):
    per (layer, feature), never global, and different per condition and scorer."""
    return int(feature_generator(run_seed, f"{preset}/{condition}/{scorer}", layer, feature).integers(2**31))
