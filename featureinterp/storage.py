"""Atomic, content-hashed storage helpers shared by every stage.

Writes go to a temporary sibling and are renamed into place, so an interrupted run never leaves a
half-written file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featureinterp.errors import CorruptFileError

__all__ = [
    "ArrayBundle",
    "TableBundle",
    "array_hash",
    "atomic_dir",
    "load_arrays",
    "load_table",
    "save_arrays",
    "save_table",
]


@dataclass
class ArrayBundle:
    """Named arrays plus a JSON-able metadata dict: the unit every array-valued stage stores."""

    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


@dataclass
class TableBundle:
    """A polars table plus a JSON-able metadata dict (records, explanations, scores)."""

    frame: "pl.DataFrame"  # noqa: F821 (polars imported lazily)
    meta: dict = field(default_factory=dict)


def save_table(path: Path | str, frame, meta: Mapping | None = None) -> None:
    """Store a polars frame as ``table.parquet`` plus ``meta.json``, atomically."""
    with atomic_dir(path) as tmp:
        frame.write_parquet(tmp / "table.parquet")
        (tmp / "meta.json").write_text(json.dumps(dict(meta or {}), indent=1, default=str))


def load_table(path: Path | str) -> TableBundle:
    import polars as pl

    path = Path(path)
    if not (path / "table.parquet").exists():
        raise CorruptFileError(f"no stored table at {path}: rematerialize the asset")
    return TableBundle(pl.read_parquet(path / "table.parquet"), json.loads((path / "meta.json").read_text()))


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_arrays(path: Path | str, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> None:
    """Store named arrays as ``<name>.npy`` in one directory (atomically), plus ``meta.json``.

    .npy rather than one safetensors file so readers can memory-map a single array of a big
    activation table without reading the rest.
    """
    with atomic_dir(path) as tmp:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(dict(meta or {}), indent=1, default=str))


def load_arrays(path: Path | str, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Inverse of ``save_arrays``; arrays are memory-mapped read-only by default."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise CorruptFileError(f"no stored arrays at {path} (missing meta.json): rematerialize the asset")
    try:
        meta = json.loads(meta_file.read_text())
        arrays = {
            f.stem: np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
            for f in sorted(path.glob("*.npy"))
        }
    except (ValueError, OSError) as err:
        raise CorruptFileError(f"unreadable stored arrays at {path}: {err}; rematerialize the asset") from err
    return arrays, meta


def array_hash(*arrays: np.ndarray, extra: str = "") -> str:
    """Short content hash of arrays (dtype, shape and bytes) plus an extra string."""
    h = hashlib.sha256(extra.encode())
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]
