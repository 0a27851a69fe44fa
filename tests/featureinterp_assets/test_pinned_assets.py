"""What a user's Dagster home depends on stays put when the code moves: asset keys, code versions
(with their preset fingerprints), partitions, dependencies and check names of an embedded and a
paper preset, compared with the values pinned in ``tests/data/pinned_assets.json``.

A changed code version marks every stored partition of that asset stale ("code version changed")
and `featureinterp run` recomputes it; a changed key or partition orphans the stored values. So a
refactor must leave this file's values equal. A change that means to recompute (a new method, a
bug fix in a stage) bumps the code version on purpose and re-pins with
``FEATUREINTERP_REPIN=1 pytest tests/featureinterp_assets/test_pinned_assets.py``, saying why in
the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from featureinterp.presets import get_preset
from featureinterp_assets.definitions import build_definitions

PINNED = Path(__file__).resolve().parents[1] / "data" / "pinned_assets.json"
PRESETS = ("embedded", "gemma-2-9b")


def _partitions(parts: dg.PartitionsDefinition | None) -> str | None:
    if parts is None:
        return None
    if isinstance(parts, dg.MultiPartitionsDefinition):
        return "x".join(f"{d.name}:{_partitions(d.partitions_def)}" for d in parts.partitions_defs)
    if isinstance(parts, dg.DynamicPartitionsDefinition):
        return f"dynamic:{parts.name}"
    return f"{type(parts).__name__}:{','.join(parts.get_partition_keys())}"


def snapshot(preset_name: str, tmp: Path) -> dict[str, dict[str, object]]:
    """asset key -> what a stored value of it is keyed by and judged fresh against."""
    defs = build_definitions(get_preset(preset_name), home=tmp, models=tmp)
    graph = defs.resolve_asset_graph()
    out: dict[str, dict[str, object]] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not node.is_materializable:
            continue
        out[key.to_user_string()] = {
            "code_version": node.code_version,
            "partitions": _partitions(node.partitions_def),
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
        }
    checks = sorted(c.to_user_string() for c in graph.asset_check_keys)
    return {"assets": out, "checks": checks}  # type: ignore[dict-item]


@pytest.mark.parametrize("preset_name", PRESETS)
def test_asset_keys_and_code_versions_are_pinned(preset_name: str, tmp_path: Path) -> None:
    got = json.loads(json.dumps(snapshot(preset_name, tmp_path)))
    if os.environ.get("FEATUREINTERP_REPIN") == "1":
        pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
        pinned[preset_name] = got
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    want = json.loads(PINNED.read_text())[preset_name]
    changed = {
        k: {"pinned": want["assets"].get(k), "now": got["assets"].get(k)}
        for k in sorted(set(want["assets"]) | set(got["assets"]))
        if want["assets"].get(k) != got["assets"].get(k)
    }
    assert not changed, f"{preset_name}: assets differ from the pinned ones (stored values would go stale): {changed}"
    assert got["checks"] == want["checks"]
