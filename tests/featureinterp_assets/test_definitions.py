import dagster as dg
import pytest

from featureinterp.presets import get_preset
from featureinterp.presets.builtin import PRESETS
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


def test_fig5_star_is_downstream_and_star_fig5_is_the_whole_lineage(tmp_path):
    """`--select fig5*` = fig5 and what depends on it (just fig5); `--select '*fig5'` = fig5 and
    everything it is built from, from the corpus tokens to the per-layer results."""
    defs = build_definitions(get_preset("embedded"), home=tmp_path, models=tmp_path)
    graph = defs.resolve_asset_graph()

    def resolve(text):
        return {k.to_user_string() for k in dg.AssetSelection.from_string(text).resolve(graph)}

    assert resolve("fig5*") == {"fig5"}
    lineage = resolve("*fig5")
    assert {"corpus_tokens", "sae", "sae_activations", "corpus_embeddings", "records"} <= lineage
    assert {"explanations/one_shot", "scores/tree", "layer_results", "fig5"} <= lineage
    assert "fig4" not in lineage  # not fig5's input
    # the layer tables gather every condition's scores: the holistic ones' inputs are upstream
    assert "holistic_activations" in lineage and "scores/tree_structured_holistic" in lineage
    large = build_definitions(get_preset("embedded-large"), home=tmp_path, models=tmp_path)
    upstream = dg.AssetSelection.from_string("*fig5").resolve(large.resolve_asset_graph())
    assert dg.AssetKey("holistic_activations") not in upstream  # no holistic condition there


def test_explanation_assets_carry_pools_retries_code_versions_and_one_run_backfills(tmp_path):
    defs = build_definitions(get_preset("embedded"), home=tmp_path, models=tmp_path)
    graph = defs.resolve_asset_graph()
    for cond in get_preset("embedded").explain.conditions:
        for kind in ("explanations", "scores"):
            node = graph.get(dg.AssetKey([kind, cond]))
            assert node.pools == {"gpu"} and node.code_version  # the step holds the simulator
            assert node.backfill_policy == dg.BackfillPolicy.single_run()
    for name in ("records", "holistic_activations"):
        assert graph.get(dg.AssetKey(name)).backfill_policy == dg.BackfillPolicy.single_run()
    api = build_definitions(get_preset("gemma-2-9b"), home=tmp_path, models=tmp_path)
    node = api.resolve_asset_graph().get(dg.AssetKey(["explanations", "one_shot"]))
    assert node.pools == {"gpu"}  # API requests are bounded inside the step (max_concurrent)
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.graph.node_named("explain_and_score_one_shot").definition.retry_policy is not None


def test_a_condition_with_its_own_api_explainer_needs_an_api_preset(tmp_path):
    import dataclasses

    from featureinterp.errors import ConfigError

    base = get_preset("embedded")
    local = base.replace(explain=dataclasses.replace(base.explain, conditions=("one_shot", "fig3_tree")))
    with pytest.raises(ConfigError, match="fig3_tree.*google/gemini-flash-1.5-8b.*local"):
        build_definitions(local, home=tmp_path, models=tmp_path)
    # the paper presets carry Figure 3's conditions, explained over their API route
    graph = build_definitions(get_preset("gemma-2-9b"), home=tmp_path, models=tmp_path).resolve_asset_graph()
    assert graph.get(dg.AssetKey(["explanations", "fig3_tree"])).pools == {"gpu"}


def test_a_figure_on_a_fresh_install_names_the_command_that_builds_it(tmp_path):
    """What a new user types first: `dagster asset materialize --select 'fig5*'` on nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = os.environ | {
        "FEATUREINTERP_PRESET": "embedded-tiny",
        "FEATUREINTERP_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "HF_HUB_OFFLINE": "1",
    }
    (tmp_path / "dagster").mkdir()
    dagster = str(Path(sys.executable).parent / "dagster")
    cmd = [dagster, "asset", "materialize", "-m", "featureinterp_assets.definitions", "--select", "fig5*"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "FEATUREINTERP_PRESET=embedded-tiny featureinterp run" in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("name", "judged"), [("embedded-tiny", {"one_shot", "tree"}), ("gpt2-small", {"fig3_one_shot", "fig3_tree"})]
)
def test_secondary_scores_per_condition_and_the_exports(name, judged, tmp_path):
    """Every condition gets an embedding score; the conditions Figure 3 compares also get detection
    and fuzzing, which ask an LLM (the GPU pool, one run per block); the exports read them all."""
    preset = get_preset(name)
    defs = build_definitions(preset, home=tmp_path, models=tmp_path)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {f"embedding/{c}" for c in preset.explain.conditions} <= keys
    for scorer in ("detection", "fuzzing"):
        assert {k.split("/", 1)[1] for k in keys if k.startswith(f"{scorer}/")} == judged
    judge = defs.resolve_assets_def(dg.AssetKey(["detection", sorted(judged)[0]]))
    detection = dg.AssetKey(["detection", sorted(judged)[0]])
    assert judge.op.pool == "gpu" and judge.backfill_policy == dg.BackfillPolicy.single_run()
    assert dg.AssetKey(["explanations", sorted(judged)[0]]) in graph.get(detection).parent_keys
    export = graph.get(dg.AssetKey("export"))
    assert dg.AssetKey(["fuzzing", sorted(judged)[0]]) in export.parent_keys
    assert dg.AssetKey("export") in graph.get(dg.AssetKey("export_all")).parent_keys
    layer_results = graph.get(dg.AssetKey("layer_results"))
    assert dg.AssetKey(["detection", sorted(judged)[0]]) in layer_results.parent_keys


def test_the_newcomer_run_skips_the_llm_scorers_its_model_cannot_do():
    """The embedded default's SmolLM2 labels every record 1 (benchmarks.scorers): its run keeps
    the embedding score of every condition and no detection or fuzzing asset."""
    preset = get_preset("embedded")
    keys = {k.to_user_string() for k in build_definitions(preset).resolve_asset_graph().get_all_asset_keys()}
    assert {f"embedding/{c}" for c in preset.explain.conditions} <= keys
    assert not any(k.startswith(("detection/", "fuzzing/")) for k in keys)


@pytest.mark.parametrize("name", ["embedded", "gemma-2-9b"])
def test_every_asset_says_what_it_is(name, tmp_path):
    """Issue 31: the UI shows each asset's description; none may be missing or a placeholder."""
    defs = build_definitions(get_preset(name), home=tmp_path, models=tmp_path)
    graph = defs.resolve_asset_graph()
    missing = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:
            continue
        text = (node.description or "").strip()
        if len(text) < 30:
            missing.append(key.to_user_string())
    assert missing == [], missing
