"""Retrieval on the real embedded corpus with the real MiniLM embedder and real LanceDB tables."""

import numpy as np
import pytest
import torch

from featureinterp.data.corpus import build_tokens, decode_rows
from featureinterp.presets import get_preset
from featureinterp.retrieval.index import (
    CorpusIndex,
    embed_texts,
    load_embedder,
    mean_direction,
    prefix_scan_order,
    projected_scores,
    top_k_order,
    train_projection,
)
from featureinterp.storage import array_hash
from tests.conftest import CACHE

pytestmark = pytest.mark.slow


ROWS = 5_000


@pytest.fixture(scope="module")
def corpus(embedded_model):
    """The first 5,000 of the embedded-large preset's rows, embedded with MiniLM, in a LanceDB table
    (content-keyed, so reruns reuse it): real embeddings, at a quarter of the corpus (embedding all
    20k took over two minutes of CI; the 100k-row scale is benchmarks.retrieval's)."""
    tok = embedded_model[1]
    preset = get_preset("embedded-large")
    rows = build_tokens(preset, tok)[:ROWS]
    texts = decode_rows(tok, rows, skip_first=True)
    embedder = load_embedder(preset.embedding_model)
    name = f"rows_{array_hash(rows)}_minilm"
    index, _ = CorpusIndex.build(str(CACHE / "lancedb"), name, texts, lambda c: embed_texts(embedder, c))
    return index, index.vectors(), texts


