"""featureinterp.explain.conditions: the condition grid (names, lookups with a clear error), each
condition's explainer settings, and which records the explainer sees (``feature_records``)."""

import numpy as np
import polars as pl
import pytest

from featureinterp.explain.conditions import CONDITIONS, FIG3_EXPLAINER, feature_records, get_condition


def test_get_condition_with_a_bad_name_names_it_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown condition 'one_shot_cap9'.*one_shot_unstructured"):
        get_condition("one_shot_cap9")
    assert get_condition("tree_structured_holistic") is CONDITIONS["tree_structured_holistic"]


def test_condition_grid_matches_its_names():
    for name, cond in CONDITIONS.items():
        assert cond.name == name
        assert name.startswith("fig3_") or name.startswith(cond.method)
        assert cond.structured == ("unstructured" not in name)
        assert cond.holistic == ("holistic" in name) and cond.train_negatives == ("train_negatives" in name)
    assert [CONDITIONS[f"one_shot_cap{k}"].rule_cap for k in range(1, 5)] == [1, 2, 3, 4]
    assert {CONDITIONS[n].explainer_model for n in ("fig3_one_shot", "fig3_tree")} == {FIG3_EXPLAINER}


def test_explainer_config_layers_condition_over_overrides():
    unstructured = get_condition("one_shot_unstructured").explainer_config(temperature=0.5)
    assert unstructured.rule_cap is None and not unstructured.structured and unstructured.temperature == 0.5
    fig3 = get_condition("fig3_tree").explainer_config(depth=1, roots=7)
    # the condition's own tree size wins over overrides; what it does not fix is kept
    assert (fig3.method, fig3.depth, fig3.width, fig3.roots) == ("tree", 3, 3, 3)
    assert get_condition("one_shot_cap2").explainer_config().rule_cap == 2


def _frame() -> pl.DataFrame:
    rows = []
    for source in ("positive", "similar_negative"):
        for split in ("train", "valid", "test"):
            for rank in (1, 0):  # stored out of rank order
                rows.append(
                    {
                        "source": source,
                        "split": split,
                        "rank": rank,
                        "row": len(rows),
                        "tokens": [f"{source[:3]}-{split}-{rank}", "x"],
                        "acts": [float(rank), 0.5],
                    }
                )
    return pl.DataFrame(rows)


def test_feature_records_train_valid_and_holistic():
    frame = _frame()
    holistic = {r: np.full(2, r, dtype=np.float32) for r in frame["row"].to_list()}
    plain = feature_records(frame, 3.0, get_condition("one_shot"), holistic, 2.0)
    assert [r.tokens[0] for r in plain.train] == ["pos-train-0", "pos-train-1"]
    assert [r.tokens[0] for r in plain.valid] == ["pos-valid-0", "pos-valid-1", "sim-valid-0", "sim-valid-1"]
    assert all(r.holistic is None for r in plain.train), "holistic values only for holistic conditions"
    assert (plain.max_act, plain.max_holistic) == (3.0, 2.0)
    np.testing.assert_array_equal(plain.train[1].acts, [1.0, 0.5])

    negatives = feature_records(frame, 3.0, get_condition("one_shot_structured_train_negatives"))
    assert [r.tokens[0] for r in negatives.train][2:] == ["sim-train-0", "sim-train-1"]
    hol = feature_records(frame, 3.0, get_condition("one_shot_structured_holistic"), holistic)
    row = frame.filter((pl.col("tokens").list.first() == "pos-train-0"))["row"][0]
    np.testing.assert_array_equal(hol.train[0].holistic, holistic[row])
