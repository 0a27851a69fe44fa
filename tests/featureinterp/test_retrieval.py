"""Retrieval on the real embedded corpus with the real MiniLM embedder and real LanceDB tables."""

import numpy as np
import pytest
import torch

from featureinterp.config import get_preset
from featureinterp.corpus import build_tokens, decode_rows
from featureinterp.retrieval import (
    CorpusIndex,
    embed_texts,
    load_embedder,
    mean_direction,
    prefix_scan_order,
    projected_scores,
    train_projection,
)
from featureinterp.storage import array_hash
from tests.conftest import CACHE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(embedded_model):
    """The embedded-large preset's 20k rows in a LanceDB table (content-keyed, so reruns reuse it)."""
    tok = embedded_model[1]
    preset = get_preset("embedded-large")
    rows = build_tokens(preset, tok)
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


def _recall(index, vectors, queries, k=30):
    out = []
    for q in queries:
        exact = np.argsort(-(vectors @ q))[:k]
        out.append(len(set(index.search(q, k).tolist()) & set(exact.tolist())) / k)
    return float(np.mean(out)), float(np.min(out))


def test_exact_table_equals_brute_force(corpus):
    index, vectors, texts = corpus
    assert len(index) == 20_000 and not index.has_ann_index
    assert vectors.shape == (20_000, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert _recall(index, vectors, _queries(vectors)) == (1.0, 1.0)


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
    mean, worst = _recall(ann, vectors, _queries(vectors))
    assert mean >= 0.95 and worst >= 0.85, (mean, worst)


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
