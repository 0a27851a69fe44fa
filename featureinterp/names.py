"""Names shared by the library and the Dagster layer, defined once.

The synthetic layer, the record sources and the default rule cap used to be restated as literals
in several modules (``-1`` here, ``"SYN"`` there, a figure list of sources that no longer matched
what records produce); a mismatch between two copies fails silently (a figure falls back to
alphabetical order, a filter matches nothing). Every module imports them from here instead.
"""

from __future__ import annotations

__all__ = [
    "COMPLEMENTARY_SOURCES",
    "DEFAULT_RULE_CAP",
    "NEGATIVE_SOURCES",
    "POSITIVE_SOURCE",
    "PRIMARY_SOURCE",
    "SYNTHETIC_KEY",
    "SYNTHETIC_LAYER",
]

SYNTHETIC_LAYER = -1
"""Layer index of the synthetic ground-truth features (featureinterp/synthetic.py)."""
SYNTHETIC_KEY = "SYN"
"""Layer partition key of the synthetic features (``layer_key(SYNTHETIC_LAYER)``)."""

POSITIVE_SOURCE = "positive"
"""Record source of the activating (top) records."""
COMPLEMENTARY_SOURCES = (
    "random",
    "random_negative",
    "similar",
    "similar_negative",
    "similar_projected",
    "similar_negative_projected",
)
"""Complementary record sources (featureinterp/records.py), in the documented order (Figure 3's
legend order); ``*_negative*`` = non-activating records only."""
NEGATIVE_SOURCES = ("random_negative", "similar_negative", "similar_negative_projected")
"""The complementary sources restricted to non-activating records."""
PRIMARY_SOURCE = "similar_negative"
"""The source of the primary score (positives + similar non-activating records)."""

DEFAULT_RULE_CAP = 5
"""Rules per structured explanation unless a condition says otherwise (the paper's cap)."""
