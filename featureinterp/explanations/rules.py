"""Explanations: structured rule lists or one free-text rule (paper-method.md sections 4.1, 4.5, 5.4).

A structured explanation is a list of rules ``{"activates_on": str, "strength": 0..5}``. The JSON
schema below is what schema-constrained decoding enforces (local grammar, server
``response_format``); ``parse_structured`` is the defensive path for replies that were not
constrained: ``featureinterp.explanations.replies`` finds the rule list among reasoning, prose and drafts
(repairing it with ``json_repair`` where needed), every rule is validated strictly (a string
strength or a list-valued ``activates_on`` rejects the candidate, as in the original), then the
rule cap applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featureinterp.explanations.replies import ReplyError, find_rules, split_reasoning
from featureinterp.records.formatting import MAX_VALUE

__all__ = [
    "Rule",
    "Explanation",
    "combine_rules",
    "ParseError",
    "explanation_schema",
    "parse_structured",
    "parse_structured_child",
    "parse_explanation",
    "parse_child_reply",
]

MAX_RULE_CHARS = 160
"""Longest ``activates_on`` text the schema allows (keeps small models from rambling)."""


class ParseError(ReplyError):
    """A reply that is not a valid explanation; the message says what was wrong."""


@dataclass(frozen=True)
class Rule:
    activates_on: str
    strength: int = MAX_VALUE

    def to_dict(self) -> dict[str, Any]:
        return {"activates_on": self.activates_on, "strength": self.strength}


@dataclass(frozen=True)
class Explanation:
    """Rules of one explanation. ``structured=False`` marks a free-text explanation (one rule,
    simulated at full strength)."""

    rules: tuple[Rule, ...]
    structured: bool = True
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    """Where it came from (sample index, tree node, improvement note): kept for audit only."""

    @classmethod
    def text(cls, phrase: str) -> Explanation:
        return cls((Rule(phrase.strip(), MAX_VALUE),), structured=False)

    def to_json(self) -> str:
        if not self.structured:
            return self.rules[0].activates_on if self.rules else ""
        return json.dumps([r.to_dict() for r in self.rules], ensure_ascii=False)

    def to_record(self) -> dict[str, Any]:
        return {"structured": self.structured, "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Explanation:
        rules = tuple(Rule(r["activates_on"], int(r["strength"])) for r in record["rules"])
        return cls(rules, structured=bool(record["structured"]))

    def capped(self, rule_cap: int | None) -> Explanation:
        if rule_cap is None or len(self.rules) <= rule_cap:
            return self
        return Explanation(self.rules[:rule_cap], self.structured, dict(self.meta))

    def __str__(self) -> str:
        if not self.structured:
            return self.to_json()
        return "; ".join(f"{r.activates_on} ({r.strength})" for r in self.rules)


def explanation_schema(rule_cap: int | None) -> dict[str, Any]:
    """JSON schema of a structured reply: an object ``{"rules": [...]}`` with at most ``rule_cap``
    rules (an object at the top level, because several servers only accept object schemas)."""
    rules: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": {
                "activates_on": {"type": "string", "minLength": 1, "maxLength": MAX_RULE_CHARS},
                "strength": {"type": "integer", "minimum": 0, "maximum": MAX_VALUE},
            },
            "required": ["activates_on", "strength"],
            "additionalProperties": False,
        },
    }
    if rule_cap is not None:
        rules["maxItems"] = rule_cap
    return {
        "type": "object",
        "properties": {"rules": rules},
        "required": ["rules"],
        "additionalProperties": False,
    }


RULE_PLACEHOLDER = "..."
"""What the prompts' reply format shows in place of a rule; small models copy it verbatim."""


def _rule(item: Any, index: int, lenient: bool = False) -> Rule:
    if not isinstance(item, dict):
        raise ParseError(f"rule {index} is {type(item).__name__}, not an object")
    on, strength = item.get("activates_on"), item.get("strength")
    if lenient:  # the paper's typed conversion: any string, any int (a bool is an int there too)
        if not isinstance(on, str):
            raise ParseError(f"rule {index}: activates_on must be a string, got {on!r}")
        if not isinstance(strength, int):
            raise ParseError(f"rule {index}: strength must be an integer, got {strength!r}")
        return Rule(on.strip(), int(strength))
    if not isinstance(on, str) or not on.strip():
        raise ParseError(f"rule {index}: activates_on must be a non-empty string, got {on!r}")
    if on.strip() in (RULE_PLACEHOLDER, "\u2026"):
        raise ParseError(f"rule {index}: activates_on {on!r} is the reply format's placeholder, not a rule")
    if isinstance(strength, bool) or not isinstance(strength, int):
        raise ParseError(f"rule {index}: strength must be an integer 0..{MAX_VALUE}, got {strength!r}")
    if not 0 <= strength <= MAX_VALUE:
        raise ParseError(f"rule {index}: strength {strength} outside 0..{MAX_VALUE}")
    return Rule(on.strip(), strength)


