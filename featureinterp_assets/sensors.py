"""Automation: pick up layers added to the preset (its file, or a new SAE folder)."""

import dagster as dg

from featureinterp.config import Preset, get_preset
from featureinterp.errors import ConfigError
from featureinterp_assets.partitions import layer_partitions


def build_new_layers_sensor(preset: Preset, job, source: str | None = None) -> dg.SensorDefinition:
    """``source``: the preset file, read again at every tick, so a layer added to it (or an SAE
    folder dropped into a ``discover_layers`` SAE directory) is picked up without a restart;
    None: the built-in ``preset``. What follows the new layer's activations is declarative
    automation (featureinterp_assets/automation.py)."""
    layers = layer_partitions(preset)

    def current() -> Preset:
        if source is None:
            return preset
        fresh = get_preset(source)
        if fresh.name != preset.name:
            raise ConfigError(
                f"{source} now names preset {fresh.name!r}, not {preset.name!r}: a renamed preset is a "
                "new code location (restart `dagster dev`)"
            )
        return fresh

    @dg.sensor(job=job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
    def new_layers_sensor(context: dg.SensorEvaluationContext):
        """Adds the preset's layers missing from the instance and requests their SAE + activations."""
        try:
            spec = current()
        except ConfigError as err:  # a half-written file: say so and try again next tick
            return dg.SkipReason(str(err))
        known = set(context.instance.get_dynamic_partitions(layers.name))
        new = [k for k in spec.layer_keys if k not in known]
        if not new:
            return dg.SkipReason(f"all {len(known)} layers of preset {spec.name!r} are registered")
        return dg.SensorResult(
            dynamic_partitions_requests=[layers.build_add_request(new)],
            run_requests=[dg.RunRequest(partition_key=k, run_key=f"{spec.name}:{k}") for k in new],
        )

    return new_layers_sensor


def stale_partitions(instance: dg.DagsterInstance, code_versions: dict[dg.AssetKey, str]) -> list[tuple]:
    """(asset key, partition key, stored version) of every materialized partition whose stored
    code version differs from the asset's current one (latest materialization per partition)."""
    stale = []
    for key, current in code_versions.items():
        latest: dict[str, str | None] = {}
        cursor = None
        while True:  # oldest first, in pages: later materializations overwrite earlier ones
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key), limit=5_000, cursor=cursor, ascending=True
            )
            for record in page.records:
                mat = record.asset_materialization
                if mat is not None and mat.partition is not None:
                    latest[mat.partition] = (mat.tags or {}).get("dagster/code_version")
            if not page.has_more:
                break
            cursor = page.cursor
        stale += [(key, part, v) for part, v in sorted(latest.items()) if v != current]
    return stale


def build_stale_schedule(assets: list[dg.AssetsDefinition]) -> dg.ScheduleDefinition:
    """Nightly: re-run the per-feature partitions whose code version changed since they were built
    (raise an asset's ``code_version`` when its logic changes; the UI marks them stale too)."""
    versions = {
        key: v
        for a in assets
        if a.partitions_def is not None and isinstance(a.partitions_def, dg.MultiPartitionsDefinition)
        for key, v in a.code_versions_by_key.items()
        if v is not None
    }

    @dg.schedule(
        cron_schedule="0 3 * * *",
        target=dg.AssetSelection.assets(*versions),
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def stale_partitions_schedule(context: dg.ScheduleEvaluationContext):
        stale = stale_partitions(context.instance, versions)
        if not stale:
            return dg.SkipReason("no partition was built by an older code version")
        return [
            dg.RunRequest(
                run_key=f"{key.to_user_string()}:{part}:{old}->{versions[key]}",
                partition_key=part,
                asset_selection=[key],
                tags={"featureinterp/stale_from": str(old)},
            )
            for key, part, old in stale
        ]

    return stale_partitions_schedule
