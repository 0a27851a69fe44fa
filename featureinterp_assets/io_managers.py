"""One IO manager for the project's stored values: arrays (.npy folders) and small JSON records.

Paths are ``<base>/<asset key>/<partition key>``; a multi-dimension key ``F0003|L06`` becomes the
folders ``F0003/L06``. Inputs from partitioned assets always arrive as ``{partition_key: value}``
dicts (``single()`` unwraps one), so an asset body is the same whether a run covers one layer or a
range of them (single-run backfills). Outputs are ``{partition_key: value}`` for multi-partition
runs, or the bare value when the run has one partition. An input declared with metadata
``{"allow_missing": True}`` receives only the partitions that exist (for summaries that report
what is missing instead of failing).

Every value is written with a manifest (featureinterp/storage.py) and checked when read: a damaged
value raises ``StoredValueCorrupt`` (one line: the file, what is wrong, the fix), which Dagster's
retry policies and the ranged runs' retries (batch.py) never retry, since a re-read cannot mend a
file. ``StorageIOManager.problem`` tells, cheaply, whether a partition must be recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from featureinterp.config import Preset
from featureinterp.errors import CorruptFileError
from featureinterp.storage import (
    ArrayBundle,
    TableBundle,
    atomic_dir,
    check_value,
    load_arrays,
    load_json,
    load_table,
    save_arrays,
    save_table,
    verify_value,
)

_UNPARTITIONED = "__all__"

StoredValue = ArrayBundle | TableBundle | dict[str, Any]
"""What one stored partition holds (which of them follows from the asset)."""

_V = TypeVar("_V")


class StoredValueCorrupt(CorruptFileError, dg.Failure):
    """A stored value that is missing or damaged, raised by reads through the IO manager.

    Both a ``CorruptFileError`` (what library code and the CLI catch) and a
    ``dg.Failure(allow_retries=False)``: the step fails once with the message instead of being
    retried by the assets' retry policy (``TRANSIENT_RETRY``: twice, with back-off) or by a ranged
    run's per-partition retries, since reading the same bytes again cannot succeed.
    """

    def __init__(self, message: str) -> None:
        dg.Failure.__init__(self, description=message, allow_retries=False)


class StorageIOManager(dg.ConfigurableIOManager):
    """Stores ArrayBundle values as memory-mappable .npy folders, TableBundle as parquet, dicts as JSON; atomically."""

    base_dir: str

    def _path(self, asset_key: dg.AssetKey, partition_key: str | None) -> Path:
        part = (partition_key or _UNPARTITIONED).replace("|", "/")
        return Path(self.base_dir).joinpath(*asset_key.path, part)

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            if isinstance(obj, dict) and set(obj) == set(keys):
                for key in keys:
                    _write(self._path(context.asset_key, key), obj[key])
            elif len(keys) == 1:
                _write(self._path(context.asset_key, keys[0]), obj)
            else:
                got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise TypeError(
                    f"{context.asset_key.to_user_string()}: expected values for partitions {keys}, got {got}"
                )
        else:
            _write(self._path(context.asset_key, None), obj)

    def store(self, asset_key: dg.AssetKey, partition_key: str | None, value: object) -> None:
        """Write one partition's value (atomically) outside handle_output: a ranged run records its
        partitions one by one (featureinterp_assets/batch.py)."""
        _write(self._path(asset_key, partition_key), value)

    def stored(self, asset_key: dg.AssetKey, partition_key: str | None = None) -> Any:
        """The stored value of one partition read outside a run (CLI, notebooks); None if absent,
        ``StoredValueCorrupt`` if damaged."""
        # Any, not StoredValue | None: the asset key decides the type (records: a TableBundle...)
        path = self._path(asset_key, partition_key)
        return _read(path) if _exists(path) else None

    def problem(
        self, asset_key: dg.AssetKey, partition_key: str | None = None, full: bool = False
    ) -> str | None:
        """None when the stored value of the partition is intact; else one line naming the path
        and what is wrong: missing folder, empty folder, missing file, wrong size, bad checksum,
        unreadable manifest (or, for a value written before manifests, unreadable JSON, a parquet
        file without its footer, a .npy file shorter than its header says).

        For `featureinterp run` to find the materialized partitions it must recompute. Cheap enough
        for thousands of partitions: a stat of every file, and a checksum of the files up to
        ``storage.CHECKSUM_LIMIT`` (16 MiB: the per-feature values, KB to a few MB, are well under
        1 ms each); larger files (memory-mapped arrays) get their size checked, their checksum only
        with ``full=True`` (0.8-1.7 s per GB measured). A value without a manifest (an older home) is not a
        problem by itself.
        """
        return check_value(self._path(asset_key, partition_key), full=full)

    def load_input(self, context: dg.InputContext) -> StoredValue | dict[str, StoredValue]:
        key = context.asset_key
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            if (context.definition_metadata or {}).get("allow_missing"):
                # Summaries over many partitions: load what exists; the asset reports the rest.
                keys = [k for k in keys if _exists(self._path(key, k))]
            return {k: _read(self._path(key, k)) for k in keys}
        return _read(self._path(key, None))


def single(values: Mapping[str, _V]) -> _V:
    """The one value of a ``{partition_key: value}`` input (for same-partition or one-layer inputs)."""
    if len(values) != 1:
        raise ValueError(f"expected one upstream partition, got {sorted(values)}")
    return next(iter(values.values()))


def _write(path: Path, value: object) -> None:
    if isinstance(value, ArrayBundle):
        save_arrays(path, value.arrays, value.meta)
    elif isinstance(value, TableBundle):
        save_table(path, value.frame, value.meta)
    elif isinstance(value, dict):
        with atomic_dir(path, manifest=True) as tmp:
            (tmp / "value.json").write_text(json.dumps(value, indent=1, default=str))
    else:
        raise TypeError(
            f"StorageIOManager stores ArrayBundle, TableBundle or dict values, not {type(value).__name__}"
        )


def _exists(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _read(path: Path) -> StoredValue:
    """The value stored in ``path``, checked first (``storage.verify_value``)."""
    try:
        verify_value(path)
        if (path / "value.json").exists():
            return load_json(path / "value.json")
        if (path / "table.parquet").exists():
            return load_table(path, verified=True)
        arrays, meta = load_arrays(path, verified=True)
        return ArrayBundle(arrays, meta)
    except StoredValueCorrupt:
        raise
    except CorruptFileError as err:  # the same line, as a Failure; chained to what it wraps
        raise StoredValueCorrupt(str(err)) from err.__cause__


__all__ = ["StorageIOManager", "StoredValueCorrupt", "single", "storage_of"]


def storage_of(preset: Preset | str) -> StorageIOManager:
    """A preset's asset storage (a preset or its name), as the Definitions configure it (read
    outside a run: `featureinterp scores`, the results table)."""
    from featureinterp.config import data_home

    name = preset if isinstance(preset, str) else preset.name
    return StorageIOManager(base_dir=str(data_home() / "storage" / name))
