"""Explanation and score assets, one pair per experiment condition (a small factory).

``explanations/<condition>`` holds the chosen explanation, the tree's path, every raw completion
(with request ids, for audit) and token usage; ``scores/<condition>`` holds the test evaluation
(primary score, per-source scores and false-positive rates for Figure 3, rule complexities).
Both are partitioned by layer x feature like ``records`` and computed by one step per condition,
feature after feature, so a run over a layer's features loads the simulator once. A failed
explanation fails its partition alone, with the reason and the completions in the failure metadata
(never a dummy explanation), so a rerun retries exactly the failed partitions.
"""

import base64
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import polars as pl

from featureinterp.config import ApiSpec, Preset
from featureinterp.explain import ExplainResult, ExplanationFailed, explain, explain_seed
from featureinterp.explain.complexity import ComplexityAnalyzer, mean_complexity
from featureinterp.explain.conditions import Condition, feature_records, get_condition
from featureinterp.explanations.rules import Explanation
from featureinterp.llm.backend import request_modes
from featureinterp.names import POSITIVE_SOURCE
from featureinterp.records.formatting import quantize
from featureinterp.simulate.evaluate import Evaluation, evaluate
from featureinterp.simulate.previews import score_strip
from featureinterp.storage import ArrayBundle, TableBundle
from featureinterp_assets.assets.records import _layer_feature_of
from featureinterp_assets.automation import PER_PARTITION
from featureinterp_assets.batch import BATCH_POLICY, PartitionResult, Produced, StepEvent, each_partition
from featureinterp_assets.constants import GROUP_EXPLANATIONS, POOL_GPU, STORAGE_IO
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.metadata import explanation_markdown, source_table, usage_table
from featureinterp_assets.resources import LLMResource, PresetResource

if TYPE_CHECKING:
    from featureinterp.simulate.simulator import LocalSimulator

TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
"""Step retries for transient faults (server gave up, CUDA OOM from a neighbour); parse failures
are handled inside the explainer with bounded re-requests."""


def _max_act(records_value: TableBundle) -> float:
    return float(records_value.meta.get("max_act", 0.0))


def holistic_lookup(holistic_value: ArrayBundle) -> tuple[dict[int, np.ndarray], float]:
    """row -> holistic values (first column dropped) and the 0..5 scale of a stored
    ``holistic_activations`` value: what a holistic condition's explainer reads."""
    rows = np.asarray(holistic_value["rows"])
    values = np.asarray(holistic_value["holistic"], dtype=np.float32)
    return {int(r): values[i, 1:] for i, r in enumerate(rows)}, float(holistic_value.meta["max_holistic"])


def _preview(
    frame: pl.DataFrame,
    explanation: Explanation,
    predictions: dict[str, list[list[float]]],
    max_act: float,
    n: int = 3,
) -> str:
    """Markdown: true (0..5) vs simulated values on the first test positives."""
    pos = frame.filter((pl.col("source") == POSITIVE_SOURCE) & (pl.col("split") == "test")).sort("rank")
    lines = [f"**{explanation}**", "", "| record | token: true / simulated |", "|---|---|"]
    for i, r in enumerate(pos.head(n).iter_rows(named=True)):
        true = quantize(r["acts"], max_act)
        sim = predictions[POSITIVE_SOURCE][i] if i < len(predictions[POSITIVE_SOURCE]) else []
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
    automate: bool = False,
) -> list[dg.AssetsDefinition]:
    """One explain-and-score step per condition; ``automate``: eager, so a new layer's records
    lead to its explanations (featureinterp_assets/automation.py)."""
    layer_x_feature = dg.MultiPartitionsDefinition({"layer": layers, "feature": features})
    return [_condition_asset(get_condition(name), layer_x_feature, automate) for name in conditions]


