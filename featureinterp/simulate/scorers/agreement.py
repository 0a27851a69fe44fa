"""How far a cheap score tracks the expensive one: per layer, the rank correlation (Spearman)
between the simulation score and each secondary score over the layer's explanations.

A secondary score that ranks explanations like simulation does lets a user screen thousands of
features cheaply and simulate only the promising ones; one that does not is a different
question, not a cheaper answer. Each pair is one (feature, condition) explanation of the layer;
pairs where either score is undefined (NaN) are left out and the count says how many remained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from featureinterp.simulate.scorers.metrics import spearman

__all__ = ["HEADLINE_COLUMNS", "SCORERS", "agreement", "layer_agreement"]

SCORERS = ("detection", "fuzzing", "embedding")
"""The secondary scorers, in the order reports list them."""


def agreement(explanations: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int]]:
    """``{scorer: {"spearman": rho, "pairs": n}}`` over rows with a ``score`` (simulation) and a
    ``<scorer>`` headline each (missing or NaN: the pair is skipped)."""
    out: dict[str, dict[str, float | int]] = {}
    for scorer in SCORERS:
        raw = [(r.get("score"), r.get(scorer)) for r in explanations]
        pairs = [(float(a), float(b)) for a, b in raw if a is not None and b is not None]
        rho, n = spearman([a for a, _ in pairs], [b for _, b in pairs])
        out[scorer] = {"spearman": rho, "pairs": n}
    return out


HEADLINE_COLUMNS = {
    "detection": "detection_balanced_accuracy",
    "fuzzing": "fuzzing_balanced_accuracy",
    "embedding": "embedding_auroc",
}
"""The figure-table column (featureinterp.figures.common.SECONDARY_COLUMNS) of each scorer's
headline, read on the primary source's rows."""


def layer_agreement(frame: Any) -> dict[str, dict[str, float | int]]:
    """``agreement`` over one layer's figure table (one row per feature x condition x source):
    each explanation's simulation score and secondary headlines on the primary source's rows."""
    import polars as pl

    from featureinterp.names import PRIMARY_SOURCE

    primary = frame.filter(pl.col("source") == PRIMARY_SOURCE)
    rows = [
        {"score": r["score"], **{s: r[c] for s, c in HEADLINE_COLUMNS.items()}}
        for r in primary.iter_rows(named=True)
    ]
    return agreement(rows)
