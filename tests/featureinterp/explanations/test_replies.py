"""Reply parsing against a corpus of replies as servers and current models send them
(tests/data/replies.json): each case's rules, or the error it must raise; never a dummy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featureinterp.explanations.replies import json_candidates, split_reasoning
from featureinterp.explanations.rules import (
    Explanation,
    ParseError,
    Rule,
    parse_child_reply,
    parse_explanation,
    parse_structured,
)

CASES = json.loads((Path(__file__).parents[2] / "data" / "replies.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reply_corpus(case):
    def parse():
        if case.get("child"):
            return parse_child_reply(case["reply"], structured=True, rule_cap=None)
        return parse_structured(case["reply"]), None

    if "error" in case:
        with pytest.raises(ParseError, match=case["error"]):
            parse()
        return
    explanation, improvement = parse()
    assert [[r.activates_on, r.strength] for r in explanation.rules] == case["rules"]
    if "improvement" in case:
        assert improvement == case["improvement"]


def test_corpus_covers_the_reply_kinds_servers_send():
    replies = " ".join(c["reply"] for c in CASES)
    for marker in ("<think>", "</think>", "<reasoning>", "```json", "```\n", "'activates_on'", ",}"):
        assert marker in replies, marker
    assert sum("error" in c for c in CASES) >= 8


def test_reasoning_is_split_off_and_kept():
    answer, reasoning = split_reasoning("<think>a [b]</think> x <thinking>c</thinking>y")
    assert (answer, reasoning) == ("x  y", "a [b]\n\nc")
    assert split_reasoning("plain") == ("plain", "")


def test_the_rule_cap_applies_after_the_last_valid_list():
    reply = (
        'draft [{"activates_on": "a", "strength": 1}] final {"rules": ['
        + ",".join(f'{{"activates_on": "r{i}", "strength": 5}}' for i in range(4))
        + "]}"
    )
    assert [r.activates_on for r in parse_structured(reply, rule_cap=2).rules] == ["r0", "r1"]


def test_free_text_explanations_skip_reasoning():
    explanation = parse_explanation("<think>maybe [x]</think>\nlegal language\nmore", structured=False)
    assert explanation.rules[0].activates_on == "legal language\nmore"
    with pytest.raises(ParseError, match="empty"):
        parse_explanation("<think>only thinking", structured=False)


def test_repair_sees_only_the_bracketed_span():
    # prose after the span must not leak into the repaired value
    found = list(json_candidates("x [{'a': 1},] and then {bad} words"))
    assert found[0].repaired and found[0].value == [{"a": 1}]


def test_child_replies_parse_in_text_and_json_forms():
    text = '**IMPROVEMENT:** add dates\n\n**NEW EXPLANATION:** [{"activates_on": "dates", "strength": 3},]'
    expl, note = parse_child_reply(text, structured=True, rule_cap=5)
    assert expl.rules == (Rule("dates", 3),) and note == "add dates"
    expl, note = parse_child_reply(
        '{"improvement": "narrower", "rules": [{"activates_on": "a", "strength": 1}]}', True, 5
    )
    assert expl.rules == (Rule("a", 1),) and note == "narrower"
    expl, _ = parse_child_reply('IMPROVEMENT: x\nNEW EXPLANATION: "names of rivers"', False, None)
    assert expl == Explanation.text("names of rivers")
    with pytest.raises(ParseError):
        parse_child_reply("IMPROVEMENT: only a plan", True, 5)
