"""One explanation's secondary scores on one feature's stored records: what the score assets call.

The stored explanation (``Explanation.to_record()``) and the records table in, the stored score
value out. The LLM scorers see the explanation as the simulator does (rules with strengths); the
embedding scorer embeds only the rule texts (a strength means nothing to a sentence encoder).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from featureinterp.explanations.rules import Explanation
from featureinterp.llm.backend import ChatBackend, tally_usage
from featureinterp.simulate.scorers.detection import detection_score
from featureinterp.simulate.scorers.embedding import embedding_score
from featureinterp.simulate.scorers.fuzzing import fuzzing_score
from featureinterp.simulate.scorers.judge import JudgeConfig
from featureinterp.simulate.scorers.metrics import split_items

if TYPE_CHECKING:
    import polars as pl

__all__ = ["JUDGES", "embedding_text", "judge_feature", "embed_feature"]

JUDGES = {"detection": detection_score, "fuzzing": fuzzing_score}
"""The LLM scorers by name."""


def embedding_text(explanation: Explanation) -> str:
    """What the embedding scorer embeds: the rule texts, without strengths."""
    return "; ".join(r.activates_on for r in explanation.rules)


def judge_feature(
    scorer: str,
    backend: ChatBackend,
    explanation: dict[str, Any],
    frame: pl.DataFrame,
    config: JudgeConfig,
    seed: int,
) -> dict[str, Any]:
    """``detection`` or ``fuzzing`` of one stored explanation on the feature's test records, with
    the token usage of its requests and the scorer model's name."""
    if scorer not in JUDGES:
        raise ValueError(f"unknown LLM scorer {scorer!r}; choose from {', '.join(JUDGES)}")
    expl = Explanation.from_record(explanation)
    with tally_usage() as usage:
        out = JUDGES[scorer](backend, str(expl), split_items(frame), config, seed)
    return out | {"scorer_model": backend.name, "usage": usage.snapshot(), "seed": seed}


def embed_feature(
    embed: Callable[[list[str]], np.ndarray],
    explanation: dict[str, Any],
    frame: pl.DataFrame,
    row_vectors: Callable[[list[int]], np.ndarray],
    model: str,
) -> dict[str, Any]:
    """The embedding score of one stored explanation: ``embed(texts) -> [n, d]`` embeds the
    explanation; ``row_vectors(rows) -> [n, d]`` gives the stored corpus-row embeddings."""
    items = split_items(frame)
    query = np.asarray(embed([embedding_text(Explanation.from_record(explanation))]))[0]
    vectors = row_vectors([it.row for it in items]) if items else np.zeros((0, query.shape[0]))
    return embedding_score(query, vectors, items) | {"scorer_model": model}
