"""featureinterp.storage: atomic directory writes (a failed block leaves the old contents and
no temp files), array and table round trips, NpyStream's block writes, the move of staged .npy
files, content hashes, and CorruptFileError for unreadable stores."""

import numpy as np
import polars as pl
import pytest

from featureinterp.errors import CorruptFileError
from featureinterp.storage import (
    NpyStream,
    array_hash,
    atomic_dir,
    load_arrays,
    load_table,
    save_arrays,
    save_table,
)


def test_save_and_load_arrays_round_trip_read_only(tmp_path):
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    save_arrays(tmp_path / "acts", {"a": a, "b": np.array([1, 2])}, {"layer": 5})
    arrays, meta = load_arrays(tmp_path / "acts")
    assert meta == {"layer": 5} and sorted(arrays) == ["a", "b"]
    np.testing.assert_array_equal(arrays["a"], a)
    assert arrays["a"].dtype == np.float16 and not arrays["a"].flags.writeable
    assert load_arrays(tmp_path / "acts", mmap=False)[0]["b"].flags.writeable


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    save_arrays(target, {"x": np.ones(2)})
    with pytest.raises(RuntimeError, match="interrupted"), atomic_dir(target) as tmp:
        (tmp / "x.npy").write_bytes(b"half")
        raise RuntimeError("interrupted")
    np.testing.assert_array_equal(load_arrays(target)[0]["x"], np.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temp or .old directory left"
    save_arrays(target, {"y": np.zeros(1)})
    assert sorted(load_arrays(target)[0]) == ["y"], "a rewrite replaces the whole directory"


def test_a_file_in_the_way_or_left_by_an_interrupted_write_never_blocks_a_value(tmp_path):
    """A file where a value's folder belongs (or a `.old` leftover, file or folder) is replaced:
    found on the embedded default, where a leftover `.L05.old` file made every later write fail."""
    target = tmp_path / "L05"
    target.write_text("a file where the folder was")
    save_arrays(target, {"x": np.ones(2)})
    assert target.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["L05"]
    (tmp_path / ".L05.old").write_text("left by an earlier write")
    save_arrays(target, {"y": np.zeros(1)})
    assert sorted(load_arrays(target)[0]) == ["y"] and sorted(p.name for p in tmp_path.iterdir()) == ["L05"]
    (tmp_path / ".L05.old").mkdir()
    (tmp_path / ".L05.old" / "x.npy").write_bytes(b"stale")
    save_arrays(target, {"z": np.zeros(1)})
    assert sorted(load_arrays(target)[0]) == ["z"] and sorted(p.name for p in tmp_path.iterdir()) == ["L05"]


def test_npy_stream_writes_row_blocks_and_is_moved_into_place(tmp_path):
    full = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    stream = NpyStream(tmp_path / "staging" / "acts.npy", full.shape, np.float32)
    stream.write_rows(3, full[:, 3:])
    stream.write_rows(0, full[:, :3])
    with pytest.raises(ValueError, match=r"at row 4 does not fit \(2, 5, 3\)"):
        stream.write_rows(4, full[:, :2])
    staged = stream.finish()
    np.testing.assert_array_equal(staged.load(), full)
    save_arrays(tmp_path / "stored", {"acts": staged})
    assert not (tmp_path / "staging").exists(), "moved, and the empty staging folder removed"
    np.testing.assert_array_equal(load_arrays(tmp_path / "stored")[0]["acts"], full)


def test_tables_round_trip_and_missing_stores_are_corrupt(tmp_path):
    frame = pl.DataFrame({"feature": [0, 1], "tokens": [["a", "b"], ["c"]]})
    save_table(tmp_path / "t", frame, {"source": "positive"})
    bundle = load_table(tmp_path / "t")
    assert bundle.frame.equals(frame) and bundle.meta == {"source": "positive"}
    with pytest.raises(CorruptFileError, match="no stored table"):
        load_table(tmp_path / "absent")
    save_arrays(tmp_path / "bad", {"x": np.ones(1)})
    (tmp_path / "bad" / "x.npy").write_bytes(b"not an npy file")
    with pytest.raises(CorruptFileError, match=r"bad/x\.npy: 15 bytes, the manifest says"):
        load_arrays(tmp_path / "bad")


def test_array_hash_depends_on_content_dtype_shape_and_extra():
    a = np.arange(6, dtype=np.int64)
    h = array_hash(a)
    assert len(h) == 16 and h == array_hash(a.copy())
    assert h == array_hash(a[::1].reshape(6))  # same bytes, same shape
    others = {
        array_hash(a + 1),
        array_hash(a.astype(np.int32)),
        array_hash(a.reshape(2, 3)),
        array_hash(a, extra="v2"),
    }
    assert h not in others and len(others) == 4
