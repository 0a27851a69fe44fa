"""Partitions: layers are dynamic (added as SAEs become available), features are static per preset."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from featureinterp.config import Preset

if TYPE_CHECKING:
    from featureinterp_assets.freshness import Freshness


def layer_partitions(preset: Preset) -> dg.DynamicPartitionsDefinition:
    """One dynamic layer dimension per preset, so presets sharing an instance never mix keys."""
    return dg.DynamicPartitionsDefinition(name=layer_partitions_name(preset))


def layer_partitions_name(preset: Preset) -> str:
    """The name of ``layer_partitions(preset)`` (its ``name`` attribute is typed optional)."""
    return f"layers_{preset.name.replace('-', '_').replace('.', '_')}"


def feature_partitions(preset: Preset) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(preset.feature_keys)


def register_layers(instance: dg.DagsterInstance, preset: Preset) -> list[str]:
    """Add the preset's layers that the instance does not know yet; returns the added keys."""
    name = layer_partitions_name(preset)
    known = set(instance.get_dynamic_partitions(name))
    new = [k for k in preset.layer_keys if k not in known]
    if new:
        instance.add_dynamic_partitions(name, new)
    return new


def feature_blocks(
    feature_keys: list[str], todo_of: Callable[[str], list[str]]
) -> list[tuple[list[str], list[str]]]:
    """Runs of consecutive features that need the same assets, each ``(features, assets)``:
    one ranged run each (the per-feature assets' single-run backfill policy computes every key
    of a range, so a range must not span a feature that needs nothing)."""
    blocks: list[tuple[list[str], list[str]]] = []
    previous = None  # the last feature's (index, todo): a block continues only without a gap
    for i, feature in enumerate(feature_keys):
        todo = todo_of(feature)
        if todo and previous == (i - 1, todo):
            blocks[-1][0].append(feature)
        elif todo:
            blocks.append(([feature], todo))
        previous = (i, todo) if todo else None
    return blocks


def missing_blocks(
    fresh: Freshness,
    layer: str,
    feature_keys: list[str],
    assets: list[str],
    force: bool,
    scope: dict[str, frozenset[str]] | None = None,
) -> list[tuple[list[str], list[str]]]:
    """The runs a layer needs (``feature_blocks``) for the ``assets`` partitions whose stored
    value is not current (missing, failed, stale or damaged: ``Freshness.done``; ``force``: all).
    One fresh layer is one run; a rerun after failures covers only them. ``scope``: asset -> the
    partition keys it is run on (absent: all)."""
    scope = scope or {}
    keys = [str(dg.MultiPartitionKey({"layer": layer, "feature": f})) for f in feature_keys]
    done = {a: set() if force else fresh.done(a, [k for k in keys if a not in scope or k in scope[a]]) for a in assets}

    def todo_of(feature: str) -> list[str]:
        key = f"{feature}|{layer}"
        return [a for a in assets if (a not in scope or key in scope[a]) and key not in done[a]]

    return feature_blocks(feature_keys, todo_of)


def range_tags(layer: str, features: list[str]) -> dict[str, str]:
    """Run tags of one ranged run over ``features`` of ``layer``."""
    first, last = (dg.MultiPartitionKey({"layer": layer, "feature": f}) for f in (features[0], features[-1]))
    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
