import json

import pytest

from featureinterp.explanations import (
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
    assert parse_explanation(" the word cat \nmore", structured=False) == Explanation.text("the word cat")
