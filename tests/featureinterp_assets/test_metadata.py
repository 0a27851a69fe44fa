"""What the Dagster UI shows for scores, explanations and records: tables and Markdown, not JSON."""

import math

import dagster as dg

from featureinterp_assets.metadata import counts_table, explanation_markdown, source_table, usage_table


def test_per_source_scores_become_a_table_with_one_row_per_source():
    table = source_table(
        {
            "positive": {"score": 0.5, "fp_rate": math.nan, "n_records": 10},
            "similar_negative": {"score": 0.1, "fp_rate": 0.02, "n_records": 10},
        }
    )
    with_interval = source_table({"similar_negative": {"score": 0.1, "ci_low": -0.1, "ci_high": 0.3, "ci_level": 0.95}})
    # the interval's ends are columns beside the score; its level is the same for every row (not a column)
    assert [c.name for c in with_interval.schema.columns] == ["source", "score", "ci_low", "ci_high"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [c.name for c in table.schema.columns] == ["source", "score", "fp_rate", "n_records"]
    rows = [r.data for r in table.records]
    assert rows[0] == {"source": "positive", "score": 0.5, "fp_rate": None, "n_records": 10}  # NaN shown empty
    assert rows[1]["fp_rate"] == 0.02


def test_a_scorer_with_one_number_per_source_gets_a_score_column():
    table = source_table({"positive": 0.7, "random": 0.1})  # the embedding scorer's shape
    assert [r.data for r in table.records] == [{"source": "positive", "score": 0.7}, {"source": "random", "score": 0.1}]


def test_an_explanation_is_a_rules_table_and_a_path_list():
    md = explanation_markdown(
        [{"activates_on": "the word | not", "strength": 8}, {"activates_on": "never", "strength": 3}],
        [{"depth": 0, "train": 0.4, "valid": None}, {"depth": 1, "train": 0.5, "valid": 0.45}],
    )
    lines = md.splitlines()
    assert lines[:4] == ["| # | activates on | strength |", "|---|---|---|", "| 1 | the word \\| not | 8 |", "| 2 | never | 3 |"]
    assert lines[-2:] == ["- depth 0: 0.400 / -", "- depth 1: 0.500 / 0.450"]
    assert explanation_markdown([]).startswith("_no rules")


def test_usage_and_counts_tables():
    usage = usage_table({"requests": 3, "prompt_tokens": 1200, "model": "x"})
    assert [r.data["what"] for r in usage.records] == ["requests", "prompt_tokens"]
    counts = counts_table({"positive": 30, "random": 30})
    assert [r.data for r in counts.records][0] == {"source": "positive", "records": 30}
