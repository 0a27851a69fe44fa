"""Atomic, content-hashed storage helpers shared by every stage.

Writes go to a temporary sibling and are renamed into place, so an interrupted run never leaves a
half-written file that a later run would trust. A stored value (``save_arrays``, ``save_table``,
``atomic_dir(..., manifest=True)``) also carries ``manifest.json``, written inside the same atomic
write, with the size and SHA-256 of each of its files, so damage done after the write (a
truncated copy, a full disk, a flipped byte) is found on read (``check_value``) instead of
surfacing as a raw parquet / JSON error that names no file::

    {"format": 1, "algorithm": "sha256",
     "files": {"meta.json": {"size": 42, "sha256": "9f86..."}, "acts.npy": {"size": ..., ...}}}

Values written before manifests existed (old homes) have none: they still load, and get the
structural checks a manifest-less file allows (JSON parses, parquet footer, .npy size).
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
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from featureinterp.errors import CorruptFileError

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "CHECKSUM_LIMIT",
    "MANIFEST",
    "RECOMPUTE",
    "ArrayBundle",
    "NpyStream",
    "StagedNpy",
    "TableBundle",
    "array_hash",
    "atomic_dir",
    "check_value",
    "corrupt",
    "load_arrays",
    "load_json",
    "load_table",
    "save_arrays",
    "save_table",
    "verify_value",
    "write_manifest",
]

MANIFEST = "manifest.json"
"""The file of a stored value that lists its other files' sizes and checksums."""

CHECKSUM_LIMIT = 16 << 20
"""Files up to this size (16 MiB) have their checksum verified on every read and by
``check_value``; larger ones only their size, unless ``full=True``.

Why: SHA-256 (hardware-accelerated: SHA-NI on x86, the ARMv8 crypto extensions) hashed a 1 GB
.npy in 0.8-1.7 s on this project's 2 shared CPU cores (0.6-1.25 GB/s, idle to busy; blake2b:
2.9-3.7 s, hence SHA-256). Below 16 MiB a check costs at most ~30 ms, and the values read per
partition (a value.json, a records parquet, meta.json: KB to a few MB) about 0.1 ms each
(``StorageIOManager.problem`` of 1,000 17 KB explanations: 0.08 s), so thousands of partitions
are checked in well under a second. Above it sit the memory-mapped arrays (``sae_activations``:
many GB per layer on the paper presets, ``corpus_tokens``): a full hash on every read would read
the whole file from disk for each run that maps one feature's slice of it (seconds to minutes per
read, and the page cache evicted), so they get the size check (it catches the common damage:
truncation by an interrupted copy or a full disk) and their checksum is verified only on request
(``check_value(full=True)``, ``StorageIOManager.problem(..., full=True)``)."""

RECOMPUTE = "run `featureinterp run` to recompute it"
"""The fix every corrupt-value error names."""

_HASH = "sha256"


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
    """Store a polars frame as ``table.parquet`` plus ``meta.json`` (and the manifest), atomically."""
    with atomic_dir(path, manifest=True) as tmp:
        frame.write_parquet(tmp / "table.parquet")
        (tmp / "meta.json").write_text(json.dumps(dict(meta or {}), indent=1, default=str))


def load_table(path: Path | str, verified: bool = False) -> TableBundle:
    """Inverse of ``save_table``, after ``verify_value`` (``verified``: the caller ran it); an
    unreadable file is a CorruptFileError naming it."""
    import polars as pl

    path = Path(path)
    if not (path / "table.parquet").exists():
        raise CorruptFileError(f"no stored table at {path}: {RECOMPUTE}")
    if not verified:
        verify_value(path)
    try:
        frame = pl.read_parquet(path / "table.parquet")
    except (pl.exceptions.PolarsError, OSError) as err:
        raise corrupt(path / "table.parquet", f"unreadable ({_first_line(err)})") from err
    return TableBundle(frame, load_json(path / "meta.json"))


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


def _remove(path: Path) -> None:
    """Remove ``path`` whatever it is (folder, file, link), or nothing when it is absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path | str, manifest: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; it replaces ``path`` only if the block succeeds.

    ``manifest``: write ``manifest.json`` (``write_manifest``) of what the block wrote, inside the
    same atomic write, so a value is never in place without the record that checks it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if manifest:
            write_manifest(tmp)
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            _remove(old)  # a leftover of an interrupted write (a folder, or a file in the way)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
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
    activation table without reading the rest. The manifest hashes every file once (a staged
    file is read back for it: 0.8-1.7 s per GB measured, see ``CHECKSUM_LIMIT``).
    """
    with atomic_dir(path, manifest=True) as tmp:
        for name, arr in arrays.items():
            if isinstance(arr, StagedNpy):  # written outside memory: moved, never read back
                os.replace(arr.path, tmp / f"{name}.npy")
                with contextlib.suppress(OSError):
                    arr.path.parent.rmdir()  # the staging folder, once empty
            else:
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(dict(meta or {}), indent=1, default=str))


