"""What a preset covers, computed once: the partitions each condition, each per-feature asset and
the LLM scorers run on.

A paper preset does not run every condition on every (layer, feature): the paper ran Figure 3 on
21 layers x 50 features and Figures 4-5 on 8 x 30, so each condition runs on the partitions of the
figures that draw it (``featureinterp.figures.grids.condition_scope``). The Dagster definitions,
automation, the nightly backfill, ``featureinterp run``, the figures' completeness check and the
cost plan all need that answer; they take it from one ``PresetScope`` instead of re-deriving it.
"""

from __future__ import annotations

from dataclasses import dataclass

from featureinterp.config import Preset
from featureinterp.explain.conditions import get_condition
from featureinterp.figures.grids import condition_scope, secondary_conditions
from featureinterp.names import GENERATED_SOURCE, SYNTHETIC_KEY

__all__ = ["PER_CONDITION_ASSETS", "PresetScope"]

PER_CONDITION_ASSETS = ("explanations", "scores", "detection", "fuzzing", "embedding")
"""Per-feature asset kinds with one asset per condition (``explanations/tree``...): each runs
where its condition's explanations do."""


@dataclass(frozen=True)
class PresetScope:
    conditions: tuple[str, ...]
    """The conditions the preset explains, in its order."""
    every: frozenset[str]
    """Every (layer, feature) partition key of the preset (``"F0003|L05"``), SYN included."""
    own: frozenset[str]
    """The partition keys of its real layers (SYN left out)."""
    by_condition: dict[str, frozenset[str]]
    """Condition -> the partition keys it runs on (``every`` for a condition no grid restricts)."""
    scoped: bool
    """Whether some condition runs on fewer than every partition (a preset with paper grids)."""
    secondary: tuple[str, ...]
    """The conditions whose explanations get the LLM scorers (detection, fuzzing)."""
    holistic_conditions: tuple[str, ...]
    """The conditions that prompt with holistic (leave-one-token-out) values."""
    holistic: frozenset[str]
    """Partition keys where such a condition runs: where holistic values are computed."""
    automate: bool
    """Whether every condition covers every real partition, so that a new layer can flow to the
    figures by Dagster automation alone (a scope that only keeps conditions off SYN still does)."""
    synthetic_only: tuple[str, ...] | None
    """``ExplainSettings.synthetic_conditions``: the only conditions SYN runs (None: all)."""
    generated: frozenset[str] = frozenset()
    """Partition keys of the ``generated`` source: per layer, the first ``generated.features``
    features (in the preset's order) where its condition runs; empty when the source is off."""

    @classmethod
    def of(cls, preset: Preset, whole_grid: bool = False) -> PresetScope:
        """The scope of ``preset``; ``whole_grid``: every condition on every partition (the CLI's
        ``--whole-grid``)."""
        every = frozenset(f"{f}|{x}" for x in preset.layer_keys for f in preset.feature_keys)
        own = frozenset(k for k in every if not k.endswith(f"|{SYNTHETIC_KEY}"))
        restricted = {} if whole_grid else condition_scope(preset)
        conditions = tuple(preset.explain.conditions)
        by_condition = {c: frozenset(restricted.get(c, every)) for c in conditions}
        holistic_conditions = tuple(c for c in conditions if get_condition(c).holistic)
        holistic = frozenset().union(*(by_condition[c] for c in holistic_conditions))
        generated: set[str] = set()
        source, condition = preset.generated, preset.generated_condition
        if condition is not None:
            for layer in preset.layer_keys:
                synthetic_off = preset.explain.synthetic_conditions is not None and (
                    condition not in preset.explain.synthetic_conditions
                )
                if layer == SYNTHETIC_KEY and synthetic_off:
                    continue
                keys = [f"{f}|{layer}" for f in preset.feature_keys if f"{f}|{layer}" in by_condition[condition]]
                generated.update(keys[: source.features])  # features None: every one
        return cls(
            conditions=conditions,
            every=every,
            own=own,
            by_condition=by_condition,
            scoped=bool(restricted),
            secondary=secondary_conditions(preset),
            holistic_conditions=holistic_conditions,
            holistic=holistic,
            automate=all(own <= keys for keys in restricted.values()),
            synthetic_only=preset.explain.synthetic_conditions,
            generated=frozenset(generated),
        )

    def assets(self) -> dict[str, frozenset[str]]:
        """Per-feature asset key -> the partitions it is materialized on; absent: every partition
        (nothing is scoped but the ``generated`` source, which always runs on a slice). A condition's secondary scores run where its explanations do;
        every explained partition keeps its null baseline (the figures' reference line), and
        holistic values are computed where a holistic condition runs."""
        own = {GENERATED_SOURCE: self.generated} if self.generated else {}  # always a slice
        if not self.scoped:
            return own
        out = own | {f"{kind}/{c}": keys for c, keys in self.by_condition.items() for kind in PER_CONDITION_ASSETS}
        out["baselines"] = (
            frozenset().union(*self.by_condition.values()) if self.synthetic_only is None else self.every
        )
        out["holistic_activations"] = self.holistic
        return out
