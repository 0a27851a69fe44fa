"""Real Dagster runs of the foundation chain on the embedded-tiny preset (real model, real SAE training)."""

import dagster as dg
import numpy as np
import pytest

from featureinterp.activations.sae import load_sae_from_disk
from featureinterp.presets import get_preset
from featureinterp.storage import load_arrays
from featureinterp_assets.definitions import build_definitions
from featureinterp_assets.partitions import layer_partitions, register_layers
from tests.helpers import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

pytestmark = pytest.mark.slow
PRESET = get_preset("embedded-tiny")


def _materialize(defs, instance, selection, **kwargs):
    return dg.materialize(
        list(defs.assets),
        selection=selection,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        **kwargs,
    )


def _failure(result) -> str:
    events = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert events, "the run was expected to fail"
    err = events[0].step_failure_data.error
    return "\n".join(e.message for e in (err, err.cause) if e is not None)


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_cache):
    home = tmp_path_factory.mktemp("home")
    defs = build_definitions(PRESET, home=home, models=model_cache)
    with dg.instance_for_test() as instance:
        assert register_layers(instance, PRESET) == ["L03", "L06", "SYN"]
        assert _materialize(defs, instance, ["corpus_tokens"]).success
        tags = {PARTITION_RANGE_START_TAG: "L03", PARTITION_RANGE_END_TAG: "L06"}
        result = _materialize(defs, instance, ["sae", "sae_activations"], tags=tags)
        assert result.success, _failure(result)
        yield defs, instance, home / "storage" / PRESET.name, result


def test_chain_writes_every_layer_in_one_run(built):
    defs, instance, storage, result = built
    tokens, meta = load_arrays(storage / "corpus_tokens" / "__all__")
    assert tokens["tokens"].shape == (PRESET.n_rows, PRESET.row_len) and len(meta["hash"]) == 16
    for key in ("L03", "L06"):
        acts, _ = load_arrays(storage / "sae_activations" / key)
        assert acts["acts"].shape == (2, PRESET.n_rows, PRESET.row_len) and acts["acts"].dtype == np.float16
        assert (acts["max"] > 0).all()  # live features first: neither F0000 nor F0001 is dead
        assert np.isclose(
            acts["max"], acts["acts"][:, :, 1:].astype(np.float32).max(axis=(1, 2)), rtol=1e-2
        ).all()
    mats = {
        (e.asset_key.to_user_string(), e.partition)
        for e in result.get_asset_materialization_events()
        for e in [e.event_specific_data.materialization]
    }
    assert mats == {(a, k) for a in ("sae", "sae_activations") for k in ("L03", "L06")}
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"activations_finite": True, "studied_features_alive": True}


def test_sae_metadata_reports_reconstruction(built):
    defs, instance, storage, _ = built
    event = instance.get_latest_materialization_event(dg.AssetKey("sae"))
    md = event.asset_materialization.metadata
    assert {"explained_variance", "l0", "dead_fraction", "live_latents"} <= set(md)
    assert 0.3 < md["explained_variance"].value <= 1 and md["l0"].value <= 16
    ref = __import__("json").loads((storage / "sae" / "L03" / "value.json").read_text())
    home = storage.parent.parent
    assert not __import__("os").path.isabs(ref["path"])  # relative to the home: a moved home works
    assert load_sae_from_disk(home / ref["path"]).cfg.d_sae == 4 * 576


def test_single_layer_rerun_is_deterministic(built):
    defs, instance, storage, _ = built
    before = np.array(load_arrays(storage / "sae_activations" / "L06")[0]["acts"])
    assert _materialize(defs, instance, ["sae_activations"], partition_key="L06").success
    after = load_arrays(storage / "sae_activations" / "L06")[0]["acts"]
    assert np.array_equal(before, after)


def test_layer_outside_the_model_fails_alone_with_its_name(built):
    defs, instance, storage, _ = built
    instance.add_dynamic_partitions(layer_partitions(PRESET).name, ["L99"])
    result = _materialize(defs, instance, ["sae"], partition_key="L99")
    assert not result.success
    assert "layer 99 is outside the model" in _failure(result)
    assert (storage / "sae" / "L03" / "value.json").exists()  # other partitions untouched
    assert not (storage / "sae" / "L99").exists()


