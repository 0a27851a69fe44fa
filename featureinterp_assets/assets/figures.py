"""Per-layer result tables and the paper's Figures 3-5.

``layer_results[layer]`` gathers every condition's test scores of one layer into one table (one row
per feature x condition x test source), and records which feature partitions are still missing.
The figures read those per-layer tables (never thousands of partitions directly) and either refuse
to plot an incomplete grid (naming the missing partitions) or plot it with a visible "n of m
features" caption, by run config.
"""

import base64
from pathlib import Path
from typing import Any, TypedDict

import dagster as dg
import polars as pl

from featureinterp.config import Preset, feature_key, layer_key
from featureinterp.figures import calibration
from featureinterp.figures import paper as figures
from featureinterp.figures.common import FigureResult, definitions_note, result_frame, result_rows
from featureinterp.figures.detection import fig3_detection
from featureinterp.figures.grids import figure_conditions, figure_grids, select_grid
from featureinterp.names import GENERATED_SOURCE, PRIMARY_SOURCE, SYNTHETIC_KEY
from featureinterp.presets.scope import PresetScope
from featureinterp.simulate.scorers.agreement import layer_agreement
from featureinterp.storage import TableBundle
from featureinterp_assets.automation import SUMMARY
from featureinterp_assets.constants import GROUP_FIGURES, STORAGE_IO
from featureinterp_assets.resources import PresetResource

ALLOW_MISSING = {"allow_missing": True}
"""Input metadata read by StorageIOManager: load the partitions that exist, skip the others."""


def build_hint(preset: str) -> str:
    """The one command that builds a figure's whole lineage (for errors over missing inputs). A
    preset from a file is named by its file: its name alone does not resolve to it."""
    import shlex

    from featureinterp.presets.files import preset_reference

    return (
        f"build the lineage with `FEATUREINTERP_PRESET={shlex.quote(preset_reference(preset))} featureinterp "
        "run` (resumable: it runs only what is missing), then materialize the figure again"
    )


def build_figure_assets(
    layers: dg.DynamicPartitionsDefinition,
    features: dg.StaticPartitionsDefinition,
    conditions: list[str],
    synthetic: bool = True,
    judged: list[str] | None = None,
    generated: str | None = None,
) -> list[dg.AssetsDefinition]:
    """``layer_results`` (reading every condition's scores and secondary scores; ``judged``: the
    conditions with detection and fuzzing; ``generated``: the condition whose explanations the
    ``generated`` source tests, added to its sources) and the figures over it."""
    by_layer = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="layer")
    ins = {
        f"scores_{c}": dg.AssetIn(["scores", c], partition_mapping=by_layer, metadata=ALLOW_MISSING)
        for c in conditions
    }
    ins["baselines"] = dg.AssetIn("baselines", partition_mapping=by_layer, metadata=ALLOW_MISSING)
    secondary = [("embedding", c) for c in conditions] + [
        (scorer, c) for c in judged or [] for scorer in ("detection", "fuzzing")
    ]
    ins |= {
        f"{scorer}__{c}": dg.AssetIn([scorer, c], partition_mapping=by_layer, metadata=ALLOW_MISSING)
        for scorer, c in secondary
    }
    if generated is not None:
        ins[GENERATED_SOURCE] = dg.AssetIn(GENERATED_SOURCE, partition_mapping=by_layer, metadata=ALLOW_MISSING)

    @dg.asset(
        partitions_def=layers,
        group_name=GROUP_FIGURES,
        io_manager_key=STORAGE_IO,
        code_version="3",
        ins=ins,
        kinds={"polars"},
        automation_condition=SUMMARY,
    )
    def layer_results(
        context: dg.AssetExecutionContext,
        preset: PresetResource,
        baselines: dict[str, dict[str, Any]],
        **scores,
    ) -> TableBundle:
        """Every condition's test scores for one layer: rows (feature, condition, source) -> score,
        false-positive rate, complexity, and the feature's baselines on that source (empty
        explanation; true / other rule on SYN); missing feature partitions are listed."""
        layer = context.partition_key
        spec = preset.spec()
        expected, scope = spec.feature_keys, PresetScope.of(spec).assets()
        rows: list[dict] = []
        missing: dict[str, list[str]] = {}
        refs = {int(v["feature"]): v for v in baselines.values()}
        extra = _secondary_by_partition({k: v for k, v in scores.items() if "__" in k})
        candidates = {k: v.meta for k, v in scores.pop(GENERATED_SOURCE, {}).items() if not v.meta.get("skipped")}
        for name, values in scores.items():
            if "__" in name:
                continue
            have = {k.split("|")[0] for k in values}  # keys "F0003|L05"
            cond = name.removeprefix("scores_")
            runs_on = scope.get(f"scores/{cond}")  # None: every partition
            missing[cond] = [
                f for f in expected if f not in have and (runs_on is None or f"{f}|{layer}" in runs_on)
            ]
            for key, value in values.items():
                if cond == generated and key in candidates and value.get("per_source"):
                    value = value | {"per_source": value["per_source"] | candidates[key]["per_source"]}
                rows.extend(
                    result_rows(
                        value | {"layer_key": layer}, refs.get(int(value["feature"])), extra.get((cond, key))
                    )
                )
        frame = result_frame(rows)
        agreement = layer_agreement(frame)
        context.add_output_metadata(
            {
                "rows": len(frame),
                "missing": dg.MetadataValue.json({k: v for k, v in missing.items() if v}),
                "mean_score": dg.MetadataValue.md(_mean_table(frame)),
                "agreement": dg.MetadataValue.md(_agreement_table(agreement)),
            }
        )
        meta = {"layer": layer, "missing": missing, "expected": len(expected), "agreement": agreement}
        return TableBundle(frame, meta)

    figs = [_figure_asset(name) for name in ("fig3", "fig4", "fig5")]
    return [layer_results, *figs, *([_calibration_asset()] if synthetic else [])]