def _condition_asset(
    cond: Condition, partitions: dg.MultiPartitionsDefinition, automate: bool = False
) -> dg.AssetsDefinition:
    """``explanations/<condition>`` and ``scores/<condition>`` as one step: a ranged run (a layer's
    features, a UI backfill) explains and scores each feature before the next, with the simulator
    loaded once, and records each (layer, feature) on its own (featureinterp_assets/batch.py).
    Either asset can be materialized alone: scores alone re-score the stored explanations."""
    ins = {"records": dg.AssetIn("records")}
    if cond.holistic:
        ins["holistic_activations"] = dg.AssetIn("holistic_activations")
    tags = {"condition": cond.name, "method": cond.method}
    explanation_key = dg.AssetKey(["explanations", cond.name])

    @dg.multi_asset(
        name=f"explain_and_score_{cond.name}",
        outs={
            "explanation": dg.AssetOut(
                key=explanation_key,
                is_required=False,
                io_manager_key=STORAGE_IO,
                code_version="1",
                tags=tags,
                automation_condition=PER_PARTITION if automate else None,
                description=f"The {cond.name} explanation of the feature, its tree path, every raw "
                "completion (with request ids) and the token usage.",
            ),
            "score": dg.AssetOut(
                key=dg.AssetKey(["scores", cond.name]),
                is_required=False,
                io_manager_key=STORAGE_IO,
                code_version="1",
                tags=tags,
                automation_condition=PER_PARTITION if automate else None,
                description="Test-split evaluation: primary score (positives + similar-negatives), "
                "per-source scores and false-positive rates, and each rule's complexity.",
            ),
        },
        internal_asset_deps={
            "explanation": set(map(dg.AssetKey, ins)),
            "score": {explanation_key, dg.AssetKey("records")},
        },
        partitions_def=partitions,
        backfill_policy=BATCH_POLICY,
        group_name=GROUP_EXPLANATIONS,
        pool=POOL_GPU,
        retry_policy=TRANSIENT_RETRY,
        can_subset=True,
        ins=ins,
        op_tags=tags,
    )
    def explain_and_score(
        context: dg.AssetExecutionContext,
        preset: PresetResource,
        llm: LLMResource,
        storage: dg.ResourceParam[StorageIOManager],
        **inputs,
    ) -> Iterator[StepEvent]:
        spec = preset.spec()
        wanted = context.selected_output_names

        def compute(key: str) -> PartitionResult:
            layer, feature = _layer_feature_of(key)
            rec = inputs["records"][key]
            hol = inputs["holistic_activations"][key] if cond.holistic else None
            outputs: dict[str, Produced] = {}
            if "explanation" in wanted:
                outputs["explanation"] = _explain(spec, llm, cond, layer, feature, rec, hol)
                expl = outputs["explanation"].value
            else:
                expl = stored_explanation(storage, cond.name, key)
            if "score" in wanted:
                outputs["score"] = _score(llm, cond, expl, rec, spec)
            return PartitionResult(outputs)

        yield from llm_partitions(context, compute, storage, spec)

    return explain_and_score


def llm_partitions(
    context: dg.AssetExecutionContext,
    compute: Callable[[str], PartitionResult],
    storage: StorageIOManager,
    spec: Preset,
) -> Iterator[dg.Output | dg.AssetMaterialization | dg.AssetCheckResult]:
    """``each_partition`` for the steps that ask an explainer backend: each partition recorded as
    it finishes, transient faults retried, and with an API explainer ``features_at_once``
    partitions in flight (their requests overlap while the local simulator scores the others)."""
    api = isinstance(spec.explain.explainer, ApiSpec)
    yield from each_partition(
        context,
        compute,
        storage,
        as_you_go=True,
        retries=TRANSIENT_RETRY.max_retries,
        concurrency=spec.explain.features_at_once if api else 1,
    )


