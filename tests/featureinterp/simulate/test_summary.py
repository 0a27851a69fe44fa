"""The results table: what each row counts, from stored values (no Dagster)."""

import math
import statistics

from featureinterp.simulate.summary import results_table, summarize


def test_a_row_counts_explained_dead_undefined_failed_and_not_run_features():
    scores = {
        "F0000": {"score": 0.5, "ci_low": 0.3, "ci_high": 0.7},
        "F0001": {"score": 0.1, "ci_low": 0.0, "ci_high": 0.3},
        "F0002": {"score": float("nan"), "skipped": "dead feature"},
        "F0003": {"score": float("nan")},
        # F0004: failed by this run; F0005: never tried (another slice)
    }
    baselines = {"F0000": {"null": {"score": 0.02}}, "F0001": {"null": {"score": float("nan")}}}
    expected = ["F0000", "F0001", "F0002", "F0003", "F0004", "F0005"]
    row = summarize("L03", "one_shot", scores, baselines, expected, failed=["F0004"])
    assert row.scores == (0.5, 0.1)
    assert math.isclose(row.mean, 0.3) and math.isclose(row.spread, statistics.stdev([0.5, 0.1]))
    assert row.null == (0.02,)  # a NaN baseline is not averaged in
    assert (row.dead, row.undefined, row.failed, row.not_run) == (1, 1, ("F0004",), ("F0005",))
    line = results_table([row]).splitlines()[2].split()
    # records ±: the features' half-widths (0.2, 0.15) combined as sqrt(0.2² + 0.15²) / 2
    assert math.isclose(row.record_halfwidth, math.hypot(0.2, 0.15) / 2)
    assert line[:7] == ["L03", "one_shot", "0.300", "±", "0.283", "0.125", "0.020"]
    assert line[7:] == ["2+1nan", "1", "1", "1"]


def test_a_row_with_nothing_explained_shows_dashes_not_zeros():
    row = summarize("L03", "tree", {}, {}, ["F0000"])
    assert math.isnan(row.mean) and row.not_run == ("F0000",)
    assert results_table([row]).splitlines()[2].split()[2:5] == ["-", "-", "-"]


def test_a_failure_is_counted_even_where_an_older_score_is_stored():
    """This run failed F0000, whose score from an earlier run is still stored: the row says both
    (explained from the stored value, failed by this run), never "failed 0"."""
    row = summarize("L05", "one_shot", {"F0000": {"score": 0.2}}, {}, ["F0000"], failed=["F0000"])
    assert row.scores == (0.2,) and row.failed == ("F0000",) and row.not_run == ()


def test_long_condition_names_keep_the_columns_aligned():
    rows = [summarize("L05", c, {"F0000": {"score": 0.1}}, {}, ["F0000"]) for c in ("tree", "one_shot_structured_train_negatives")]
    header, _, *lines = results_table(rows).splitlines()
    at = header.index("test score") + len("test score")  # right-aligned under its header
    assert all(line[:at].endswith("0.100 ± 0.000") for line in lines), lines