def load_arrays(
    path: Path | str, mmap: bool = True, verified: bool = False
) -> tuple[dict[str, np.ndarray], dict]:
    """Inverse of ``save_arrays``, after ``verify_value`` (``verified``: the caller ran it);
    arrays are memory-mapped read-only by default (so only their sizes are checked, see
    ``CHECKSUM_LIMIT``)."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise CorruptFileError(f"no stored arrays at {path} (missing meta.json): {RECOMPUTE}")
    if not verified:
        verify_value(path)
    meta = load_json(meta_file)
    arrays = {}
    for f in sorted(path.glob("*.npy")):
        try:
            arrays[f.stem] = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise CorruptFileError(
                f"unreadable stored arrays at {path}: {f.name}: {_first_line(err)}; {RECOMPUTE}"
            ) from err
    return arrays, meta


def corrupt(path: Path, what: str) -> CorruptFileError:
    """The one-line error for a damaged stored file or folder: its path, what is wrong, the fix."""
    return CorruptFileError(f"stored value {path}: {what}; {RECOMPUTE}")


def write_manifest(folder: Path) -> None:
    """``manifest.json`` in ``folder``: size and SHA-256 of each file in it (recursively)."""
    files = {
        f.relative_to(folder).as_posix(): {"size": f.stat().st_size, _HASH: _file_hash(f)}
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    text = json.dumps({"format": 1, "algorithm": _HASH, "files": files}, indent=1, sort_keys=True)
    (folder / MANIFEST).write_text(text)


def check_value(path: Path | str, full: bool = False) -> str | None:
    """What is wrong with the stored value in folder ``path``, in one line naming the file; None
    when it is intact.

    With a manifest: every listed file exists with its size, and files up to ``CHECKSUM_LIMIT``
    (all of them with ``full``) have their checksum. Without one (a value written before
    manifests; not itself a fault): the checks a file allows on its own, each reading at most a
    few hundred bytes besides small JSON files: JSON parses, a parquet file ends with its footer
    magic, a .npy file's size matches its header.
    """
    path = Path(path)
    if not path.is_dir():
        return f"{path}: missing folder"
    manifest = path / MANIFEST
    if not manifest.exists():
        if not any(path.iterdir()):
            return f"{path}: empty folder"
        return _legacy_problem(path)
    try:
        listed = json.loads(manifest.read_text())
        algorithm = str(listed["algorithm"])
        hashlib.new(algorithm)  # a name hashlib does not know is an unreadable manifest
        files = {str(name): (int(e["size"]), str(e[algorithm])) for name, e in listed["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        return f"{manifest}: unreadable manifest ({_first_line(err)})"
    for name, (expected, digest) in files.items():
        f = path / name
        if not f.is_file():
            return f"{f}: missing file"
        size = f.stat().st_size
        if size != expected:
            return f"{f}: {size} bytes, the manifest says {expected} (truncated or overwritten)"
        if (full or size <= CHECKSUM_LIMIT) and _file_hash(f, algorithm) != digest:
            return f"{f}: bad checksum (the bytes changed after it was written)"
    return None


def verify_value(path: Path | str, full: bool = False) -> None:
    """Raise ``CorruptFileError`` (one line: the file, what is wrong, the fix) when
    ``check_value`` finds a problem."""
    problem = check_value(path, full)
    if problem is not None:
        raise CorruptFileError(f"stored value {problem}; {RECOMPUTE}")


def _legacy_problem(path: Path) -> str | None:
    """``check_value`` of a value without a manifest."""
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        if f.suffix == ".json":
            try:
                json.loads(f.read_text())
            except (ValueError, OSError) as err:
                return f"{f}: unreadable JSON ({_first_line(err)})"
        elif f.suffix == ".parquet":
            size = f.stat().st_size
            with f.open("rb") as fh:
                head = fh.read(4)
                fh.seek(max(0, size - 4))
                tail = fh.read(4)
            if size < 12 or head != b"PAR1" or tail != b"PAR1":
                return f"{f}: not a whole parquet file ({size} bytes, no footer: truncated?)"
        elif f.suffix == ".npy":
            problem = _npy_problem(f)
            if problem:
                return f"{f}: {problem}"
    return None


def _npy_problem(f: Path) -> str | None:
    """A .npy file's size against the one its header implies (reads only the header)."""
    try:
        with f.open("rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError) as err:
        return f"unreadable .npy header ({_first_line(err)})"
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = f.stat().st_size
    return None if size == expected else f"{size} bytes, its header says {expected} (truncated?)"


def _file_hash(f: Path, algorithm: str = _HASH) -> str:
    """Hex digest of a file, read in chunks (``hashlib.file_digest``: never the whole file in memory)."""
    with f.open("rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def load_json(f: Path) -> Any:
    """A stored JSON file; an unreadable one is a CorruptFileError naming it."""
    try:
        return json.loads(f.read_text())
    except (ValueError, OSError) as err:
        raise corrupt(f, f"unreadable JSON ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def array_hash(*arrays: np.ndarray, extra: str = "") -> str:
    """Short content hash of arrays (dtype, shape and bytes) plus an extra string."""
    h = hashlib.sha256(extra.encode())
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]
