"""A small picture of one score: true vs simulated activations, token by token, on test records.

A score is one number; what a researcher wants to see is *where* the explanation is right and
wrong: which tokens it predicts that never fire (false positives on the similar non-activating
rows) and which firing tokens it misses. ``activation_strip`` draws that for a few test records
of each kind as a PNG small enough for the asset's metadata in the Dagster UI.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from featureinterp.names import POSITIVE_SOURCE, PRIMARY_SOURCE

if TYPE_CHECKING:
    import polars as pl

__all__ = ["StripRecord", "activation_strip"]

StripRecord = tuple[str, Sequence[str], Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]
"""(label, tokens, true 0..5, simulated 0..5) of one record."""


LABEL_CHARS = 12
"""Longest tick label; longer tokens are cut with an ellipsis."""


def _escape(text: str) -> str:
    """Newlines, tabs and other control characters written as escapes (the fonts have no glyph
    for them, and matplotlib warns on every missing glyph)."""
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "".join(named.get(c, f"\\x{ord(c):02x}" if ord(c) < 32 else c) for c in text)


def _label(token: str) -> str:
    """A token as a tick label: escaped (``_escape``) and cut to ``LABEL_CHARS``."""
    text = _escape(token)
    # a long token (a run of spaces, a URL) would need more height than its row has
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def activation_strip(records: Sequence[StripRecord], title: str = "", dpi: int = 80) -> bytes:
    """PNG bytes: one row per record, each token a column; the upper cell is the true activation,
    the lower the simulated one (both 0..5, white to dark red), the token printed underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("activation_strip needs at least one record")
    width = max(len(tokens) for _, tokens, _, _ in records)
    fig, axes = plt.subplots(
        len(records), 1, figsize=(max(6.0, 0.42 * width), 0.95 * len(records) + 0.5), squeeze=False
    )
    for ax, (label, tokens, true, simulated) in zip(axes[:, 0], records, strict=True):
        grid = np.full((2, width), np.nan)
        grid[0, : len(true)] = np.asarray(true, dtype=float)
        grid[1, : len(simulated)] = np.asarray(simulated, dtype=float)
        ax.imshow(grid, cmap="Reds", vmin=0, vmax=5, aspect="auto")
        ax.set_yticks([0, 1], ["true", "sim."], fontsize=7)
        ax.set_xticks(range(len(tokens)), [_label(t) for t in tokens], fontsize=6, rotation=60)
        ax.set_ylabel(_escape(label), fontsize=7, rotation=0, ha="right", va="center")
        for x in range(len(tokens)):
            for y, row in enumerate((true, simulated)):
                if x < len(row) and row[x] >= 0.5:
                    ax.text(x, y, f"{row[x]:.0f}", ha="center", va="center", fontsize=6)
    if title:  # an explanation: an explainer may write a tab or newline into it
        fig.suptitle(_escape(title), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def score_strip(
    frame: pl.DataFrame,
    predictions: dict[str, list[list[float]]],
    max_act: float,
    title: str,
    n_positive: int = 3,
    n_negative: int = 2,
) -> bytes:
    """``activation_strip`` of a score: the first test positives and similar non-activating rows
    of a records frame, with the simulated values ``simulate.evaluate`` returned for them
    (``predictions[source]`` in the records' rank order)."""
    import polars as pl

    from featureinterp.records.formatting import quantize

    rows: list[StripRecord] = []
    for source, n, label in ((POSITIVE_SOURCE, n_positive, "pos"), (PRIMARY_SOURCE, n_negative, "sim. neg")):
        part = frame.filter((pl.col("source") == source) & (pl.col("split") == "test")).sort("rank")
        for i, r in enumerate(part.head(n).iter_rows(named=True)):
            sim = predictions.get(source, [])
            if i < len(sim):
                rows.append((f"{label} {r['row']}", r["tokens"], quantize(r["acts"], max_act), sim[i]))
    return activation_strip(rows, title)
