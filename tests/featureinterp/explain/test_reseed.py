"""Re-explaining with more seeds (featureinterp/explain/reseed.py): each seed explains anew and is
scored on the same test records; the spread says how far a condition's mean moves with the seed."""

import json
import math

import numpy as np
import polars as pl
import pytest

from featureinterp.explain.conditions import get_condition
from featureinterp.explain.reseed import SeedScore, reseed, reseed_seed, seed_spread
from featureinterp.llm.backend import ChatBackend, Completion, Usage
from featureinterp.names import COMPLEMENTARY_SOURCES
from featureinterp.presets import get_preset


class BySeed(ChatBackend):
    """Explains "x" or "y" depending on the request's seed (a flow stub; scoring is real)."""

    def __init__(self):
        self.name, self.usage, self.seeds = "by-seed", Usage(), []

    def generate(self, messages, params):
        self.seeds.append(params.seed)
        word = "x" if params.seed % 2 else "y"
        return [Completion(json.dumps({"rules": [{"activates_on": word, "strength": 5}]}), "stop")]

    def forget(self, messages, params):
        pass

    def next_token_logprobs(self, messages, reply_prefix, candidates):
        raise NotImplementedError


def _frame():
    """'x' fires (8) in positives; 'y' is noise: an explanation naming x scores high, y low."""
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "valid", "test"):
        for r in range(4):
            rows.append(("positive", split, r, ["a", "x", "y"], [0.0, 8.0, float(rng.uniform(0, 1))]))
            for source in COMPLEMENTARY_SOURCES:
                rows.append((source, split, r, ["y", "b", "c"], [float(rng.uniform(0, 1)), 0.0, 0.0]))
    return pl.DataFrame(
        [{"source": s, "split": sp, "rank": r, "tokens": t, "acts": a, "row": i} for i, (s, sp, r, t, a) in enumerate(rows)]
    )


def simulate(explanation, records):
    words = {rule.activates_on for rule in explanation.rules}
    return [np.array([5.0 if t in words else 0.0 for t in r]) for r in records]


def test_each_new_seed_explains_anew_and_is_scored_on_the_same_test_records():
    spec, cond, backend = get_preset("embedded"), get_condition("one_shot"), BySeed()
    runs = reseed(spec, cond, backend, simulate, 5, 0, _frame(), 8.0, seeds=4, interval_seed=3)
    assert [r.seed_index for r in runs] == [1, 2, 3]
    assert backend.seeds and len(set(reseed_seed(spec, "one_shot", 5, 0, i) for i in range(4))) == 4
    # the seeds of this slice happen to give both explanations: the seed decides the explanation,
    # and the explanation the score, on the very same test records (the same interval seed)
    by_word = {r.explanation: r for r in runs}
    assert set(by_word) == {"x (5)", "y (5)"}
    assert by_word["x (5)"].score > 0.9 > 0 > by_word["y (5)"].score
    assert all(r.ci_low <= r.score <= r.ci_high for r in runs)
    same = [r for r in runs if r.explanation == "x (5)"]
    assert len({(r.score, r.ci_low) for r in same}) == 1  # same explanation, same records: same numbers


def test_the_spread_compares_seed_means_over_the_same_features():
    def s(seed, feature, score, hw=0.1):
        return SeedScore("tree", 5, feature, seed, score, score - hw, score + hw, "e")

    runs = [s(0, 0, 0.4), s(0, 1, 0.6), s(1, 0, 0.2), s(1, 1, 0.4), s(2, 0, math.nan), s(2, 1, 0.9), s(3, 0, 0.5)]
    out = seed_spread(runs)["tree"]
    # seed 2 has an undefined score and seed 3 lacks feature 1: both left out, not averaged in
    assert out["means"] == pytest.approx({0: 0.5, 1: 0.3}) and out["features"] == 2
    assert out["between_seed_sd"] == pytest.approx(np.std([0.5, 0.3], ddof=1))
    assert out["record_halfwidth"] == pytest.approx(math.sqrt(2 * 0.1**2) / 2)
