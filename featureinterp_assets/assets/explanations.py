"""Explanation and score assets, one pair per experiment condition (a small factory).

``explanations/<condition>`` holds the chosen explanation, the tree's path, every raw completion
(with request ids, for audit) and token usage; ``scores/<condition>`` holds the test evaluation
(primary score, per-source scores and false-positive rates for Figure 3, rule complexities).
Both are partitioned by layer x feature like ``records``. A failed explanation fails its partition
with the reason and the completions in the failure metadata (never a dummy explanation), so a
rerun retries exactly the failed partitions.
"""

import dagster as dg
import numpy as np

from featureinterp.complexity import ComplexityAnalyzer, mean_complexity
from featureinterp.config import ApiSpec, get_preset
from featureinterp.experiments import Condition, evaluate, feature_records, get_condition
from featureinterp.explainers import ExplanationFailed, explain
from featureinterp.explanations import Explanation
from featureinterp.formatting import quantize
from featureinterp.records import feature_generator
from featureinterp_assets.assets.records import _layer_feature
from featureinterp_assets.constants import GROUP_EXPLANATIONS, POOL_GPU, POOL_LLM_API, STORAGE_IO
from featureinterp_assets.io_managers import single
from featureinterp_assets.resources import LLMResource, PresetResource

TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
"""Step retries for transient faults (server gave up, CUDA OOM from a neighbour); parse failures
are handled inside the explainer with bounded re-requests."""


def _max_act(records_value) -> float:
    return float(records_value.meta.get("max_act", 0.0))


def _holistic(holistic_value) -> tuple[dict[int, np.ndarray], float]:
    rows = np.asarray(holistic_value["rows"])
    values = np.asarray(holistic_value["holistic"], dtype=np.float32)
    return {int(r): values[i, 1:] for i, r in enumerate(rows)}, float(holistic_value.meta["max_holistic"])


def _preview(frame, explanation: Explanation, predictions, max_act: float, n: int = 3) -> str:
    """Markdown: true (0..5) vs simulated values on the first test positives."""
    import polars as pl

    pos = frame.filter((pl.col("source") == "positive") & (pl.col("split") == "test")).sort("rank")
    lines = [f"**{explanation}**", "", "| record | token: true / simulated |", "|---|---|"]
    for i, r in enumerate(pos.head(n).iter_rows(named=True)):
        true = quantize(r["acts"], max_act)
        sim = predictions["positive"][i] if i < len(predictions["positive"]) else []
        cells = [
            f"`{t.strip() or repr(t)}` {a}/{s:.1f}"
            for t, a, s in zip(r["tokens"], true, sim, strict=False)
            if a > 0 or s >= 1
        ]
        lines.append(f"| row {r['row']} | {' · '.join(cells) or '(all zero)'} |")
    return "\n".join(lines)


def build_explanation_assets(
    layers: dg.DynamicPartitionsDefinition,
    features: dg.StaticPartitionsDefinition,
    conditions: list[str],
    preset_name: str,
) -> list[dg.AssetsDefinition]:
    layer_x_feature = dg.MultiPartitionsDefinition({"layer": layers, "feature": features})
    api = isinstance(get_preset(preset_name).explain.explainer, ApiSpec)
    return [
        asset for name in conditions for asset in _condition_assets(get_condition(name), layer_x_feature, api)
    ]


