"""featureinterp.figures.common: the figures' input table and what every figure shares.

The rows built from a stored score (with its baselines), the typed frame of them, the input
checks and type normalisation before any figure aggregates, the canonical orders (which match the
names the experiments write), the no-LaTeX source styles and the t quantile of the CI bands.
"""

from __future__ import annotations

import math

import polars as pl
import pytest

from featureinterp.explain.conditions import CONDITIONS as EXPERIMENTS
from featureinterp.figures.common import (
    BASELINE_KINDS,
    CONDITIONS,
    METHODS,
    RESULT_SCHEMA,
    SECONDARY_COLUMNS,
    SOURCES,
    prepare,
    result_frame,
    result_rows,
    t_quantile,
)
from featureinterp.names import COMPLEMENTARY_SOURCES

T_95_DF3 = 2.353363434801826  # Student t quantile 0.95 with 3 degrees of freedom (tables)

SCORE = {
    "layer_key": "L04",
    "feature": 7,
    "condition": "tree_structured_holistic",
    "method": "tree",
    "figure_condition": "structured_holistic",
    "rule_cap": 5,
    "complexity": 2.5,
    "n_rules": 3,
    "per_source": {
        "similar_negative": {"score": 0.25, "fp_rate": 0.125},
        "random": {"score": -0.5, "fp_rate": 0.0},
    },
}


def test_result_rows_one_row_per_test_source_with_its_baselines() -> None:
    baseline = {
        "null": {"per_source": {"similar_negative": {"score": 0.0}, "random": {"score": 0.0625}}},
        "true_rule": None,  # not computed for a real feature
        "other_rule": {"per_source": {"random": {"score": -0.75}}},
    }
    rows = result_rows(SCORE, baseline)
    common = {
        "layer": "L04",
        "feature": 7,
        "experiment": "tree_structured_holistic",
        "method": "tree",
        "condition": "structured_holistic",
        "rule_cap": 5,
        "complexity": 2.5,
        "n_rules": 3,
    } | {column: math.nan for column in SECONDARY_COLUMNS}  # no secondary scores given
    common |= {"ci_low": math.nan, "ci_high": math.nan}  # a score stored without its interval
    assert [r["source"] for r in rows] == ["similar_negative", "random"]
    assert rows[0] == pytest.approx(
        common | {"source": "similar_negative", "score": 0.25, "fp_rate": 0.125, "null_score": 0.0,
                  "true_rule_score": math.nan, "other_rule_score": math.nan},
        nan_ok=True,
    )  # fmt: skip
    assert rows[1] == pytest.approx(
        common | {"source": "random", "score": -0.5, "fp_rate": 0.0, "null_score": 0.0625,
                  "true_rule_score": math.nan, "other_rule_score": -0.75},
        nan_ok=True,
    )  # fmt: skip
    assert set(rows[0]) == set(RESULT_SCHEMA)
    bare = result_rows({k: v for k, v in SCORE.items() if k not in ("complexity", "n_rules")})
    assert math.isnan(bare[0]["complexity"]) and bare[0]["n_rules"] == 0 and math.isnan(bare[0]["null_score"])
    assert result_rows(SCORE | {"per_source": {}}) == []


def test_result_frame_is_typed_even_when_empty() -> None:
    empty = result_frame([])
    assert empty.height == 0 and dict(empty.schema) == RESULT_SCHEMA
    assert [f"{kind}_score" for kind in BASELINE_KINDS] == list(RESULT_SCHEMA)[-3 - len(SECONDARY_COLUMNS) : -len(SECONDARY_COLUMNS)]
    assert list(SECONDARY_COLUMNS) == list(RESULT_SCHEMA)[-len(SECONDARY_COLUMNS) :]
    frame = result_frame(result_rows(SCORE))
    assert dict(frame.schema) == RESULT_SCHEMA and frame.height == 2
    assert frame["score"].to_list() == [0.25, -0.5] and frame["null_score"].is_nan().all()


def test_prepare_normalises_types_keeps_known_columns_and_filters() -> None:
    df = pl.DataFrame(
        {
            "layer": [0, 3, 3],  # integer layers become labels
            "feature": pl.Series([1, 2, 3], dtype=pl.Int32),
            "method": ["one_shot", "tree", "tree"],
            "rule_cap": [5, None, 5],
            "score": [0.5, None, 0.125],  # null scores become NaN
            "complexity": [None, 1.0, 2.0],
            "unused": ["a", "b", "c"],
        }
    )
    required = ("layer", "feature", "method", "rule_cap", "score")
    out = prepare(df, "figX", required, ("complexity", "fp_rate"), {"method": "tree"}, expected=None)

    assert out.columns == [*required, "complexity"]  # absent optional fp_rate and unused dropped
    assert out.schema["layer"] == pl.String and out.schema["feature"] == pl.Int64
    assert out["layer"].to_list() == ["3", "3"] and out["feature"].to_list() == [2, 3]
    assert out["rule_cap"].to_list() == [None, 5]
    assert (
        math.isnan(out["score"][0]) and out["score"][1] == 0.125 and out["complexity"].to_list() == [1.0, 2.0]
    )
    assert prepare(df, "figX", required, (), {}, expected=2).height == 3