def _secondary_by_partition(inputs: dict) -> dict[tuple[str, str], dict]:
    """``{(condition, partition key): {scorer: stored value}}`` from the ``<scorer>__<condition>``
    inputs of ``layer_results``."""
    out: dict[tuple[str, str], dict] = {}
    for name, values in inputs.items():
        scorer, cond = name.split("__", 1)
        for key, value in values.items():
            out.setdefault((cond, key), {})[scorer] = value
    return out


def _agreement_table(agreement: dict) -> str:
    lines = ["| scorer | Spearman with simulation | pairs |", "|---|---|---|"]
    lines += [f"| {s} | {v['spearman']:.3f} | {v['pairs']} |" for s, v in agreement.items()]
    return "\n".join(lines)


class FigureConfig(dg.Config):
    grid: str = "paper"
    """``paper``: the paper's grid of this figure where the preset is a paper preset (its layers,
    features and conditions, featureinterp/figures/grids.py), else the preset's; ``preset``: every
    layer x feature x condition the preset materializes (a widened grid)."""
    allow_incomplete: bool = True
    """True: plot what exists with a visible "n of m features" caption; False: fail and name the
    missing (layer, feature, condition) partitions."""


class _FigureAssetArgs(TypedDict):
    group_name: str
    io_manager_key: str
    code_version: str
    ins: dict[str, dg.AssetIn]
    kinds: set[str]
    automation_condition: dg.AutomationCondition


_FIGURE_ASSET: _FigureAssetArgs = {
    "group_name": GROUP_FIGURES,
    "io_manager_key": STORAGE_IO,
    "code_version": "1",
    "ins": {"layer_results": dg.AssetIn(metadata=ALLOW_MISSING)},
    "kinds": {"seaborn"},
    "automation_condition": SUMMARY,
}
"""What every figure asset shares: it reads the layer tables that exist and redraws on updates."""


FIGURE_DESCRIPTIONS = {
    "fig3": "Figure 3: false-positive rate and score of one-shot vs tree explanations on each test "
    "source (positives with random, similar and similar-but-non-activating rows), per layer; "
    "fig3_panels.png adds complexity and rules per explanation; fig3_detection.png puts detection "
    "precision and recall per source next to the false positives. The images are in the metadata.",
    "fig4": "Figure 4: test score of one-shot and tree explanations under the four prompt "
    "conditions (unstructured, structured, + holistic, + train negatives), per layer. The image "
    "is in the metadata.",
    "fig5": "Figure 5: score and rule complexity as the rule cap goes from 1 to 5, per layer "
    "(heatmaps); fig5_panels.png adds score vs rule count and rules needed for 90 %. The image "
    "is in the metadata.",
}
"""What each paper figure shows (the asset's description in the UI)."""


