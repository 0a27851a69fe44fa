"""Declarative automation: a new layer runs to the figures by itself.

``new_layers_sensor`` (sensors.py) registers a layer added to the preset (its file, or a new SAE
folder) and launches its ``sae`` + ``sae_activations``. From there Dagster's own declarative
automation carries it on, partition by partition: every per-feature asset is ``eager`` (requested
once its upstream partitions are updated and none is missing or in progress, so records wait for
the layer's activations, explanations for the records), and the summaries (``layer_results`` and
the figures) run when any input updates, without waiting for *all* their inputs, since they read whatever partitions
exist and say what is missing. The ``featureinterp_automation`` sensor evaluates these conditions;
the ``gpu`` pool bounds what runs at once, the explainer's ``max_concurrent`` its API requests.
Nothing of an old layer is recomputed: its partitions' upstreams did not change.

Why not every condition on a paper preset: a paper preset runs each condition only on its
figures' layers x features (figures.grids.condition_scope), which a partition-blind automation
condition cannot express; there the explain stage is launched by ``featureinterp run`` or a
backfill, and only records and the summaries are automated.
"""

from __future__ import annotations

import dagster as dg

__all__ = ["PER_PARTITION", "SUMMARY", "automation_sensor"]

PER_PARTITION = dg.AutomationCondition.eager()
"""Per-feature assets: run when the upstream partitions update and all of them exist."""

SUMMARY = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("on_any_input_update")
"""Tables and figures over many partitions: run when any input updates (missing ones allowed:
they read what exists and name the rest), never merely because a new layer's partition appeared
(``eager``'s newly-missing trigger would draw an empty table before the layer has any score)."""


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the assets' automation conditions; running by default, like the new-layer
    sensor, so a layer added under ``dagster dev`` reaches the figures without a click."""
    return dg.AutomationConditionSensorDefinition(
        "featureinterp_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
