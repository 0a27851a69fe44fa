"""Partitions: layers are dynamic (added as SAEs become available), features are static per preset."""

from __future__ import annotations

import dagster as dg

from featureinterp.config import Preset


def layer_partitions(preset: Preset) -> dg.DynamicPartitionsDefinition:
    """One dynamic layer dimension per preset, so presets sharing an instance never mix keys."""
    return dg.DynamicPartitionsDefinition(name=f"layers_{preset.name.replace('-', '_').replace('.', '_')}")


def feature_partitions(preset: Preset) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(preset.feature_keys)


def register_layers(instance: dg.DagsterInstance, preset: Preset) -> list[str]:
    """Add the preset's layers that the instance does not know yet; returns the added keys."""
    parts = layer_partitions(preset)
    known = set(instance.get_dynamic_partitions(parts.name))
    new = [k for k in preset.layer_keys if k not in known]
    if new:
        instance.add_dynamic_partitions(parts.name, new)
    return new
