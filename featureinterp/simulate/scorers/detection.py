"""Detection score: given the explanation, can a model tell which records make the feature fire?

The scorer model sees the explanation and the feature's test records — positives and every
complementary source, shuffled together with the feature's own seeded generator — and labels each
record 1 (the feature fires somewhere in it) or 0. This is the detection scorer of delphi and the
autointerp eval of SAEBench, asked with our own prompt and reported per record source: an
explanation that is too broad labels similar-but-quiet records 1, and its precision on the
``similar_negative`` source drops (Figure 3's detection view).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featureinterp.llm.backend import ChatBackend
from featureinterp.simulate.scorers.judge import JudgeConfig, ask_labels
from featureinterp.simulate.scorers.metrics import Item, binary_metrics, by_source, headline

__all__ = ["DETECTION_INSTRUCTIONS", "detection_score", "judged_items"]

DETECTION_INSTRUCTIONS = (
    "You check explanations of features of a language model. A feature fires on some tokens of a "
    "text, and the explanation says which. You get an explanation and numbered texts. For each "
    "text, answer 1 if the feature, as explained, fires on at least one of its tokens, and 0 if it "
    "fires on none. Judge each text on its own; many texts may have the same answer."
)


def judged_items(items: Sequence[Item], labels: Sequence[bool], predicted: Sequence[bool]) -> list[dict[str, Any]]:
    """What was judged, item by item (source, corpus row, true label, the scorer's answer)."""
    return [
        {"source": it.source, "row": it.row, "label": bool(y), "predicted": bool(p)}
        for it, y, p in zip(items, labels, predicted, strict=True)
    ]


def detection_score(
    backend: ChatBackend, explanation: str, items: Sequence[Item], config: JudgeConfig, seed: int
) -> dict[str, Any]:
    """``{"score": balanced accuracy on the primary set, "per_source": {source: metrics},
    "items": [...], "completions": [...]}`` for one explanation on one feature's test items."""
    order = np.random.default_rng(seed).permutation(len(items))  # shown shuffled, scored in place
    judgement = ask_labels(
        backend, DETECTION_INSTRUCTIONS, explanation, [items[i].text for i in order], config, seed, "detection"
    )
    predicted = [False] * len(items)
    for shown, i in enumerate(order):
        predicted[int(i)] = judgement.labels[shown]
    per_source = by_source(items, binary_metrics, predicted)
    return {
        "scorer": "detection",
        "score": headline(per_source, "balanced_accuracy"),
        "per_source": per_source,
        "items": judged_items(items, [it.active for it in items], predicted),
        "completions": judgement.completions,
    }
