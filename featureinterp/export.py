"""Explanations and scores as shareable data: a parquet table and a Neuronpedia explanations JSON.

One row per (layer, feature, condition) explanation. The table is plain parquet, loadable with
polars, pandas or Hugging Face ``datasets`` (``load_dataset("parquet", data_files=...)``); nested
per-source values are JSON strings so every row has the same columns whatever sources exist.

Columns (``EXPORT_SCHEMA``; ``export_version`` changes when they do):

- provenance: ``export_version``, ``featureinterp_version``, ``preset``, ``preset_hash`` (of the
  resolved preset), ``code_versions`` (JSON: asset -> code version that produced the values);
- what was explained: ``model_id``, ``sae_id`` (sae-lens ``<release>/<id>``, or ``<layer>-<preset>-trained``),
  ``layer`` (key, e.g. ``L05``), ``feature``;
- how: ``condition``, ``method``, ``rule_cap`` (the cap that ran; null: uncapped free text),
  ``explainer``, ``structured``;
- the explanation: ``description`` (one line), ``rules`` (JSON list of {activates_on, strength});
- scores: ``simulation_score`` (the primary test correlation), ``detection_score``,
  ``fuzzing_score`` (balanced accuracy), ``embedding_score`` (AUROC), ``complexity``, ``n_rules``,
  and ``per_source`` (JSON: scorer -> source -> metrics; ``simulation`` holds score and fp_rate);
- the records: ``record_rows`` (JSON: source -> split -> corpus row ids).

A missing score (a scorer not run for that condition) is NaN, never a guess.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from featureinterp import __version__
from featureinterp.config import Preset, parse_layer_key
from featureinterp.explanations.rules import Explanation
from featureinterp.storage import atomic_write

__all__ = [
    "EXPORT_SCHEMA",
    "EXPORT_VERSION",
    "export_frame",
    "export_row",
    "neuronpedia_explanations",
    "preset_hash",
    "sae_id",
    "write_export",
]

EXPORT_VERSION = 1

EXPORT_SCHEMA: dict[str, Any] = {
    "export_version": pl.Int64,
    "featureinterp_version": pl.String,
    "preset": pl.String,
    "preset_hash": pl.String,
    "code_versions": pl.String,
    "model_id": pl.String,
    "sae_id": pl.String,
    "layer": pl.String,
    "feature": pl.Int64,
    "condition": pl.String,
    "method": pl.String,
    "rule_cap": pl.Int64,
    "explainer": pl.String,
    "structured": pl.Boolean,
    "description": pl.String,
    "rules": pl.String,
    "simulation_score": pl.Float64,
    "detection_score": pl.Float64,
    "fuzzing_score": pl.Float64,
    "embedding_score": pl.Float64,
    "complexity": pl.Float64,
    "n_rules": pl.Int64,
    "per_source": pl.String,
    "record_rows": pl.String,
}
"""The export table's columns (documented in the module docstring)."""

SCORERS = ("detection", "fuzzing", "embedding")


def preset_hash(preset: Preset) -> str:
    """16 hex digits of the resolved preset's JSON: two exports with the same hash ran the same set-up."""
    from featureinterp.presets.files import preset_to_json

    return hashlib.sha256(preset_to_json(preset).encode()).hexdigest()[:16]


def sae_id(preset: Preset, layer: int) -> str:
    """The SAE's id: ``<release>/<sae id>`` for a released sae-lens SAE, else a name saying where
    it came from (the folder of an SAE on disk; ``<layer>-<preset>-trained`` for a local one)."""
    sae = preset.sae
    if sae.source == "sae_lens" and sae.sae_id_format:
        return f"{sae.release}/{sae.sae_id_format.format(layer=layer)}"
    if sae.source == "disk" and sae.path_format:
        return Path(sae.path_format.format(layer=layer)).name
    return f"{layer}-{preset.name}-{'synthetic' if layer < 0 else 'trained'}"


