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
