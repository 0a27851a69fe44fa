"""Automation: pick up layers added to the preset (its file, or a new SAE folder)."""

from typing import TYPE_CHECKING

import dagster as dg

from featureinterp.config import Preset
from featureinterp.errors import ConfigError
from featureinterp.presets import get_preset
from featureinterp.presets.scope import PresetScope
from featureinterp_assets.partitions import layer_partitions, layer_partitions_name

if TYPE_CHECKING:  # what dg.define_asset_job returns (dagster does not export the name)
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition


def build_new_layers_sensor(
    preset: Preset, job: "dg.JobDefinition | UnresolvedAssetJobDefinition", source: str | None = None
) -> dg.SensorDefinition:
    """``source``: the preset file, read again at every tick, so a layer added to it (or an SAE
    folder dropped into a ``discover_layers`` SAE directory) is picked up without a restart;
    None: the built-in ``preset``. What follows the new layer's activations is declarative
    automation (featureinterp_assets/automation.py)."""
    layers, layers_name = layer_partitions(preset), layer_partitions_name(preset)

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
    def new_layers_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason | dg.SensorResult:
        """Adds the preset's layers missing from the instance and requests their SAE + activations."""
        try:
            spec = current()
        except ConfigError as err:  # a half-written file: say so and try again next tick
            return dg.SkipReason(str(err))
        known = set(context.instance.get_dynamic_partitions(layers_name))
        new = [k for k in spec.layer_keys if k not in known]
        if not new:
            return dg.SkipReason(f"all {len(known)} layers of preset {spec.name!r} are registered")
        return dg.SensorResult(
            dynamic_partitions_requests=[layers.build_add_request(new)],
            run_requests=[dg.RunRequest(partition_key=k, run_key=f"{spec.name}:{k}") for k in new],
        )

    return new_layers_sensor


def stale_partitions(
    instance: dg.DagsterInstance, code_versions: dict[dg.AssetKey, str]
) -> list[tuple[dg.AssetKey, str, str | None]]:
    """(asset key, partition key, stored version) of every materialized partition whose stored
    code version differs from the asset's current one (latest materialization per partition)."""
    stale: list[tuple[dg.AssetKey, str, str | None]] = []
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


def per_feature_assets(preset: Preset, assets: list[dg.AssetsDefinition]) -> dict[dg.AssetKey, str | None]:
    """The (layer, feature)-partitioned assets a preset materializes, with their code versions:
    records, holistic values where a condition prompts with them, every condition's explanations
    and scores, baselines."""
    holistic = bool(PresetScope.of(preset).holistic_conditions)
    return {
        key: version
        for a in assets
        if isinstance(a.partitions_def, dg.MultiPartitionsDefinition)
        for key, version in a.code_versions_by_key.items()
        if holistic or key != dg.AssetKey("holistic_activations")
    }


def build_backfill_schedule(preset: Preset, assets: list[dg.AssetsDefinition]) -> dg.ScheduleDefinition:
    """Nightly (off by default): backfill whatever per-feature partition is missing or stale
    (built by an older ``code_version``) across all registered layers, as one ranged run per layer
    and block of features (the runs a UI backfill of those partitions would launch); the layer
    tables and figures follow through their automation conditions."""
    versions = per_feature_assets(preset, assets)
    layers_name = layer_partitions_name(preset)

    @dg.schedule(
        cron_schedule="0 3 * * *",
        target=dg.AssetSelection.assets(*versions),
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def layer_backfill_schedule(context: dg.ScheduleEvaluationContext) -> dg.SkipReason | list[dg.RunRequest]:
        from featureinterp_assets.partitions import feature_blocks, range_tags

        instance = context.instance
        stale = {
            (key.to_user_string(), part)
            for key, part, _ in stale_partitions(instance, {k: v for k, v in versions.items() if v})
        }
        done = {k.to_user_string(): set(instance.get_materialized_partitions(k)) for k in versions}
        scope = PresetScope.of(preset).assets()
        when = context.scheduled_execution_time.isoformat()  # one run per block and night
        requests: list[dg.RunRequest] = []
        for layer in instance.get_dynamic_partitions(layers_name):

            def todo_of(feature: str, layer: str = layer) -> list[str]:
                key, plain = (
                    str(dg.MultiPartitionKey({"layer": layer, "feature": feature})),
                    f"{feature}|{layer}",
                )
                return [
                    a
                    for a in done
                    if (a not in scope or plain in scope[a]) and (key not in done[a] or (a, key) in stale)
                ]

            for features, todo in feature_blocks(preset.feature_keys, todo_of):
                requests.append(
                    dg.RunRequest(
                        run_key=f"{layer}:{features[0]}-{features[-1]}:{when}",
                        asset_selection=[dg.AssetKey(a.split("/")) for a in todo],
                        tags=range_tags(layer, features) | {"featureinterp/backfill": "missing_or_stale"},
                    )
                )
        if not requests:
            return dg.SkipReason("no per-feature partition is missing or stale")
        return requests

    return layer_backfill_schedule
