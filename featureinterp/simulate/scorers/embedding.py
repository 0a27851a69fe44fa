"""Embedding score: rank a feature's test records by their similarity to the explanation.

No LLM: the explanation is embedded with the sentence-embedding model the records stage already
uses for retrieval, each record's vector is the one stored for its corpus row in LanceDB, and the
score is the AUROC of activating against quiet records by cosine similarity (per complementary
source, like every other score). Milliseconds per feature, so it screens thousands of features;
it only sees *what a record is about*, never which token fires, so it rewards topical
explanations and cannot tell a too-broad explanation from a right one within a topic — read it
next to detection and simulation (the agreement report says how far it tracks them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featureinterp.simulate.scorers.metrics import Item, auroc, by_source, headline

__all__ = ["embedding_score"]


def embedding_score(
    explanation_vector: np.ndarray, item_vectors: np.ndarray, items: Sequence[Item]
) -> dict[str, Any]:
    """``{"score": AUROC on the primary set, "per_source": {source: AUROC}, "items": [...]}``.

    ``explanation_vector`` [d] and ``item_vectors`` [N, d] (one per item, same model) need not be
    normalised."""
    q = np.asarray(explanation_vector, dtype=np.float32).reshape(-1)
    vecs = np.asarray(item_vectors, dtype=np.float32).reshape(len(items), -1)
    if len(items) and vecs.shape[1] != q.shape[0]:
        raise ValueError(f"explanation vector has {q.shape[0]} dims but record vectors {vecs.shape[1]}")
    norms = np.linalg.norm(vecs, axis=1).clip(1e-12) * max(float(np.linalg.norm(q)), 1e-12)
    similarity = (vecs @ q) / norms  # [N]
    per_source = by_source(items, auroc, similarity.tolist())
    return {
        "scorer": "embedding",
        "score": headline(per_source),
        "per_source": per_source,
        "items": [
            {"source": it.source, "row": it.row, "label": it.active, "similarity": float(s)}
            for it, s in zip(items, similarity, strict=True)
        ],
    }
