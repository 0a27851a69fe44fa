"""The Dagster code location: `dagster dev` and `dagster asset materialize -m featureinterp_assets.definitions`.

The preset is chosen by $FEATUREINTERP_PRESET (default `embedded`), data lives under
$FEATUREINTERP_HOME (default ./.featureinterp).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from featureinterp.config import ApiSpec, Preset, data_home, models_dir
from featureinterp.explain.conditions import get_condition
from featureinterp.presets import get_preset
from featureinterp.presets.files import preset_to_json
from featureinterp.presets.scope import PresetScope
from featureinterp_assets.assets.activations import build_activation_assets
from featureinterp_assets.assets.baselines import build_baseline_asset
from featureinterp_assets.assets.corpus import corpus_tokens
from featureinterp_assets.assets.explanations import build_explanation_assets
from featureinterp_assets.assets.export import build_export_assets
from featureinterp_assets.assets.figures import build_figure_assets
from featureinterp_assets.assets.generated import build_generated_asset
from featureinterp_assets.assets.records import build_records_assets, corpus_embeddings
from featureinterp_assets.assets.scorers import build_scorer_assets
from featureinterp_assets.automation import automation_sensor
from featureinterp_assets.constants import STORAGE_IO
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.partitions import feature_partitions, layer_partitions
from featureinterp_assets.resources import LanceDBResource, LLMResource, default_preset_resource
from featureinterp_assets.sensors import build_backfill_schedule, build_new_layers_sensor


def build_definitions(preset: Preset, home: Path | None = None, models: Path | None = None) -> dg.Definitions:
    """All definitions for ``preset``; stored values under ``home``, converted models under ``models``."""
    home = Path(home or data_home())
    _check_explainers(preset)
    layers = layer_partitions(preset)
    # automation (automation.py) carries a new layer to the figures; a paper preset's conditions
    # run on their figures' partitions only, which `featureinterp run` or a backfill launches
    # (a scope that only keeps conditions off the synthetic SYN features still automates: a new
    # layer runs every condition)
    scope = PresetScope.of(preset)
    automate, holistic, secondary = scope.automate, bool(scope.holistic_conditions), list(scope.secondary)
    layer_x_feature = dg.MultiPartitionsDefinition({"layer": layers, "feature": feature_partitions(preset)})
    assets = [
        corpus_tokens,
        *build_activation_assets(layers),
        corpus_embeddings,
        *build_records_assets(layers, feature_partitions(preset), automate_holistic=automate and holistic),
        *build_explanation_assets(
            layers, feature_partitions(preset), list(preset.explain.conditions), preset.name, automate
        ),
        build_baseline_asset(layer_x_feature, automate),
        *build_scorer_assets(
            layer_x_feature, list(preset.explain.conditions), secondary, automate
        ),
        *build_generated_asset(layer_x_feature, preset),
        *build_figure_assets(
            layers,
            feature_partitions(preset),
            list(preset.explain.conditions),
            preset.explain.synthetic,
            secondary,
            preset.generated_condition,
        ),
    ]
    assets = [_with_fingerprint(a, preset) if isinstance(a, dg.AssetsDefinition) else a for a in assets]
    versions = {
        key.to_user_string(): str(version)
        for a in assets
        if isinstance(a, dg.AssetsDefinition)
        for key, version in a.code_versions_by_key.items()
    }
    assets += [
        _with_fingerprint(a, preset)
        for a in build_export_assets(layers, list(preset.explain.conditions), versions)
    ]
    layer_job = dg.define_asset_job(
        "layer_job",
        selection=dg.AssetSelection.assets("sae", "sae_activations"),
        partitions_def=layers,
        description="SAE and activations for one layer (what the new-layer sensor launches).",
    )
    return dg.Definitions(
        assets=assets,
        jobs=[layer_job],
        sensors=[build_new_layers_sensor(preset, layer_job, _preset_file(preset)), automation_sensor()],
        schedules=[build_backfill_schedule(preset, assets)],
        resources={
            "preset": default_preset_resource(preset, home, Path(models or models_dir())),
            "lancedb": LanceDBResource(
                uri=os.environ.get("FEATUREINTERP_LANCEDB") or str(home / "lancedb" / preset.name)
            ),
            "llm": _llm_resource(preset, home, Path(models or models_dir())),
            STORAGE_IO: StorageIOManager(base_dir=str(home / "storage" / preset.name)),
        },
        executor=dg.in_process_executor,  # one process per run: the model loads once per run
    )


def _with_fingerprint(asset: dg.AssetsDefinition, preset: Preset) -> dg.AssetsDefinition:
    """``asset`` with the fingerprint of the preset fields it depends on appended to its code
    version (``1`` -> ``1+3fa2c01b``; featureinterp/provenance.py): an edited preset file marks
    exactly the affected values stale, in the UI and for `featureinterp run`."""
    from featureinterp.provenance import asset_fingerprint

    return asset.map_asset_specs(
        lambda spec: spec.replace_attributes(
            code_version=f"{spec.code_version or 0}+{asset_fingerprint(preset, list(spec.key.path))}"
        )
    )


def _preset_file(preset: Preset) -> str | None:
    """The preset file $FEATUREINTERP_PRESET names, when ``preset`` came from it."""
    from featureinterp.presets.files import is_preset_file

    source = os.environ.get("FEATUREINTERP_PRESET", "")
    return source if is_preset_file(source) and get_preset(source).name == preset.name else None


def _check_explainers(preset: Preset) -> None:
    """A condition with its own explainer model (the paper's Figure 3) needs an API route."""
    from featureinterp.errors import ConfigError

    if isinstance(preset.explain.explainer, ApiSpec):
        return
    own = [c for c in preset.explain.conditions if get_condition(c).explainer_model]
    if own:
        raise ConfigError(
            f"preset {preset.name!r}: conditions {', '.join(own)} explain with "
            f"{get_condition(own[0]).explainer_model!r} over an API, but the preset's explainer is "
            "local; give it an API explainer (ApiSpec) or drop those conditions"
        )


def _llm_resource(preset: Preset, home: Path, models: Path) -> LLMResource:
    explainer = preset.explain.explainer
    # The key is resolved from the environment at run time and never written to run config.
    key = dg.EnvVar(explainer.api_key_env) if isinstance(explainer, ApiSpec) else None
    return LLMResource(
        preset=preset.name,
        preset_json=preset_to_json(preset),
        home=str(home),
        models_dir=str(models),
        device=os.environ.get("FEATUREINTERP_DEVICE", "auto"),
        api_key=key,
    )


defs = build_definitions(get_preset())
