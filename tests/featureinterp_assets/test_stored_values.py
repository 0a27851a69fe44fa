"""Corrupt or missing stored values are detected (issue 28 item 6): every value carries a manifest
(size and checksum of each file), a read checks it and fails once with ``CorruptFileError`` naming
the file and the fix, never retried, and ``StorageIOManager.problem`` reports a damaged partition
cheaply. Real files, a real IO manager, real Dagster runs (toy assets)."""

import json
import shutil

import dagster as dg
import numpy as np
import polars as pl
import pytest

from featureinterp.errors import CorruptFileError
from featureinterp.storage import ArrayBundle, TableBundle
from featureinterp_assets.batch import BATCH_POLICY, PartitionResult, Produced, each_partition
from featureinterp_assets.io_managers import StorageIOManager
from tests.helpers import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

FIX = "run `featureinterp run` to recompute it"
FRAME = pl.DataFrame({"row": list(range(200)), "tokens": [["a", "b", "c"]] * 200})


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path, at: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_truncated_table_or_json_value_is_corrupt_and_named(tmp_path):
    storage = StorageIOManager(base_dir=str(tmp_path))
    records, expl = dg.AssetKey("records"), dg.AssetKey(["explanations", "tree"])
    storage.store(records, "F0000|L03", TableBundle(FRAME, {"feature": 0}))
    storage.store(expl, "F0000|L03", {"explanation": "negation words " * 40})
    assert storage.stored(records, "F0000|L03").frame.equals(FRAME)

    table = tmp_path / "records" / "F0000" / "L03" / "table.parquet"
    _truncate(table)
    with pytest.raises(CorruptFileError) as err:
        storage.stored(records, "F0000|L03")
    assert str(table) in str(err.value) and FIX in str(err.value) and "\n" not in str(err.value)

    value = tmp_path / "explanations" / "tree" / "F0000" / "L03" / "value.json"
    _truncate(value)
    with pytest.raises(CorruptFileError, match="value.json") as err:
        storage.stored(expl, "F0000|L03")
    assert str(value) in str(err.value) and FIX in str(err.value)


def test_values_written_before_manifests_still_load_and_their_damage_is_named(tmp_path):
    """An old home: no manifest. Intact values load; a truncated one is still a CorruptFileError
    naming the file, not a raw polars / JSON error."""
    storage = StorageIOManager(base_dir=str(tmp_path))
    old = tmp_path / "records" / "__all__"
    old.mkdir(parents=True)
    FRAME.write_parquet(old / "table.parquet")
    (old / "meta.json").write_text("{}")
    (tmp_path / "sae" / "L03").mkdir(parents=True)
    (tmp_path / "sae" / "L03" / "value.json").write_text('{"d_sae": 64}')
    assert storage.problem(dg.AssetKey("records"), None) is None
    assert storage.stored(dg.AssetKey("records")).frame.equals(FRAME)
    assert storage.stored(dg.AssetKey("sae"), "L03") == {"d_sae": 64}

    _truncate(old / "table.parquet")
    with pytest.raises(CorruptFileError, match="table.parquet") as err:
        storage.stored(dg.AssetKey("records"))
    assert FIX in str(err.value)
    assert "table.parquet" in (storage.problem(dg.AssetKey("records"), None) or "")


def test_problem_reports_a_deleted_folder_a_truncated_file_and_a_flipped_byte(tmp_path):
    storage = StorageIOManager(base_dir=str(tmp_path))
    expl, records, acts = dg.AssetKey(["explanations", "tree"]), dg.AssetKey("records"), dg.AssetKey("acts")
    for f in ("F0000", "F0001"):
        storage.store(expl, f"{f}|L03", {"explanation": f"rule of {f}"})
    storage.store(records, "F0000|L03", TableBundle(FRAME, {"feature": 0}))
    storage.store(acts, "L03", ArrayBundle({"acts": np.ones((2, 50, 8), np.float16)}, {"layer": 3}))
    for key, part in ((expl, "F0000|L03"), (expl, "F0001|L03"), (records, "F0000|L03"), (acts, "L03")):
        assert storage.problem(key, part) is None, (key, part)

    folder = tmp_path / "explanations" / "tree" / "F0000" / "L03"
    shutil.rmtree(folder)
    said = storage.problem(expl, "F0000|L03")
    assert str(folder) in said and "missing folder" in said

    table = tmp_path / "records" / "F0000" / "L03" / "table.parquet"
    _truncate(table, 0.9)
    said = storage.problem(records, "F0000|L03")
    assert str(table) in said and "bytes" in said

    value = tmp_path / "explanations" / "tree" / "F0001" / "L03" / "value.json"
    _flip(value, at=value.read_bytes().index(b"rule"))  # "rule" -> "sule"
    json.loads(value.read_text())  # still valid JSON: only the checksum can tell
    said = storage.problem(expl, "F0001|L03")
    assert str(value) in said and "checksum" in said

    npy = tmp_path / "acts" / "L03" / "acts.npy"
    _truncate(npy, 0.99)
    assert str(npy) in storage.problem(acts, "L03")


def _toys(tmp_path):
    @dg.asset(io_manager_key="storage")
    def table() -> TableBundle:
        return TableBundle(FRAME)

    @dg.asset(io_manager_key="storage", retry_policy=dg.RetryPolicy(max_retries=2))
    def reader(table: TableBundle) -> dict:
        return {"rows": len(table.frame)}

    return [table, reader], {"storage": StorageIOManager(base_dir=str(tmp_path))}


def test_a_corrupt_input_fails_the_step_once_without_retries(tmp_path):
    assets, resources = _toys(tmp_path)
    with dg.instance_for_test() as instance:
        assert dg.materialize(assets, selection=["table"], instance=instance, resources=resources).success
        parquet = tmp_path / "table" / "__all__" / "table.parquet"
        _truncate(parquet)
        result = dg.materialize(
            assets, selection=["reader"], instance=instance, resources=resources, raise_on_error=False
        )
    assert not result.success
    types = [e.event_type for e in result.all_events]
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in types, "a corrupt file was retried"
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    error = failure.step_failure_data.error
    text = "\n".join(m.message for m in (error, error.cause) if m is not None)
    assert str(parquet) in text and FIX in text


PARTS = dg.StaticPartitionsDefinition(["F0", "F1"])


def test_a_corrupt_value_read_in_a_ranged_run_is_not_retried(tmp_path):
    storage = StorageIOManager(base_dir=str(tmp_path))
    for key in PARTS.get_partition_keys():
        storage.store(dg.AssetKey("explanation"), key, {"rule": key})
    value = tmp_path / "explanation" / "F1" / "value.json"
    _truncate(value)
    calls: list[str] = []

    @dg.asset(partitions_def=PARTS, backfill_policy=BATCH_POLICY, io_manager_key="storage")
    def score(context: dg.AssetExecutionContext, storage: dg.ResourceParam[StorageIOManager]):
        def compute(key: str) -> PartitionResult:
            calls.append(key)
            expl = storage.stored(dg.AssetKey("explanation"), key)
            return PartitionResult({"result": Produced({"rule": expl["rule"]})})

        yield from each_partition(context, compute, storage, as_you_go=True, retries=2, retry_delay_s=0)

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [score],
            instance=instance,
            resources={"storage": storage},
            tags={PARTITION_RANGE_START_TAG: "F0", PARTITION_RANGE_END_TAG: "F1"},
            raise_on_error=False,
        )
    assert not result.success
    assert calls == ["F0", "F1"], f"the corrupt partition was retried: {calls}"
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert str(value) in failure.step_failure_data.error.message
