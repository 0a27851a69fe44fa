"""Atomic, content-hashed storage helpers shared by every stage.

Writes go to a temporary sibling and are renamed into place, so an interrupted run never leaves a
half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from featureinterp.errors import CorruptFileError

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "ArrayBundle",
    "NpyStream",
    "StagedNpy",
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


@dataclass(frozen=True)
class StagedNpy:
    """A finished .npy file written outside memory (``NpyStream``); ``save_arrays`` moves it into
    place instead of copying it, so an array larger than memory is never read back."""

    path: Path

    def load(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)


class NpyStream:
    """A C-order ``[A, N, T]`` .npy file written a block of rows at a time.

    Why: ``sae_activations`` of 100k rows x 50 features is 330 MB per layer in float16; holding
    every layer of a run in memory made peak RSS grow with rows x layers x features. Blocks go to
    the file with positioned writes (no memory map: a mapping's resident pages count as the
    process's memory), so memory stays at one batch.
    """

    def __init__(self, path: Path | str, shape: tuple[int, int, int], dtype: npt.DTypeLike) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb+")  # noqa: SIM115 (closed by finish())
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_2_0(self._file, header)
        self._data = self._file.tell()
        self._file.truncate(self._data + int(np.prod(self.shape)) * self.dtype.itemsize)

    def write_rows(self, row_start: int, block: np.ndarray) -> None:
        """Write ``block`` [A, b, T] at rows ``row_start .. row_start + b`` of every leading index."""
        a, b, t = block.shape
        if a != self.shape[0] or t != self.shape[2] or row_start + b > self.shape[1]:
            raise ValueError(f"block {block.shape} at row {row_start} does not fit {self.shape}")
        block = np.ascontiguousarray(block, dtype=self.dtype)
        row_bytes = t * self.dtype.itemsize
        for i in range(a):  # rows of one leading index are contiguous in C order
            os.pwrite(
                self._file.fileno(),
                block[i].tobytes(),
                self._data + (i * self.shape[1] + row_start) * row_bytes,
            )

    def finish(self) -> StagedNpy:
        self._file.close()
        return StagedNpy(self.path)


@dataclass
class TableBundle:
    """A polars table plus a JSON-able metadata dict (records, explanations, scores)."""

    frame: pl.DataFrame
    meta: dict = field(default_factory=dict)


def save_table(path: Path | str, frame: pl.DataFrame, meta: Mapping | None = None) -> None:
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


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temp sibling of ``path``, then rename it over ``path``: readers never
    see a half-written file, and a failed write leaves the old file (or none) in place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def save_arrays(
    path: Path | str, arrays: Mapping[str, np.ndarray | StagedNpy], meta: Mapping | None = None
) -> None:
    """Store named arrays as ``<name>.npy`` in one directory (atomically), plus ``meta.json``.

    .npy rather than one safetensors file so readers can memory-map a single array of a big
    activation table without reading the rest.
    """
    with atomic_dir(path) as tmp:
        for name, arr in arrays.items():
            if isinstance(arr, StagedNpy):  # written outside memory: moved, never read back
                os.replace(arr.path, tmp / f"{name}.npy")
                with contextlib.suppress(OSError):
                    arr.path.parent.rmdir()  # the staging folder, once empty
            else:
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
