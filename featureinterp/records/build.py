"""One feature's records, built end to end: row selection, splits, the table and its checks.

Why a module of its own: the ``records`` asset used to do these steps itself, so building one
feature's records needed Dagster. Here they are one library call on plain arrays, which the
asset wraps (metadata, check results) and scripts or tests can call directly. Kept apart from
featureinterp/records/sources.py, which holds the steps (and the record types) this composes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from featureinterp.config import Preset
from featureinterp.names import POSITIVE_SOURCE
from featureinterp.records.sources import (
    CheckOutcome,
    RecordParams,
    Selection,
    assign_splits,
    check_records,
    records_frame,
    records_generator,
    select_rows,
)
from featureinterp.retrieval.index import CorpusIndex

__all__ = ["BuiltRecords", "build_feature_records"]


@dataclass(frozen=True)
class BuiltRecords:
    """What :func:`build_feature_records` returns for one (layer, feature)."""

    frame: pl.DataFrame
    """The records table: one row per (record, split, source) (featureinterp.records.sources.records_frame)."""
    meta: dict[str, Any]
    """Stored beside the table: layer, feature, ``max_act``, ``dead``, ``short_sources``, ``faithful``."""
    selection: Selection
    """The selected rows per source (positives, complementary sources, special rows)."""
    checks: list[CheckOutcome]
    """Outcomes of featureinterp.records.sources.check_records on the table."""

    @property
    def counts(self) -> dict[str, int]:
        """Rows selected per source, positives first."""
        sel = self.selection
        return {POSITIVE_SOURCE: len(sel.positives), **{s: len(v) for s, v in sel.sources.items()}}


def build_feature_records(
    spec: Preset,
    params: RecordParams,
    index: CorpusIndex,
    tokens: np.ndarray,
    acts: np.ndarray,
    tokenizer: Any,
    layer: int,
    feature: int,
) -> BuiltRecords:
    """The records of ``feature`` at ``layer``: positives and complementary rows selected with the
    feature's own generator, split into train/valid/test, tabulated and checked.

    ``tokens``: [N, T] token rows of the corpus; ``acts``: [N, T] float32 activations of the
    feature on them (position 0 is BOS when ``spec.prepend_bos``, and never counts).
    """
    start = int(spec.prepend_bos)
    row_max = acts[:, start:].max(axis=1)  # [N]
    rng = records_generator(spec.seed, spec.name, layer, feature, params.faithful)
    sel = select_rows(row_max, index.vectors(), index, params, rng)
    frame = records_frame(assign_splits(sel, params), tokens, acts, tokenizer, bool(start))
    meta = {
        "layer": layer,
        "feature": feature,
        "max_act": float(row_max.max()),
        "dead": sel.dead,
        "short_sources": sel.short,
        "faithful": params.faithful,
    }
    return BuiltRecords(frame, meta, sel, check_records(frame, row_max, params))
