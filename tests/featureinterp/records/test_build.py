"""featureinterp.records.build: one feature's records built end to end on plain arrays.

A small synthetic corpus (token rows, one feature's activations, row embeddings in a real LanceDB
table) goes through ``build_feature_records``; the result holds the counts per source it promises,
the splits, the metadata stored beside the table and passing checks, and it ignores the BOS
column, stays short (and says so) where a source cannot fill, and flags a dead feature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from featureinterp.names import COMPLEMENTARY_SOURCES, NEGATIVE_SOURCES, POSITIVE_SOURCE
from featureinterp.presets import get_preset
from featureinterp.records.build import BuiltRecords, build_feature_records
from featureinterp.records.sources import SPLITS, RecordParams
from featureinterp.retrieval.index import CorpusIndex, mean_direction

N, T, D = 600, 9, 8
"""Rows, tokens per row (BOS + 8) and embedding width of the synthetic corpus."""
BOS = 99
Corpus = tuple[CorpusIndex, np.ndarray, np.ndarray]
"""(index, tokens [N, T], activations [N, T]) of the synthetic corpus."""
PARAMS = RecordParams(
    top_sample_n=12, top_pool=40, complementary_n=12, special_n=60, retrieve_n=40, per_split=4
)
SPEC = get_preset("embedded-tiny")  # prepend_bos: position 0 is BOS


class LetterTokenizer:
    """Decodes id i to one letter (BOS to "<s>"): what records_frame needs of a tokenizer."""

    def batch_decode(self, ids: list[list[int]]) -> list[str]:
        return ["<s>" if i[0] == BOS else chr(97 + i[0] % 26) for i in ids]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Unit row embeddings [N, D] in a LanceDB table, token rows, and activations firing on 30% of
    the rows (at one non-BOS position each), whose embeddings share a direction."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, D)).astype(np.float32)
    firing = rng.random(N) < 0.3
    vectors[firing, 0] += 2.0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"row {i}" for i in range(N)]
    index, built = CorpusIndex.build(
        str(Path(tmp_path_factory.mktemp("lancedb"))),
        "rows",
        texts,
        lambda chunk: vectors[[int(t.split()[1]) for t in chunk]],
    )
    assert built and len(index) == N
    tokens = rng.integers(0, 26, (N, T))
    tokens[:, 0] = BOS
    acts = np.zeros((N, T), np.float32)
    acts[firing, 1 + rng.integers(0, T - 1, int(firing.sum()))] = rng.gamma(2.0, 1.0, int(firing.sum())) + 0.1
    return index, tokens, acts


def _build(
    corpus: Corpus, acts: np.ndarray, params: RecordParams = PARAMS, feature: int = 3
) -> BuiltRecords:
    index, tokens, _ = corpus
    return build_feature_records(SPEC, params, index, tokens, acts, LetterTokenizer(), 6, feature)


def test_counts_splits_meta_and_checks_of_a_live_feature(corpus: Corpus) -> None:
    acts = corpus[2].copy()
    acts[:, 0] = 1000.0  # BOS: never counts (every row would fire and there would be no negatives)
    built = _build(corpus, acts)

    assert built.counts == {POSITIVE_SOURCE: 12, **{s: 12 for s in COMPLEMENTARY_SOURCES}}
    assert list(built.counts) == [POSITIVE_SOURCE, *COMPLEMENTARY_SOURCES]
    row_max = corpus[2][:, 1:].max(axis=1)
    assert built.meta == {
        "layer": 6,
        "feature": 3,
        "max_act": pytest.approx(float(row_max.max())),
        "dead": False,
        "short_sources": {},
        "faithful": False,
    }
    assert all(o.passed for o in built.checks), [o for o in built.checks if not o.passed]
    assert [o.name for o in built.checks] == [
        "source_counts", "negatives_non_activating", "no_positive_leak", "rows_distinct", "splits_disjoint",
        "feature_alive",
    ]  # fmt: skip

    frame = built.frame
    assert frame.height == 12 * (1 + len(COMPLEMENTARY_SOURCES))  # 3 x per_split rows of each source
    per_split = frame.group_by("source", "split").len()
    assert per_split.height == 7 * len(SPLITS) and (per_split["len"] == 4).all()
    assert all(len(t) == T - 1 and "<s>" not in t for t in frame["tokens"].to_list())  # BOS dropped
    assert (frame["row_max"].to_numpy() == row_max[frame["row"].to_numpy()]).all()
    positives = frame.filter(pl.col("source") == POSITIVE_SOURCE)["row"].to_numpy()
    top = np.argsort(-row_max, kind="stable")[: PARAMS.top_pool]
    assert set(positives.tolist()) <= set(top.tolist())
    for source in NEGATIVE_SOURCES:
        rows = frame.filter(pl.col("source") == source)["row"].to_numpy()
        assert (row_max[rows] == 0).all(), source


def test_similar_rows_come_from_the_index_search(corpus: Corpus) -> None:
    """The index's search gives the exact ranking (at every size): the similar rows are the rows
    most similar to the top rows' mean direction, positives excluded."""
    built = _build(corpus, corpus[2])
    vectors = corpus[0].vectors()
    row_max = corpus[2][:, 1:].max(axis=1)
    special = np.argsort(-row_max, kind="stable")[: PARAMS.special_n]
    ranked = np.argsort(-(vectors @ mean_direction(vectors[special])), kind="stable")
    positives = set(built.selection.positives.tolist())
    expected = [r for r in ranked.tolist() if r not in positives][:12]
    assert built.selection.sources["similar"].tolist() == expected


def test_the_same_feature_gets_the_same_records_and_another_feature_other_random_rows(corpus: Corpus) -> None:
    a, b, other = _build(corpus, corpus[2]), _build(corpus, corpus[2]), _build(corpus, corpus[2], feature=4)
    assert a.frame.equals(b.frame)
    assert a.selection.sources["random"].tolist() != other.selection.sources["random"].tolist()


def test_a_source_that_cannot_fill_stays_short_and_says_so(corpus: Corpus) -> None:
    acts = corpus[2].copy()
    quiet = np.flatnonzero(acts[:, 1:].max(axis=1) == 0)
    acts[quiet[5:], 1] = 0.05  # only 5 rows never fire: every non-activating source is short
    built = _build(corpus, acts)

    short = {s: 5 for s in NEGATIVE_SOURCES}
    assert built.selection.short == short and built.meta["short_sources"] == short
    assert built.counts == {POSITIVE_SOURCE: 12, **{s: short.get(s, 12) for s in COMPLEMENTARY_SOURCES}}
    failed = {o.name: o.blocking for o in built.checks if not o.passed}
    assert failed == {"source_counts": False}  # a quality warning, the records are still valid
    assert built.frame.filter(pl.col("source") == "random_negative").height == 5


def test_a_feature_firing_only_on_bos_is_dead(corpus: Corpus) -> None:
    acts = np.zeros((N, T), np.float32)
    acts[:, 0] = 3.0
    built = _build(corpus, acts, RecordParams(faithful=True))

    assert built.meta["dead"] and built.meta["max_act"] == 0.0 and built.meta["faithful"]
    assert built.counts == {POSITIVE_SOURCE: 0, **{s: 0 for s in COMPLEMENTARY_SOURCES}}
    assert built.frame.height == 0
    failed = {o.name: o.blocking for o in built.checks if not o.passed}
    assert failed == {"source_counts": False, "feature_alive": False}
