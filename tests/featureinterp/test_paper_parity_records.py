"""Faithful records against the paper code's own rules (paper-method.md 1.4, 1.5 and 12, items 3-6).

Every input is built by hand and small; the rows each rule gives are worked out by hand in the
comments, from the paper's rule, not from our code's output. Each test checks that
``RecordParams(faithful=True)`` gives the paper's rows and that the default (our fixes, docs/differences.md,
"Differences from the paper code") still gives ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

import featureinterp.records.sources as records_mod
from featureinterp.records.sources import (
    RecordParams,
    Selection,
    _similar_pair,
    assign_splits,
    check_records,
    records_frame,
    records_generator,
    select_rows,
    split_records,
)


def _vectors(scores: np.ndarray) -> np.ndarray:
    """Unit rows [s, sqrt(1 - s^2)]: with one special row of s = 1 the similarity direction is
    [1, 0], so a row's plain similarity is exactly its s (the ranking is the order of s)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.stack([s, np.sqrt(1.0 - s**2)], axis=1).astype(np.float32)


@pytest.fixture
def projected_as(monkeypatch: pytest.MonkeyPatch) -> Callable[[np.ndarray], None]:
    """Replace the learned projection's scores with hand-chosen ones (its ranking is then known),
    skipping the training."""

    def use(scores: np.ndarray) -> None:
        monkeypatch.setattr(records_mod, "train_projection", lambda special, corpus, gen: np.eye(2))
        monkeypatch.setattr(records_mod, "projected_scores", lambda corpus, special, proj: scores.copy())

    return use


def _select(row_max: np.ndarray, vectors: np.ndarray, params: RecordParams, feature: int = 0, layer: int = 5):
    rng = records_generator(0, "parity", layer, feature, params.faithful)
    return select_rows(np.asarray(row_max, np.float32), vectors, None, params, rng)


class _RowTokenizer:
    """Token id i decodes to "t<i>" (each row's tokens below are its own row number)."""

    def batch_decode(self, ids: list[list[int]]) -> list[str]:
        return [f"t{i[0]}" for i in ids]


def _frame(sel: Selection, row_max: np.ndarray, params: RecordParams) -> pl.DataFrame:
    """Records table of a selection; row r's tokens are [BOS, r, r] and its activation its row max."""
    n = len(row_max)
    tokens = np.stack([np.full(n, 999), np.arange(n), np.arange(n)], axis=1)
    acts = np.stack([np.zeros(n), np.asarray(row_max), np.zeros(n)], axis=1).astype(np.float32)
    return records_frame(assign_splits(sel, params), tokens, acts, _RowTokenizer(), skip_first=True)


def _blocking_failures(frame: pl.DataFrame, row_max: np.ndarray, params: RecordParams) -> set[str]:
    return {o.name for o in check_records(frame, row_max, params) if o.blocking and not o.passed}


def _detail(frame: pl.DataFrame, row_max: np.ndarray, params: RecordParams, name: str) -> str:
    return next(o.detail for o in check_records(frame, row_max, params) if o.name == name)


# -- 12.3: random rows --------------------------------------------------------------------------