def _rules(data: list[Any], lenient: bool = False) -> tuple[Rule, ...]:
    if not data and not lenient:
        raise ParseError("the reply has no rules")
    return tuple(_rule(item, i, lenient) for i, item in enumerate(data))


def _find(
    reply: str, extra: tuple[str, ...] = (), lenient: bool = False
) -> tuple[tuple[Rule, ...], dict[str, Any]]:
    """``replies.find_rules`` with every failure as a ``ParseError``."""
    try:
        return find_rules(reply, lambda data: _rules(data, lenient), wrapper_extra=extra)
    except ParseError:
        raise
    except ReplyError as err:
        raise ParseError(str(err)) from None


def parse_structured(reply: str, rule_cap: int | None = None, lenient: bool = False) -> Explanation:
    """Parse a structured reply (constrained or not); raise ``ParseError`` saying why it failed.

    The reply may carry reasoning, prose, fences and drafts around the rule list
    (``featureinterp.explanations.replies.find_rules``: the last valid rule list wins). ``lenient``: the paper
    code's acceptance (paper-method.md §12.9): any integer strength (7, ``true`` as 1), an empty
    ``activates_on`` and an empty list (an explanation that predicts zeros); by default these
    are refused and re-requested, because they are outside the 0..5 scale or say nothing."""
    rules, _ = _find(reply, lenient=lenient)
    return Explanation(rules).capped(rule_cap)


def parse_structured_child(
    reply: str, rule_cap: int | None = None, lenient: bool = False
) -> tuple[Explanation, str]:
    """(explanation, improvement note) of a structured tree-child reply ``{"improvement": str,
    "rules": [...]}``; a bare rule list is accepted with an empty note."""
    rules, holder = _find(reply, ("improvement",), lenient)
    return Explanation(rules).capped(rule_cap), str(holder.get("improvement", "") or "").strip()


def parse_explanation(
    reply: str,
    structured: bool,
    rule_cap: int | None = None,
    *,
    lenient: bool = False,
    first_line: bool = False,
) -> Explanation:
    """A structured (``parse_structured``) or free-text explanation. A free-text explanation is
    the whole reply, every line of it, stripped (the paper's); ``first_line`` keeps only its first
    line (an option for small local explainers that ramble on after the phrase)."""
    if structured:
        return parse_structured(reply, rule_cap, lenient)
    reply, _ = split_reasoning(reply)
    phrase = reply.strip()
    if first_line and phrase:
        phrase = phrase.splitlines()[0].strip()
    if not phrase:
        raise ParseError("empty explanation")
    return Explanation.text(phrase)


def combine_rules(
    explanation: Explanation,
    lengths: Sequence[int],
    rule_values: Callable[[str], Sequence[np.ndarray] | None],
) -> list[np.ndarray]:
    """Per token: the max over rules of the rule's values scaled by strength / 5 (section 5.4).

    ``lengths``: tokens per record; ``rule_values(activates_on)``: that rule's full-strength
    values per record (None: the rule predicts nothing). A free-text explanation is one rule at
    full strength; zero-strength rules are skipped (never asked for); no rules -> zeros. The one
    place the simulator (``LocalSimulator.simulate_explanation``) and the explainer's rule cache
    combine rules, so both score an explanation the same way."""
    preds = [np.zeros(n) for n in lengths]
    for rule in explanation.rules:
        if rule.strength <= 0:
            continue
        values = rule_values(rule.activates_on)
        if values is None:
            continue
        scale = rule.strength / MAX_VALUE if explanation.structured else 1.0
        for i, v in enumerate(values):
            preds[i] = np.maximum(preds[i], v * scale)
    return preds


_NEW_RE = re.compile(r"\**\s*NEW\s+EXPLANATION\s*:\s*\**", re.IGNORECASE)
_IMPROVEMENT_RE = re.compile(r"\**\s*IMPROVEMENT\s*:\s*\**", re.IGNORECASE)


def parse_child_reply(
    text: str, structured: bool, rule_cap: int | None, *, lenient: bool = False, first_line: bool = False
) -> tuple[Explanation, str]:
    """(explanation, improvement note) of a child reply, in the ``IMPROVEMENT: ... NEW EXPLANATION:
    ...`` text form or (structured) the JSON object form; raises ``ParseError``. ``lenient`` and
    ``first_line``: as in ``explanations.parse_explanation``."""
    text, _ = split_reasoning(text)
    marker = _NEW_RE.search(text)
    if marker is None:
        if structured:
            return parse_structured_child(text, rule_cap, lenient)
        raise ParseError(f"no 'NEW EXPLANATION:' in reply: {text.strip()[:80]!r}")
    head, body = text[: marker.start()], text[marker.end() :]
    second = _NEW_RE.search(body)
    body = body[: second.start()] if second else body
    imp = _IMPROVEMENT_RE.search(head)
    improvement = (head[imp.end() :] if imp else head).strip()
    if not structured:
        body = body.strip().strip("*\"'").strip()
    explanation = parse_explanation(body, structured, rule_cap, lenient=lenient, first_line=first_line)
    return explanation, improvement
