"""The tree search's feedback turn: what a node's explanation got wrong (sections 4.3, 4.4).

A child is written from its parent's conversation plus one user turn built here: the parent's
train score, the train records that lower it most (by leave-one-out gain) in a predicted / actual
/ error format, and the reply form (``IMPROVEMENT: ... NEW EXPLANATION: ...``, or the JSON object
of ``child_schema`` where the backend enforces a schema). Replies are parsed by
``featureinterp.explanations.rules.parse_child_reply``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from featureinterp.explain.config import ExplainerConfig
from featureinterp.explain.prompts import cap_sentence, format_records
from featureinterp.explanations.rules import RULE_PLACEHOLDER, explanation_schema
from featureinterp.records.formatting import escape_token, record_block
from featureinterp.records.sources import FeatureRecords
from featureinterp.simulate.scoring import Metrics, score

__all__ = ["child_schema", "contrast_block", "feedback_message", "leave_one_out"]


def contrast_block(
    tokens: Sequence[str], predicted: Sequence[float] | np.ndarray, actual: Sequence[int] | np.ndarray
) -> str:
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


def leave_one_out(
    truth: Sequence[np.ndarray], preds: Sequence[np.ndarray], metrics: Metrics = "paper"
) -> list[tuple[int, float]]:
    """``(record index, gain)`` for every record, most incorrect first.

    ``gain = score without the record - score with all records``; a large gain means the record hurts
    the pooled score most. NaN gains sort last; ties (and NaNs) break by larger absolute error, then
    by index, so the order is deterministic (the original sorts NaNs arbitrarily).
    """
    overall = score(truth, preds, metrics).correlation
    rows = []
    for i in range(len(truth)):
        rest = [j for j in range(len(truth)) if j != i]
        without = score([truth[j] for j in rest], [preds[j] for j in rest], metrics).correlation
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
    formatted = format_records(records.train, records.max_act, records.max_holistic, config.holistic)
    truth = [f[1] for f in formatted]
    overall = score(truth, train_preds, config.metrics)
    worst = leave_one_out(truth, train_preds, config.metrics)[: config.worst_records]
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
    parts.append(cap_sentence(config.rule_cap) if config.structured else "")
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
