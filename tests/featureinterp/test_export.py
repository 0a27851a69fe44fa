"""The export table and the Neuronpedia JSON (featureinterp/export.py): schema, provenance, and a
round trip through HF ``datasets``."""

from __future__ import annotations

import json
import math

import pytest

from featureinterp.export import (
    EXPORT_SCHEMA,
    EXPORT_VERSION,
    export_frame,
    export_row,
    neuronpedia_explanations,
    preset_hash,
    sae_id,
    write_export,
)
from featureinterp.presets import get_preset

EXPLANATION = {
    "condition": "one_shot",
    "layer": 5,
    "feature": 3,
    "rule_cap": 5,
    "explainer": "SmolLM2-135M-Instruct",
    "explanation": {"structured": True, "rules": [{"activates_on": "the word dog", "strength": 4}]},
}
SCORE = {
    "method": "one_shot",
    "score": 0.25,
    "complexity": 1.5,
    "per_source": {"similar_negative": {"score": 0.25, "fp_rate": 0.5}, "random": {"score": float("nan"), "fp_rate": 0.0}},
}
SECONDARY = {
    "detection": {"score": 0.75, "per_source": {"all": {"precision": 0.5}}},
    "embedding": {"score": 0.625, "per_source": {"similar_negative": 0.625}},
}
ROWS = {"positive": {"train": [1, 2], "test": [3]}, "similar_negative": {"test": [9, 8]}}


def _row(**changes):
    preset = get_preset("embedded")
    return export_row(
        preset, "L05", EXPLANATION | changes, SCORE, SECONDARY, ROWS, {"scores/one_shot": "1"}
    )


def test_a_row_carries_provenance_scores_and_rows() -> None:
    row = _row()
    assert set(row) == set(EXPORT_SCHEMA)
    assert row["export_version"] == EXPORT_VERSION and row["preset"] == "embedded"
    assert row["preset_hash"] == preset_hash(get_preset("embedded")) and len(row["preset_hash"]) == 16
    assert row["sae_id"] == "5-embedded-trained" and row["model_id"] == "SmolLM2-135M-Instruct"
    assert row["description"] == "the word dog (4)" and row["n_rules"] == 1
    assert row["simulation_score"] == 0.25 and row["detection_score"] == 0.75
    assert math.isnan(row["fuzzing_score"])  # not run for this condition: NaN, never a guess
    per_source = json.loads(row["per_source"])
    assert per_source["simulation"]["random"]["score"] is None  # JSON has no NaN
    assert per_source["embedding"] == {"similar_negative": 0.625}
    assert json.loads(row["record_rows"]) == ROWS


def test_presets_name_their_saes() -> None:
    gpt2 = get_preset("gpt2-small")
    assert sae_id(gpt2, 6) == f"{gpt2.sae.release}/blocks.6.hook_resid_post"
    assert preset_hash(get_preset("embedded")) != preset_hash(get_preset("embedded-tiny"))


def test_export_round_trips_through_datasets(tmp_path) -> None:
    from datasets import load_dataset

    rows = [_row(), _row(feature=4, rule_cap=None, condition="one_shot_unstructured")]
    files = write_export(export_frame(rows), tmp_path / "out", "embedded-L05")
    ds = load_dataset("parquet", data_files=str(files["parquet"]), cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.column_names == list(EXPORT_SCHEMA) and len(ds) == 2
    back = sorted(ds, key=lambda r: r["feature"])
    for want, got in zip(sorted(rows, key=lambda r: r["feature"]), back, strict=True):
        for column, value in want.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[column]), column
            else:
                assert got[column] == value, column
    assert back[1]["rule_cap"] is None
    neuronpedia = json.loads(files["neuronpedia"].read_text())
    assert neuronpedia == neuronpedia_explanations(export_frame(rows))
    first = neuronpedia[0]
    assert first["modelId"] == "SmolLM2-135M-Instruct" and first["layer"] == "5-embedded-trained"
    assert first["index"] == "3" and first["typeName"] == "featureinterp-one_shot"
    kinds = {s["explanationScoreTypeName"]: s["value"] for s in first["scores"]}
    assert kinds == {"featureinterp-simulation": 0.25, "featureinterp-detection": 0.75, "featureinterp-embedding": 0.625}


def test_an_empty_export_still_has_its_columns(tmp_path) -> None:
    frame = export_frame([])
    assert frame.columns == list(EXPORT_SCHEMA) and frame.height == 0
    files = write_export(frame, tmp_path, "empty")
    assert json.loads(files["neuronpedia"].read_text()) == []


@pytest.mark.parametrize("layer", ["L05", "SYN"])
def test_layer_keys_map_to_sae_ids(layer) -> None:
    row = _row() if layer == "L05" else export_row(get_preset("embedded"), layer, EXPLANATION, None, {}, {}, {})
    assert row["sae_id"] == ("5-embedded-trained" if layer == "L05" else "-1-embedded-synthetic")
    assert layer != "SYN" or math.isnan(row["simulation_score"])
