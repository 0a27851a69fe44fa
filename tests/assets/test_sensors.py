import dagster as dg

from featureinterp.config import get_preset
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


def test_stale_schedule_requests_partitions_built_by_older_code(tmp_path):
    from featureinterp_assets.sensors import build_stale_schedule

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        v1 = _versioned("1")
        for part in ("F0|L01", "F1|L01"):
            assert dg.materialize([v1], instance=instance, partition_key=part).success
        v2 = _versioned("2")
        schedule = build_stale_schedule([v2])
        repo = dg.Definitions(assets=[v2], schedules=[schedule]).get_repository_def()

        def tick():
            return schedule.evaluate_tick(dg.build_schedule_context(instance=instance, repository_def=repo))

        requests = tick().run_requests
        assert sorted(r.partition_key for r in requests) == ["F0|L01", "F1|L01"]
        assert all(r.asset_selection == [dg.AssetKey("scored")] for r in requests)
        assert dg.materialize([v2], instance=instance, partition_key="F0|L01").success
        requests = tick().run_requests
        assert [r.partition_key for r in requests] == ["F1|L01"]
        assert requests[0].tags["featureinterp/stale_from"] == "1"
        assert dg.materialize([v2], instance=instance, partition_key="F1|L01").success
        result = tick()
        assert not result.run_requests and "no partition" in result.skip_message