def _float(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def export_row(
    preset: Preset,
    layer: str,
    explanation: Mapping[str, Any],
    score: Mapping[str, Any] | None,
    secondary: Mapping[str, Mapping[str, Any]],
    record_rows: Mapping[str, Mapping[str, list[int]]],
    code_versions: Mapping[str, str],
    digest: str | None = None,
) -> dict[str, Any]:
    """One export row from the stored values of one (layer, feature, condition): the explanation,
    its simulation score (None: not scored yet), ``{scorer: stored value}`` and the records' rows.
    ``digest``: ``preset_hash(preset)``, passed by a caller writing many rows (it serializes the
    whole preset); None computes it."""
    layer_index = parse_layer_key(layer)
    expl = Explanation.from_record(explanation["explanation"])
    score = score or {}
    per_source: dict[str, Any] = {"simulation": score.get("per_source", {})}
    per_source |= {name: value.get("per_source", {}) for name, value in secondary.items()}
    return {
        "export_version": EXPORT_VERSION,
        "featureinterp_version": __version__,
        "preset": preset.name,
        "preset_hash": digest or preset_hash(preset),
        "code_versions": json.dumps(dict(code_versions), sort_keys=True),
        "model_id": preset.model.name,
        "sae_id": sae_id(preset, layer_index),
        "layer": layer,
        "feature": int(explanation["feature"]),
        "condition": explanation["condition"],
        "method": score.get("method") or explanation.get("method") or "",
        "rule_cap": explanation.get("rule_cap"),
        "explainer": explanation.get("explainer", ""),
        "structured": expl.structured,
        "description": str(expl),
        "rules": json.dumps(explanation["explanation"]["rules"], ensure_ascii=False),
        "simulation_score": _float(score.get("score")),
        **{f"{name}_score": _float(secondary.get(name, {}).get("score")) for name in SCORERS},
        "complexity": _float(score.get("complexity")),
        "n_rules": len(expl.rules),
        "per_source": json.dumps(_clean(per_source), sort_keys=True),
        "record_rows": json.dumps(_clean(record_rows), sort_keys=True),
    }


def export_frame(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows of ``export_row`` as a frame of ``EXPORT_SCHEMA``, sorted by layer, feature, condition."""
    frame = pl.DataFrame(list(rows), schema=EXPORT_SCHEMA)
    return frame.sort("layer", "feature", "condition")


def neuronpedia_explanations(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The explanations in the field names of Neuronpedia's explanation export (``modelId``,
    ``layer`` = the SAE id, ``index``, ``description``, ``explanationModelName``, ``typeName``),
    with each score as ``{"value", "explanationScoreTypeName", "explanationScoreModelName"}``."""
    out = []
    for r in frame.iter_rows(named=True):
        scores = [
            {"value": r[f"{kind}_score"], "explanationScoreTypeName": f"featureinterp-{kind}",
             "explanationScoreModelName": r["preset"]}
            for kind in ("simulation", *SCORERS)
            if r[f"{kind}_score"] is not None and math.isfinite(r[f"{kind}_score"])
        ]  # fmt: skip
        out.append(
            {
                "modelId": r["model_id"],
                "layer": r["sae_id"],
                "index": str(r["feature"]),
                "description": r["description"],
                "explanationModelName": r["explainer"],
                "typeName": f"featureinterp-{r['condition']}",
                "scores": scores,
            }
        )
    return out


def write_export(frame: pl.DataFrame, folder: Path, stem: str) -> dict[str, Path]:
    """``<stem>.parquet`` and ``<stem>.neuronpedia.json`` in ``folder``, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"parquet": folder / f"{stem}.parquet", "neuronpedia": folder / f"{stem}.neuronpedia.json"}
    atomic_write(files["parquet"], frame.write_parquet)
    text = json.dumps(_clean(neuronpedia_explanations(frame)), indent=1, ensure_ascii=False)
    atomic_write(files["neuronpedia"], lambda p: p.write_text(text))
    return files
