"""The explainer's one-shot prompt: few-shot examples and the text of the records (sections 3, 4).

Everything the explainer LLM reads before its first answer lives here, so prompt wording can be
read and changed without the search around it: the system prompt, the 0..5 record blocks (with
holistic blocks and the zero-free repeat of sparse records), the few-shot examples and the tree
roots' conversations. Prompt wording and few-shot examples are our own (not the paper's text).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featureinterp.explain.config import REPEAT_THRESHOLD, ExplainerConfig
from featureinterp.explanations.rules import RULE_PLACEHOLDER, Explanation, Rule
from featureinterp.llm.backend import Message, assistant, system, user
from featureinterp.records.formatting import nonzero_fraction, quantize, record_block
from featureinterp.records.sources import FeatureRecords, Record

__all__ = [
    "FEW_SHOT_EXAMPLES",
    "FewShotExample",
    "cap_sentence",
    "format_records",
    "one_shot_messages",
    "records_message",
    "root_messages",
    "system_prompt",
]

# -- few-shot examples (our own) -------------------------------------------------------------------


@dataclass(frozen=True)
class FewShotExample:
    records: tuple[tuple[tuple[str, int, int], ...], ...]
    """Per record: ``(token, activation 0..5, holistic 0..5)`` per token."""
    rules: tuple[Rule, ...]
    phrase: str
    """The same explanation as one free-text phrase."""


# fmt: off
FEW_SHOT_EXAMPLES: tuple[FewShotExample, ...] = (
    FewShotExample(
        records=(
            (("On", 0, 1), (" Monday", 5, 4), (" the", 0, 0), (" shop", 0, 0), (" opens", 0, 0),
             (" late", 0, 0), (",", 0, 0), (" but", 0, 0), (" on", 0, 1), (" Friday", 4, 3)),
            (("Every", 0, 1), (" Sunday", 4, 4), (" we", 0, 0), (" visit", 0, 0), (" my", 0, 0),
             (" aunt", 0, 0), (" in", 0, 0), (" the", 0, 0), (" country", 0, 0), (".", 0, 0)),
        ),
        rules=(Rule("names of the days of the week", 5),),
        phrase="names of the days of the week",
    ),
    FewShotExample(
        records=(
            (("The", 0, 0), (" ticket", 0, 1), (" cost", 0, 2), (" $", 3, 3), ("45", 4, 3),
             (" at", 0, 0), (" the", 0, 0), (" door", 0, 0), (" last", 0, 0), (" night", 0, 0)),
            (("Lunch", 0, 0), (" was", 0, 0), (" only", 0, 1), (" €", 2, 2), ("9", 4, 3),
             (".", 0, 0), (" Dinner", 0, 0), (" was", 0, 0), (" much", 0, 0), (" more", 0, 0)),
        ),
        rules=(
            Rule("currency signs such as $ and €", 3),
            Rule("the amount of money written right after a currency sign", 4),
        ),
        phrase="prices: currency signs and the amounts that follow them",
    ),
    FewShotExample(
        records=(
            (("We", 0, 0), (" walked", 0, 0), (" along", 0, 1), (" the", 0, 0), (" river", 0, 3),
             (" bank", 4, 4), (" at", 0, 0), (" sunset", 0, 0), (" and", 0, 0), (" talked", 0, 0)),
            (("She", 0, 0), (" opened", 0, 0), (" an", 0, 0), (" account", 0, 0), (" at", 0, 0),
             (" the", 0, 0), (" bank", 0, 0), (" on", 0, 0), (" Main", 0, 0), (" Street", 0, 0)),
        ),
        rules=(Rule("'bank' when it means the land beside a river", 4),),
        phrase="the word bank when it means the edge of a river",
    ),
)
# fmt: on


# -- prompts ---------------------------------------------------------------------------------------

_INTRO = (
    "We are studying features of a neural network language model. Each feature responds to particular "
    "patterns in text. You will see records of where one feature fires; "
)
_FORMAT = (
    "Each record lists one token per line: the token, a tab, and the feature's activation on that token, "
    "an integer from 0 to 5. A value of 0 means the feature is silent on that token; higher values mean "
    "it fires more strongly.\n"
)
_HOLISTIC = (
    'Each record has two parts. "Activating tokens" shows the activation on each token. '
    '"Activation-causing tokens" shows, on the same 0 to 5 scale, how much the feature\'s activations in '
    "the record depend on each token: removing a token with a high value lowers the activations, on that "
    "token or on later ones. Use both parts: a rule may fire on one token because of an earlier one.\n"
)
_RULE_FIELDS = (
    "Each rule has exactly two fields:\n"
    '- "activates_on": one short string naming the tokens the rule fires on (a single string, never a list);\n'
    '- "strength": one integer from 0 to 5, how strongly the feature fires on them.\n'
)
_ONE_IDEA = (
    "Give each rule a single idea a person can understand. Triggers that have nothing to do with each other "
    'belong in separate rules (for example "the word \'carrot\'" and "closing brackets"); triggers that '
    'share an idea can share a rule ("Monday" and "Friday" are both "names of weekdays"). If the feature '
    "fires on a token only in a certain context, put that context in the rule.\n"
    "Use as few rules as possible: add a rule only when the activations it explains are not already "
    "covered by another one.\n"
)
_JSON_REPLY = f'Reply with a JSON object of the form {{"rules": [{{"activates_on": "{RULE_PLACEHOLDER}", "strength": 3}}]}}.'
_PHRASE_REPLY = (
    'Write one short phrase that completes "This feature fires on ...": name the pattern rather than '
    "listing example words, and include any context the feature needs. Reply with the phrase only."
)
_STRUCTURED_PREFIX = "Rules for these records, as JSON:"
_PHRASE_PREFIX = "This feature fires on (one phrase):"
_REPEAT_HEADER = "The same records again, with the zero-activation tokens left out:"


def cap_sentence(rule_cap: int | None) -> str:
    """The rule-cap sentence of a structured prompt (empty without a cap)."""
    if rule_cap is None:
        return ""
    noun = "rule" if rule_cap == 1 else "rules"
    return f"Write at most {rule_cap} {noun}. This is a limit, not a goal: a shorter list is better.\n"


def system_prompt(config: ExplainerConfig) -> str:
    holistic = _HOLISTIC if config.holistic else ""
    if not config.structured:
        return f"{_INTRO}describe in one short phrase what it responds to.\n\n{_FORMAT}{holistic}\n{_PHRASE_REPLY}"
    return (
        f"{_INTRO}describe what it responds to as a short list of rules.\n\n{_FORMAT}{holistic}\n"
        f"{_RULE_FIELDS}\n{_ONE_IDEA}\n{_JSON_REPLY}"
    )


_Formatted = tuple[Sequence[str], np.ndarray, "np.ndarray | None"]
"""One record as shown: tokens, 0..5 activations, 0..5 holistic values (or None)."""


def format_records(
    records: Sequence[Record], max_act: float, max_holistic: float, holistic: bool
) -> list[_Formatted]:
    """Records as shown: tokens, 0..5 activations and (``holistic``) 0..5 holistic values."""
    out: list[_Formatted] = []
    for r in records:
        hol = None
        if holistic:
            if r.holistic is None:
                raise ValueError("holistic prompts need holistic values on every train record")
            hol = quantize(r.holistic, max_holistic)
        out.append((r.tokens, quantize(r.acts, max_act), hol))
    return out


def _block(tokens: Sequence[str], acts: np.ndarray, hol: np.ndarray | None) -> str:
    if hol is None:
        return record_block(tokens, acts)
    return (
        "RECORD START\n\nActivating tokens:"
        + record_block(tokens, acts)
        + "\nActivation-causing tokens:"
        + record_block(tokens, hol)
        + "\nRECORD END\n"
    )


def _nonzero_block(tokens: Sequence[str], values: np.ndarray) -> str:
    keep = np.flatnonzero(values)
    return record_block([tokens[int(i)] for i in keep], values[keep])


def _without_zeros(tokens: Sequence[str], acts: np.ndarray, hol: np.ndarray | None) -> str | None:
    """The record with zero values left out (separately per list); None when nothing is left."""
    if not acts.any() and (hol is None or not hol.any()):
        return None
    if hol is None:
        return _nonzero_block(tokens, acts)
    return (
        "RECORD START\n\nActivating tokens:"
        + _nonzero_block(tokens, acts)
        + "\nActivation-causing tokens:"
        + _nonzero_block(tokens, hol)
        + "\nRECORD END\n"
    )


def _records_text(formatted: Sequence[_Formatted], structured: bool, limit: str = "") -> str:
    parts = ["Records:\n", *(_block(*f) for f in formatted)]
    if nonzero_fraction([f[1] for f in formatted]) < REPEAT_THRESHOLD:
        repeated = [b for b in (_without_zeros(*f) for f in formatted) if b is not None]
        if repeated:
            parts += [f"\n{_REPEAT_HEADER}\n", *repeated]
    parts.append(f"\n{limit}{_STRUCTURED_PREFIX if structured else _PHRASE_PREFIX}")
    return "".join(parts)


def records_message(records: FeatureRecords, config: ExplainerConfig) -> str:
    """The per-feature user message: the train records (0..5), the zero-free repeat when sparse,
    the rule cap and the answer prefix. The cap is stated here, after the records, rather than in
    the system message: conditions that differ only in their cap then share the whole prompt up
    to it (a server's prompt cache reuses it). A local explainer reuses whole turns only, so that
    a reply never depends on which prompts ran before (``kv_cache.PrefixStore``): it prefills
    the system message and the few-shot examples once for all of them, the records once each."""
    formatted = format_records(records.train, records.max_act, records.max_holistic, config.holistic)
    limit = cap_sentence(config.rule_cap) if config.structured else ""
    return _records_text(formatted, config.structured, limit)


def _answer(explanation: Explanation) -> str:
    """How an explanation appears as an assistant turn (the shape a constrained reply has)."""
    if not explanation.structured:
        return explanation.to_json()
    return json.dumps({"rules": [r.to_dict() for r in explanation.rules]}, ensure_ascii=False)


def one_shot_messages(records: FeatureRecords, config: ExplainerConfig) -> list[Message]:
    """System prompt, the few-shot examples as user/assistant pairs, then the target records."""
    messages = [system(system_prompt(config))]
    for ex in FEW_SHOT_EXAMPLES:
        formatted = [
            (
                [t for t, _, _ in rec],
                np.array([a for _, a, _ in rec]),
                np.array([h for _, _, h in rec]) if config.holistic else None,
            )
            for rec in ex.records
        ]
        shown = (
            Explanation(ex.rules).capped(config.rule_cap)
            if config.structured
            else Explanation.text(ex.phrase)
        )
        messages += [user(_records_text(formatted, config.structured)), assistant(_answer(shown))]
    messages.append(user(records_message(records, config)))
    return messages


def root_messages(
    records: FeatureRecords, config: ExplainerConfig, explanation: Explanation
) -> list[Message]:
    """A tree root's conversation: system prompt, the records (no few-shot), the root's answer."""
    return [
        system(system_prompt(config)),
        user(records_message(records, config)),
        assistant(_answer(explanation)),
    ]