N1 = 12
ROW_MAX_A = np.array([3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)  # fires on rows 0, 1, 2
ROW_MAX_B = ROW_MAX_A[::-1].copy()  # fires on rows 11, 10, 9
P1 = RecordParams(top_sample_n=3, top_pool=3, complementary_n=30, special_n=3, retrieve_n=4, per_split=10)
VEC1 = _vectors(np.linspace(0.9, -0.9, N1))


def test_random_rows_faithful_draw_with_replacement_over_all_rows_shared_by_the_layer() -> None:
    # Paper (1.5 step 4): random = randint(0, N) drawn C times: with replacement over ALL rows,
    # positives included, and (global seed reset) the same draws for every feature of a layer.
    # Features A and B (one layer) have the positives {0, 1, 2} and {9, 10, 11} (top_pool = 3 =
    # top_sample_n). C = 30 draws from N = 12 rows: at least 18 of them repeat a row (pigeonhole),
    # and a draw misses 3 given rows with odds (9/12)^30 < 2e-4, so each feature's positives appear.
    a, b = (_select(r, VEC1, replace(P1, faithful=True), f) for f, r in ((3, ROW_MAX_A), (4, ROW_MAX_B)))
    assert set(a.positives.tolist()) == {0, 1, 2} and set(b.positives.tolist()) == {9, 10, 11}
    random = a.sources["random"]
    assert np.array_equal(random, b.sources["random"])  # identical for both features of layer 5
    assert len(random) == 30 and random.min() >= 0 and random.max() < N1
    assert len(set(random.tolist())) < len(random)  # repeats
    assert set(random.tolist()) & {0, 1, 2} and set(random.tolist()) & {9, 10, 11}  # positives drawn
    assert "random" not in a.short
    other_layer = _select(ROW_MAX_A, VEC1, replace(P1, faithful=True), 3, layer=6)
    assert not np.array_equal(other_layer.sources["random"], random)  # a stream per layer

    # Default (ours): C rows without replacement from the rows that are not positives: with C = 30
    # > 9 that is each of the other 9 rows once, so another set per feature.
    a, b = (_select(r, VEC1, P1, f) for f, r in ((3, ROW_MAX_A), (4, ROW_MAX_B)))
    assert sorted(a.sources["random"].tolist()) == list(range(3, 12))
    assert sorted(b.sources["random"].tolist()) == list(range(0, 9))
    assert a.short["random"] == 9


def test_random_rows_checks_accept_the_papers_repeats_and_leaks_in_faithful_mode_only() -> None:
    params = replace(P1, faithful=True)
    sel = _select(ROW_MAX_A, VEC1, params, 3)
    frame = _frame(sel, ROW_MAX_A, params)
    assert not _blocking_failures(frame, ROW_MAX_A, params)
    leak = _detail(frame, ROW_MAX_A, params, "no_positive_leak")
    repeat = _detail(frame, ROW_MAX_A, params, "rows_distinct")
    assert "paper" in leak and "random" in leak and "paper" in repeat and "random" in repeat
    counts = _detail(frame, ROW_MAX_A, params, "source_counts")
    assert "'random': 30" in counts  # 30 draws, repeats counted as records
    # the same table judged by the default rules: a positive among random rows, repeated rows (and
    # the faithful valid split, which is the train slice)
    assert _blocking_failures(frame, ROW_MAX_A, P1) == {
        "no_positive_leak",
        "rows_distinct",
        "splits_disjoint",
    }


def test_repeated_random_rows_stay_two_records_downstream() -> None:
    # A row drawn twice is two records, each with its own rank: the table keeps all 30 draws in
    # order, and the explainer's split reader (records.sources.split_records) returns train ranks 0, 3, ..., 27
    # in rank order, repeats included (10 draws from 12 rows repeat with odds 1 - 12!/(2! 12^10) > 0.99).
    params = replace(P1, faithful=True)
    sel = _select(ROW_MAX_A, VEC1, params, 3)
    frame = _frame(sel, ROW_MAX_A, params)
    random = frame.filter(pl.col("source") == "random").unique("rank").sort("rank")  # a line per split
    assert (
        random["rank"].to_list() == list(range(30))
        and random["row"].to_list() == sel.sources["random"].tolist()
    )
    train_rows = sel.sources["random"][0:30:3].tolist()
    assert len(set(train_rows)) < len(train_rows)
    train = split_records(frame, "random", "train", None)
    assert [r.tokens for r in train] == [(f"t{row}", f"t{row}") for row in train_rows]


# -- 12.4: sparse features -----------------------------------------------------------------------

# Rows 3 and 7 fire (2.0, 1.0); the others do not, with distinct values -(r+1)/100 so the order
# by row max is unambiguous (the paper's torch.sort leaves ties in no set order):
# 3, 7, 0, 1, 2, 4, 5, 6, 8, 9, 10, 11.
ROW_MAX_SPARSE = np.array([-(r + 1) / 100 for r in range(12)], np.float32)
ROW_MAX_SPARSE[3], ROW_MAX_SPARSE[7] = 2.0, 1.0
P2 = RecordParams(top_sample_n=4, top_pool=4, complementary_n=10, special_n=6, retrieve_n=4, per_split=1)


def test_sparse_feature_faithful_takes_the_top_rows_whether_or_not_they_fire(projected_as) -> None:
    projected_as(np.linspace(1.0, -1.0, 12).astype(np.float32))
    non_firing = {0, 1, 2, 4, 5, 6, 8, 9, 10, 11}
    # Paper: positives pool = the top 4 rows by row max = {3, 7, 0, 1}, all 4 sampled; special rows
    # = the top 6 = [3, 7, 0, 1, 2, 4] (the top-400 rule), firing or not; random_negative = a
    # permutation of ALL non-firing rows, first C = 10: all 10 of them, positives 0 and 1 included.
    # The similar lists drop the positives (drop_indices with most_act).
    sel = _select(ROW_MAX_SPARSE, VEC1, replace(P2, faithful=True))
    assert set(sel.positives.tolist()) == {3, 7, 0, 1}
    assert sel.special.tolist() == [3, 7, 0, 1, 2, 4]
    assert set(sel.sources["random_negative"].tolist()) == non_firing
    for source in ("similar", "similar_negative", "similar_projected", "similar_negative_projected"):
        assert not set(sel.sources[source].tolist()) & {3, 7, 0, 1}, source

    # Default (ours): both clamped to the two firing rows; random_negative is the same 10 rows,
    # none of them a positive.
    ours = _select(ROW_MAX_SPARSE, VEC1, P2)
    assert set(ours.positives.tolist()) == {3, 7} and ours.special.tolist() == [3, 7]
    assert set(ours.sources["random_negative"].tolist()) == non_firing


def test_sparse_feature_checks_and_a_dead_feature(projected_as) -> None:
    projected_as(np.linspace(1.0, -1.0, 12).astype(np.float32))
    params = replace(P2, faithful=True)
    sel = _select(ROW_MAX_SPARSE, VEC1, params)
    frame = _frame(sel, ROW_MAX_SPARSE, params)
    # positives 0 and 1 sit among the random-negative rows, as in the paper: said, not blocking
    assert not _blocking_failures(frame, ROW_MAX_SPARSE, params)
    assert "random_negative" in _detail(frame, ROW_MAX_SPARSE, params, "no_positive_leak")
    assert "no_positive_leak" in _blocking_failures(frame, ROW_MAX_SPARSE, P2)
    # a feature that never fires stays dead in faithful mode (no top-rows fallback)
    dead = _select(np.full(12, -0.5, np.float32), VEC1, params)
    assert dead.dead and len(dead.positives) == 0


# -- 12.5: one retrieval depth for both lists ------------------------------------------------------

N3 = 128
# Plain similarity s (direction [1, 0] = row 0's vector): row 0 = 1.0 (the only positive and the
# only special row); rows 1..63: 0.5 - r/1000; rows 64..127: -r/1000; non-firing rows 10, 11 = 0.9,
# 0.89 and 100, 101 = 0.99, 0.98.
S3 = np.concatenate([0.5 - np.arange(64) / 1000, -np.arange(64, 128) / 1000])
S3[0], S3[10], S3[11], S3[100], S3[101] = 1.0, 0.9, 0.89, 0.99, 0.98
# Projected similarity: the same, but non-firing rows 10, 11 last (-1.0, -0.99), 100, 101 = 0.9, 0.8.
PROJ3 = S3.copy()
PROJ3[10], PROJ3[11], PROJ3[100], PROJ3[101] = -1.0, -0.99, 0.9, 0.8
ROW_MAX3 = np.ones(N3, np.float32)
ROW_MAX3[0] = 5.0
ROW_MAX3[[10, 11, 100, 101]] = 0.0
P3 = RecordParams(top_sample_n=1, top_pool=1, complementary_n=2, special_n=1, retrieve_n=40, per_split=1)


def test_retrieval_depth_faithful_is_shared_by_the_plain_and_projected_lists(
    projected_as, monkeypatch
) -> None:
    projected_as(PROJ3.astype(np.float32))
    depths: dict[str, list[int]] = {"plain": [], "projected": []}
    scan = records_mod.prefix_scan_order

    def recording_scan(scores: np.ndarray, retrieve_n: int) -> np.ndarray:
        depths["projected" if scores[10] < 0 else "plain"].append(retrieve_n)
        return scan(scores, retrieve_n)

    monkeypatch.setattr(records_mod, "prefix_scan_order", recording_scan)
    # Paper (1.5 step 6, one loop, prefix scan of ceil(d / 64) * 64 rows, top d of them):
    # d = 40: scans rows 0..63. Plain top 40: 0, 10, 11, 1.. -> drop positive 0: similar = [10, 11],
    #   similar_negative = [10, 11]: full. Projected top 40: 0, 1..9, 12..41: no non-firing row.
    #   Not both full -> d = 80 (<= 128).
    # d = 80: scans rows 0..127. Plain: 0, 100, 101, 10, 11, ... -> similar = similar_negative =
    #   [100, 101]. Projected: 0, 100, 101, 1..9, 12.. -> [100, 101] and [100, 101]. Both full: stop.
    paper = _select(ROW_MAX3, _vectors(S3), replace(P3, faithful=True))
    assert depths == {"plain": [40, 80], "projected": [40, 80]}
    for source in ("similar", "similar_negative", "similar_projected", "similar_negative_projected"):
        assert paper.sources[source].tolist() == [100, 101], source

    # Default (ours): a global search over all rows, each list on its own: plain 0, 100, 101, ... and
    # projected 0, 100, 101, ... give [100, 101] for all four from the first depth.
    ours = _select(ROW_MAX3, _vectors(S3), P3)
    for source in ("similar", "similar_negative", "similar_projected", "similar_negative_projected"):
        assert ours.sources[source].tolist() == [100, 101], source


# -- 12.6: small corpora ---------------------------------------------------------------------------


def test_small_corpus_schedule_faithful_stops_once_the_doubled_depth_exceeds_the_corpus() -> None:
    # Paper loop: try retrieve_n, then retrieve_n *= 2 and break if retrieve_n > N. For N = 4000:
    # 150, 300, 600, 1200, 2400 are tried; 4800 > 4000 ends the loop with no try at 4000.
    # Ours clamps: ..., 2400, then min(4800, 4000) = 4000 (the whole corpus), then stops.
    tried: list[int] = []

    def rank(depth: int) -> np.ndarray:
        tried.append(depth)
        return np.arange(min(depth, 4000))  # no row is non-firing: the negatives never fill

    no_negatives = np.zeros(4000, dtype=bool)
    exclude = np.zeros(0, np.int64)
    _similar_pair(rank, 4000, exclude, no_negatives, RecordParams(faithful=True))
    assert tried == [150, 300, 600, 1200, 2400]
    tried.clear()
    _similar_pair(rank, 4000, exclude, no_negatives, RecordParams())
    assert tried == [150, 300, 600, 1200, 2400, 4000]
    tried.clear()  # a depth equal to the corpus is still tried (4800 > 4800 is false)
    _similar_pair(rank, 4800, exclude, no_negatives, RecordParams(faithful=True))
    assert tried == [150, 300, 600, 1200, 2400, 4800]


@pytest.mark.parametrize(
    ("n", "paper_negatives"),
    [
        (20, [1]),  # depths 4, 8, 16; 32 > 20 stops before row 19 (ranked 20th of 20) is reached
        (16, [1, 15]),  # depths 4, 8, 16: 16 is not > 16, so the whole corpus is tried
    ],
)
def test_small_corpus_faithful_misses_what_lies_deeper(
    projected_as, n: int, paper_negatives: list[int]
) -> None:
    # Row 0: the positive and special row (s = 1). Non-firing: row 1 (s = 0.9, ranked 2nd) and the
    # last row (s = -0.9, ranked last). Others: s = 0.5 - r/100, firing. C = 2, first depth 4; the
    # corpus is below one scan batch (64), so each try ranks all rows and keeps the top d.
    s = 0.5 - np.arange(n) / 100
    s[0], s[1], s[n - 1] = 1.0, 0.9, -0.9
    row_max = np.ones(n, np.float32)
    row_max[0], row_max[1], row_max[n - 1] = 5.0, 0.0, 0.0
    projected_as(s.astype(np.float32))
    params = RecordParams(
        top_sample_n=1, top_pool=1, complementary_n=2, special_n=1, retrieve_n=4, per_split=1
    )
    paper = _select(row_max, _vectors(s), replace(params, faithful=True))
    assert paper.sources["similar"].tolist() == [1, 2]
    assert paper.sources["similar_negative"].tolist() == paper_negatives
    assert paper.sources["similar_negative_projected"].tolist() == paper_negatives
    assert paper.short.get("similar_negative", 2) == len(paper_negatives)
    # Ours: 4, 8, 16, then the depth clamped to n scans the whole corpus: both non-firing rows.
    ours = _select(row_max, _vectors(s), params)
    assert ours.sources["similar_negative"].tolist() == [1, n - 1]
    assert ours.sources["similar_negative_projected"].tolist() == [1, n - 1]


def test_records_config_faithful_first_depth_is_the_papers() -> None:
    # Paper: retrieve_n = top_sample_n + 4 x complementary_sample_n: 30 + 120 = 150 at its sizes,
    # 15 + 60 = 75 with 5 records per split. Ours keeps 150 whatever the sizes.
    from featureinterp_assets.assets.records import RecordsConfig

    assert RecordsConfig(faithful=True).params(10).retrieve_n == 150
    assert RecordsConfig(faithful=True).params(5).retrieve_n == 75
    assert RecordsConfig().params(5, preset_faithful=True) == RecordParams(
        top_sample_n=15, complementary_n=15, retrieve_n=75, per_split=5, faithful=True
    )
    assert RecordsConfig().params(5).retrieve_n == 150 and not RecordsConfig().params(5).faithful
