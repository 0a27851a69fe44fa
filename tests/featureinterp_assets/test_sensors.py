import dagster as dg

from featureinterp.presets import get_preset
from featureinterp_assets.definitions import build_definitions
from featureinterp_assets.partitions import layer_partitions


def test_new_layers_sensor_registers_missing_layers_once(tmp_path):
    preset = get_preset("embedded-tiny")
    defs = build_definitions(preset, home=tmp_path, models=tmp_path)
    sensor = defs.resolve_sensor_def("new_layers_sensor")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(layer_partitions(preset).name, ["L03"])
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["L06", "SYN"]]
        assert [r.partition_key for r in result.run_requests] == ["L06", "SYN"]
        instance.add_dynamic_partitions(layer_partitions(preset).name, ["L06", "SYN"])
        again = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        assert isinstance(again, dg.SkipReason)


def _versioned(version: str):
    parts = dg.MultiPartitionsDefinition(
        {
            "layer": dg.StaticPartitionsDefinition(["L01"]),
            "feature": dg.StaticPartitionsDefinition(["F0", "F1"]),
        }
    )

    @dg.asset(name="scored", partitions_def=parts, code_version=version)
    def scored(context) -> int:
        return len(context.partition_key)

    return scored


def test_backfill_schedule_requests_missing_and_stale_partitions_per_layer(tmp_path):
    """The nightly schedule (off by default): one ranged run per layer and block of features that
    miss an asset or hold one built by an older code version; nothing for what is current."""
    import datetime

    from featureinterp.presets import get_preset
    from featureinterp_assets.definitions import build_definitions
    from featureinterp_assets.partitions import register_layers
    from tests.helpers import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

    preset = get_preset("embedded-tiny")  # L03, L06, SYN x F0000, F0001; one_shot, tree
    defs = build_definitions(preset, home=tmp_path / "home", models=tmp_path)
    schedule = defs.get_schedule_def("layer_backfill_schedule")
    graph = defs.resolve_asset_graph()
    per_feature = [
        "records",
        "explanations/one_shot",
        "scores/one_shot",
        "explanations/tree",
        "scores/tree",
        "baselines",
        *(f"{scorer}/{c}" for scorer in ("detection", "fuzzing", "embedding") for c in ("one_shot", "tree")),
    ]
    keys = {a: dg.AssetKey(a.split("/")) for a in per_feature}
    with dg.instance_for_test() as instance:
        register_layers(instance, preset)
        repo = defs.get_repository_def()

        def tick():
            context = dg.build_schedule_context(
                instance=instance,
                repository_def=repo,
                scheduled_execution_time=datetime.datetime(2026, 12, 2, 3),
            )
            return schedule.evaluate_tick(context)

        def span(request):
            start, end = (
                request.tags[t] for t in (PARTITION_RANGE_START_TAG, PARTITION_RANGE_END_TAG)
            )
            return start, end, sorted(k.to_user_string() for k in request.asset_selection)

        fresh = sorted(span(r) for r in tick().run_requests)
        # the generated source runs on its slice (the first feature of each layer): F0000 is a block
        # of its own, never a request for a partition outside the slice
        assert fresh == sorted(
            [(f"F0000|{x}", f"F0000|{x}", sorted([*per_feature, "generated"])) for x in ("L03", "L06", "SYN")]
            + [(f"F0001|{x}", f"F0001|{x}", sorted(per_feature)) for x in ("L03", "L06", "SYN")]
        )
        keys["generated"] = dg.AssetKey("generated")

        def built(asset, part, version=None):
            version = version or graph.get(keys[asset]).code_version
            instance.report_runless_asset_event(
                dg.AssetMaterialization(keys[asset], partition=part, tags={"dagster/code_version": version})
            )

        for asset in per_feature:
            built(asset, "F0000|L03")
            built(asset, "F0001|L03", "0" if asset == "records" else None)  # records from older code
        for asset in per_feature:
            for x in ("L06", "SYN"):
                for f in ("F0000", "F0001"):
                    built(asset, f"{f}|{x}")
        for x in ("L03", "L06", "SYN"):
            built("generated", f"F0000|{x}")
        assert [span(r) for r in tick().run_requests] == [("F0001|L03", "F0001|L03", ["records"])]
        built("records", "F0001|L03")
        result = tick()
        assert not result.run_requests and "missing or stale" in result.skip_message
