"""Export assets: every explanation and score as a parquet table and a Neuronpedia JSON
(featureinterp/export.py), per layer (``export``) and for the whole preset (``export_all``).

The files go to ``$FEATUREINTERP_HOME/exports/<preset>/`` — outside the storage folder, meant to
be shared, uploaded or loaded with ``datasets``. Each per-layer export reads the stored values of
its layer's partitions (what exists: a feature still being explained is left out and counted).
"""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from featureinterp.export import export_frame, export_row, preset_hash, write_export
from featureinterp.records.sources import SPLITS
from featureinterp.simulate.scorers import SCORERS
from featureinterp.storage import TableBundle
from featureinterp_assets.automation import SUMMARY
from featureinterp_assets.constants import GROUP_FIGURES, STORAGE_IO
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.resources import PresetResource

__all__ = ["build_export_assets", "export_dir"]


def export_dir(preset: PresetResource) -> Path:
    return Path(preset.home) / "exports" / preset.name


def _record_rows(records: TableBundle) -> dict[str, dict[str, list[int]]]:
    """source -> split -> corpus row ids of one feature's records table."""
    out: dict[str, dict[str, list[int]]] = {}
    frame = records.frame.select("source", "split", "rank", "row").sort("source", "split", "rank")
    for (source, split), part in frame.group_by("source", "split", maintain_order=True):
        out.setdefault(str(source), {})[str(split)] = [int(r) for r in part["row"]]
    return {s: {k: v[k] for k in SPLITS if k in v} for s, v in out.items()}


def build_export_assets(
    layers: dg.DynamicPartitionsDefinition, conditions: list[str], code_versions: dict[str, str]
) -> list[dg.AssetsDefinition]:
    """``export`` (per layer) and ``export_all``; ``code_versions``: asset key -> code version of
    the assets whose values are exported (stamped into every row; the keys present are the
    assets that exist: detection and fuzzing only for the conditions that run them)."""
    by_layer = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="layer")
    kinds = ("explanations", "scores", *SCORERS)
    keys = [f"{k}/{c}" for c in conditions for k in kinds if f"{k}/{c}" in code_versions]
    deps = [dg.AssetDep(dg.AssetKey(key.split("/")), partition_mapping=by_layer) for key in keys]
    deps.append(dg.AssetDep("records", partition_mapping=by_layer))

    @dg.asset(
        partitions_def=layers,
        deps=deps,
        group_name=GROUP_FIGURES,
        io_manager_key=STORAGE_IO,
        code_version="1",
        kinds={"parquet"},
        automation_condition=SUMMARY,
    )
    def export(
        context: dg.AssetExecutionContext, preset: PresetResource, storage: dg.ResourceParam[StorageIOManager]
    ) -> dict:
        """One layer's explanations with every score and the records' row ids, as
        ``exports/<preset>/<preset>-<layer>.parquet`` and ``.neuronpedia.json``."""
        layer, spec = context.partition_key, preset.spec()
        rows, dead, missing = [], 0, 0
        digest = preset_hash(spec)
        for feature in spec.feature_keys:
            key = f"{feature}|{layer}"
            records = storage.stored(dg.AssetKey("records"), key)
            for cond in conditions:
                expl = storage.stored(dg.AssetKey(["explanations", cond]), key)
                if expl is None or records is None:
                    missing += 1  # not explained yet (or its records gone): a later run adds it
                    continue
                if expl.get("skipped"):
                    dead += 1  # a feature that never fires has nothing to explain
                    continue
                secondary = {s: storage.stored(dg.AssetKey([s, cond]), key) for s in SCORERS}
                rows.append(
                    export_row(
                        spec,
                        layer,
                        expl,
                        storage.stored(dg.AssetKey(["scores", cond]), key),
                        {s: v for s, v in secondary.items() if v is not None and not v.get("skipped")},
                        _record_rows(records),
                        code_versions,
                        digest,
                    )
                )
        frame = export_frame(rows)
        files = write_export(frame, export_dir(preset), f"{spec.name}-{layer}")
        context.add_output_metadata(
            {
                "explanations": len(frame),
                "dead_features": dead,
                "not_explained": missing,
                "parquet": dg.MetadataValue.path(str(files["parquet"])),
                "neuronpedia": dg.MetadataValue.path(str(files["neuronpedia"])),
                "preset_hash": digest,
                "load": dg.MetadataValue.md(
                    f"```python\nfrom datasets import load_dataset\n"
                    f"ds = load_dataset(\"parquet\", data_files=\"{files['parquet']}\")[\"train\"]\n```"
                ),
            }
        )
        # relative to the home: a moved home's export_all reads its own files
        return {k: preset.home_relative(v) for k, v in files.items()} | {"rows": len(frame)}

    @dg.asset(
        ins={"export": dg.AssetIn(metadata={"allow_missing": True})},
        group_name=GROUP_FIGURES,
        io_manager_key=STORAGE_IO,
        code_version="1",
        kinds={"parquet"},
        automation_condition=SUMMARY,
    )
    def export_all(context: dg.AssetExecutionContext, preset: PresetResource, export: dict) -> dict:
        """Every layer's export in one table: ``exports/<preset>/<preset>.parquet`` and
        ``.neuronpedia.json`` (the file to share or upload)."""
        # by file name in this home's export folder: a value stored before paths were relative
        # holds the original home's absolute path, which a moved home must not read
        parts = [
            pl.read_parquet(export_dir(preset) / Path(v["parquet"]).name)
            for _, v in sorted(export.items())
            if v.get("rows")
        ]
        frame = export_frame(pl.concat(parts).to_dicts() if parts else [])
        name = preset.spec().name
        files = write_export(frame, export_dir(preset), name)
        context.add_output_metadata(
            {
                "explanations": len(frame),
                "layers": dg.MetadataValue.json(sorted(export)),
                "parquet": dg.MetadataValue.path(str(files["parquet"])),
                "neuronpedia": dg.MetadataValue.path(str(files["neuronpedia"])),
                "mean_scores": dg.MetadataValue.json(
                    json.loads(
                        frame.select(pl.col(f"{k}_score").drop_nans().mean() for k in ("simulation", *SCORERS))
                        .write_json()
                    )
                    if len(frame)
                    else []
                ),
            }
        )
        return {k: preset.home_relative(v) for k, v in files.items()} | {"rows": len(frame)}

    return [export, export_all]