def _queries(vectors, n=8):
    rng = np.random.default_rng(0)
    specials = [mean_direction(vectors[rng.choice(len(vectors), 400, replace=False)]) for _ in range(n // 2)]
    # the query a feature makes: the mean direction of its 400 most similar rows to a seed row
    seeds = [
        mean_direction(vectors[np.argsort(-(vectors @ vectors[i]))[:400]])
        for i in rng.choice(len(vectors), n // 2)
    ]
    return specials + seeds


def _recall(search, vectors, queries, k=30):
    out = []
    for q in queries:
        exact = np.argsort(-(vectors @ q))[:k]
        out.append(len(set(search(q, k).tolist()) & set(exact.tolist())) / k)
    return float(np.mean(out)), float(np.min(out))


def test_exact_table_equals_brute_force(corpus):
    index, vectors, texts = corpus
    assert len(index) == ROWS and not index.has_ann_index
    assert vectors.shape == (ROWS, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert _recall(index.search, vectors, _queries(vectors)) == (1.0, 1.0)


def test_rebuilding_the_same_corpus_reuses_the_table(corpus):
    index, _, texts = corpus

    def must_not_embed(_chunk):
        raise AssertionError("re-embedded an unchanged corpus")

    again, built = CorpusIndex.build(str(CACHE / "lancedb"), index.table.name, texts, must_not_embed)
    assert not built and len(again) == len(texts)


def test_ann_index_recall(corpus, tmp_path):
    _, vectors, texts = corpus
    position = {t: i for i, t in enumerate(texts)}  # texts repeat rarely; first occurrence is fine
    ann, built = CorpusIndex.build(
        str(tmp_path), "ann", texts, lambda c: vectors[[position[t] for t in c]], ann_min_rows=1
    )
    assert built and ann.has_ann_index
    # the index alone (what ann_search re-ranks; search never uses it)
    mean, worst = _recall(lambda q, k: ann.ann_candidates(q, k)[0], vectors, _queries(vectors))
    assert mean >= 0.95 and worst >= 0.85, (mean, worst)
    assert _recall(ann.search, vectors, _queries(vectors)) == (1.0, 1.0)


def test_projection_pulls_special_rows_together(corpus):
    _, vectors, _ = corpus
    rng = np.random.default_rng(1)
    special = vectors[np.argsort(-(vectors @ vectors[7]))[:400]]
    proj = train_projection(special, vectors, torch.Generator().manual_seed(0))
    again = train_projection(special, vectors, torch.Generator().manual_seed(0))
    assert np.array_equal(proj, again)  # seeded by the generator only
    scores = projected_scores(vectors, special, proj)
    special_rows = np.argsort(-(vectors @ vectors[7]))[:400]
    others = rng.choice(np.setdiff1d(np.arange(len(vectors)), special_rows), 400, replace=False)
    assert scores[special_rows].mean() > scores[others].mean() + 0.05


def test_prefix_scan_only_sees_the_first_rows():
    scores = np.arange(1000, dtype=np.float32)  # best rows are at the end of the corpus
    got = prefix_scan_order(scores, 150)
    assert got.max() < 192 and len(got) == 150 and got[0] == 191


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """4,000 unit vectors in 40 tight clusters plus exact duplicates (score ties), in a LanceDB
    table with an IVF-HNSW-SQ index forced on (the index ``build`` adds at ``ann_min_rows``)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 4000)] + 0.35 * rng.standard_normal((4000, 64)).astype(np.float32)
    vectors[1000:1200] = vectors[3000:3200]  # duplicated rows: the later copy must rank second
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"row {i}" for i in range(len(vectors))]
    index, built = CorpusIndex.build(
        str(tmp_path_factory.mktemp("ann")),
        "ann",
        texts,
        lambda chunk: vectors[[int(t.split()[1]) for t in chunk]],
        ann_min_rows=1000,
    )
    assert built and index.has_ann_index
    return index, vectors


def _cluster_queries(vectors, n=6):
    rng = np.random.default_rng(4)
    # a feature's query: the mean direction of the 400 rows nearest a seed row (and of 3000's, whose
    # neighbourhood holds the duplicated rows)
    seeds = [3000, *rng.choice(len(vectors), n - 1, replace=False)]
    return [mean_direction(vectors[np.argsort(-(vectors @ vectors[s]))[:400]]) for s in seeds]


def test_search_with_an_ann_index_equals_brute_force_in_exact_order(clustered):
    index, vectors = clustered
    stored = index.vectors()
    assert np.array_equal(stored, vectors) and not stored.flags.writeable
    for q in _cluster_queries(vectors):
        brute = np.argsort(-(stored @ q), kind="stable")  # descending score, ties by row id
        for k in (1, 30, 150, 300, 1200, len(vectors)):
            assert index.search(q, k).tolist() == brute[:k].tolist(), k
    ties = index.search(_cluster_queries(vectors)[0], 400).tolist()
    twins = [r for r in ties if 1000 <= r < 1200]
    assert twins and all(ties.index(r) + 1 == ties.index(r + 2000) for r in twins)  # tie: lower id first


def test_the_record_builders_deepening_search_is_exact_at_every_depth(clustered):
    index, vectors = clustered
    q = _cluster_queries(vectors)[1]
    brute = np.argsort(-(vectors @ q), kind="stable")
    depth = 150
    while depth < 2 * len(vectors):  # 150, 300, ... past the corpus, as records.select_rows asks
        assert index.search(q, min(depth, len(vectors))).tolist() == brute[:depth].tolist()
        depth *= 2
    assert index.scores(q) is index.scores(q.copy())  # one product per query, however deep


def test_search_streams_the_table_past_the_memory_budget(clustered, monkeypatch):
    index, vectors = clustered
    fresh = CorpusIndex(index.table)  # nothing loaded
    monkeypatch.setattr(CorpusIndex, "MAX_IN_MEMORY_BYTES", 1000)
    q = _cluster_queries(vectors)[2]
    np.testing.assert_allclose(fresh.scores(q), vectors @ q, rtol=0, atol=1e-6)
    assert fresh._matrix is None  # streamed, not loaded
    got = fresh.search(q, 150)
    scores = fresh.scores(q)
    assert got.tolist() == np.argsort(-scores, kind="stable")[:150].tolist()
    assert set(got.tolist()) == set(np.argsort(-(vectors @ q), kind="stable")[:150].tolist())


def test_ann_search_reranks_its_candidates_exactly(clustered):
    index, vectors = clustered
    for q in _cluster_queries(vectors):
        exact = vectors @ q
        raw, _ = index.ann_candidates(q, 150)
        got = index.ann_search(q, 150)
        assert set(got.tolist()) <= set(index.ann_candidates(q, 600)[0].tolist())
        # in exact order: non-increasing score, ties by row id
        assert got.tolist() == sorted(got.tolist(), key=lambda r: (-exact[r], r))
        truth = set(np.argsort(-exact, kind="stable")[:30].tolist())
        assert len(truth & set(index.ann_search(q, 30).tolist())) >= 27
        assert len(raw) == 150


def test_top_k_order_is_a_stable_descending_sort():
    rng = np.random.default_rng(5)
    scores = (rng.integers(-10, 10, 500) / 4).astype(np.float32)  # many ties, both signs
    scores[[3, 7]] = np.nan
    scores[[11, 12]] = np.inf, -np.inf
    scores[np.flatnonzero(scores == 0)[::2]] = -0.0  # -0.0 ties with 0.0
    scores[40:60] = rng.standard_normal(20).astype(np.float32) * 1e-30  # tiny, both signs
    for k in (0, 1, 19, 20, 21, 250, 497, 498, 500, 600):
        assert top_k_order(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist(), k
    as64 = scores.astype(np.float64)
    assert top_k_order(as64, 50).tolist() == np.argsort(-as64, kind="stable")[:50].tolist()
