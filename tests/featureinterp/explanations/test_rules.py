import json

import numpy as np
import pytest

from featureinterp.explanations.rules import (
    Explanation,
    ParseError,
    Rule,
    explanation_schema,
    parse_explanation,
    parse_structured,
)


def test_parse_constrained_object_and_cap():
    reply = json.dumps({"rules": [{"activates_on": f"w{i}", "strength": i} for i in range(5)]})
    e = parse_structured(reply, rule_cap=3)
    assert [r.activates_on for r in e.rules] == ["w0", "w1", "w2"]
    assert e.structured


def test_parse_repairs_unconstrained_reply():
    reply = 'Sure! Here:\n[{"activates_on": "months", "strength": 4,}, {"activates_on": "years", "strength": 2},]\nDone'
    e = parse_structured(reply)
    assert e.rules == (Rule("months", 4), Rule("years", 2))


@pytest.mark.parametrize(
    "reply, match",
    [
        ("no json here", "no JSON list"),
        ('[{"activates_on": ["a", "b"], "strength": 3}]', "activates_on"),
        ('[{"activates_on": "a", "strength": "3"}]', "strength"),
        ('[{"activates_on": "a", "strength": 9}]', "outside"),
        ("[]", "no rules"),
        # the reply format's placeholder copied verbatim (6 of 36 embedded explanations did)
        (
            '{"rules": [{"activates_on": "months", "strength": 3}, {"activates_on": " ... ", "strength": 3}]}',
            "placeholder",
        ),
        ('[{"activates_on": "\u2026", "strength": 2}]', "placeholder"),
    ],
)
def test_parse_rejects_invalid(reply, match):
    with pytest.raises(ParseError, match=match):
        parse_structured(reply)


def test_schema_caps_rules_and_roundtrip():
    schema = explanation_schema(2)
    assert schema["properties"]["rules"]["maxItems"] == 2
    assert "maxItems" not in explanation_schema(None)["properties"]["rules"]
    e = Explanation((Rule("a", 3), Rule("b", 5)))
    assert Explanation.from_record(e.to_record()) == e
    assert parse_explanation(" the word cat \nmore", structured=False) == Explanation.text("the word cat \nmore")
    first = parse_explanation(" the word cat \nmore", structured=False, first_line=True)
    assert first == Explanation.text("the word cat")


def test_combine_rules_takes_the_max_of_strength_scaled_rules():
    from featureinterp.explanations.rules import combine_rules  # the simulator's and the rule cache's

    values = {"a": [np.array([5.0, 0.0]), np.array([2.5])], "b": [np.array([1.0, 4.0]), np.array([5.0])]}
    asked = []

    def rule_values(text):
        asked.append(text)
        return values.get(text)

    rules = (Rule("a", 5), Rule("b", 1), Rule("zero", 0), Rule("missing", 3))
    got = combine_rules(Explanation(rules), [2, 1], rule_values)
    assert [g.tolist() for g in got] == [[5.0, 0.8], [2.5]]
    assert asked == ["a", "b", "missing"]  # a zero-strength rule is never asked for
    free = combine_rules(Explanation.text("b"), [2, 1], rule_values)  # free text: full strength
    assert [g.tolist() for g in free] == [[1.0, 4.0], [5.0]]
    assert [g.tolist() for g in combine_rules(Explanation(()), [2], rule_values)] == [[0.0, 0.0]]
