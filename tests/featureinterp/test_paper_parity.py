"""Parity with the paper code, one test per point of paper-method.md §12 that concerns explaining
and scoring (items 1, 2, 8, 9, 10; the records stage's items 3-7 are in
test_paper_parity_records.py).

Every expected value is worked out by hand from the paper's definition (the comment above each
assert says how), never read off our code. Each test asserts the default (the paper's definition
unless §11 calls it a bug) and the named option that keeps our alternative.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from featureinterp.config import ExplainSettings, ScoreSettings
from featureinterp.explain import ExplainerConfig, explain
from featureinterp.explanations.rules import (
    Explanation,
    ParseError,
    Rule,
    combine_rules,
    parse_child_reply,
    parse_explanation,
)
from featureinterp.presets import get_preset
from featureinterp.simulate.evaluate import evaluate, false_positives
from featureinterp.simulate.scoring import score
from tests.featureinterp.test_explain import RECORDS, TABLE, lookup_simulate, rules_json, tree_backend

# -- §12.1 the tree's stop rule -----------------------------------------------------------------
# test_explain.TABLE's 'exact' rule predicts RECORDS' train and valid truth: train score 1.0


def _tree(stop_on_roots: bool | None):
    backend = tree_backend(
        roots=[[("exact", 5)], [("weak", 5)], [("weak", 3)]],
        child=lambda parent: f"IMPROVEMENT: keep it\n\nNEW EXPLANATION: {rules_json(('exact', 5))}",
    )
    extra = {} if stop_on_roots is None else {"stop_on_roots": stop_on_roots}
    config = ExplainerConfig(method="tree", roots=3, branching=2, width=3, depth=3, stop_score=0.9, **extra)
    return explain(backend, lookup_simulate(TABLE), RECORDS, config, seed=0), backend


def test_tree_tests_the_stop_score_only_after_a_level_of_children_by_default():
    # The paper (4.6 f): roots are scored, then level 1 is written (3 roots x 2 children = 6 nodes)
    # and only then is the stop score tested: 3 + 6 = 9 nodes, 1 root request + 6 child requests,
    # although the root 'exact' already scores 1.0 >= 0.9.
    result, backend = _tree(None)
    assert len(result.nodes) == 9 and len(backend.calls) == 7
    assert max(n["depth"] for n in result.nodes) == 1 and result.stop_reason == "stop_score"
    # the option: the roots are tested too, so the search ends with the 3 roots, no revision
    early, backend = _tree(True)
    assert len(early.nodes) == 3 and len(backend.calls) == 1 and early.stop_reason == "stop_score"


def test_tree_stop_option_travels_from_the_preset_settings():
    assert ExplainerConfig.from_settings(ExplainSettings()).stop_on_roots is False
    assert ExplainerConfig.from_settings(ExplainSettings(tree_stop_on_roots=True)).stop_on_roots is True


# -- §12.2 Figure 3's false positives -------------------------------------------------------------


def test_false_positive_rate_divides_by_every_complementary_token_by_default():
    # The worked example of §12.2: 90 complementary tokens, 85 quiet (raw < 10), 32 of the quiet
    # ones predicted above 1 (and the 5 loud ones too, which are no false positives).
    true = np.array([0.0] * 85 + [12.0] * 5)
    guess = np.array([2.0] * 32 + [0.0] * 53 + [3.0] * 5)
    rate, n_fp, n_quiet = false_positives(true, guess, max_act=20.0, settings=ScoreSettings())
    assert (n_fp, n_quiet) == (32, 85)
    assert rate == pytest.approx(32 / 90) and round(rate, 4) == 0.3556  # paper: / all 90 tokens
    ours = ScoreSettings(fp_denominator="quiet")
    assert false_positives(true, guess, 20.0, ours)[0] == pytest.approx(32 / 85)  # 0.3765
    # the relative quiet rule (ours, an option): below 0.1 x max = 2.0 -> the same 85 tokens here
    relative = ScoreSettings(fp_quiet="relative", fp_denominator="quiet")
    assert false_positives(true, guess, 20.0, relative)[:2] == (pytest.approx(32 / 85), 32)


def _frame() -> pl.DataFrame:
    """Test split: 2 positives, and for every complementary source 2 records of 4 tokens, the
    second token raw 12 (loud), the others 0 (quiet)."""
    from featureinterp.names import COMPLEMENTARY_SOURCES

    rows = [("positive", r, ["a", "x", "b", "c"], [0.0, 30.0, 0.0, 0.0]) for r in range(2)]
    rows += [(s, r, ["d", "y", "e", "q"], [0.0, 12.0, 0.0, 0.0]) for s in COMPLEMENTARY_SOURCES for r in range(2)]
    return pl.DataFrame(
        [{"source": s, "split": "test", "rank": r, "tokens": t, "acts": a, "row": i} for i, (s, r, t, a) in enumerate(rows)]
    )


def test_evaluate_reports_the_papers_false_positives_per_source():
    # predictions: 5 on 'x' and 'y', 2 on 'q', 0 elsewhere. Per source: 8 complementary tokens,
    # 6 quiet (raw 0), of which the 2 'q' tokens are predicted 2 > 1: paper 2 / 8 = 0.25, i.e.
    # 0.25 x 4 = 1 false positive per 4-token sentence; over the quiet tokens 2 / 6.
    def simulate(_e, records):
        return [np.array([5.0 if t in "xy" else 2.0 if t == "q" else 0.0 for t in toks]) for toks in records]

    expl = Explanation.text("x")
    paper = evaluate(simulate, expl, _frame(), max_act=30.0)
    assert paper.per_source["similar_negative"]["fp_rate"] == pytest.approx(0.25)
    assert (paper.per_source["random"]["n_fp"], paper.per_source["random"]["n_tokens"]) == (2, 8)
    quiet = evaluate(simulate, expl, _frame(), 30.0, ScoreSettings(fp_denominator="quiet"))
    assert quiet.per_source["similar_negative"]["fp_rate"] == pytest.approx(2 / 6)
    assert paper.score == quiet.score  # the correlation does not depend on the FP definition


# -- §12.8 the scores -------------------------------------------------------------------------------


def test_r_squared_and_absolute_deviation_explained_as_the_paper_computes_them():
    # t = [0, 2, 4], p = [1, 2, 3]: paper r2 = 1 - mean((t-p)^2) / mean(t^2) = 1 - (2/3) / (20/3)
    # = 0.9; absolute deviation explained = 1 - mean|t-p| / mean|t| = 1 - (2/3) / 2 = 2/3
    s = score([[0.0, 2.0, 4.0]], [[1.0, 2.0, 3.0]])
    assert s.correlation == pytest.approx(1.0)
    assert s.r_squared == pytest.approx(0.9) and s.abs_dev_explained == pytest.approx(2 / 3)
    # ours (an option): after the least-squares rescaling p -> 2p - 2 the fit is exact
    r = score([[0.0, 2.0, 4.0]], [[1.0, 2.0, 3.0]], "rescaled")
    assert r.r_squared == pytest.approx(1.0) and r.abs_dev_explained == pytest.approx(1.0)


def test_nan_rule_of_the_papers_scores():
    t = [[0.0, 1.0, 2.0, 3.0]]
    # an exactly constant prediction: correlation NaN (numpy divides by a zero deviation), but
    # r2 = 1 - mean((t-1)^2) / mean(t^2) = 1 - (6/4) / (14/4) = 4/7 and ade = 1 - (4/4) / (6/4) = 1/3
    const = score(t, [[1.0, 1.0, 1.0, 1.0]])
    assert math.isnan(const.correlation) and const.reason == "predictions are constant"
    assert const.r_squared == pytest.approx(4 / 7) and const.abs_dev_explained == pytest.approx(1 / 3)
    # a nearly constant prediction [1, 1, 1, 1 + 1e-6] (variance ~2e-13): the paper computes the
    # correlation, that of t with [0, 0, 0, 1]: cov 1.5 / sqrt(5 * 0.75) = 0.7746
    near = [[1.0, 1.0, 1.0, 1.0 + 1e-6]]
    assert score(t, near).correlation == pytest.approx(1.5 / math.sqrt(3.75), rel=1e-4)
    assert math.isnan(score(t, near, "rescaled").correlation)  # ours: NaN below a 1e-10 variance
    # a (nearly) constant truth: every metric NaN in both definitions
    flat = score([[1.0, 1.0, 1.0]], [[0.0, 1.0, 2.0]])
    assert math.isnan(flat.correlation) and math.isnan(flat.r_squared) and math.isnan(flat.abs_dev_explained)


# -- §12.9 parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "rules"),
    [
        ('[{"activates_on": "cat", "strength": 7}]', (Rule("cat", 7),)),
        ('[{"activates_on": "cat", "strength": true}]', (Rule("cat", 1),)),
        ('[{"activates_on": "", "strength": 3}]', (Rule("", 3),)),
        ("[]", ()),
    ],
)
def test_the_papers_parser_leniency_is_an_option(reply, rules):
    # the paper's typed conversion accepts any int (a bool is an int), any string, an empty list
    assert parse_explanation(reply, True, 5, lenient=True).rules == rules
    with pytest.raises(ParseError):  # default: refused, so the explainer re-requests
        parse_explanation(reply, True, 5)


def test_lenient_strengths_scale_the_simulation_as_the_paper_does():
    # strength 7: the rule's values x 7/5 (section 5.4); an empty explanation predicts zeros
    seven = Explanation((Rule("cat", 7),))
    assert combine_rules(seven, [2], lambda _: [np.array([5.0, 1.0])])[0].tolist() == [7.0, 1.4]
    assert combine_rules(Explanation(()), [2], lambda _: None)[0].tolist() == [0.0, 0.0]


def test_free_text_explanations_keep_every_line_by_default():
    reply = "the word 'cat'\nand its plural"
    assert parse_explanation(reply, False).rules[0].activates_on == "the word 'cat'\nand its plural"
    assert parse_explanation(reply, False, first_line=True).rules[0].activates_on == "the word 'cat'"
    child = "IMPROVEMENT: widen\nNEW EXPLANATION: cats\nand dogs"
    assert parse_child_reply(child, False, None)[0].rules[0].activates_on == "cats\nand dogs"


def test_a_rule_list_after_bracketed_prose_is_found():
    # the paper's greedy [ ... ] span starts at '[this]' and fails (then pads a dummy, §11.12);
    # ours finds the rule list: a kept difference, listed in docs/differences.md
    reply = 'I think [this] is it: [{"activates_on": "cat", "strength": 5}]'
    assert parse_explanation(reply, True, 5).rules == (Rule("cat", 5),)


# -- defaults and the faithful switch ------------------------------------------------------------


def test_every_preset_defaults_to_the_papers_definitions():
    for name in ("embedded", "gpt2-small", "gemma-2-9b", "llama-3.1-8b"):
        p = get_preset(name)
        assert p.scores == ScoreSettings(), name
        assert p.scores.fp_definition().endswith("(paper)")
        assert (p.explain.tree_stop_on_roots, p.explain.free_text_first_line) == (False, False), name


def test_a_faithful_preset_forces_every_option_to_the_paper():
    custom = get_preset("embedded").replace(
        scores=ScoreSettings(metrics="rescaled", fp_denominator="quiet"),
        explain=ExplainSettings(tree_stop_on_roots=True, holistic_scale="records", free_text_first_line=True),
    )
    faithful = custom.replace(faithful=True)
    assert faithful.scores == ScoreSettings()
    e = faithful.explain
    assert (e.tree_stop_on_roots, e.holistic_scale, e.free_text_first_line, e.lenient_rules) == (
        False, "corpus", False, True,
    )  # fmt: skip
    assert custom.scores.fp_definition() == (
        "FP: raw activation < 10 and predicted > 1, per quiet tokens"
    )


# -- §12.10 the holistic 0..5 scale -------------------------------------------------------------------


def test_holistic_scale_is_the_maximum_over_the_whole_corpus():
    import torch

    from featureinterp.activations.holistic import holistic_activations_naive, holistic_corpus_max
    from featureinterp.activations.sae import LoadedSae
    from tests.helpers import random_sae, tiny_gpt2

    model = tiny_gpt2()
    sae = LoadedSae.bind(random_sae(32, layer=1), model, 1)
    rows = torch.randint(2, 101, (7, 9), generator=torch.Generator().manual_seed(3)).numpy()
    rows[:, 0] = 1  # BOS
    # the paper's scale: the largest drop-one-token value of the feature over every row and
    # position, with the definition taken literally (one full pass per row and dropped token)
    literal = holistic_activations_naive(model, sae, rows, [0, 5])  # [F, R, T]
    by_hand = literal.reshape(2, -1).max(axis=1)
    got = holistic_corpus_max(model, sae, rows, [0, 5], batch_size=2, chunk_rows=3)  # 3 chunks
    assert np.abs(got - by_hand).max() <= 1e-4
    # the ``records`` option scales by the rows a feature's records show: here the two rows that do
    # not hold the corpus maximum, so their maximum is smaller (a larger 0..5 value per token)
    top = literal[0].max(axis=1).argmax()
    shown = [r for r in range(7) if r != top][:2]
    assert literal[0, shown].max() < got[0]


def test_embedded_presets_scale_holistic_values_by_their_records_for_cost():
    from featureinterp.presets.builtin import EMBEDDED_HOLISTIC_SCALE

    assert EMBEDDED_HOLISTIC_SCALE == "records"
    for name in ("embedded", "embedded-large", "embedded-tiny"):
        assert get_preset(name).explain.holistic_scale == "records"
    for name in ("gpt2-small", "gemma-2-9b", "llama-3.1-8b", "embedded-faithful"):
        assert get_preset(name).explain.holistic_scale == "corpus"
