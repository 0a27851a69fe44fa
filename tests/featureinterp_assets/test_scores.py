"""Score rows carry the rule cap the explanation actually ran with (never the condition's nominal one)."""

from types import SimpleNamespace

import pytest

from featureinterp.explain.conditions import get_condition
from featureinterp.names import DEFAULT_RULE_CAP
from featureinterp.presets import get_preset
from featureinterp_assets.assets.explanations import _explain, score_base


def _dead_feature_explanation(condition: str) -> dict:
    """The stored explanation of a feature that never fires: written before any model is asked."""
    rec = SimpleNamespace(meta={"max_act": 0.0})
    return _explain(get_preset("embedded"), None, get_condition(condition), 0, 1, rec, None).value


@pytest.mark.parametrize(
    "condition, cap",
    [
        ("one_shot_unstructured", None),
        ("tree_unstructured", None),
        ("one_shot", DEFAULT_RULE_CAP),
        ("one_shot_cap2", 2),
    ],
)
def test_score_rows_state_the_cap_that_ran(condition, cap):
    expl = _dead_feature_explanation(condition)
    assert expl["rule_cap"] == cap
    assert score_base(get_condition(condition), expl)["rule_cap"] == cap


def test_explanations_stored_without_a_cap_fall_back_to_the_cap_the_condition_runs():
    expl = {"condition": "one_shot_unstructured", "layer": 0, "feature": 1}
    assert score_base(get_condition("one_shot_unstructured"), expl)["rule_cap"] is None
    assert score_base(get_condition("one_shot_cap3"), expl | {"condition": "one_shot_cap3"})["rule_cap"] == 3
