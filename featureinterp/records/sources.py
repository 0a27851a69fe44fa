"""Per-feature records: positives, six complementary sources, train/valid/test splits.

Paper-method.md sections 1.5 and 2, with the original code's bugs fixed and reproducible behind
``RecordParams.faithful``:

- retrieval is a global top-k over the whole corpus, each list deepened on its own up to the whole
  corpus (faithful: the paper's growing prefix scan, one doubling depth shared by the plain and
  projected lists, and no try at a depth past the corpus size);
- every random draw comes from a generator seeded by (seed, preset, layer, feature) (the paper
  resets the global seed, so "random" rows repeat across features; faithful: one per layer);
- no complementary list contains a positive, and random rows are drawn without replacement
  (faithful: C draws with replacement over all rows);
- positives and the "special" rows come from the firing rows only (faithful: the top rows by row
  max, firing or not);
- a source that cannot fill its rows stays short and says so (the paper silently substitutes
  random rows), and the validation split is the validation slice (faithful: the train slice).

The record types the explainer reads (``Record``, ``FeatureRecords``) live here too, next to the
selection that produces them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featureinterp.data.corpus import decode_tokens
from featureinterp.names import COMPLEMENTARY_SOURCES, NEGATIVE_SOURCES, POSITIVE_SOURCE
from featureinterp.retrieval.index import (
    CorpusIndex,
    mean_direction,
    prefix_scan_order,
    projected_scores,
    train_projection,
)

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "Record",
    "FeatureRecords",
    "COMPLEMENTARY_SOURCES",
    "NEGATIVE_SOURCES",
    "SPLITS",
    "RecordParams",
    "Selection",
    "feature_generator",
    "records_generator",
    "select_rows",
    "assign_splits",
    "records_frame",
    "check_records",
    "CheckOutcome",
    "split_records",
]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, eq=False)
class Record:
    """One record shown to (train) or scored for (valid) the explainer."""

    tokens: tuple[str, ...]
    acts: np.ndarray
    """Raw activation per token (float, the feature's own units)."""
    holistic: np.ndarray | None = None
    """Raw holistic (leave-one-token-out) value per token, when available."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "acts", np.asarray(self.acts, dtype=np.float64))
        if self.acts.shape != (len(self.tokens),):
            raise ValueError(f"record has {len(self.tokens)} tokens but acts of shape {self.acts.shape}")
        if self.holistic is not None:
            object.__setattr__(self, "holistic", np.asarray(self.holistic, dtype=np.float64))
            if self.holistic.shape != (len(self.tokens),):
                raise ValueError(
                    f"record has {len(self.tokens)} tokens but holistic values of shape {self.holistic.shape}"
                )


@dataclass(frozen=True, eq=False)
class FeatureRecords:
    """What the explainer sees of one feature: train records to explain, valid records to pick by."""

    train: tuple[Record, ...]
    valid: tuple[Record, ...]
    max_act: float
    """The feature's maximum over the whole corpus: the 0..5 formatting scale (section 3)."""
    max_holistic: float = 0.0
    """Likewise for holistic values."""


@dataclass(frozen=True)
class RecordParams:
    """Record sampling (paper defaults)."""

    top_sample_n: int = 30
    """Positives per feature."""
    top_pool: int = 100
    """Positives are drawn without replacement from this many top rows (by per-row max)."""
    complementary_n: int = 30
    """Rows per complementary source."""
    special_n: int = 400
    """Top rows whose embeddings define 'similar'."""
    retrieve_n: int = 150
    """First retrieval depth (doubled until the negatives fill up), as in the paper."""
    max_tries: int = 10
    per_split: int = 10
    """Positives and rows of each complementary source per split."""
    faithful: bool = False
    """Reproduce the paper's code (paper-method.md 1.5, 2 and 12.3-12.6): prefix-scan retrieval
    with one depth loop for both similar lists that stops once the depth exceeds the corpus, top
    rows whether or not they fire, random rows drawn with replacement over all rows and the same
    for every feature of a layer (``records_generator``), and valid split == train slice."""


def feature_generator(seed: int, preset: str, layer: int, feature: int) -> np.random.Generator:
    """Independent, reproducible randomness per (preset, layer, feature); never a global seed."""
    digest = hashlib.sha256(f"{seed}|{preset}|{layer}|{feature}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def records_generator(
    seed: int, preset: str, layer: int, feature: int, faithful: bool
) -> np.random.Generator:
    """The generator of one feature's row selection. ``faithful``: the paper's behaviour, where the
    projection training resets the global seed for every feature (paper-method.md 11.1, item 3),
    so every feature of a layer draws its random rows and its top-100 sample from the same state:
    one generator per layer, not per feature (the paper's first feature may differ; ours does not).
    ``select_rows`` draws the same amount before the random rows for every feature, so a layer's
    features get identical random rows."""
    return feature_generator(seed, preset, layer, -1 if faithful else feature)


@dataclass
class Selection:
    """Row indices chosen for one feature."""

    positives: np.ndarray
    sources: dict[str, np.ndarray]
    special: np.ndarray
    dead: bool = False
    short: dict[str, int] = field(default_factory=dict)
    """Sources with fewer than ``complementary_n`` rows -> rows found."""


def _first(ranked: np.ndarray, exclude: np.ndarray, n: int, keep: np.ndarray | None = None) -> np.ndarray:
    """First ``n`` rows of ``ranked`` not in ``exclude`` (and, if given, with ``keep[row]`` true)."""
    mask = ~np.isin(ranked, exclude)
    if keep is not None:
        mask &= keep[ranked]
    return ranked[mask][:n]


def _similar_pair(
    rank_fn: Callable[[int], np.ndarray],
    n_rows: int,
    exclude: np.ndarray,
    negative: np.ndarray,
    p: RecordParams,
) -> tuple[np.ndarray, np.ndarray]:
    """(similar, similar_negative) from a ranking function ``rank_fn(depth) -> rows best first``,
    deepening until both lists are full or the corpus is exhausted (``_similar_lists``)."""
    return _similar_lists([rank_fn], n_rows, exclude, negative, p)[0]


def _similar_lists(
    rank_fns: Sequence[Callable[[int], np.ndarray]],
    n_rows: int,
    exclude: np.ndarray,
    negative: np.ndarray,
    p: RecordParams,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(similar, similar_negative) of every ranking function, all ranked at one depth that doubles
    from ``p.retrieve_n`` (at most ``p.max_tries`` depths) until every list is full.

    Ours (one function per call): the depth is clamped to the corpus, and a try at the whole
    corpus is the last. Faithful (the paper's loop, paper-method.md 1.5 step 6): the depth doubles
    and the loop ends, without another try, once it exceeds the corpus: for 4000 rows and a first
    depth of 150 the depths are 150, ..., 2400, never 4000.
    """
    c = p.complementary_n
    depth = p.retrieve_n
    lists: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(p.max_tries):
        ranked = [fn(depth if p.faithful else min(depth, n_rows)) for fn in rank_fns]
        lists = [(_first(r, exclude, c), _first(r, exclude, c, negative)) for r in ranked]
        if all(len(sim) >= c and len(neg) >= c for sim, neg in lists):
            break
        if not p.faithful and depth >= n_rows:
            break
        depth *= 2
        if p.faithful and depth > n_rows:
            break
    return lists


def select_rows(
    row_max: np.ndarray,
    vectors: np.ndarray,
    index: CorpusIndex | None,
    params: RecordParams,
    rng: np.random.Generator,
) -> Selection:
    """Choose positives and complementary rows for one feature.

    ``row_max`` [N]: the feature's max activation per row (BOS excluded); ``vectors`` [N, d]:
    normalised row embeddings; ``index``: the LanceDB table for the global plain search (exact at
    every size, ``CorpusIndex.search``; None: the same exact ranking scored here in memory).
    """
    n = len(row_max)
    c = params.complementary_n
    order = np.argsort(-row_max, kind="stable")
    firing = int((row_max > 0).sum())
    if firing == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Selection(
            empty,
            {s: empty for s in COMPLEMENTARY_SOURCES},
            empty,
            dead=True,
            short={s: 0 for s in COMPLEMENTARY_SOURCES},
        )
    negative = row_max <= 0
    # The paper takes the top rows by row max whether or not they fire (faithful); ours only
    # firing rows, so a sparse feature's positives and similarity direction are its own.
    top = n if params.faithful else firing
    pool = order[: min(params.top_pool, top)]
    positives = rng.choice(pool, size=min(params.top_sample_n, len(pool)), replace=False)
    special = order[: min(params.special_n, top)]

    if params.faithful:
        # The paper: C draws with replacement over all rows (positives and repeats possible). The
        # generator is the layer's (``records_generator``) and the positives' draw above takes the
        # same amount of it for every feature, so every feature of a layer gets these same rows.
        random = rng.integers(0, n, size=c)
    else:
        others = np.setdiff1d(np.arange(n), positives)
        random = rng.choice(others, size=min(c, len(others)), replace=False)
    sources = {
        "random": random,
        # every non-firing row: in faithful mode a positive may not fire, and stays eligible here
        "random_negative": rng.permutation(np.flatnonzero(negative))[:c],
    }
    direction = mean_direction(vectors[special])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    proj_scores = projected_scores(
        vectors, vectors[special], train_projection(vectors[special], vectors, gen)
    )
    if params.faithful:
        # the paper's prefix scans, both lists deepened together by one loop
        scores = vectors @ direction
        plain = lambda depth: prefix_scan_order(scores, depth)  # noqa: E731
        projected = lambda depth: prefix_scan_order(proj_scores, depth)  # noqa: E731
        pairs = _similar_lists([plain, projected], n, positives, negative, params)
    else:
        if index is not None:
            plain = lambda depth: index.search(direction, depth)  # noqa: E731
        else:
            full = np.argsort(-(vectors @ direction), kind="stable")
            plain = lambda depth: full[:depth]  # noqa: E731
        full_proj = np.argsort(-proj_scores, kind="stable")
        projected = lambda depth: full_proj[:depth]  # noqa: E731
        pairs = [_similar_pair(fn, n, positives, negative, params) for fn in (plain, projected)]
    sources["similar"], sources["similar_negative"] = pairs[0]
    sources["similar_projected"], sources["similar_negative_projected"] = pairs[1]
    sources = {k: np.asarray(v, dtype=np.int64) for k, v in sources.items()}
    short = {k: len(v) for k, v in sources.items() if len(v) < c}
    return Selection(np.asarray(positives, dtype=np.int64), sources, special, short=short)


def assign_splits(sel: Selection, params: RecordParams) -> list[tuple[int, str, int, str | None]]:
    """(row, source, rank, split) for every chosen row; splits interleave ranks (k, k+3, k+6, ...).

    Interleaving gives each split a comparable similarity-rank profile. Rows past 3 * per_split get
    split None. Faithful mode gives 'valid' the train slice, as the paper's code does.
    """
    out: list[tuple[int, str, int, str | None]] = []
    lists = {POSITIVE_SOURCE: sel.positives, **sel.sources}
    for source, rows in lists.items():
        split_of: dict[int, list[str]] = {}
        for k, split in enumerate(SPLITS):
            kk = 0 if (params.faithful and split == "valid") else k
            for rank in range(kk, min(len(rows), 3 * params.per_split), 3):
                split_of.setdefault(rank, []).append(split)
        for rank, row in enumerate(rows.tolist()):
            for assigned in split_of.get(rank, [None]):
                out.append((row, source, rank, assigned))
    return out


def records_frame(
    assignments: Sequence[tuple[int, str, int, str | None]],
    tokens: np.ndarray,
    acts: np.ndarray,
    tokenizer: Any,
    skip_first: bool,
) -> pl.DataFrame:
    """The records table: one line per (row, source, split) with per-token strings and activations.

    ``tokens`` [N, T] and ``acts`` [N, T] (this feature) include the BOS column, which is dropped
    here when ``skip_first``.
    """
    import polars as pl

    start = int(skip_first)
    rows = np.array([a[0] for a in assignments], dtype=np.int64)
    uniq, inverse = np.unique(rows, return_inverse=True)
    per_row = decode_tokens(tokenizer, np.asarray(tokens[uniq, start:])) if len(uniq) else []
    values = np.asarray(acts[uniq, start:], dtype=np.float32)
    return pl.DataFrame(
        {
            "row": rows,
            "source": [a[1] for a in assignments],
            "rank": np.array([a[2] for a in assignments], dtype=np.int32),
            "split": [a[3] for a in assignments],
            "tokens": [per_row[i] for i in inverse],
            "acts": [values[i].tolist() for i in inverse],
            "row_max": values.max(axis=1)[inverse] if len(uniq) else np.zeros(0, np.float32),
        },
        schema_overrides={"tokens": pl.List(pl.String), "acts": pl.List(pl.Float32), "row_max": pl.Float32},
    )


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    """True: an invariant (the records are wrong); False: a quality warning."""
    detail: str


PAPER_LEAKS = ("random", "random_negative")
"""Sources the paper draws without excluding the positives: a positive among them is the paper's
behaviour in faithful mode (random rows come from all rows, random-negatives from all non-firing
rows, and a sparse feature's positives may not fire)."""
PAPER_REPEATS = ("random",)
"""Sources the paper draws with replacement: a row twice is the paper's behaviour in faithful mode."""


def check_records(frame: pl.DataFrame, row_max: np.ndarray, params: RecordParams) -> list[CheckOutcome]:
    """Invariants of a records table, judged against the feature's true per-row maxima ``row_max``.

    Faithful mode accepts what the paper's code does (a positive among the random or
    random-negative rows, a random row drawn twice, valid = train slice) and says so in the detail.
    """
    import polars as pl

    c = params.complementary_n
    listed = frame.filter(pl.col("rank") >= 0).unique(["source", "rank"])  # one line per list entry
    lists = listed.unique(["row", "source"])
    counts = {
        s: listed.filter(pl.col("source") == s).height for s in (POSITIVE_SOURCE, *COMPLEMENTARY_SOURCES)
    }
    short = {s: n for s, n in counts.items() if s != POSITIVE_SOURCE and n < c}
    neg_rows = lists.filter(pl.col("source").is_in(NEGATIVE_SOURCES))["row"].to_numpy()
    firing_negs = sorted(set(neg_rows[row_max[neg_rows] > 0].tolist()))
    pos = set(lists.filter(pl.col("source") == POSITIVE_SOURCE)["row"].to_list())
    leaks = {
        s: sorted(pos & set(lists.filter(pl.col("source") == s)["row"].to_list()))
        for s in COMPLEMENTARY_SOURCES
    }
    paper_leaks = {s: v for s, v in leaks.items() if v and params.faithful and s in PAPER_LEAKS}
    leaked = sorted({r for s, v in leaks.items() if s not in paper_leaks for r in v})
    repeated = listed.group_by("source", "row").len().filter(pl.col("len") > 1).sort("source", "row")
    repeats = {
        s: repeated.filter(pl.col("source") == s)["row"].to_list() for s in repeated["source"].unique()
    }
    paper_repeats = {s: v for s, v in repeats.items() if params.faithful and s in PAPER_REPEATS}
    bad_repeats = {s: v[:10] for s, v in sorted(repeats.items()) if s not in paper_repeats}
    # An experiment uses the positives plus one complementary source, so splits must be disjoint
    # within every (positives + source) set; one row may serve two sources (a similar-negative is
    # also similar), which never meet in one experiment.
    overlap = {}
    for source in COMPLEMENTARY_SOURCES:
        used = frame.filter(pl.col("source").is_in([POSITIVE_SOURCE, source]))
        by_split = {s: set(used.filter(pl.col("split") == s)["row"].to_list()) for s in SPLITS}
        for i, a in enumerate(SPLITS):
            for b in SPLITS[i + 1 :]:
                if n_shared := len(by_split[a] & by_split[b]):
                    overlap[f"{source}:{a}&{b}"] = n_shared
    max_act = float(row_max.max()) if len(row_max) else 0.0
    paper = " (faithful: as the paper's code draws them: {})"
    return [
        CheckOutcome("source_counts", not short, False, f"counts {counts}; short: {short or 'none'}"),
        CheckOutcome(
            "negatives_non_activating",
            not firing_negs,
            True,
            f"firing rows in negative sources: {firing_negs[:10] or 'none'}",
        ),
        CheckOutcome(
            "no_positive_leak",
            not leaked,
            True,
            f"positives in complementary sources: {leaked[:10] or 'none'}"
            + (paper.format({s: v[:10] for s, v in paper_leaks.items()}) if paper_leaks else ""),
        ),
        CheckOutcome(
            "rows_distinct",
            not bad_repeats,
            True,
            f"rows listed twice in one source: {bad_repeats or 'none'}"
            + (paper.format({s: v[:10] for s, v in paper_repeats.items()}) if paper_repeats else ""),
        ),
        CheckOutcome(
            "splits_disjoint",
            params.faithful or not overlap,
            True,
            f"overlapping rows between splits: {overlap or 'none'}"
            + (" (faithful: valid = train slice)" if params.faithful else ""),
        ),
        CheckOutcome("feature_alive", max_act > 0, False, f"max activation {max_act:.4g}"),
    ]


def split_records(
    frame: pl.DataFrame, source: str, split: str, holistic: dict[int, np.ndarray] | None
) -> list[Record]:
    """The records of one (source, split) of a feature's records frame, in rank order, with their
    holistic values when ``holistic`` (row -> values) is given: what the explainer and the test
    evaluation read from the stored records table."""
    import polars as pl

    part = frame.filter((pl.col("source") == source) & (pl.col("split") == split)).sort("rank")
    return [
        Record(
            tuple(r["tokens"]),
            np.asarray(r["acts"], dtype=np.float32),
            None if holistic is None else holistic.get(r["row"]),
        )
        for r in part.iter_rows(named=True)
    ]