def test_feature_beyond_sae_width_fails_with_its_index(built, model_cache, tmp_path):
    defs, instance, storage, _ = built
    bad = build_definitions(
        PRESET.replace(features=(0, 99_999)), home=storage.parent.parent, models=model_cache
    )
    result = _materialize(bad, instance, ["sae_activations"], partition_key="L03")
    assert not result.success and "feature index 99999 is outside the SAE of layer 3" in _failure(result)


@pytest.fixture(scope="module")
def recorded(built):
    defs, instance, storage, _ = built
    assert _materialize(defs, instance, ["corpus_embeddings"]).success
    key = dg.MultiPartitionKey({"layer": "L03", "feature": "F0001"})
    result = _materialize(defs, instance, ["records", "holistic_activations"], partition_key=key)
    assert result.success, _failure(result)
    return defs, instance, storage, result


def test_records_partition_has_every_source_and_passing_checks(recorded):
    import polars as pl

    from featureinterp.storage import load_table

    _, instance, storage, result = recorded
    table = load_table(storage / "records" / "F0001" / "L03")
    counts = dict(table.frame.unique(["row", "source"]).group_by("source").len().iter_rows())
    assert (
        counts["positive"] == 3 * PRESET.per_split and table.meta["feature"] == 1 and table.meta["layer"] == 3
    )
    assert set(counts) == {
        "positive",
        "random",
        "random_negative",
        "similar",
        "similar_negative",
        "similar_projected",
        "similar_negative_projected",
    }
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    blocking = ("negatives_non_activating", "no_positive_leak", "splits_disjoint")
    assert all(checks[name] for name in blocking) and checks["feature_alive"]
    md = instance.get_latest_materialization_event(dg.AssetKey("records")).asset_materialization.metadata
    shown = {r.data["source"]: r.data["records"] for r in md["counts"].records}  # a table in the UI (issue 31)
    assert "**" in md["preview"].value and shown["positive"] == 3 * PRESET.per_split
    # the activations stored with the records are the feature's own (BOS dropped)
    acts, _ = load_arrays(storage / "sae_activations" / "L03")
    first = table.frame.filter(pl.col("source") == "positive").row(0, named=True)
    np.testing.assert_allclose(first["acts"], acts["acts"][1, first["row"], 1:].astype(np.float32), rtol=1e-6)

    holistic, meta = load_arrays(storage / "holistic_activations" / "F0001" / "L03")
    assert np.array_equal(holistic["rows"], np.unique(table.frame["row"].to_numpy()))
    assert holistic["holistic"].shape == (len(holistic["rows"]), PRESET.row_len) and meta["max_holistic"] > 0


def test_records_rerun_is_deterministic_and_reuses_the_embeddings(recorded):
    from featureinterp.storage import load_table

    defs, instance, storage, _ = recorded
    before = load_table(storage / "records" / "F0001" / "L03").frame
    assert _materialize(defs, instance, ["corpus_embeddings"]).success
    md = instance.get_latest_materialization_event(
        dg.AssetKey("corpus_embeddings")
    ).asset_materialization.metadata
    assert md["re_embedded"].value is False
    key = dg.MultiPartitionKey({"layer": "L03", "feature": "F0001"})
    assert _materialize(defs, instance, ["records"], partition_key=key).success
    assert load_table(storage / "records" / "F0001" / "L03").frame.equals(before)


@pytest.fixture(scope="module")
def explained(recorded):
    """Synthetic partition SYN/F0000 (negation words) and L03/F0001 through every explain stage."""
    defs, instance, storage, _ = recorded
    assert _materialize(defs, instance, ["sae", "sae_activations"], partition_key="SYN").success
    stages = ["records", "holistic_activations", "explanations/one_shot", "scores/one_shot"]
    stages += ["explanations/tree", "scores/tree"]
    results = {}
    for layer, feature in (("SYN", "F0000"), ("L03", "F0001")):
        key = dg.MultiPartitionKey({"layer": layer, "feature": feature})
        sel = stages if layer == "SYN" else stages[2:]
        results[layer] = _materialize(defs, instance, sel, partition_key=key)
        assert results[layer].success, _failure(results[layer])
    return defs, instance, storage, results