def _condition_assets(cond: Condition, partitions, api: bool) -> list[dg.AssetsDefinition]:
    ins = {"records": dg.AssetIn("records")}
    if cond.holistic:
        ins["holistic_activations"] = dg.AssetIn("holistic_activations")

    @dg.asset(
        name=cond.name,
        key_prefix="explanations",
        partitions_def=partitions,
        group_name=GROUP_EXPLANATIONS,
        io_manager_key=STORAGE_IO,
        pool=POOL_LLM_API if api else POOL_GPU,
        retry_policy=TRANSIENT_RETRY,
        code_version="1",
        ins=ins,
        tags={"condition": cond.name, "method": cond.method},
    )
    def explanation(context: dg.AssetExecutionContext, preset: PresetResource, llm: LLMResource, **inputs):
        spec = preset.spec()
        layer, feature = _layer_feature(context)
        rec = single(inputs["records"])
        max_act = _max_act(rec)
        base = {"condition": cond.name, "layer": layer, "feature": feature, "max_act": max_act}
        if not max_act > 0:
            context.add_output_metadata({"skipped": "dead feature (never fires)"})
            return base | {"skipped": "dead feature"}
        hol, max_h = _holistic(single(inputs["holistic_activations"])) if cond.holistic else (None, 0.0)
        records = feature_records(rec.frame, max_act, cond, hol, max_h)
        backend, simulator = llm.explainer(), llm.simulator()
        settings = spec.explain
        config = cond.explainer_config(
            temperature=settings.temperature,
            tree_temperature=settings.tree_temperature,
            roots=settings.tree_roots,
            branching=settings.tree_branching,
            depth=settings.tree_depth,
            width=settings.tree_width,
        )
        seed = int(feature_generator(spec.seed, spec.name + cond.name, layer, feature).integers(2**31))
        tokens_before = simulator.forward_tokens
        try:
            result = explain(backend, simulator.simulate_explanation, records, config, seed)
        except ExplanationFailed as err:
            raise dg.Failure(
                description=f"no explanation for layer {layer} feature {feature}: {err.reason}",
                metadata={"completions": dg.MetadataValue.json(err.completions[:20])},
                allow_retries=False,
            ) from err
        path = [
            {"depth": n.get("depth", 0), "train": n.get("train_score"), "valid": n.get("valid_score")}
            for n in result.nodes
        ]
        context.add_output_metadata(
            {
                "explanation": str(result.explanation),
                "rules": dg.MetadataValue.json(result.explanation.to_record()["rules"]),
                "train_score": result.train_score,
                "valid_score": result.valid_score,
                "tree_path": dg.MetadataValue.json(path),
                "usage": dg.MetadataValue.json(result.usage),
                "explainer": backend.name,
                "simulations": result.simulations,
                "simulator_tokens": simulator.forward_tokens - tokens_before,
            }
        )
        return base | {
            "explanation": result.explanation.to_record(),
            "alternatives": [e.to_record() for e in result.alternatives],
            "train_score": result.train_score,
            "valid_score": result.valid_score,
            "nodes": result.nodes,
            "completions": result.completions,
            "usage": result.usage,
            "explainer": backend.name,
            "seed": seed,
            "simulator_tokens": simulator.forward_tokens - tokens_before,
        }

    @dg.asset(
        name=cond.name,
        key_prefix="scores",
        partitions_def=partitions,
        group_name=GROUP_EXPLANATIONS,
        io_manager_key=STORAGE_IO,
        pool=POOL_GPU,
        retry_policy=TRANSIENT_RETRY,
        code_version="1",
        ins={"explanation": dg.AssetIn(["explanations", cond.name]), "records": dg.AssetIn("records")},
        tags={"condition": cond.name, "method": cond.method},
    )
    def test_score(context: dg.AssetExecutionContext, explanation: dict, records: dict, llm: LLMResource):
        """Test-split evaluation: primary score (positives + similar-negatives), per-source scores and
        false-positive rates, and each rule's complexity."""
        expl, rec = single(explanation), single(records)
        base = {k: expl[k] for k in ("condition", "layer", "feature")} | {
            "method": cond.method,
            "figure_condition": cond.figure_condition,
            "rule_cap": cond.rule_cap,
        }
        if expl.get("skipped"):
            context.add_output_metadata({"skipped": expl["skipped"]})
            return base | {"score": float("nan"), "reason": expl["skipped"], "per_source": {}}
        explanation_obj = Explanation.from_record(expl["explanation"])
        simulator = llm.simulator()
        tokens_before = simulator.forward_tokens
        ev = evaluate(simulator.simulate_explanation, explanation_obj, rec.frame, expl["max_act"])
        simulator_tokens = simulator.forward_tokens - tokens_before
        complexities = ComplexityAnalyzer(llm.local_backend()).rate(list(explanation_obj.rules))
        context.add_output_metadata(
            {
                "score": ev.score,
                "reason": ev.reason or "",
                "explanation": str(explanation_obj),
                "per_source": dg.MetadataValue.json(ev.per_source),
                "complexity": mean_complexity(complexities),
                "simulator": dg.MetadataValue.json(simulator.describe()),
                "simulator_tokens": simulator_tokens,
                "preview": dg.MetadataValue.md(
                    _preview(rec.frame, explanation_obj, ev.predictions, expl["max_act"])
                ),
            }
        )
        return base | {
            "score": ev.score,
            "reason": ev.reason,
            "per_source": ev.per_source,
            "complexities": complexities,
            "complexity": mean_complexity(complexities),
            "n_rules": len(explanation_obj.rules),
            "predictions": ev.predictions,
            "simulator_tokens": simulator_tokens,
        }

    return [explanation, test_score]
