"""The UI's `*fig5` backfill, and a new layer that runs to the figures by itself, under a real
`dagster-daemon`.

The preset is a file (embedded-tiny, one layer, one feature, one condition). First an asset
backfill of `*fig5` over all partitions, added to the instance the way the UI's "Materialize"
dialog adds it, spans the three partition schemes (none, layer, layer x feature) and completes
under the daemon. Then a layer is added to the file; the daemon's new-layer sensor re-reads
the file, registers the layer and launches its SAE + activations, and declarative automation
(featureinterp_assets/automation.py) materializes the new layer's records, explanation, score,
baseline, layer table and the figures, without recomputing anything of the old layer. Last, the
file switches to a folder of sae-lens SAEs with ``discover_layers``, and a dropped SAE folder
becomes a layer that runs to the figures the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from featureinterp.presets import get_preset
from featureinterp.presets.files import dump_preset
from tests.conftest import CACHE
from tests.helpers import BulkActionStatus, launch_backfill, start_daemon, stop_daemon

PER_FEATURE = ["records", "explanations/one_shot", "scores/one_shot", "baselines"]


def _tiny(layers: tuple[int, ...]):
    base = get_preset("embedded-tiny")
    import dataclasses

    # smaller than embedded-tiny (600 short rows, a small SAE): the test is about automation,
    # and it trains three layers' SAEs
    train = dataclasses.replace(base.sae.train, expansion=2, k=8, n_tokens=6000, epochs=1, live_freq=(1e-3, 0.2))
    return base.replace(
        name="auto-tiny",
        layers=layers,
        n_rows=600,
        seq_len=16,
        per_split=2,
        features=(0,),
        sae=dataclasses.replace(base.sae, train=train),
        corpus=dataclasses.replace(base.corpus, max_documents=1500),
        explain=dataclasses.replace(base.explain, conditions=("one_shot",), synthetic=False, max_tokens=160),
    )


def _launch_fig5_lineage(instance, defs) -> str:
    """What the UI does for "select `*fig5`, Materialize all partitions": an asset backfill."""
    graph = defs.resolve_asset_graph()
    return launch_backfill(instance, defs, sorted(dg.AssetSelection.assets("fig5").upstream().resolve(graph)))


def _wait_backfill(instance, backfill_id: str, daemon, log: Path, timeout: float = 1200):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert daemon.poll() is None, log.read_text()[-3000:]
        status = instance.get_backfill(backfill_id).status
        if status not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING):
            return status
        time.sleep(3)
    raise AssertionError(f"backfill {backfill_id} still {instance.get_backfill(backfill_id).status}")


def _wait_layer(instance, layer: str, fig5_before: float, daemon, log: Path, timeout: float = 1200) -> None:
    """Until every per-feature asset has the layer's partition, its layer table exists and fig5
    was redrawn after the last layer table."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(5)
        assert daemon.poll() is None, log.read_text()[-3000:]
        fig5 = instance.get_latest_materialization_event(dg.AssetKey("fig5"))
        table = instance.get_latest_materialization_event(dg.AssetKey("layer_results"))
        if (
            all(f"F0000|{layer}" in _keys(instance, a) for a in PER_FEATURE)
            and layer in _keys(instance, "layer_results")
            and fig5.timestamp > fig5_before
            and fig5.timestamp >= table.timestamp
        ):
            return
    raise AssertionError(
        {a: sorted(_keys(instance, a)) for a in [*PER_FEATURE, "sae", "sae_activations", "layer_results"]}
    )


def _keys(instance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset.split("/"))))


def _count(instance, asset: str, partition: str) -> int:
    return len(
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset.split("/")), asset_partitions=[partition]),
            limit=100,
        ).records
    )