@pytest.mark.parametrize("expected", [0, -1, True, 2.5])
def test_prepare_refuses_a_bad_expected_count(expected: object) -> None:
    df = pl.DataFrame({"layer": ["L00"], "feature": [0], "rule_cap": [5]})
    with pytest.raises(ValueError, match=f"figX: expected must be a positive .*got {expected!r}"):
        prepare(df, "figX", ("layer", "feature", "rule_cap"), (), {}, expected)


def test_prepare_names_the_figure_and_what_is_missing() -> None:
    df = pl.DataFrame(
        {"layer": ["L00", "L01"], "feature": [0, 1], "rule_cap": [5, 5], "method": ["tree"] * 2}
    )
    cols = ("layer", "feature", "rule_cap", "method")
    with pytest.raises(TypeError, match="figX: expected a polars DataFrame, got dict"):
        prepare(df.to_dict(), "figX", cols, (), {}, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="figX: the results table lacks required column.s. score, fp_rate"):
        prepare(df, "figX", (*cols, "score", "fp_rate"), (), {}, None)
    with pytest.raises(ValueError, match="figX: the results table is empty"):
        prepare(df.clear(), "figX", cols, (), {}, None)
    with pytest.raises(
        ValueError, match=r"figX: no results with method == 'one_shot' \(present: \['tree'\]\)"
    ):
        prepare(df, "figX", cols, (), {"method": "one_shot"}, None)


def test_canonical_orders_are_the_names_experiments_write() -> None:
    assert SOURCES == COMPLEMENTARY_SOURCES
    assert set(METHODS) == {c.method for c in EXPERIMENTS.values()}
    assert set(CONDITIONS) == {c.figure_condition for c in EXPERIMENTS.values()}
    assert CONDITIONS[0] == "unstructured" and len(CONDITIONS) == 4  # Figure 4's bar order


@pytest.mark.parametrize("q, dof", [(0.95, 1), (0.95, 3), (0.975, 29), (0.9, 239), (0.05, 5), (0.999, 2)])
def test_t_quantile_matches_scipy(q, dof):
    stats = pytest.importorskip("scipy.stats")
    assert t_quantile(q, dof) == pytest.approx(stats.t.ppf(q, dof), rel=1e-12)
    assert t_quantile(0.95, 3) == pytest.approx(T_95_DF3, rel=1e-7)


def test_projected_sources_keep_their_non_activating_style():
    """Every *_negative source (projected too) is drawn solid and labelled non-activating."""
    from featureinterp.figures.common import _source_style

    styles = {
        s: _source_style(s) for s in ("similar_projected", "similar_negative_projected", "random_negative")
    }
    assert styles["similar_negative_projected"]["linestyle"] == "-"
    assert styles["similar_negative_projected"]["label"] == "similar, projected (non-activating)"
    assert styles["similar_projected"]["linestyle"] == "--"
    assert styles["similar_projected"]["color"] == styles["similar_negative_projected"]["color"]
    assert styles["random_negative"]["color"] != styles["similar_projected"]["color"]


def test_result_rows_carry_each_scorer_metric_of_the_same_source() -> None:
    secondary = {
        "detection": {"per_source": {"random": {"balanced_accuracy": 0.75, "precision": 0.5, "recall": 1.0}}},
        "embedding": {"per_source": {"random": 0.625, "similar_negative": 0.25}},
    }
    rows = {r["source"]: r for r in result_rows(SCORE, None, secondary)}
    assert rows["random"]["detection_precision"] == 0.5 and rows["random"]["detection_recall"] == 1.0
    assert rows["random"]["embedding_auroc"] == 0.625 and rows["similar_negative"]["embedding_auroc"] == 0.25
    assert math.isnan(rows["similar_negative"]["detection_precision"])  # not scored on that source
    assert math.isnan(rows["random"]["fuzzing_balanced_accuracy"])  # no fuzzing score


def test_definitions_note_names_the_false_positive_and_tree_stop_rules():
    from featureinterp.config import ExplainSettings, ScoreSettings
    from featureinterp.figures.common import definitions_note

    paper = definitions_note("fig3", ScoreSettings(), ExplainSettings())
    assert paper == (
        "FP: raw activation < 10 and predicted > 1, per all complementary tokens (paper); "
        "tree stop score tested after each level (paper); scores: paper's definitions"
    )
    ours = definitions_note(
        "fig4", ScoreSettings(metrics="rescaled", fp_denominator="quiet"), ExplainSettings(tree_stop_on_roots=True)
    )
    assert ours == "tree stop score tested on the roots too; scores: rescaled (ours)"  # no FP panel in fig4
