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
