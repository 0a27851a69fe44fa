"""Names shared by the library and the Dagster layer, defined once.

The synthetic layer, the record sources and the default rule cap used to be restated as literals
in several modules (``-1`` here, ``"SYN"`` there, a figure list of sources that no longer matched
what records produce); a mismatch between two copies fails silently (a figure falls back to
alphabetical order, a filter matches nothing). Every module imports them from here instead.
"""

from __future__ import annotations

import re

from featureinterp.errors import ConfigError

__all__ = [
    "PRESET_NAME_MAX",
    "check_preset_name",
    "COMPLEMENTARY_SOURCES",
    "DEFAULT_RULE_CAP",
    "GENERATED_SOURCE",
    "NEGATIVE_SOURCES",
    "POSITIVE_SOURCE",
    "PRIMARY_SOURCE",
    "SYNTHETIC_KEY",
    "SYNTHETIC_LAYER",
    "feature_key",
    "layer_key",
    "parse_feature_key",
    "parse_layer_key",
]

SYNTHETIC_LAYER = -1
"""Layer index of the synthetic ground-truth features (featureinterp/simulate/synthetic.py)."""
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
"""Complementary record sources (featureinterp/records/sources.py), in the documented order (Figure 3's
legend order); ``*_negative*`` = non-activating records only."""
NEGATIVE_SOURCES = ("random_negative", "similar_negative", "similar_negative_projected")
"""The complementary sources restricted to non-activating records."""
PRIMARY_SOURCE = "similar_negative"
"""The source of the primary score (positives + similar non-activating records)."""

GENERATED_SOURCE = "generated"
"""The seventh complementary source (ours): candidates the explainer writes from an explanation,
with their true activations (featureinterp/explain/generated.py); its own asset, not in records."""

DEFAULT_RULE_CAP = 5
"""Rules per structured explanation unless a condition says otherwise (the paper's cap)."""


PRESET_NAME_MAX = 100
_PRESET_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{PRESET_NAME_MAX - 1}}}")


def check_preset_name(name: str) -> None:
    """Refuse a preset name that is not a plain identifier.

    The name is joined into folder paths (the Dagster instance, the storage, the exports, the
    LanceDB tables): ``../../escaped`` would put them outside FEATUREINTERP_HOME, a ``/`` would
    nest them, a leading ``.`` would hide them. Letters, digits, ``-``, ``_`` and ``.`` (not
    first, never ``..``), at most PRESET_NAME_MAX characters, keep every path one folder deep.
    """
    if isinstance(name, str) and _PRESET_NAME.fullmatch(name) and ".." not in name:
        return
    plain = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)))
    suggestion = plain.strip(".-")[:PRESET_NAME_MAX].rstrip(".-") or "my-preset"
    raise ConfigError(
        f"preset name {name!r}: a preset name is joined into folder paths (instance, storage, exports), "
        f"so it must be 1-{PRESET_NAME_MAX} letters, digits, '-', '_' or '.', not start with '.' and hold "
        f'no \'..\'; rename it, e.g. name = "{suggestion}" (a preset file without a name field is named '
        "after the file)"
    )


def layer_key(layer: int) -> str:
    """Partition key of a layer; zero-padded so lexicographic order is numeric order."""
    if layer == SYNTHETIC_LAYER:
        return SYNTHETIC_KEY
    return f"L{layer:02d}"


def feature_key(feature: int) -> str:
    return f"F{feature:04d}"


def parse_layer_key(key: str) -> int:
    if key == SYNTHETIC_KEY:
        return SYNTHETIC_LAYER
    if len(key) < 2 or key[0] != "L" or not key[1:].isdigit():
        raise ConfigError(f"bad layer key {key!r}: expected 'L' followed by digits, e.g. 'L06'")
    return int(key[1:])


def parse_feature_key(key: str) -> int:
    if len(key) < 2 or key[0] != "F" or not key[1:].isdigit():
        raise ConfigError(f"bad feature key {key!r}: expected 'F' followed by digits, e.g. 'F0007'")
    return int(key[1:])
