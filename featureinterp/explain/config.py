"""What an explanation run is configured with and what it returns (paper-method.md sections 4, 11).

Kept apart from the prompts and the search so that callers that only build configs, seeds or
read results (experiments, assets, benchmarks) find them in one place: ``ExplainerConfig`` (and
``from_settings``, which copies a preset's ``ExplainSettings`` into it), ``ExplainResult``,
``ExplanationFailed``, and the seed helpers that make every request's seed a pure function of the
run seed, never of thread timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from featureinterp.errors import ConfigError
from featureinterp.explanations.rules import Explanation
from featureinterp.names import DEFAULT_RULE_CAP
from featureinterp.records.sources import feature_generator

if TYPE_CHECKING:
    from featureinterp.config import ExplainSettings

__all__ = [
    "REPEAT_THRESHOLD",
    "ExplainResult",
    "ExplainerConfig",
    "ExplanationFailed",
    "Simulate",
    "child_seed",
    "derive_seed",
    "explain_seed",
    "one_shot_seed",
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


def explain_seed(run_seed: int, preset: str, condition: str, layer: int, feature: int) -> int:
    """The run seed of one feature's explanation under one condition of a preset (31 bits)."""
    return int(feature_generator(run_seed, preset + condition, layer, feature).integers(2**31))


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
    stop_on_roots: bool = False
    """Tree: also test ``stop_score`` on the roots, before any revision. False (the paper,
    section 4.6 step f): the score is tested only after a level of children, so every tree
    writes at least one level of revisions (Figure 4's tree bars depend on it). True saves the
    requests of a tree whose best root already reaches the stop score (paper-method.md §12.1)."""
    tree_temperature: float = 1.2
    """Tree: sampling temperature of children."""
    child_max_tokens: int = 800
    """Tree: reply budget of a child (improvement note + explanation)."""
    worst_records: int = 1
    """Tree: most-incorrect train records (by leave-one-out gain) shown in the feedback."""
    concurrency: int = 4
    """Tree: threads issuing the generation requests of one level."""
    lenient_rules: bool = False
    """Accept what the paper's parser accepts (``explanations.parse_structured``): any integer
    strength, an empty ``activates_on``, an empty rule list. False: re-request those replies."""
    free_text_first_line: bool = False
    """A free-text explanation is the reply's first line only (the paper: the whole reply)."""
    metrics: Literal["paper", "rescaled"] = "paper"
    """Definition of the train / valid scores (featureinterp.simulate.scoring)."""

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

    @classmethod
    def from_settings(cls, settings: ExplainSettings | None = None, **fields: Any) -> ExplainerConfig:
        """A config from a preset's explainer settings (temperatures, reply budgets, tree size;
        None: the defaults), then ``fields``, which win over the settings."""
        copied = {}
        if settings is not None:
            copied = {
                "temperature": settings.temperature,
                "tree_temperature": settings.tree_temperature,
                "roots": settings.tree_roots,
                "branching": settings.tree_branching,
                "depth": settings.tree_depth,
                "width": settings.tree_width,
                "max_tokens": settings.max_tokens,
                "child_max_tokens": settings.child_max_tokens,
                "stop_on_roots": settings.tree_stop_on_roots,
                "lenient_rules": settings.lenient_rules,
                "free_text_first_line": settings.free_text_first_line,
            }
        return cls(**(copied | fields))


class ExplanationFailed(RuntimeError):
    """No explanation could be obtained: every sample was unparseable, or the backend gave up."""

    def __init__(self, reason: str, completions: list[dict[str, Any]]) -> None:
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