def _explain(
    spec: Preset,
    llm: LLMResource,
    cond: Condition,
    layer: int,
    feature: int,
    rec: TableBundle,
    hol_value: ArrayBundle | None,
) -> Produced:
    """One feature's explanation (the stored value and its metadata); a failed search raises
    ``dg.Failure`` with the completions, never a dummy explanation."""
    max_act = _max_act(rec)
    config = cond.explainer_config(spec.explain)
    base = {"condition": cond.name, "layer": layer, "feature": feature, "max_act": max_act}
    base["rule_cap"] = config.rule_cap  # the cap this explanation ran with (None: uncapped)
    if not max_act > 0:
        return Produced(base | {"skipped": "dead feature"}, {"skipped": "dead feature (never fires)"})
    hol, max_h = holistic_lookup(hol_value) if hol_value is not None else (None, 0.0)  # given iff cond.holistic
    records = feature_records(rec.frame, max_act, cond, hol, max_h)
    backend, simulator = llm.explainer(cond.explainer_model), llm.simulator()
    seed = explain_seed(spec.seed, spec.name, cond.name, layer, feature)
    tokens_before = simulator.thread_tokens()  # this feature's passes only, when features share it
    try:
        result = explain(backend, simulator.simulate_explanation, records, config, seed)
    except ExplanationFailed as err:
        raise dg.Failure(
            description=f"no explanation for layer {layer} feature {feature}: {err.reason}",
            metadata={"completions": dg.MetadataValue.json(err.completions[:20])},
            allow_retries=False,
        ) from err
    base["stop_rule"] = "roots and every level" if config.stop_on_roots else "after each level (paper)"
    return _explained(base, result, backend.name, seed, simulator.thread_tokens() - tokens_before)


def _explained(
    base: dict, result: ExplainResult, explainer: str, seed: int, simulator_tokens: int
) -> Produced:
    """The stored value and the metadata of one feature's ``ExplainResult``."""
    path = [
        {"depth": n.get("depth", 0), "train": n.get("train_score"), "valid": n.get("valid_score")}
        for n in result.nodes
    ]
    metadata = {
        "explanation": str(result.explanation),
        "rules": dg.MetadataValue.md(explanation_markdown(result.explanation.to_record()["rules"], path)),
        "train_score": result.train_score,
        "valid_score": result.valid_score,
        "tree_path": dg.MetadataValue.json(path),
        "usage": usage_table(result.usage),
        "explainer": explainer,
        "request_modes": dg.MetadataValue.json(request_modes(result.completions)),
        "simulations": result.simulations,
        "simulator_tokens": simulator_tokens,
    }
    value = base | {
        "explanation": result.explanation.to_record(),
        "alternatives": [e.to_record() for e in result.alternatives],
        "train_score": result.train_score,
        "valid_score": result.valid_score,
        "nodes": result.nodes,
        "completions": result.completions,
        "usage": result.usage,
        "explainer": explainer,
        "seed": seed,
        "simulator_tokens": simulator_tokens,
        "stop_reason": result.stop_reason,
    }
    return Produced(value, metadata)


def _strip(frame: pl.DataFrame, explanation: Explanation, ev: Evaluation, max_act: float) -> str:
    """Markdown image: true vs simulated activations on the first test records (previews.py)."""
    title = f"{explanation} | score {ev.score:.3f}"[:150]
    png = score_strip(frame, ev.predictions, max_act, title)
    return f"![true vs simulated](data:image/png;base64,{base64.b64encode(png).decode()})"


def stored_explanation(storage: StorageIOManager, condition: str, key: str) -> dict:
    """The stored ``explanations/<condition>`` value of partition ``key``, for the steps that score
    it (the explain step run for its score only, the judge and embedding scorers); a clear failure
    that names what to materialize when it is missing."""
    expl = storage.stored(dg.AssetKey(["explanations", condition]), key)
    if expl is None:
        raise dg.Failure(
            description=f"no stored explanations/{condition} for {key}: materialize it first "
            "(or together with its scores)",
            allow_retries=False,
        )
    return expl


def score_seed(spec: Preset, condition: str, layer: int, feature: int) -> int:
    """The seed of one score's bootstrap intervals: per preset, condition, layer and feature (the
    explanation's seed salted), so rescoring one partition reproduces its intervals exactly."""
    return explain_seed(spec.seed, spec.name, f"{condition}/scores", layer, feature)


