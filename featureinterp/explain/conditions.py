"""Experiment conditions and what the explainer of each sees (paper-method.md section 9).

A *condition* is one cell of the paper's comparisons: explainer method x structured x holistic x
train negatives x rule cap. Each condition becomes one explanation asset (and one score asset:
its test-time evaluation is ``featureinterp.simulate.evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from featureinterp.explain.config import ExplainerConfig
from featureinterp.names import DEFAULT_RULE_CAP, POSITIVE_SOURCE, PRIMARY_SOURCE
from featureinterp.records.sources import FeatureRecords, split_records

if TYPE_CHECKING:
    import polars as pl

    from featureinterp.config import ExplainSettings

__all__ = [
    "CONDITIONS",
    "Condition",
    "FIG3_EXPLAINER",
    "TreeSize",
    "feature_records",
    "get_condition",
]


@dataclass(frozen=True)
class TreeSize:
    """The size of a tree search (paper-method.md 4.6): 1 request for ``roots`` explanations, then
    ``depth`` levels where each of the ``width`` kept nodes asks for ``branching`` revisions."""

    roots: int = 3
    branching: int = 2
    depth: int = 2
    width: int = 2
    stop_score: float = 0.9
    temperature: float = 1.2


FIG3_EXPLAINER = "google/gemini-flash-1.5-8b"
"""The explainer of the paper's Figure 3 (its other figures use the preset's, Llama-4-Scout)."""


@dataclass(frozen=True)
class Condition:
    name: str
    """Asset-safe name: the explanation asset is ``explanations/<name>``."""
    method: Literal["one_shot", "tree"]
    structured: bool = True
    holistic: bool = False
    train_negatives: bool = False
    rule_cap: int = DEFAULT_RULE_CAP
    figure_condition: str = "structured"
    """Label in the figures' ``condition`` column."""
    explainer_model: str | None = None
    """API model id this condition explains with, on the preset's explainer route (the paper's
    Figure 3 used another explainer than its Figures 4-5); None: the preset's explainer."""
    tree: TreeSize | None = None
    """Tree size of this condition; None: the preset's (``ExplainSettings.tree_*``)."""

    @property
    def cap_run(self) -> int | None:
        """The rule cap the explainer runs with: ``rule_cap`` when structured, None (uncapped)
        for a free-text explanation."""
        return self.rule_cap if self.structured else None

    def explainer_config(self, settings: ExplainSettings | None = None, **overrides: Any) -> ExplainerConfig:
        """The explainer settings: the preset's (``settings``: its ``ExplainSettings``:
        temperatures, tree size; ``ExplainerConfig.from_settings``), then ``overrides``, then this
        condition's own tree size where it fixes one."""
        tree: dict[str, Any] = {}
        if self.tree is not None:
            tree = {
                "roots": self.tree.roots,
                "branching": self.tree.branching,
                "depth": self.tree.depth,
                "width": self.tree.width,
                "stop_score": self.tree.stop_score,
                "tree_temperature": self.tree.temperature,
            }
        return ExplainerConfig.from_settings(
            settings,
            method=self.method,
            structured=self.structured,
            holistic=self.holistic,
            rule_cap=self.cap_run,
            **(overrides | tree),
        )


def _grid() -> dict[str, Condition]:
    out: dict[str, Condition] = {}
    variants = {
        "unstructured": {"structured": False},
        "structured": {},
        "structured_holistic": {"holistic": True},
        "structured_train_negatives": {"train_negatives": True},
    }
    for method in ("one_shot", "tree"):
        for label, kw in variants.items():
            name = method if label == "structured" else f"{method}_{label}"
            out[name] = Condition(name, method, figure_condition=label, **kw)  # type: ignore[arg-type]
    for cap in range(1, DEFAULT_RULE_CAP):  # Figure 5: rule caps 1..5 (cap 5 = "one_shot")
        out[f"one_shot_cap{cap}"] = Condition(f"one_shot_cap{cap}", "one_shot", rule_cap=cap)
    # Figure 3: its own explainer and a deeper tree (depth 3, width 3), structured, rule cap 5
    fig3 = {"explainer_model": FIG3_EXPLAINER, "tree": TreeSize(depth=3, width=3)}
    out["fig3_one_shot"] = Condition("fig3_one_shot", "one_shot", **fig3)  # type: ignore[arg-type]
    out["fig3_tree"] = Condition("fig3_tree", "tree", **fig3)  # type: ignore[arg-type]
    return out


CONDITIONS: dict[str, Condition] = _grid()
"""Every condition the figures use: Figure 4's 2 x 4 grid, Figure 5's rule caps and Figure 3's
one-shot and tree runs with the Figure 3 explainer."""


def get_condition(name: str) -> Condition:
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; choose from {', '.join(CONDITIONS)}") from None


def feature_records(
    frame: pl.DataFrame,
    max_act: float,
    condition: Condition,
    holistic: dict[int, np.ndarray] | None = None,
    max_holistic: float = 0.0,
) -> FeatureRecords:
    """What the explainer sees: train = 10 positives (+ 10 similar-negatives with train negatives),
    valid = 10 positives + 10 similar-negatives (a real held-out split, unlike the paper code)."""
    hol = holistic if condition.holistic else None
    train = split_records(frame, POSITIVE_SOURCE, "train", hol)
    if condition.train_negatives:
        train += split_records(frame, PRIMARY_SOURCE, "train", hol)
    valid = split_records(frame, POSITIVE_SOURCE, "valid", hol) + split_records(frame, PRIMARY_SOURCE, "valid", hol)
    return FeatureRecords(tuple(train), tuple(valid), float(max_act), float(max_holistic))
