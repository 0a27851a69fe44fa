"""Automation: pick up layers added to the preset."""

import dagster as dg

from featureinterp.config import Preset
from featureinterp_assets.partitions import layer_partitions


def build_new_layers_sensor(preset: Preset, job) -> dg.SensorDefinition:
    layers = layer_partitions(preset)

    @dg.sensor(job=job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
    def new_layers_sensor(context: dg.SensorEvaluationContext):
        """Adds the preset's layers missing from the instance and requests their SAE + activations."""
        known = set(context.instance.get_dynamic_partitions(layers.name))
        new = [k for k in preset.layer_keys if k not in known]
        if not new:
            return dg.SkipReason(f"all {len(known)} layers of preset {preset.name!r} are registered")
        return dg.SensorResult(
            dynamic_partitions_requests=[layers.build_add_request(new)],
            run_requests=[dg.RunRequest(partition_key=k, run_key=f"{preset.name}:{k}") for k in new],
        )

    return new_layers_sensor