def interval_text(interval: dict) -> str:
    """``[low, high] (95%)`` with the share of undefined resamples when there are any."""
    if "ci_low" not in interval:
        return "off"
    low, high, undefined = interval["ci_low"], interval["ci_high"], interval["ci_undefined"]
    text = f"[{low:.3f}, {high:.3f}] ({interval['ci_level']:.0%} bootstrap over test records)"
    return text + (f", {undefined:.0%} of resamples undefined" if undefined else "")


def score_base(cond: Condition, expl: dict) -> dict:
    """The fields every score row carries; ``rule_cap`` is the cap the explanation ran with (read
    from the stored explanation; None for an uncapped free-text one), never the condition's
    nominal cap (an explanation stored before the cap was recorded: the condition's cap as run)."""
    return {k: expl[k] for k in ("condition", "layer", "feature")} | {
        "method": cond.method,
        "figure_condition": cond.figure_condition,
        "rule_cap": expl["rule_cap"] if "rule_cap" in expl else cond.cap_run,
    }


def _score(llm: LLMResource, cond: Condition, expl: dict, rec: TableBundle, spec: Preset) -> Produced:
    """Test-split evaluation of one stored explanation, with each rule's complexity: scores and
    false positives as the preset defines them (``spec.scores``: the paper's by default), and
    (faithful presets) the paper's complexity read-out one token late."""
    base = score_base(cond, expl)
    if expl.get("skipped"):
        value = base | {"score": float("nan"), "reason": expl["skipped"], "per_source": {}}
        return Produced(value, {"skipped": expl["skipped"]})
    explanation_obj = Explanation.from_record(expl["explanation"])
    simulator = llm.simulator()
    tokens_before = simulator.thread_tokens()
    ev = evaluate(
        simulator.simulate_explanation,
        explanation_obj,
        rec.frame,
        expl["max_act"],
        spec.scores,
        interval_seed=score_seed(spec, cond.name, expl["layer"], expl["feature"]),
    )
    simulator_tokens = simulator.thread_tokens() - tokens_before
    from featureinterp.simulate.simulator import alignment_stats  # torch: only in the step that scores

    test_tokens = rec.frame.filter(pl.col("split") == "test")["tokens"].to_list()
    alignment = alignment_stats(simulator.tok, test_tokens)  # tokens the simulator cannot see
    analyzer = ComplexityAnalyzer(llm.local_backend(), faithful=spec.faithful)
    complexities = analyzer.rate(list(explanation_obj.rules))
    metadata = _score_metadata(
        ev, explanation_obj, complexities, simulator, simulator_tokens, rec.frame, expl["max_act"]
    ) | {"alignment": dg.MetadataValue.json(alignment)}
    value = base | {
        "score": ev.score,
        "reason": ev.reason,
        **ev.interval,
        "per_source": ev.per_source,
        "complexities": complexities,
        "complexity": mean_complexity(complexities),
        "n_rules": len(explanation_obj.rules),
        "predictions": ev.predictions,
        "simulator_tokens": simulator_tokens,
        "alignment": alignment,
        "metrics": spec.scores.metrics,
        "fp_definition": spec.scores.fp_definition(),
    }
    return Produced(value, metadata)


def _score_metadata(
    ev: Evaluation,
    explanation: Explanation,
    complexities: list[float],
    simulator: "LocalSimulator",
    simulator_tokens: int,
    frame: pl.DataFrame,
    max_act: float,
) -> dict:
    """The Dagster metadata of one test evaluation: scores, complexity, simulator, previews."""
    return {
        "score": ev.score,
        "reason": ev.reason or "",
        "score_interval": interval_text(ev.interval),
        "explanation": str(explanation),
        "per_source": source_table(ev.per_source),
        "complexity": mean_complexity(complexities),
        "simulator": dg.MetadataValue.json(simulator.describe()),
        "simulator_tokens": simulator_tokens,
        "preview": dg.MetadataValue.md(_preview(frame, explanation, ev.predictions, max_act)),
        "activations": dg.MetadataValue.md(_strip(frame, explanation, ev, max_act)),
    }
