"""The corpus-embedding table is reused only when it is whole (issue 28 item 6): a truncated data
file, or rows that are not exactly 0..n-1, are rebuilt by ``CorpusIndex.build`` (what the
``corpus_embeddings`` asset calls), and opening a damaged table names its path. Real LanceDB
tables of a few hundred cheap vectors (no embedder)."""

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from featureinterp.errors import CorruptFileError
from featureinterp.retrieval.index import CorpusIndex

N, D = 300, 16
VECTORS = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
TEXTS = [f"row {i}" for i in range(N)]


class Embedder:
    """Counts the rows it embeds: a reused table embeds none."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, chunk: list[str]) -> np.ndarray:
        self.rows += len(chunk)
        return VECTORS[[int(t.split()[1]) for t in chunk]]


def _truncate_a_data_file(uri: Path, name: str) -> Path:
    data = sorted((uri / f"{name}.lance" / "data").glob("*.lance"))[-1]
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return data


def test_a_truncated_table_is_rebuilt_not_reused(tmp_path):
    embed = Embedder()
    CorpusIndex.build(str(tmp_path), "rows", TEXTS, embed, batch_size=100)
    again, built = CorpusIndex.build(str(tmp_path), "rows", TEXTS, embed, batch_size=100)
    assert not built and embed.rows == N, "an intact table is reused"

    _truncate_a_data_file(tmp_path, "rows")
    assert lancedb.connect(str(tmp_path)).open_table("rows").count_rows() == N  # the count alone looks fine
    embed.rows = 0
    rebuilt, built = CorpusIndex.build(str(tmp_path), "rows", TEXTS, embed, batch_size=100)
    assert built and embed.rows == N
    assert np.array_equal(rebuilt.vectors(), VECTORS)


def test_a_table_whose_rows_are_not_0_to_n_minus_1_is_rebuilt(tmp_path):
    db = lancedb.connect(str(tmp_path))
    shifted = pa.table(
        {
            "row": pa.array(np.arange(1, N + 1), pa.int64()),  # right count, wrong ids
            "text": pa.array(TEXTS, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(VECTORS.reshape(-1)), D),
        }
    )
    db.create_table("rows", data=shifted)
    embed = Embedder()
    index, built = CorpusIndex.build(str(tmp_path), "rows", TEXTS, embed, batch_size=100)
    assert built and embed.rows == N and np.array_equal(index.vectors(), VECTORS)


def test_opening_a_damaged_table_names_its_path(tmp_path):
    CorpusIndex.build(str(tmp_path), "rows", TEXTS, Embedder(), batch_size=100)
    _truncate_a_data_file(tmp_path, "rows")
    with pytest.raises(CorruptFileError) as err:
        CorpusIndex.open(str(tmp_path), "rows", rows=N)
    assert str(tmp_path / "rows.lance") in str(err.value) and "corpus_embeddings" in str(err.value)