def test_synthetic_layer_is_a_rule_not_an_sae(explained):
    _, _, storage, _ = explained
    acts, meta = load_arrays(storage / "sae_activations" / "SYN")
    assert meta["features"] == [0, 1] and acts["acts"].shape == (2, PRESET.n_rows, PRESET.row_len)
    ref = __import__("json").loads((storage / "sae" / "SYN" / "value.json").read_text())
    assert ref["synthetic"] is True
    from featureinterp.data.corpus import decode_tokens
    from featureinterp.storage import load_arrays as la

    tokens = la(storage / "corpus_tokens" / "__all__")[0]["tokens"]
    fired = np.argwhere(acts["acts"][0] > 0)[:5]
    words = decode_tokens(get_tokenizer(), np.asarray(tokens)[fired[:, 0]])
    assert all(
        words[i][c].strip().lower() in {"not", "no", "never", "nothing", "n't", "nor"}
        for i, (_, c) in enumerate(fired)
    )


def get_tokenizer():
    from featureinterp.activations.models import load_tokenizer
    from tests.conftest import CACHE

    return load_tokenizer(PRESET.model, CACHE / "models")


def test_explanations_and_scores_are_recorded_with_their_audit_trail(explained):
    _, instance, storage, _ = explained
    import json

    for cond in ("one_shot", "tree"):
        for part in ("F0000/SYN", "F0001/L03"):
            expl = json.loads((storage / "explanations" / cond / part / "value.json").read_text())
            assert expl["explanation"]["rules"] and all(
                0 <= r["strength"] <= 5 for r in expl["explanation"]["rules"]
            )
            assert len(expl["explanation"]["rules"]) <= 5  # the rule cap
            assert expl["completions"] and all("request_id" in c for c in expl["completions"])
            assert expl["usage"]["completion_tokens"] > 0
            sc = json.loads((storage / "scores" / cond / part / "value.json").read_text())
            assert set(sc["per_source"]) == {
                "random",
                "random_negative",
                "similar",
                "similar_negative",
                "similar_projected",
                "similar_negative_projected",
            }
            assert sc["score"] == sc["per_source"]["similar_negative"]["score"] or (
                np.isnan(sc["score"]) and sc["reason"]
            )
            assert len(sc["complexities"]) == len(expl["explanation"]["rules"])
    tree = json.loads((storage / "explanations" / "tree" / "F0000" / "SYN" / "value.json").read_text())
    roots = [n for n in tree["nodes"] if n["depth"] == 0]
    assert len(roots) == PRESET.explain.tree_roots and len(tree["nodes"]) >= len(roots)
    md = instance.get_latest_materialization_event(
        dg.AssetKey(["scores", "tree"])
    ).asset_materialization.metadata
    assert "preview" in md and "|" in md["preview"].value


def test_layer_results_and_figures_name_what_is_missing(explained):
    defs, instance, storage, _ = explained
    import polars as pl

    from featureinterp.storage import load_table

    for layer, feature in (("SYN", "F0000"), ("L03", "F0001")):
        key = dg.MultiPartitionKey({"layer": layer, "feature": feature})
        result = _materialize(defs, instance, ["baselines"], partition_key=key)
        assert result.success, _failure(result)
    for layer in ("SYN", "L03"):
        assert _materialize(defs, instance, ["layer_results"], partition_key=layer).success
    syn = load_table(storage / "layer_results" / "SYN")
    assert syn.meta["missing"] == {"one_shot": ["F0001"], "tree": ["F0001"]}
    primary = syn.frame.filter(pl.col("source") == "similar_negative")
    assert len(primary) == 2  # one per condition
    assert primary["true_rule_score"].is_finite().all() and primary["null_score"].is_finite().all()
    real = load_table(storage / "layer_results" / "L03").frame
    assert real["null_score"].is_finite().all() and real["true_rule_score"].is_nan().all()
    strict = _materialize(
        defs, instance, ["fig4"], run_config={"ops": {"fig4": {"config": {"allow_incomplete": False}}}}
    )
    # SYN is not part of the paper figures: only L03's missing F0000 and the absent L06 are named
    assert not strict.success and "L03/one_shot" in _failure(strict) and "L06" in _failure(strict)
    assert "SYN" not in _failure(strict)
    ok = _materialize(defs, instance, ["fig3", "fig4", "fig5", "fig_calibration"])
    assert ok.success, _failure(ok)
    for name in ("fig3", "fig4", "fig5"):
        md = instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata
        assert md["image"].value.startswith(f"![{name}](data:image/png;base64,")
        assert md["incomplete"].value is True and "of" in md["caption"].value
        assert (storage / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        summary = pl.read_parquet(storage / "figures" / f"{name}.parquet")
        if "layer" in summary.columns:
            assert "SYN" not in summary["layer"].to_list(), name  # synthetic rows never pooled in
    for name in ("fig3", "fig5"):  # the paper's other panels, beside the main image
        assert (storage / "figures" / f"{name}_panels.png").stat().st_size > 10_000, name
    fig4 = pl.read_parquet(storage / "figures" / "fig4.parquet")
    assert fig4.filter(pl.col("layer") == "L03")["null_score"].is_finite().all()
    calib = pl.read_parquet(storage / "figures" / "fig_calibration.parquet")
    negation = calib.filter(pl.col("feature") == "negation")
    assert set(negation["explanation"]) >= {"true rule", "another feature's rule", "empty explanation"}
    assert len(negation) == 5  # three references + one_shot + tree
    assert (storage / "figures" / "fig_calibration.png").stat().st_size > 10_000


def test_scores_command_shows_the_null_baseline(explained, monkeypatch, capsys):
    defs, instance, storage, _ = explained
    key = dg.MultiPartitionKey({"layer": "L03", "feature": "F0001"})
    assert _materialize(defs, instance, ["baselines"], partition_key=key).success
    from featureinterp_assets import cli_inspect

    monkeypatch.setenv("FEATUREINTERP_HOME", str(storage.parent.parent))
    cli_inspect.scores(PRESET.name, False)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("layer"))
    assert header.split()[-1] == "null"
    row = next(line for line in out.splitlines() if line.startswith("L03    F0001"))
    null = __import__("json").loads((storage / "baselines" / "F0001" / "L03" / "value.json").read_text())
    assert row.split()[-1] == f"{null['null']['score']:.3f}"


