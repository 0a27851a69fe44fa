"""Explaining SAE features with an LLM: one-shot and tree search (paper-method.md sections 3, 4, 6, 11).

One module per job of the explainer stage, so a newcomer finds each where its name says:

- ``config``: ``ExplainerConfig`` (and ``from_settings`` from a preset), ``ExplainResult``,
  ``ExplanationFailed``, the seed helpers;
- ``prompts``: the few-shot examples and the one-shot / tree-root prompt text;
- ``feedback``: the tree's feedback turn (leave-one-out worst records, contrast blocks) and the
  child reply schema;
- ``tree``: ``explain``, the one-shot run and the tree search over a per-call rule cache;
- ``conditions``: the paper's experiment conditions (method x structured x holistic x train
  negatives x rule cap) and the records each condition's explainer sees;
- ``complexity``: rating a rule's complexity 0..5 with an LLM (section 7);
- ``generated``: counterexamples the explainer writes from an explanation (ours: the seventh
  complementary source), measured on the subject model;
- ``reseed``: the same slice explained again with other seeds, and the between-seed spread.

Explanations and their parsers (child replies included) are in ``featureinterp.explanations``; the
record types live in ``featureinterp.records.sources``. The public names are re-exported here:
``from featureinterp.explain import explain, ExplainerConfig``.
"""

from featureinterp.explain.config import (
    REPEAT_THRESHOLD,
    ExplainerConfig,
    ExplainResult,
    ExplanationFailed,
    Simulate,
    child_seed,
    derive_seed,
    explain_seed,
    one_shot_seed,
)
from featureinterp.explain.feedback import child_schema, contrast_block, feedback_message, leave_one_out
from featureinterp.explain.prompts import (
    FEW_SHOT_EXAMPLES,
    FewShotExample,
    one_shot_messages,
    records_message,
    root_messages,
    system_prompt,
)
from featureinterp.explain.tree import explain

__all__ = [
    "FEW_SHOT_EXAMPLES",
    "REPEAT_THRESHOLD",
    "ExplainResult",
    "ExplainerConfig",
    "ExplanationFailed",
    "FewShotExample",
    "Simulate",
    "child_schema",
    "child_seed",
    "contrast_block",
    "derive_seed",
    "explain",
    "explain_seed",
    "feedback_message",
    "leave_one_out",
    "one_shot_messages",
    "one_shot_seed",
    "records_message",
    "root_messages",
    "system_prompt",
]
