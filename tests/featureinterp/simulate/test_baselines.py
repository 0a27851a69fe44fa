"""Reference scores (featureinterp/simulate/baselines.py) and the false-positive rules, on hand-made
records with a simulator function whose answers are known."""

import numpy as np
import polars as pl
import pytest

from featureinterp.config import ScoreSettings
from featureinterp.explanations.rules import Explanation, Rule
from featureinterp.names import COMPLEMENTARY_SOURCES
from featureinterp.simulate.baselines import baseline_scores
from featureinterp.simulate.evaluate import evaluate
from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES, wrong_explanation


def _frame() -> pl.DataFrame:
    """Test records: positives fire 8 on 'not'; complementary rows have raw 5 on 'quiet'."""
    rows = []
    for rank in range(3):
        rows.append(("positive", rank, ["a", "not", "b"], [0.0, 8.0, 0.0]))
        for source in COMPLEMENTARY_SOURCES:
            rows.append((source, rank, ["quiet", "c", "d"], [5.0, 0.0, 0.0]))
    return pl.DataFrame(
        [
            {"source": s, "split": "test", "rank": r, "tokens": t, "acts": a, "row": i}
            for i, (s, r, t, a) in enumerate(rows)
        ]
    )


def _simulate(text: str, records):
    """Predicts 5 on 'not' under the negation rule, 3 on 'quiet' under any text, 1 everywhere else
    with an empty explanation (a prior that tracks nothing)."""
    out = []
    for tokens in records:
        if not text:
            out.append(np.array([1.0 + 0.1 * (t == "quiet") for t in tokens]))
        else:
            out.append(
                np.array(
                    [
                        5.0 if (t == "not" and "negation" in text) else 3.0 if t == "quiet" else 0.0
                        for t in tokens
                    ]
                )
            )
    return out


def test_false_positives_by_our_relative_rule_or_the_papers_absolute_one():
    explanation = Explanation((Rule(SYNTHETIC_FEATURES[0].explanation, 5),), structured=False)
    sim = lambda e, records: _simulate(e.rules[0].activates_on, records)  # noqa: E731
    ours = evaluate(sim, explanation, _frame(), 8.0, ScoreSettings(fp_quiet="relative", fp_denominator="quiet"))
    paper = evaluate(sim, explanation, _frame(), max_act=8.0)  # the default: the paper's rule
    # 'quiet' (raw 5) is above 10 % of the max (0.8): not a quiet token for us, so no false positive;
    # below the paper's absolute 10: predicted 3 > 1 is a false positive there (1 token in 3)
    assert ours.per_source["similar_negative"]["fp_rate"] == 0.0
    assert paper.per_source["similar_negative"]["fp_rate"] == pytest.approx(1 / 3)
    assert ours.score == paper.score  # the score itself does not depend on the FP rule


def test_baselines_score_the_empty_explanation_and_on_syn_the_true_and_another_rule():
    plain = baseline_scores(_simulate, _frame(), 8.0)
    assert set(plain) == {"null"} and plain["null"]["text"] == ""
    syn = baseline_scores(_simulate, _frame(), 8.0, synthetic_index=0)
    assert set(syn) == {"null", "true_rule", "other_rule"}
    assert syn["true_rule"]["text"] == SYNTHETIC_FEATURES[0].explanation
    assert syn["other_rule"]["text"] == wrong_explanation(0)
    # the true rule predicts the positives' 'not': far above the wrong rule and the empty prior
    assert syn["true_rule"]["score"] > 0.5 > syn["other_rule"]["score"]
    assert syn["true_rule"]["score"] > syn["null"]["score"]
    assert set(syn["null"]["per_source"]) == set(COMPLEMENTARY_SOURCES)
