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