def _figure_table(
    name: str, config: FigureConfig, spec: Preset, layer_results: dict[str, TableBundle]
) -> tuple[pl.DataFrame, str, dict[str, list[str]], int]:
    """The figure's grid and its rows: (table, grid note, missing partitions, features expected);
    fails over an incomplete grid when ``allow_incomplete`` is off, or when nothing is scored."""
    if config.grid not in ("paper", "preset"):
        raise dg.Failure(description=f"{name}: grid must be 'paper' or 'preset', not {config.grid!r}")
    grid = figure_grids(spec).get(name) if config.grid == "paper" else None
    # the preset's layers and any registered since (a layer added to a preset file reaches
    # the figures before the code location reloads)
    layers = (
        [layer_key(x) for x in grid.layers]
        if grid
        else sorted({k for k in [*spec.layer_keys, *layer_results] if k != SYNTHETIC_KEY})
    )
    features = {feature_key(f) for f in (grid.features if grid else spec.features)}
    # the synthetic features are a calibration, never pooled into the paper's figures
    layer_results = {k: v for k, v in layer_results.items() if k in layers}
    # the conditions with scores (Figure 3 draws the structured cells when its own runs have none)
    scored = {c for v in layer_results.values() if len(v.frame) for c in v.frame["experiment"].unique().to_list()}
    conditions = set(grid.conditions if grid else figure_conditions(name, spec.explain.conditions, scored))
    missing = {
        f"{layer}/{cond}": [f for f in feats if f in features]
        for layer, value in layer_results.items()
        for cond, feats in value.meta["missing"].items()
        if cond in conditions and any(f in features for f in feats)
    }
    absent_layers = [k for k in layers if k not in layer_results]
    if not config.allow_incomplete and (missing or absent_layers):
        raise dg.Failure(
            description=f"{name}: inputs incomplete; missing layers {absent_layers or 'none'}, "
            f"missing partitions {missing}",
            metadata={"missing": dg.MetadataValue.json(missing), "absent_layers": absent_layers},
        )
    frames = [v.frame for v in layer_results.values() if len(v.frame)]
    if not frames:
        raise dg.Failure(description=f"{name}: no scores yet; {build_hint(spec.name)}")
    table, grid_note = select_grid(pl.concat(frames), grid, spec.explain.conditions, name)
    assert isinstance(table, pl.DataFrame)  # select_grid is annotated to return an object
    if not len(table):
        raise dg.Failure(
            description=f"{name}: no scores inside the figure's {grid_note}; {build_hint(spec.name)}"
        )
    return table, grid_note, missing, len(features)


def _image_metadata(name: str, result: FigureResult) -> dict[str, Any]:
    """The figure inline (base64 PNG), its caption, summary table and file path."""
    png = base64.b64encode(result.png.read_bytes()).decode()
    return {
        "image": dg.MetadataValue.md(f"![{name}](data:image/png;base64,{png})"),
        "caption": result.caption,
        "summary": dg.MetadataValue.md(_markdown(result.summary)),
        "png": dg.MetadataValue.path(str(result.png)),
    }


def _figure_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, description=FIGURE_DESCRIPTIONS[name], **_FIGURE_ASSET)
    def figure(
        context: dg.AssetExecutionContext,
        config: FigureConfig,
        layer_results: dict[str, TableBundle],
        preset: PresetResource,
    ) -> dict[str, Any]:
        table, grid_note, missing, expected = _figure_table(name, config, preset.spec(), layer_results)
        out_dir = Path(preset.storage_dir()) / "figures"
        spec = preset.spec()
        definitions = definitions_note(name, spec.scores, spec.explain)
        result = getattr(figures, name)(
            table, out_dir, expected=expected, grid=grid_note, definitions=definitions
        )
        metadata = _image_metadata(name, result)
        # stored paths relative to the home (a moved home's values name its own files)
        files = {k: preset.home_relative(v) for k, v in result.files.items()}
        detection = fig3_detection(table, out_dir, expected) if name == "fig3" else None
        if detection is not None:  # Figure 3's detection view, when detection scores exist
            metadata |= {f"detection_{k}": v for k, v in _image_metadata(detection.name, detection).items()}
            files["detection"] = preset.home_relative(detection.png)
        context.add_output_metadata(
            metadata
            | {"grid": grid_note, "incomplete": result.incomplete, "missing": dg.MetadataValue.json(missing)}
            | {"definitions": definitions}
        )
        return {"png": preset.home_relative(result.png), "files": files, "caption": result.caption}

    return figure


def _calibration_asset() -> dg.AssetsDefinition:
    @dg.asset(name="fig_calibration", **_FIGURE_ASSET)
    def fig_calibration(
        context: dg.AssetExecutionContext, layer_results: dict[str, TableBundle], preset: PresetResource
    ) -> dict[str, Any]:
        """The synthetic features (layer SYN) as a calibration, next to the paper's figures: the
        simulator's discrimination (true rule vs another feature's rule vs an empty explanation)
        and how much of the true rule each explainer condition recovers."""
        syn = layer_results.get(SYNTHETIC_KEY)
        if syn is None or not len(syn.frame):
            raise dg.Failure(
                description=f"fig_calibration: no scores of layer {SYNTHETIC_KEY} yet; materialize records, baselines "
                f"and scores/* for the {SYNTHETIC_KEY} partitions first (`featureinterp run --layers {SYNTHETIC_KEY}`)"
            )
        result = calibration.calibration_figure(syn.frame, Path(preset.storage_dir()) / "figures")
        # incomplete: a synthetic feature without a score under some condition
        incomplete = any(bool(v) for v in syn.meta.get("missing", {}).values())
        context.add_output_metadata(_image_metadata("fig_calibration", result) | {"incomplete": incomplete})
        return {"png": preset.home_relative(result.png), "caption": result.caption}

    return fig_calibration


def _mean_table(frame: pl.DataFrame) -> str:
    if not len(frame):
        return "_no scores yet_"
    primary = frame.filter(pl.col("source") == PRIMARY_SOURCE)
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


__all__ = ["build_figure_assets", "result_rows"]  # result_rows: featureinterp.figures.common
