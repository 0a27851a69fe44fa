"""Test-time evaluation (featureinterp/simulate/evaluate.py): one simulation over every test record,
each complementary source scored against the shared positives, false positives per source."""

import numpy as np
import polars as pl
import pytest

from featureinterp.config import ScoreSettings
from featureinterp.explanations.rules import Explanation, Rule
from featureinterp.names import COMPLEMENTARY_SOURCES, POSITIVE_SOURCE, PRIMARY_SOURCE
from featureinterp.simulate.evaluate import evaluate, false_positives


def _frame() -> pl.DataFrame:
    """Two positive test records firing 8 on 'x'; per source two quiet records, the primary source's
    with raw 5 on 'x' (similar but weaker); a train record that evaluation must not read."""
    rows = [("positive", "test", r, ["a", "x"], [0.0, 8.0]) for r in range(2)]
    rows.append(("positive", "train", 0, ["never", "read"], [0.0, 8.0]))
    for source in COMPLEMENTARY_SOURCES:
        x = 5.0 if source == PRIMARY_SOURCE else 0.0
        rows += [(source, "test", r, ["x", "b"], [x, 0.0]) for r in range(2)]
    return pl.DataFrame(
        [
            {"source": s, "split": sp, "rank": r, "tokens": t, "acts": a, "row": i}
            for i, (s, sp, r, t, a) in enumerate(rows)
        ]
    )


def test_one_simulation_scores_every_source_against_the_shared_positives():
    calls = []

    def simulate(explanation, records):
        calls.append([tuple(r) for r in records])
        return [np.array([4.0 if t == "x" else 0.0 for t in r]) for r in records]

    ev = evaluate(simulate, Explanation((Rule("x", 5),)), _frame(), max_act=8.0)
    assert len(calls) == 1 and len(calls[0]) == 2 + 2 * len(COMPLEMENTARY_SOURCES)  # no train record
    assert ("never", "read") not in calls[0]
    assert set(ev.per_source) == set(COMPLEMENTARY_SOURCES)
    assert ev.per_source[PRIMARY_SOURCE]["n_records"] == 4 and ev.per_source[PRIMARY_SOURCE]["n_tokens"] == 4
    # every quiet 'x' is predicted 4 > 1: a false positive on each complementary record
    assert all(s["n_fp"] == 2 for s in ev.per_source.values())
    assert ev.score == ev.per_source[PRIMARY_SOURCE]["score"] and ev.reason is None
    assert len(ev.predictions[POSITIVE_SOURCE]) == 2


def test_false_positives_by_the_papers_rule_and_ours():
    true, guess = np.array([0.0, 5.0, 12.0, 0.0]), np.array([2.0, 2.0, 2.0, 0.5])
    rate, n_fp, n_quiet = false_positives(true, guess, 20.0, ScoreSettings())  # paper: raw < 10, all tokens
    assert (rate, n_fp, n_quiet) == (pytest.approx(2 / 4), 2, 3)
    ours = ScoreSettings(fp_quiet="relative", fp_denominator="quiet")  # < 10 % of max, quiet tokens
    rate, n_fp, n_quiet = false_positives(true, guess, 20.0, ours)
    assert (rate, n_fp, n_quiet) == (pytest.approx(1 / 2), 1, 2)
    assert np.isnan(false_positives(np.zeros(0), np.zeros(0), 1.0, ScoreSettings())[0])


def _noisy_frame(n: int = 10) -> pl.DataFrame:
    """``n`` positive and ``n`` records per complementary source, with varied activations, so a
    resample of the test records moves the score."""
    rng = np.random.default_rng(0)
    rows = [("positive", "test", r, ["a", "x", "b"], list(rng.uniform(0, 8, 3))) for r in range(n)]
    for source in COMPLEMENTARY_SOURCES:
        rows += [(source, "test", r, ["x", "b", "c"], list(rng.uniform(0, 2, 3))) for r in range(n)]
    return pl.DataFrame(
        [
            {"source": s, "split": sp, "rank": r, "tokens": t, "acts": a, "row": i}
            for i, (s, sp, r, t, a) in enumerate(rows)
        ]
    )


def _noisy_simulate(explanation, records):
    return [np.array([4.0 if t == "x" else float(len(t) % 2) for t in r]) for r in records]


def test_every_score_carries_a_bootstrap_interval_reproducible_per_source():
    frame, expl = _noisy_frame(), Explanation((Rule("x", 5),))
    ev = evaluate(_noisy_simulate, expl, frame, max_act=8.0, interval_seed=7)
    for source, s in ev.per_source.items():
        assert s["ci_low"] <= s["score"] <= s["ci_high"], (source, s)
        assert s["ci_high"] - s["ci_low"] > 0.01  # the records vary: a real interval, not a point
        assert s["ci_level"] == 0.95
    assert ev.interval["ci_low"] == ev.per_source[PRIMARY_SOURCE]["ci_low"]
    again = evaluate(_noisy_simulate, expl, frame, max_act=8.0, interval_seed=7)
    assert again.per_source == ev.per_source  # the same seed: the same intervals
    other = evaluate(_noisy_simulate, expl, frame, max_act=8.0, interval_seed=8)
    assert other.per_source[PRIMARY_SOURCE]["ci_low"] != ev.per_source[PRIMARY_SOURCE]["ci_low"]
    # one source's interval does not depend on which other sources are in the frame
    only = frame.filter(pl.col("source").is_in([POSITIVE_SOURCE, PRIMARY_SOURCE]))
    alone = evaluate(_noisy_simulate, expl, only, max_act=8.0, interval_seed=7)
    assert alone.per_source[PRIMARY_SOURCE]["ci_low"] == ev.per_source[PRIMARY_SOURCE]["ci_low"]


def test_intervals_are_off_without_a_seed_or_with_zero_resamples():
    frame, expl = _noisy_frame(), Explanation((Rule("x", 5),))
    assert evaluate(_noisy_simulate, expl, frame, max_act=8.0).interval == {}
    settings = ScoreSettings(interval_resamples=0)
    ev = evaluate(_noisy_simulate, expl, frame, max_act=8.0, settings=settings, interval_seed=7)
    assert ev.interval == {} and "ci_low" not in ev.per_source[PRIMARY_SOURCE]
    assert settings.fp_definition().endswith("(paper)")  # interval settings do not change the FP rule
