"""Explainers: one-shot and tree search over explanations (paper-method.md sections 3, 4, 6, 11).

An explainer LLM reads a feature's train records (0..5 activations, optionally holistic values)
and writes an explanation; a simulator predicts activations from it; the pooled correlation with
the truth is the score. Two methods:

- ``one_shot``: one request with ``n`` samples on a few-shot prompt; unparseable samples are
  re-requested a bounded number of times, and if none parse the run fails with
  ``ExplanationFailed`` (the original pads with a dummy explanation that is then scored as if real).
- ``tree``: roots from a one-shot call, then ``depth`` levels of children written from score
  feedback (train score + the worst train records in a predicted/actual/error format), keeping the
  ``width`` best children by train score. Fixes to the original: the final pick is by *validation*
  score over all nodes (with real validation records); NaN leave-one-out gains sort last,
  deterministically; the multi-record feedback labels name the right records; a level where every
  child fails ends the search instead of raising.

Why it is fast: tree nodes share most of their rules, so each distinct rule is simulated once per
``explain`` call (on train and validation records together) and explanations are combined from
cached per-rule values; the generation requests of one level run concurrently, and the rules of
each reply are simulated while the other requests of the level are still in flight.

Prompt wording and few-shot examples are our own (not the paper's text).
"""

from __future__ import annotations

import contextvars
import json
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from featureinterp.errors import ConfigError
from featureinterp.explanations import (
    RULE_PLACEHOLDER,
    Explanation,
    ParseError,
    Rule,
    explanation_schema,
    parse_explanation,
    parse_structured_child,
)
from featureinterp.formatting import MAX_VALUE, escape_token, nonzero_fraction, quantize, record_block
from featureinterp.llm import (
    BackendError,
    ChatBackend,
    Completion,
    GenerationParams,
    Message,
    assistant,
    system,
    tally_usage,
    user,
)
from featureinterp.names import DEFAULT_RULE_CAP
from featureinterp.replies import split_reasoning
from featureinterp.scoring import score

__all__ = [
    "Record",
    "FeatureRecords",
    "ExplainerConfig",
    "ExplanationFailed",
    "ExplainResult",
    "FewShotExample",
    "FEW_SHOT_EXAMPLES",
    "Simulate",
    "explain",
    "system_prompt",
    "records_message",
    "one_shot_messages",
    "root_messages",
    "feedback_message",
    "child_schema",
    "parse_child_reply",
    "contrast_block",
    "leave_one_out",
    "derive_seed",
    "one_shot_seed",
    "child_seed",
]

Simulate = Callable[[Explanation, list[list[str]]], list[np.ndarray]]
"""``simulate(explanation, token_lists) -> per-record predicted values`` (e.g.
``LocalSimulator.simulate_explanation``). ``explain`` only calls it with one-rule explanations at
full strength and scales by ``strength / 5`` itself, which is exactly what a simulator following
section 5.4 does for a one-rule explanation."""

REPEAT_THRESHOLD = 0.2
"""Below this share of non-zero values, the records are repeated with zeros left out (section 3)."""

# Seed streams (first key after the run seed), so every request's seed is a pure function of
# (seed, stream, ...) and does not depend on thread timing.
_ONE_SHOT_STREAM, _CHILD_STREAM = 0, 1


