"""Ranged runs of per-feature assets (featureinterp_assets/batch.py) on a real Dagster instance:
each partition recorded on its own, a failing one failing alone, downstream steps going on when
all succeed. The assets are toys; the instance, runs and IO manager are real."""

import threading

import dagster as dg
import pytest

from featureinterp_assets.batch import BATCH_POLICY, PartitionResult, Produced, each_partition
from featureinterp_assets.io_managers import StorageIOManager
from tests.helpers import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

PARTS = dg.MultiPartitionsDefinition(
    {
        "layer": dg.StaticPartitionsDefinition(["L01"]),
        "feature": dg.StaticPartitionsDefinition(["F0", "F1", "F2"]),
    }
)
KEYS = [dg.MultiPartitionKey({"layer": "L01", "feature": f}) for f in ("F0", "F1", "F2")]
RANGE = {PARTITION_RANGE_START_TAG: KEYS[0], PARTITION_RANGE_END_TAG: KEYS[-1]}


def _assets(fail: set[str], as_you_go: bool, concurrency: int = 1, threads: set | None = None):
    together = threading.Barrier(concurrency, timeout=10) if concurrency > 1 else None

    @dg.asset(partitions_def=PARTS, backfill_policy=BATCH_POLICY, io_manager_key="storage", code_version="7")
    def upstream(context: dg.AssetExecutionContext, storage: dg.ResourceParam[StorageIOManager]):
        def compute(key: str) -> PartitionResult:
            if threads is not None:
                threads.add(threading.get_ident())
            if together is not None:
                together.wait()  # passes only when `concurrency` partitions are computed at once
            if key.split("|")[0] in fail:
                raise ValueError(f"bad feature {key}")
            return PartitionResult({"result": Produced({"key": key}, {"key": key})})

        yield from each_partition(context, compute, storage, as_you_go=as_you_go, concurrency=concurrency)

    @dg.asset(partitions_def=PARTS, backfill_policy=BATCH_POLICY, io_manager_key="storage")
    def downstream(upstream: dict) -> dict:
        return {k: {"seen": v["key"]} for k, v in upstream.items()}

    return [upstream, downstream]


def _run(instance, tmp_path, assets, selection):
    return dg.materialize(
        assets,
        selection=selection,
        instance=instance,
        resources={"storage": StorageIOManager(base_dir=str(tmp_path))},
        tags=RANGE,
        raise_on_error=False,
    )


@pytest.mark.parametrize("as_you_go,concurrency", [(True, 1), (False, 1), (True, 3)])
def test_a_failing_partition_fails_alone_and_the_others_are_recorded(tmp_path, as_you_go, concurrency):
    threads: set = set()
    assets = _assets({"F1"}, as_you_go, concurrency, threads)
    with dg.instance_for_test() as instance:
        result = _run(instance, tmp_path, assets, ["upstream"])
        assert not result.success
        failure = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE][0]
        message = failure.step_failure_data.error.message
        assert "1 of 3 partitions failed" in message and "F1|L01: ValueError: bad feature F1|L01" in message
        assert instance.get_materialized_partitions(dg.AssetKey("upstream")) == {str(KEYS[0]), str(KEYS[2])}
        status = instance.get_status_by_partition(dg.AssetKey("upstream"), [str(k) for k in KEYS], PARTS)
        assert status[str(KEYS[1])] == dg.AssetPartitionStatus.FAILED
        assert (tmp_path / "upstream" / "F2" / "L01" / "value.json").exists()
        assert not (tmp_path / "upstream" / "F1").exists()
        event = instance.get_latest_materialization_event(dg.AssetKey("upstream"))
        assert event.asset_materialization.tags["dagster/code_version"] == "7"
        assert (len(threads) > 1) == (concurrency > 1)


def test_when_every_partition_succeeds_the_downstream_step_of_the_run_goes_on(tmp_path):
    with dg.instance_for_test() as instance:
        result = _run(instance, tmp_path, _assets(set(), as_you_go=False), ["upstream", "downstream"])
        assert result.success
        for name in ("upstream", "downstream"):
            assert instance.get_materialized_partitions(dg.AssetKey(name)) == {str(k) for k in KEYS}
        md = {
            e.partition: e.metadata["key"].value
            for e in (
                ev.event_specific_data.materialization for ev in result.get_asset_materialization_events()
            )
            if e.asset_key == dg.AssetKey("upstream")
        }
        assert md == {str(k): str(k) for k in KEYS}  # each partition keeps its own metadata