@pytest.mark.slow
def test_the_ui_backfill_of_fig5s_lineage_then_a_new_layer_reach_the_figures(tmp_path, monkeypatch):
    path = tmp_path / "auto-tiny.toml"
    path.write_text(dump_preset(_tiny((3,)), "toml"))
    env = {
        "FEATUREINTERP_PRESET": str(path),
        "FEATUREINTERP_HOME": str(tmp_path / "home"),
        "FEATUREINTERP_MODELS": str(CACHE / "models"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "HF_HUB_OFFLINE": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "dagster").mkdir()
    from featureinterp_assets.definitions import build_definitions
    from featureinterp_assets.partitions import register_layers

    instance = dg.DagsterInstance.get()
    preset = get_preset(str(path))
    register_layers(instance, preset)  # what the new-layer sensor does first
    defs = build_definitions(preset)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(log)
    try:
        backfill_id = _launch_fig5_lineage(instance, defs)
        status = _wait_backfill(instance, backfill_id, daemon, log)
        assert status == BulkActionStatus.COMPLETED_SUCCESS, status
        assert instance.get_latest_materialization_event(dg.AssetKey("fig5")) is not None
        old, new = "F0000|L03", "F0000|L06"
        before = {a: _count(instance, a, old) for a in PER_FEATURE}
        assert all(v == 1 for v in before.values()), before
        fig5_before = instance.get_latest_materialization_event(dg.AssetKey("fig5")).timestamp

        path.write_text(dump_preset(_tiny((3, 6)), "toml"))  # a new layer, no code change
        _wait_layer(instance, "L06", fig5_before, daemon, log)
        after_l06 = {a: _count(instance, a, new) for a in PER_FEATURE}

        # (b) the preset reads its SAEs from a folder per layer and discovers new ones: the
        # trained SAEs move there, then a user drops a ninth layer's SAE folder (L06's weights
        # with its hook renamed: the SAE loader refuses an SAE whose hook names another layer)
        import dataclasses
        import shutil

        trained, saes = tmp_path / "home" / "storage" / "auto-tiny" / "sae_files", tmp_path / "saes"
        for x in ("L03", "L06"):
            shutil.copytree(trained / x, saes / x)
        disk = _tiny((3, 6))
        disk = disk.replace(
            sae=dataclasses.replace(
                disk.sae, source="disk", path_format=str(saes / "L{layer:02d}"), discover_layers=True
            )
        )
        path.write_text(dump_preset(disk, "toml"))
        fig5_before = instance.get_latest_materialization_event(dg.AssetKey("fig5")).timestamp
        shutil.copytree(trained / "L06", saes / "L09")  # L06's weights, declared for layer 9
        cfg = saes / "L09" / "cfg.json"
        cfg.write_text(cfg.read_text().replace("blocks.6.hook_resid_post", "blocks.9.hook_resid_post"))
        _wait_layer(instance, "L09", fig5_before, daemon, log)
    finally:
        stop_daemon(daemon)
    for asset in ("sae", "sae_activations"):
        assert {"L06", "L09"} <= _keys(instance, asset)
    assert {a: _count(instance, a, old) for a in PER_FEATURE} == before  # the old layers untouched
    assert {a: _count(instance, a, new) for a in PER_FEATURE} == after_l06
    assert _count(instance, "layer_results", "L03") == 1
    runs = instance.get_runs()
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.job_name, r.status) for r in runs]
    storage = tmp_path / "home" / "storage" / "auto-tiny" / "figures"
    import polars as pl

    assert {"L03", "L06", "L09"} <= set(pl.read_parquet(storage / "fig5.parquet")["layer"].to_list())


def test_an_sae_folder_dropped_into_the_preset_directory_is_a_new_layer(tmp_path, monkeypatch):
    """The new-layer sensor of a `discover_layers` preset, evaluated against a real instance."""
    import dataclasses

    saes = tmp_path / "saes"
    (saes / "L03").mkdir(parents=True)
    preset = _tiny((3,))
    preset = preset.replace(
        sae=dataclasses.replace(
            preset.sae, source="disk", path_format=str(saes / "L{layer:02d}"), discover_layers=True
        )
    )
    path = tmp_path / "auto-tiny.toml"
    path.write_text(dump_preset(preset, "toml"))
    monkeypatch.setenv("FEATUREINTERP_PRESET", str(path))
    from featureinterp_assets.definitions import build_definitions

    defs = build_definitions(get_preset(str(path)), home=tmp_path / "home", models=tmp_path)
    sensor = defs.get_sensor_def("new_layers_sensor")
    with dg.instance_for_test() as instance:
        first = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        assert [r.partition_key for r in first.run_requests] == ["L03"]
        instance.add_dynamic_partitions(first.dynamic_partitions_requests[0].partitions_def_name, ["L03"])
        assert isinstance(sensor(dg.build_sensor_context(instance=instance, definitions=defs)), dg.SkipReason)
        (saes / "L06").mkdir()  # a user drops the next layer's SAE folder
        second = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        assert [r.partition_key for r in second.run_requests] == ["L06"]
