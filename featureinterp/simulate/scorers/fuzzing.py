"""Fuzzing score: does the explanation say *where* in a record the feature fires?

Each test record is shown with some tokens highlighted ``<<like this>>``. Half of the activating
records (chosen with the feature's seeded generator) carry their true highlighting — every token
where the feature fires; the other half carry as many highlights at quiet positions; quiet records
get highlights at random positions, as many as an activating record has. The scorer model answers
1 when the highlighting fits the explanation. Detection asks *whether* a record fires; fuzzing asks
*where*, so an explanation that names the right topic but the wrong tokens scores well on detection
and poorly here. Metrics are those of detection, with "correctly highlighted" as the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featureinterp.llm.backend import ChatBackend
from featureinterp.simulate.scorers.detection import judged_items
from featureinterp.simulate.scorers.judge import JudgeConfig, ask_labels
from featureinterp.simulate.scorers.metrics import Item, binary_metrics, by_source, headline

__all__ = ["FUZZING_INSTRUCTIONS", "FuzzItem", "fuzz_items", "fuzzing_score", "highlight"]

FUZZING_INSTRUCTIONS = (
    "You check explanations of features of a language model. A feature fires on some tokens of a "
    "text, and the explanation says which. In each numbered text some tokens are marked "
    "<<like this>>. Answer 1 if the marked tokens are the ones the feature, as explained, fires on, "
    "and 0 if the marks are in the wrong places. Judge each text on its own."
)


class FuzzItem:
    """A test item with the positions to highlight and whether that highlighting is the truth."""

    def __init__(self, item: Item, positions: Sequence[int], correct: bool) -> None:
        self.item = item
        self.positions = tuple(sorted(int(p) for p in positions))
        self.correct = correct

    @property
    def text(self) -> str:
        return highlight(self.item.tokens, self.positions)


def highlight(tokens: Sequence[str], positions: Sequence[int]) -> str:
    """The record's text with each run of consecutive highlighted tokens wrapped in ``<<...>>``
    (leading spaces stay outside the marks, so `` dog`` reads `` <<dog>>``)."""
    marked = set(positions)
    out: list[str] = []
    for i, tok in enumerate(tokens):
        opens, closes = i in marked and i - 1 not in marked, i in marked and i + 1 not in marked
        if opens:
            stripped = tok.lstrip()
            tok = tok[: len(tok) - len(stripped)] + "<<" + stripped
        out.append(tok + (">>" if closes else ""))
    return "".join(out)


def fuzz_items(items: Sequence[Item], rng: np.random.Generator) -> list[FuzzItem]:
    """One highlighted version of every item (see the module docstring for the rule)."""
    active_idx = [i for i, it in enumerate(items) if it.active]
    counts = [int((items[i].acts > 0).sum()) for i in active_idx] or [1]
    truthful = set(rng.permutation(active_idx)[: (len(active_idx) + 1) // 2].tolist())
    out = []
    for i, it in enumerate(items):
        fires = np.flatnonzero(it.acts > 0)
        quiet = np.flatnonzero(it.acts <= 0)
        if it.active and (i in truthful or not len(quiet)):
            out.append(FuzzItem(it, fires.tolist(), correct=True))
            continue
        k = len(fires) if it.active else int(rng.choice(counts))
        k = max(1, min(k, len(quiet)))
        out.append(FuzzItem(it, rng.choice(quiet, size=k, replace=False).tolist(), correct=False))
    return out


def fuzzing_score(
    backend: ChatBackend, explanation: str, items: Sequence[Item], config: JudgeConfig, seed: int
) -> dict[str, Any]:
    """Like ``detection_score``, on highlighted records: ``score`` is the balanced accuracy of
    telling true highlighting from misplaced highlighting on the primary set."""
    rng = np.random.default_rng(seed)
    fuzzed = fuzz_items(items, rng)
    order = rng.permutation(len(items))
    judgement = ask_labels(
        backend, FUZZING_INSTRUCTIONS, explanation, [fuzzed[i].text for i in order], config, seed, "fuzzing"
    )
    predicted = [False] * len(items)
    for shown, i in enumerate(order):
        predicted[int(i)] = judgement.labels[shown]
    labels = [f.correct for f in fuzzed]
    per_source = by_source(items, binary_metrics, predicted, labels)
    return {
        "scorer": "fuzzing",
        "score": headline(per_source, "balanced_accuracy"),
        "per_source": per_source,
        "items": [
            d | {"highlighted": list(f.positions)}
            for d, f in zip(judged_items(items, labels, predicted), fuzzed, strict=True)
        ],
        "completions": judgement.completions,
    }