def derive_seed(seed: int, *keys: int) -> int:
    """A request seed derived from the run seed and integer keys (31 bits: fits every backend)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint32)[0]
    return int(state) & 0x7FFFFFFF


def one_shot_seed(seed: int, attempt: int) -> int:
    """Seed of the one-shot (or tree-root) request number ``attempt`` (0: first, then retries)."""
    return derive_seed(seed, _ONE_SHOT_STREAM, attempt)


def child_seed(seed: int, depth: int, parent: int, index: int) -> int:
    """Seed of child ``index`` of node ``parent`` at tree level ``depth``."""
    return derive_seed(seed, _CHILD_STREAM, depth, parent, index)


# -- data ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Record:
    """One record shown to (train) or scored for (valid) the explainer."""

    tokens: tuple[str, ...]
    acts: np.ndarray
    """Raw activation per token (float, the feature's own units)."""
    holistic: np.ndarray | None = None
    """Raw holistic (leave-one-token-out) value per token, when available."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "acts", np.asarray(self.acts, dtype=np.float64))
        if self.acts.shape != (len(self.tokens),):
            raise ValueError(f"record has {len(self.tokens)} tokens but acts of shape {self.acts.shape}")
        if self.holistic is not None:
            object.__setattr__(self, "holistic", np.asarray(self.holistic, dtype=np.float64))
            if self.holistic.shape != (len(self.tokens),):
                raise ValueError(
                    f"record has {len(self.tokens)} tokens but holistic values of shape {self.holistic.shape}"
                )


@dataclass(frozen=True, eq=False)
class FeatureRecords:
    train: tuple[Record, ...]
    valid: tuple[Record, ...]
    max_act: float
    """The feature's maximum over the whole corpus: the 0..5 formatting scale (section 3)."""
    max_holistic: float = 0.0
    """Likewise for holistic values."""


@dataclass(frozen=True)
class ExplainerConfig:
    method: Literal["one_shot", "tree"] = "one_shot"
    structured: bool = True
    """Rule lists (JSON) rather than one free-text phrase."""
    holistic: bool = False
    """Show activation-causing (holistic) blocks next to the activations (records need them)."""
    rule_cap: int | None = DEFAULT_RULE_CAP
    """Most rules an explanation may have (schema ``maxItems`` and truncation); None: no cap."""
    num_samples: int = 1
    """Explanations returned: one-shot requests this many; tree returns the top ones by valid score."""
    temperature: float = 1.0
    """One-shot (and tree root) sampling temperature."""
    top_p: float = 1.0
    max_tokens: int = 600
    """One-shot reply budget in tokens."""
    parse_retries: int = 3
    """Re-requests for the shortfall of unparseable samples (bounded; then ``ExplanationFailed``)."""
    roots: int = 3
    """Tree: root explanations (one one-shot request with n = roots)."""
    branching: int = 2
    """Tree: children requested per expanded node."""
    width: int = 3
    """Tree: children kept per level (best train score first)."""
    depth: int = 3
    """Tree: levels of children after the roots."""
    stop_score: float = 0.9
    """Tree: stop once the best kept node's train score reaches this."""
    tree_temperature: float = 1.2
    """Tree: sampling temperature of children."""
    child_max_tokens: int = 800
    """Tree: reply budget of a child (improvement note + explanation)."""
    worst_records: int = 1
    """Tree: most-incorrect train records (by leave-one-out gain) shown in the feedback."""
    concurrency: int = 4
    """Tree: threads issuing the generation requests of one level."""

    def __post_init__(self) -> None:
        if self.method not in ("one_shot", "tree"):
            raise ConfigError(f"explainer method must be 'one_shot' or 'tree', got {self.method!r}")
        if self.rule_cap is not None and self.rule_cap < 1:
            raise ConfigError(f"rule_cap must be at least 1 (or None), got {self.rule_cap}")
        positive = ("num_samples", "max_tokens", "roots", "branching", "width", "worst_records")
        for name in (*positive, "concurrency", "child_max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("parse_retries", "depth", "temperature", "tree_temperature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


class ExplanationFailed(RuntimeError):
    """No explanation could be obtained: every sample was unparseable, or the backend gave up."""

    def __init__(self, reason: str, completions: list[dict[str, Any]]):
        super().__init__(reason)
        self.reason = reason
        self.completions = completions


@dataclass
class ExplainResult:
    explanation: Explanation
    """The chosen explanation (tree: best by validation score; one-shot: the first parsed sample)."""
    alternatives: list[Explanation]
    """The other returned explanations (``num_samples > 1``), best first for the tree."""
    train_score: float
    valid_score: float
    """Pooled correlations of the chosen explanation on the 0..5 train / valid truth (NaN allowed;
    the reason is in its node)."""
    nodes: list[dict[str, Any]]
    """Every scored explanation: ``{id, parent, depth, explanation, train_score, valid_score,
    improvement, train_reason, valid_reason}`` (one-shot: the samples)."""
    completions: list[dict[str, Any]]
    """Every raw completion: ``{text, finish_reason, request_id, cached, parsed_ok, error, stage}``."""
    usage: dict[str, float]
    """Usage of this call's own requests (other features' requests on a shared backend excluded)."""
    simulations: int
    """Rule simulations actually run (after the per-call rule cache)."""
    stop_reason: str = "one_shot"
    """Tree: ``depth``, ``stop_score`` or ``no_children`` (a level where every child failed)."""


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


def _cap_sentence(rule_cap: int | None) -> str:
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


def _format(
    records: Sequence[Record], max_act: float, max_holistic: float, holistic: bool
) -> list[_Formatted]:
    out = []
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
    return record_block([tokens[i] for i in keep], values[keep])


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
    to it, so a local explainer prefills the system message, few-shot examples and records once
    for all of them (``kv_cache.PrefixStore``)."""
    formatted = _format(records.train, records.max_act, records.max_holistic, config.holistic)
    limit = _cap_sentence(config.rule_cap) if config.structured else ""
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


# -- tree feedback ---------------------------------------------------------------------------------


def contrast_block(tokens: Sequence[str], predicted: Sequence[float], actual: Sequence[int]) -> str:
    """``token<TAB>(predicted: P) (actual: A) (error: E)`` lines in a ``<start>``/``<end>`` block;
    ``P`` is the prediction rounded half-to-even, ``E`` is ``none``, ``N too high`` or ``N too low``."""
    lines = []
    for tok, p, a in zip(
        tokens, np.round(np.asarray(predicted, dtype=np.float64)).astype(int), actual, strict=True
    ):
        a = int(a)
        err = "none" if p == a else (f"{p - a} too high" if p > a else f"{a - p} too low")
        lines.append(f"{escape_token(tok)}\t(predicted: {p}) (actual: {a}) (error: {err})")
    return "\n<start>\n" + "\n".join(lines) + "\n<end>\n"


def leave_one_out(truth: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> list[tuple[int, float]]:
    """``(record index, gain)`` for every record, most incorrect first.

    ``gain = score without the record - score with all records``; a large gain means the record hurts
    the pooled score most. NaN gains sort last; ties (and NaNs) break by larger absolute error, then
    by index, so the order is deterministic (the original sorts NaNs arbitrarily).
    """
    overall = score(truth, preds).correlation
    rows = []
    for i in range(len(truth)):
        rest = [j for j in range(len(truth)) if j != i]
        without = score([truth[j] for j in rest], [preds[j] for j in rest]).correlation
        gain = without - overall
        abs_err = float(np.abs(np.asarray(truth[i], float) - np.asarray(preds[i], float)).sum())
        rows.append((math.isnan(gain), -gain if not math.isnan(gain) else 0.0, -abs_err, i, gain))
    rows.sort()
    return [(r[3], r[4]) for r in rows]


_IMPROVE_STRUCTURED = (
    "Write a better explanation using this feedback. If your recent changes stopped helping, try a "
    "different approach instead of small edits.\n"
    "Start with the one change you are making, stated precisely, for example:\n"
    "- add a rule for the word 'X', which the explanation missed;\n"
    "- remove the rule added last time, because the score went down;\n"
    "- make the rule for 'X' fire only when 'X' follows 'Y';\n"
    "- raise the strength of the rule for 'X' from 2 to 4.\n"
)
_IMPROVE_PHRASE = (
    "Write a better explanation using this feedback. If your recent changes stopped helping, try a "
    "different approach instead of small edits.\n"
    "Start with the one change you are making, stated precisely, for example:\n"
    "- also cover the word 'X', which the explanation missed;\n"
    "- undo the last change, because the score went down;\n"
    "- only count 'X' when it follows 'Y'.\n"
)
_SKELETON_STRUCTURED = (
    "Reply in exactly this form:\n\nIMPROVEMENT: <the change>\n\n"
    f'NEW EXPLANATION: {{"rules": [{{"activates_on": "{RULE_PLACEHOLDER}", "strength": 3}}]}}\n\n'
    '"activates_on" is always one string. Do not write comments inside the JSON.'
)
_SKELETON_PHRASE = "Reply in exactly this form:\n\nIMPROVEMENT: <the change>\n\nNEW EXPLANATION: <one phrase>"


def _fmt_score(value: float, reason: str | None) -> str:
    return f"{value:.2f}" if not math.isnan(value) else f"undefined ({reason or 'no score'})"


def feedback_message(
    records: FeatureRecords, train_preds: Sequence[np.ndarray], config: ExplainerConfig
) -> str:
    """The user turn asking for a child: train score, the ``worst_records`` most incorrect train
    records (holistic block when enabled, then per-token errors), and the reply format."""
    formatted = _format(records.train, records.max_act, records.max_holistic, config.holistic)
    truth = [f[1] for f in formatted]
    overall = score(truth, train_preds)
    worst = leave_one_out(truth, train_preds)[: config.worst_records]
    parts = [
        "Feedback on this explanation.\n",
        f"Score on the training records: {_fmt_score(overall.correlation, overall.reason)} "
        "(correlation between simulated and true activations; 1.0 is perfect).\n\n",
    ]
    if len(worst) == 1:
        parts.append(
            f"The record that lowers the score most (score change without it: {_gain(worst[0][1])}):\n"
        )
    else:
        parts.append(f"The {len(worst)} records that lower the score most, worst first:\n")
    for rank, (i, gain) in enumerate(worst):
        tokens, acts, hol = formatted[i]
        if len(worst) > 1:
            parts.append(
                f"\nRecord {rank + 1} (training record {i + 1}; score change without it: {_gain(gain)}):\n"
            )
        if hol is not None:
            parts.append("Activation-causing tokens:" + record_block(tokens, hol) + "\n")
        parts.append("Errors on the activating tokens:" + contrast_block(tokens, train_preds[i], acts))
    parts.append("\n" + (_IMPROVE_STRUCTURED if config.structured else _IMPROVE_PHRASE))
    parts.append(_cap_sentence(config.rule_cap) if config.structured else "")
    parts.append("\n" + (_SKELETON_STRUCTURED if config.structured else _SKELETON_PHRASE))
    return "".join(parts)


def _gain(gain: float) -> str:
    return f"{gain:+.2f}" if not math.isnan(gain) else "undefined"


def child_schema(rule_cap: int | None) -> dict[str, Any]:
    """JSON schema of a structured child reply: ``{"improvement": str, "rules": [...]}``."""
    rules = explanation_schema(rule_cap)["properties"]["rules"]
    return {
        "type": "object",
        "properties": {"improvement": {"type": "string", "minLength": 1, "maxLength": 300}, "rules": rules},
        "required": ["improvement", "rules"],
        "additionalProperties": False,
    }


_NEW_RE = re.compile(r"\**\s*NEW\s+EXPLANATION\s*:\s*\**", re.IGNORECASE)
_IMPROVEMENT_RE = re.compile(r"\**\s*IMPROVEMENT\s*:\s*\**", re.IGNORECASE)


def parse_child_reply(text: str, structured: bool, rule_cap: int | None) -> tuple[Explanation, str]:
    """(explanation, improvement note) of a child reply, in the ``IMPROVEMENT: ... NEW EXPLANATION:
    ...`` text form or (structured) the JSON object form; raises ``ParseError``."""
    text, _ = split_reasoning(text)
    marker = _NEW_RE.search(text)
    if marker is None:
        if structured:
            return parse_structured_child(text, rule_cap)
        raise ParseError(f"no 'NEW EXPLANATION:' in reply: {text.strip()[:80]!r}")
    head, body = text[: marker.start()], text[marker.end() :]
    second = _NEW_RE.search(body)
    body = body[: second.start()] if second else body
    imp = _IMPROVEMENT_RE.search(head)
    improvement = (head[imp.end() :] if imp else head).strip()
    if not structured:
        body = body.strip().strip("*\"'").strip()
    return parse_explanation(body, structured, rule_cap), improvement


# -- scoring with a per-call rule cache ------------------------------------------------------------


class _RuleCache:
    """Simulated values of each distinct rule on train + valid records, computed once per call."""

    def __init__(self, simulate: Simulate, records: FeatureRecords):
        self.simulate = simulate
        self.tokens = [list(r.tokens) for r in (*records.train, *records.valid)]
        self.n_train = len(records.train)
        self.values: dict[tuple[str, bool], list[np.ndarray]] = {}
        self.simulations = 0

    def ensure(self, explanation: Explanation) -> None:
        for rule in explanation.rules:
            key = (rule.activates_on, explanation.structured)
            if rule.strength <= 0 or key in self.values:
                continue  # a zero-strength rule predicts zeros (as simulate_explanation does)
            full = Explanation((Rule(rule.activates_on, MAX_VALUE),), explanation.structured)
            out = self.simulate(full, self.tokens)
            self.simulations += 1
            if len(out) != len(self.tokens) or any(
                np.shape(v) != (len(t),) for v, t in zip(out, self.tokens, strict=False)
            ):
                raise ValueError("simulate returned values whose shapes do not match the records' tokens")
            self.values[key] = [np.asarray(v, dtype=np.float64) for v in out]

    def predict(self, explanation: Explanation) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(train, valid) predictions: per token the max over rules of value * strength / 5."""
        self.ensure(explanation)
        preds = [np.zeros(len(t)) for t in self.tokens]
        for rule in explanation.rules:
            if rule.strength <= 0:
                continue
            scale = rule.strength / MAX_VALUE if explanation.structured else 1.0
            for i, v in enumerate(self.values[(rule.activates_on, explanation.structured)]):
                preds[i] = np.maximum(preds[i], v * scale)
        return preds[: self.n_train], preds[self.n_train :]


@dataclass
class _Node:
    id: int
    parent: int | None
    depth: int
    explanation: Explanation
    improvement: str | None
    conversation: list[Message]
    train_preds: list[np.ndarray]
    train_score: float
    valid_score: float
    train_reason: str | None
    valid_reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "depth": self.depth,
            "explanation": self.explanation.to_record(),
            "train_score": self.train_score,
            "valid_score": self.valid_score,
            "improvement": self.improvement,
            "train_reason": self.train_reason,
            "valid_reason": self.valid_reason,
        }


def _completion(c: Completion | None, stage: str, error: str | None) -> dict[str, Any]:
    return {
        "text": c.text if c else "",
        "finish_reason": c.finish_reason if c else None,
        "request_id": c.request_id if c else None,
        "cached": c.cached if c else False,
        "reasoning": c.reasoning if c else "",
        "mode": c.mode if c else None,
        "parsed_ok": error is None,
        "error": error,
        "stage": stage,
    }


def _by_score(nodes: Sequence[_Node], valid: bool) -> list[_Node]:
    """Best first by valid (or train) score; NaN last; ties by the other score, then by id."""

    def key(n: _Node):
        a, b = (n.valid_score, n.train_score) if valid else (n.train_score, n.valid_score)
        return (
            math.isnan(a),
            -a if not math.isnan(a) else 0.0,
            math.isnan(b),
            -b if not math.isnan(b) else 0.0,
            n.id,
        )

    return sorted(nodes, key=key)


@dataclass
class _Run:
    backend: ChatBackend
    records: FeatureRecords
    config: ExplainerConfig
    seed: int
    cache: _RuleCache
    nodes: list[_Node] = field(default_factory=list)
    completions: list[dict[str, Any]] = field(default_factory=list)
    unusable: list[tuple[list[Message], GenerationParams]] = field(default_factory=list)
    """Requests whose reply did not parse. Kept in the backend's cache when the feature is
    explained anyway (a rerun replays the same path for free); forgotten when it fails, so a
    relaunch asks the server again instead of replaying the failure."""
    truth: tuple[list[np.ndarray], list[np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        q = self.records.max_act
        self.truth = (
            [quantize(r.acts, q) for r in self.records.train],
            [quantize(r.acts, q) for r in self.records.valid],
        )

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, stage: str) -> list[Explanation]:
        """``n`` parsed explanations from the few-shot prompt (shortfall re-requested, bounded)."""
        cfg = self.config
        messages = one_shot_messages(self.records, cfg)
        schema = explanation_schema(cfg.rule_cap) if cfg.structured else None
        found: list[Explanation] = []
        last_error = "no completions returned"
        for attempt in range(cfg.parse_retries + 1):
            missing = n - len(found)
            if missing <= 0:
                break
            params = GenerationParams(
                n=missing,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_tokens,
                json_schema=schema,
                seed=one_shot_seed(self.seed, attempt),
            )
            try:
                replies = self.backend.generate(messages, params)
            except BackendError as err:
                self.completions.append(_completion(None, stage, f"backend: {err}"))
                last_error = f"the backend gave up: {err}"
                break
            unusable = False
            for c in replies:  # a server may return more than asked: all are recorded, n are kept
                try:
                    explanation = parse_explanation(c.text, cfg.structured, cfg.rule_cap)
                    found += [explanation] if len(found) < n else []
                    self.completions.append(_completion(c, stage, None))
                except ParseError as err:
                    self.completions.append(_completion(c, stage, str(err)))
                    last_error = f"unparseable reply: {err}"
                    unusable = True
            if unusable:
                self.unusable.append((messages, params))
        if not found:
            tried = sum(1 for c in self.completions if c["stage"] == stage)
            raise ExplanationFailed(
                f"no explanation after {tried} completion(s); last: {last_error}", self.completions
            )
        return found

    # -- nodes ---------------------------------------------------------------------------------
    def node(self, explanation, parent, depth, improvement, conversation, node_id) -> _Node:
        train_preds, valid_preds = self.cache.predict(explanation)
        tr, va = score(self.truth[0], train_preds), score(self.truth[1], valid_preds)
        explanation = replace(explanation, meta={**explanation.meta, "node": node_id})
        return _Node(
            node_id, parent, depth, explanation, improvement, conversation, train_preds,
            tr.correlation, va.correlation, tr.reason, va.reason,
        )  # fmt: skip

    def request_child(self, parent: _Node, messages: list[Message], j: int):
        cfg = self.config
        params = GenerationParams(
            n=1,
            temperature=cfg.tree_temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.child_max_tokens,
            json_schema=child_schema(cfg.rule_cap) if cfg.structured else None,
            seed=child_seed(self.seed, parent.depth + 1, parent.id, j),
        )
        try:
            replies = self.backend.generate(messages, params)
        except BackendError as err:
            return None, f"backend: {err}", None, None
        if not replies:
            return None, "backend returned no completion", None, None
        c = replies[0]
        try:
            explanation, improvement = parse_child_reply(c.text, cfg.structured, cfg.rule_cap)
        except ParseError as err:
            self.unusable.append((messages, params))
            return c, str(err), None, None
        return c, None, explanation, improvement

    def expand(self, pool: ThreadPoolExecutor, current: list[_Node], depth: int) -> list[_Node]:
        """One level: every child request concurrently; each reply's rules are simulated as soon as
        it arrives (main thread), nodes are built afterwards in a fixed order."""
        asks = []
        for parent in current:
            messages = [
                *parent.conversation,
                user(feedback_message(self.records, parent.train_preds, self.config)),
            ]
            asks += [(parent, messages, j) for j in range(self.config.branching)]
        # each request runs in a copy of this context, so the feature's usage tally counts it
        futures = {
            pool.submit(contextvars.copy_context().run, self.request_child, *ask): k
            for k, ask in enumerate(asks)
        }
        results: dict[int, tuple] = {}
        for fut in as_completed(futures):
            k = futures[fut]
            results[k] = fut.result()
            if results[k][2] is not None:
                self.cache.ensure(results[k][2])  # overlap simulation with the requests still in flight
        children = []
        for k, (parent, messages, _) in enumerate(asks):
            c, error, explanation, improvement = results[k]
            self.completions.append(_completion(c, f"child:{depth}:{parent.id}", error))
            if explanation is None:
                continue
            conversation = [*messages, assistant(c.text)]
            children.append(
                self.node(explanation, parent.id, depth, improvement, conversation, len(self.nodes))
            )
            self.nodes.append(children[-1])
        return children

    # -- methods -------------------------------------------------------------------------------
    def one_shot(self) -> tuple[list[_Node], str]:
        for i, explanation in enumerate(self.sample(self.config.num_samples, "one_shot")):
            self.nodes.append(self.node(explanation, None, 0, None, [], i))
        return list(self.nodes), "one_shot"

    def tree(self) -> tuple[list[_Node], str]:
        cfg = self.config
        for explanation in self.sample(cfg.roots, "root"):
            conversation = root_messages(self.records, cfg, explanation)
            self.nodes.append(self.node(explanation, None, 0, None, conversation, len(self.nodes)))
        current, stop = list(self.nodes), "depth"

        def reached(nodes: list[_Node]) -> bool:
            best = _by_score(nodes, valid=False)[0].train_score
            return not math.isnan(best) and best >= cfg.stop_score

        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            for depth in range(1, cfg.depth + 1):
                if reached(current):  # checked before every level, the roots' included
                    break
                children = self.expand(pool, current, depth)
                if not children:
                    stop = "no_children"
                    break
                current = _by_score(children, valid=False)[: cfg.width]
        if stop == "depth" and reached(current):
            stop = "stop_score"
        return _by_score(self.nodes, valid=True)[: cfg.num_samples], stop


def explain(
    backend: ChatBackend, simulate: Simulate, records: FeatureRecords, config: ExplainerConfig, seed: int
) -> ExplainResult:
    """Explain one feature from its train records; score on train and valid (0..5 truth, section 4.7).

    Raises ``ExplanationFailed`` when no sample (one-shot) or no root (tree) parses, or the backend
    gives up before any does.
    """
    if not records.train:
        raise ValueError("explain needs at least one train record")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if config.holistic and any(r.holistic is None for r in records.train):
        raise ValueError("config.holistic is set but some train records have no holistic values")
    with tally_usage() as usage:  # this call's requests only, even when features share the backend
        run = _Run(backend, records, config, seed, _RuleCache(simulate, records))
        try:
            chosen, stop = run.tree() if config.method == "tree" else run.one_shot()
        except ExplanationFailed:
            for messages, params in run.unusable:
                backend.forget(messages, params)
            raise
    return ExplainResult(
        explanation=chosen[0].explanation,
        alternatives=[n.explanation for n in chosen[1:]],
        train_score=chosen[0].train_score,
        valid_score=chosen[0].valid_score,
        nodes=[n.to_dict() for n in run.nodes],
        completions=run.completions,
        usage={k: round(v, 6) for k, v in usage.snapshot().items()},
        simulations=run.cache.simulations,
        stop_reason=stop,
    )
