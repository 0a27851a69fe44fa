"""Complexity of explanation rules, rated 0..5 by an LLM (paper-method.md section 7).

Each rule is shown after a few rated examples; the reply starts with ``Complexity:<TAB>`` and the
rating is the expected value of the model's distribution over the digits 0..5 at the next token,
renormalised over the digits. The digit is read exactly where the model would write it: the
original reads the position after an ``unknown`` placeholder, i.e. the prediction of the token
*after* the digit (section 11.1, item 4).

The rule's strength is ignored; only the ``activates_on`` text is rated. Prompt wording and
examples are our own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featureinterp.explanations.rules import Rule
from featureinterp.llm.backend import ChatBackend, Message, assistant, system, user
from featureinterp.records.formatting import MAX_VALUE

__all__ = [
    "ComplexityExample",
    "DEFAULT_EXAMPLES",
    "SYSTEM_PROMPT",
    "REPLY_PREFIX",
    "ComplexityAnalyzer",
    "expected_digit",
    "mean_complexity",
]

SYSTEM_PROMPT = (
    "Each feature of a language model comes with a rule saying which tokens it fires on. Rate how complex "
    "a rule is, as an integer from 0 (simplest) to 5 (most complex).\n"
    "Complexity means how abstract the rule is: a rule that names specific tokens or words is simple; a "
    "rule that needs an abstract concept, a judgement about meaning, or knowledge of the topic is complex. "
    "A rule that fires only in a particular context is more complex than the same rule without it.\n"
    "Answer with the rating, then one line saying why."
)
REPLY_PREFIX = "Complexity:\t"
PLACEHOLDER = "unknown"
"""The paper's query reply ``Complexity:<TAB>unknown``: it reads the digit distribution at the
placeholder's position, i.e. the prediction of the token *after* it (paper-method.md 11.1, item 4).
Causal attention makes ending the prompt at the placeholder the same read-out."""
"""Start of the reply; the next token is the rating digit."""
_DIGITS = tuple(str(d) for d in range(MAX_VALUE + 1))


@dataclass(frozen=True)
class ComplexityExample:
    rule: str
    complexity: int
    reason: str


DEFAULT_EXAMPLES: tuple[ComplexityExample, ...] = (
    ComplexityExample("the word 'river'", 0, "a single specific word, no context needed"),
    ComplexityExample(
        "the token 'bank' when it follows 'river'", 1, "a specific word, with a simple required context"
    ),
    ComplexityExample("past-tense verbs ending in -ed", 2, "a grammatical category marked by its spelling"),
    ComplexityExample(
        "names of chemical elements in recipes", 3, "a category of words that must occur in a given topic"
    ),
    ComplexityExample(
        "phrases that express doubt about a claim", 5, "an abstract judgement about what the text means"
    ),
)


def expected_digit(logprobs: Sequence[float] | np.ndarray) -> float:
    """Expected value of the digits 0..len-1 under ``exp(logprobs)`` renormalised to sum to one
    (mass on other tokens is dropped); NaN when every digit has probability zero."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if not np.isfinite(lp).any():
        return float("nan")
    p = np.exp(lp - lp[np.isfinite(lp)].max())  # stable; -inf -> 0
    return float((p / p.sum()) @ np.arange(len(lp)))


class ComplexityAnalyzer:
    """Rates rules with ``backend.next_token_logprobs`` (one prompt per rule)."""

    def __init__(
        self,
        backend: ChatBackend,
        examples: Sequence[ComplexityExample] = DEFAULT_EXAMPLES,
        system_prompt: str = SYSTEM_PROMPT,
        faithful: bool = False,
    ) -> None:
        """``faithful``: the paper's read-out, one token late (``PLACEHOLDER``); for measuring
        that fix only."""
        self.faithful = faithful
        for ex in examples:
            if not 0 <= ex.complexity <= MAX_VALUE:
                raise ValueError(f"example complexity {ex.complexity} outside 0..{MAX_VALUE}: {ex.rule!r}")
        self.backend = backend
        self.header: list[Message] = [system(system_prompt)]
        for ex in examples:
            self.header += [
                user(f"Explanation:\n{ex.rule}"),
                assistant(f"{REPLY_PREFIX}{ex.complexity}\nReason:\t{ex.reason}"),
            ]

    def messages(self, rule: Rule | str) -> list[Message]:
        text = rule.activates_on if isinstance(rule, Rule) else rule
        return [*self.header, user(f"Explanation:\n{text}")]

    def logprobs(self, rule: Rule | str) -> np.ndarray:
        """Log-probabilities of the digits 0..5 as the first token after ``Complexity:<TAB>``
        (faithful: as the token after ``Complexity:<TAB>unknown``, where the paper reads them)."""
        prefix = REPLY_PREFIX + (PLACEHOLDER if self.faithful else "")
        return self.backend.next_token_logprobs(self.messages(rule), prefix, _DIGITS)

    def rate(self, rules: Sequence[Rule | str]) -> list[float]:
        """Expected complexity (0..5) of each rule; NaN where the backend gives no digit any mass."""
        return [expected_digit(self.logprobs(rule)) for rule in rules]


def mean_complexity(values: Sequence[float]) -> float:
    """Mean complexity of an explanation's rules, NaN values ignored; NaN when none is defined."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")
