"""Presets: the built-in catalogue, preset files, the paper presets' CPU stand-ins, and the one
resolver every entry point calls (``get_preset``).

The preset *types* live in ``featureinterp.config``, which imports nothing of the stages; this
package sits on top of the library (a preset file names conditions, a stand-in builds tiny models
and SAEs), so resolving a name never climbs back down into the data types' module.

- ``builtin``: the embedded CPU set-ups and the paper's three GPU set-ups.
- ``files``: presets as TOML / YAML / JSON files and as plain data.
- ``standin``: tiny random-weight models of each paper preset's architecture, with SAEs of its
  family (``architectures``, ``sae_families``), loaded by the same code as the real ones.
- ``scope``: what a preset covers (the partitions each condition and per-feature asset run on),
  computed once for the Dagster layer, the CLI and the cost plan.
"""

from __future__ import annotations

import os

from featureinterp.config import FAITHFUL_SUFFIX, PRESET_ENV, STANDIN_SUFFIX, Preset
from featureinterp.errors import ConfigError
from featureinterp.presets.builtin import PRESETS
from featureinterp.presets.files import is_preset_file, load_preset_file
from featureinterp.presets.standin import standin_preset

__all__ = ["PRESETS", "get_preset"]


def get_preset(name: str | None = None) -> Preset:
    """The preset called ``name`` (a built-in name, ``<name>-faithful``, ``<name>-standin`` or the
    path of a preset file), else the one $FEATUREINTERP_PRESET names, else ``embedded``."""
    name = name or os.environ.get(PRESET_ENV) or "embedded"
    if is_preset_file(name):  # a user's preset file (TOML, YAML or JSON)
        return load_preset_file(name)
    if name.endswith(FAITHFUL_SUFFIX):  # the paper code's behaviour, stored apart to compare with
        return get_preset(name.removesuffix(FAITHFUL_SUFFIX)).replace(name=name, faithful=True)
    base = name.removesuffix(STANDIN_SUFFIX)
    if base != name and base in PRESETS:
        return standin_preset(base)  # a paper preset's CPU stand-in
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r} (from {'$' + PRESET_ENV if os.environ.get(PRESET_ENV) == name else 'argument'}); "
            f"choose one of: {', '.join(sorted(PRESETS))}, or the path of a preset file (.toml, .yaml, .json)"
        ) from None
