import dagster as dg
import pytest

from featureinterp.config import PRESETS, get_preset
from featureinterp_assets.definitions import build_definitions


def test_default_definitions_load():
    from featureinterp_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"corpus_tokens", "sae", "sae_activations"} <= keys


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_definitions_offline(name, tmp_path):
    defs = build_definitions(get_preset(name), home=tmp_path, models=tmp_path)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    parts = graph.get(dg.AssetKey("sae_activations")).partitions_def
    assert (
        isinstance(parts, dg.DynamicPartitionsDefinition)
        and name.replace("-", "_").replace(".", "_") in parts.name
    )


def test_gpu_assets_share_the_gpu_pool_and_single_run_backfills():
    defs = build_definitions(get_preset("embedded"))
    for key in ("sae", "sae_activations"):
        node = defs.resolve_asset_graph().get(dg.AssetKey(key))
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
        assert defs.resolve_assets_def(key).op.pool == "gpu"