def test_runs_of_one_process_share_their_models(explained):
    """Per-partition runs in one process (how `featureinterp run` launches them) read each model
    once: the second partition's run loads nothing, yet keeps its own materializations."""
    _, instance, _, results = explained

    def loads(result):
        return [
            e.user_message for e in instance.all_logs(result.run_id) if "loading " in (e.user_message or "")
        ]

    assert loads(results["L03"]) == [], loads(results["L03"])
    assert len([m for m in loads(results["SYN"]) if "simulator" in m]) <= 1
    key = dg.MultiPartitionKey({"layer": "L03", "feature": "F0001"})
    assert key in instance.get_materialized_partitions(dg.AssetKey(["scores", "tree"]))


def test_a_feature_explained_inside_a_range_equals_it_explained_alone(explained):
    """Issue 28: a (layer, feature, condition) must be explained the same whether its run covers
    it alone or a range of features (one process, one explainer, one simulator): a result is a
    function of the preset, partition, condition and code, never of what the shared models ran
    before. F0001 alone, then F0000..F0001 in one ranged run (F0001 after F0000, as a layer's
    run orders them); the stored values must be equal, the raw completions included. Left out:
    ``simulator_tokens``, cost accounting of the simulator's (rule, record) memo, which a ranged
    run already holds for the rows both features show."""
    import json

    from featureinterp_assets.partitions import range_tags

    defs, instance, storage, _ = explained
    first = dg.MultiPartitionKey({"layer": "L03", "feature": "F0000"})
    target = dg.MultiPartitionKey({"layer": "L03", "feature": "F0001"})
    assert _materialize(defs, instance, ["records"], partition_key=first).success
    selection = ["explanations/one_shot", "scores/one_shot"]

    def stored() -> dict[str, dict]:
        values = {
            asset: json.loads(
                (storage / asset / "F0001" / "L03" / "value.json").read_text(), parse_constant=str
            )
            for asset in selection
        }
        return {
            asset: {k: v for k, v in value.items() if k != "simulator_tokens"}
            for asset, value in values.items()
        }

    alone = _materialize(defs, instance, selection, partition_key=target)
    assert alone.success, _failure(alone)
    by_itself = stored()
    ranged = _materialize(defs, instance, selection, tags=range_tags("L03", ["F0000", "F0001"]))
    assert ranged.success, _failure(ranged)
    made = {e.partition for e in ranged.get_asset_materialization_events()}
    assert made == {str(first), str(target)}
    in_range = stored()
    differing = {
        asset: sorted(
            k
            for k in by_itself[asset].keys() | in_range[asset].keys()
            if by_itself[asset].get(k) != in_range[asset].get(k)
        )
        for asset in selection
    }
    assert by_itself == in_range, differing
