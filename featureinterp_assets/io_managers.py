"""One IO manager for the project's stored values: arrays (.npy folders) and small JSON records.

Paths are ``<base>/<asset key>/<partition key>``; a multi-dimension key ``F0003|L06`` becomes the
folders ``F0003/L06``. Inputs from partitioned assets always arrive as ``{partition_key: value}``
dicts (``single()`` unwraps one), so an asset body is the same whether a run covers one layer or a
range of them (single-run backfills). Outputs are ``{partition_key: value}`` for multi-partition
runs, or the bare value when the run has one partition. An input declared with metadata
``{"allow_missing": True}`` receives only the partitions that exist (for summaries that report
what is missing instead of failing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from featureinterp.storage import (
    ArrayBundle,
    TableBundle,
    atomic_dir,
    load_arrays,
    load_table,
    save_arrays,
    save_table,
)

_UNPARTITIONED = "__all__"

StoredValue = ArrayBundle | TableBundle | dict[str, Any]
"""What one stored partition holds (which of them follows from the asset)."""

_V = TypeVar("_V")


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
        """The stored value of one partition read outside a run (CLI, notebooks); None if absent."""
        # Any, not StoredValue | None: the asset key decides the type (records: a TableBundle...)
        path = self._path(asset_key, partition_key)
        return _read(path) if _exists(path) else None

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
        with atomic_dir(path) as tmp:
            (tmp / "value.json").write_text(json.dumps(value, indent=1, default=str))
    else:
        raise TypeError(
            f"StorageIOManager stores ArrayBundle, TableBundle or dict values, not {type(value).__name__}"
        )


def _exists(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _read(path: Path) -> StoredValue:
    if (path / "value.json").exists():
        return json.loads((path / "value.json").read_text())
    if (path / "table.parquet").exists():
        return load_table(path)
    arrays, meta = load_arrays(path)
    return ArrayBundle(arrays, meta)


__all__ = ["StorageIOManager", "single"]
