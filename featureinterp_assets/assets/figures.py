"""Per-layer result tables and the paper's Figures 3-5.

``layer_results[layer]`` gathers every condition's test scores of one layer into one table (one row
per feature x condition x test source), and records which feature partitions are still missing.
The figures read those per-layer tables (never thousands of partitions directly) and either refuse
to plot an incomplete grid (naming the missing partitions) or plot it with a visible "n of m
features" caption, by run config.
"""

import base64
from pathlib import Path

import dagster as dg
import polars as pl

from featureinterp import figures
from featureinterp.storage import TableBundle
from featureinterp_assets.constants import GROUP_FIGURES, STORAGE_IO
from featureinterp_assets.resources import PresetResource

ALLOW_MISSING = {"allow_missing": True}
"""Input metadata read by StorageIOManager: load the partitions that exist, skip the others."""


def result_rows(score: dict) -> list[dict]:
    """One figure-table row per test source of one scores partition."""
    base = {
        "layer": score["layer_key"],
        "feature": int(score["feature"]),
        "method": score["method"],
        "condition": score["figure_condition"],
        "rule_cap": int(score["rule_cap"]),
        "complexity": float(score.get("complexity", float("nan"))),
        "n_rules": int(score.get("n_rules", 0)),
    }
    return [
        base | {"source": source, "score": float(v["score"]), "fp_rate": float(v["fp_rate"])}
        for source, v in score.get("per_source", {}).items()
    ]


def build_figure_assets(
    layers: dg.DynamicPartitionsDefinition, features: dg.StaticPartitionsDefinition, conditions: list[str]
) -> list[dg.AssetsDefinition]:
    by_layer = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="layer")
    ins = {
        f"scores_{c}": dg.AssetIn(["scores", c], partition_mapping=by_layer, metadata=ALLOW_MISSING)
        for c in conditions
    }

    @dg.asset(
        partitions_def=layers,
        group_name=GROUP_FIGURES,
        io_manager_key=STORAGE_IO,
        code_version="1",
        ins=ins,
        kinds={"polars"},
    )
    def layer_results(context: dg.AssetExecutionContext, preset: PresetResource, **scores) -> TableBundle:
        """Every condition's test scores for one layer: rows (feature, condition, source) -> score,
        false-positive rate, complexity; missing feature partitions are listed in the metadata."""
        layer = context.partition_key
        expected = preset.spec().feature_keys
        rows, missing = [], {}
        for name, values in scores.items():
            have = {k.split("|")[0] for k in values}  # keys "F0003|L05"
            missing[name.removeprefix("scores_")] = [f for f in expected if f not in have]
            for value in values.values():
                rows.extend(result_rows(value | {"layer_key": layer}))
        frame = pl.DataFrame(rows, schema=_SCHEMA)
        context.add_output_metadata(
            {
                "rows": len(frame),
                "missing": dg.MetadataValue.json({k: v for k, v in missing.items() if v}),
                "mean_score": dg.MetadataValue.md(_mean_table(frame)),
            }
        )
        return TableBundle(frame, {"layer": layer, "missing": missing, "expected": len(expected)})

    return [layer_results, *(_figure_asset(name) for name in ("fig3", "fig4", "fig5"))]


class FigureConfig(dg.Config):
    allow_incomplete: bool = True
    """True: plot what exists with a visible "n of m features" caption; False: fail and name the
    missing (layer, feature, condition) partitions."""


def _figure_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        group_name=GROUP_FIGURES,
        io_manager_key=STORAGE_IO,
        code_version="1",
        ins={"layer_results": dg.AssetIn(metadata=ALLOW_MISSING)},
        kinds={"seaborn"},
    )
    def figure(
        context: dg.AssetExecutionContext, config: FigureConfig, layer_results: dict, preset: PresetResource
    ):
        spec = preset.spec()
        missing = {
            f"{layer}/{cond}": feats
            for layer, value in layer_results.items()
            for cond, feats in value.meta["missing"].items()
            if feats
        }
        absent_layers = [k for k in spec.layer_keys if k not in layer_results]
        if not config.allow_incomplete and (missing or absent_layers):
            raise dg.Failure(
                description=f"{name}: inputs incomplete; missing layers {absent_layers or 'none'}, "
                f"missing partitions {missing}",
                metadata={"missing": dg.MetadataValue.json(missing), "absent_layers": absent_layers},
            )
        frames = [v.frame for v in layer_results.values() if len(v.frame)]
        if not frames:
            raise dg.Failure(description=f"{name}: no scores yet; materialize scores/* first")
        table = pl.concat(frames)
        out_dir = Path(preset.storage_dir()) / "figures"
        fn = getattr(figures, name)
        result = fn(table, out_dir, expected=len(spec.features))
        png = result.png.read_bytes()
        context.add_output_metadata(
            {
                "image": dg.MetadataValue.md(
                    f"![{name}](data:image/png;base64,{base64.b64encode(png).decode()})"
                ),
                "caption": result.caption,
                "incomplete": result.incomplete,
                "missing": dg.MetadataValue.json(missing),
                "summary": dg.MetadataValue.md(_markdown(result.summary)),
                "png": dg.MetadataValue.path(str(result.png)),
            }
        )
        return {
            "png": str(result.png),
            "files": {k: str(v) for k, v in result.files.items()},
            "caption": result.caption,
        }

    return figure


_SCHEMA = {
    "layer": pl.String,
    "feature": pl.Int64,
    "method": pl.String,
    "condition": pl.String,
    "rule_cap": pl.Int64,
    "complexity": pl.Float64,
    "n_rules": pl.Int64,
    "source": pl.String,
    "score": pl.Float64,
    "fp_rate": pl.Float64,
}


def _mean_table(frame: pl.DataFrame) -> str:
    if not len(frame):
        return "_no scores yet_"
    primary = frame.filter(pl.col("source") == "similar_negative")
    agg = primary.group_by("method", "condition", "rule_cap").agg(
        pl.col("score").drop_nans().mean().alias("mean"), pl.len().alias("n")
    )
    return _markdown(agg.sort("method", "condition", "rule_cap"))


def _markdown(frame: pl.DataFrame, limit: int = 40) -> str:
    cols = frame.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.head(limit).iter_rows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


__all__ = ["build_figure_assets", "result_rows"]
