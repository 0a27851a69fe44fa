"""``generated``: counterexamples written from one condition's explanations (ours, issue 33).

Per layer x feature, like ``records``: the explainer backend writes candidate sentences from the
stored explanation of ``Preset.generated.condition`` (sentences it predicts should fire, and edits
of top records it predicts should stay silent); each is run through the subject model and SAE for
its true activations (featureinterp/explain/generated.py), and the explanation is scored on them
like any complementary source. Its own asset, so the requests are cached, resumable and visible
in the UI; ``layer_results`` adds its score to the condition's sources (Figure 3's seventh line).
A reply with nothing usable fails the partition alone, with the completions in its metadata.
"""

from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from featureinterp.activations.latents import sae_activations
from featureinterp.activations.sae import LoadedSae, load_layer_sae
from featureinterp.config import Preset, layer_key
from featureinterp.data.corpus import bos_token_id, decode_tokens
from featureinterp.explain import explain_seed
from featureinterp.explain.conditions import get_condition
from featureinterp.explain.generated import GenerationFailed, build_generated
from featureinterp.explanations.rules import Explanation
from featureinterp.llm.backend import tally_usage
from featureinterp.names import GENERATED_SOURCE, POSITIVE_SOURCE
from featureinterp.records.sources import split_records
from featureinterp.simulate.evaluate import evaluate
from featureinterp.simulate.synthetic import synthetic_activations
from featureinterp.storage import TableBundle
from featureinterp_assets.assets.explanations import (
    TRANSIENT_RETRY,
    llm_partitions,
    score_seed,
    stored_explanation,
)
from featureinterp_assets.assets.records import _layer_feature_of
from featureinterp_assets.batch import BATCH_POLICY, PartitionResult, Produced, StepEvent
from featureinterp_assets.constants import GROUP_EXPLANATIONS, POOL_GPU, STORAGE_IO
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.metadata import source_table, usage_table
from featureinterp_assets.resources import LLMResource, PresetResource

__all__ = ["GENERATED_DESCRIPTION", "build_generated_asset", "counterexample_markdown"]

GENERATED_DESCRIPTION = (
    "Counterexamples written by the explainer from the explanation: sentences it predicts fire and "
    "edits of top records it predicts stay silent, with their true activations (subject model + "
    "SAE). Look at `counterexamples` (where the explanation is wrong) and `per_source` (its score "
    "on them, like any complementary source)."
)


def counterexample_markdown(frame: pl.DataFrame, max_act: float) -> str:
    """Every candidate as a Markdown table row: kind, text, predicted / true, max activation."""
    lines = ["| kind | text | explanation says | fired | max act | counterexample |", "|---|---|---|---|---|---|"]
    for r in frame.iter_rows(named=True):
        top = max(r["acts"], default=0.0)
        text = r["text"].replace("|", "\\|")
        lines.append(
            f"| {r['kind']} | {text} | {'fires' if r['expected_fire'] else 'silent'} | "
            f"{'yes' if r['fired'] else 'no'} | {top:.3g} ({top / max_act:.0%} of max) | "
            f"{'**yes**' if r['counterexample'] else ''} |"
        )
    return "\n".join(lines)


def build_generated_asset(
    partitions: dg.MultiPartitionsDefinition, preset: Preset
) -> list[dg.AssetsDefinition]:
    """The ``generated`` asset of ``preset`` ([] when ``preset.generated_condition`` is None: off, or not explained)."""
    condition = preset.generated_condition
    if condition is None:
        return []
    cond = get_condition(condition)
    explanation_key = dg.AssetKey(["explanations", condition])
    by_layer = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="layer")

    @dg.asset(
        name=GENERATED_SOURCE,
        partitions_def=partitions,
        backfill_policy=BATCH_POLICY,
        group_name=GROUP_EXPLANATIONS,
        io_manager_key=STORAGE_IO,
        pool=POOL_GPU,
        retry_policy=TRANSIENT_RETRY,
        code_version="1",
        kinds={"pytorch", "polars"},
        deps=[explanation_key],
        ins={"records": dg.AssetIn("records"), "sae": dg.AssetIn(partition_mapping=by_layer)},
        tags={"condition": condition},
        description=GENERATED_DESCRIPTION,
    )
    def generated(
        context: dg.AssetExecutionContext,
        records: dict[str, TableBundle],
        sae: dict[str, dict[str, Any]],
        preset: PresetResource,
        llm: LLMResource,
        storage: dg.ResourceParam[StorageIOManager],
    ) -> Iterator[StepEvent]:
        spec = preset.spec()
        loaded: dict[int, LoadedSae] = {}  # one SAE load per layer of the run

        def activation_fn(layer: int, feature: int) -> Callable[[np.ndarray], np.ndarray]:
            """Token rows [N, T] -> the feature's true activations [N, T]: the SAE path of
            ``sae_activations``, or the synthetic feature's rule on SYN."""
            ref = preset.sae_ref(sae[layer_key(layer)])
            if ref.synthetic:
                tok = preset.tokenizer()
                return lambda rows: np.asarray(synthetic_activations(decode_tokens(tok, rows), [feature], spec.prepend_bos).acts)[0]
            model, _ = preset.model_and_tokenizer()
            if layer not in loaded:
                loaded[layer] = load_layer_sae(ref, model, layer, preset.torch_device)

            def activate(rows: np.ndarray) -> np.ndarray:
                out = sae_activations(model, {layer: loaded[layer]}, rows, [feature], spec.batch_size, spec.prepend_bos)
                return np.asarray(out[layer].acts, dtype=np.float32)[0]  # [N, T]: one feature

            return activate

        def compute(key: str) -> PartitionResult:
            layer, feature = _layer_feature_of(key)
            expl = stored_explanation(storage, condition, key)
            base = {"condition": condition, "layer": layer, "feature": feature, "max_act": expl.get("max_act", 0.0)}
            if expl.get("skipped"):
                frame = pl.DataFrame()
                return PartitionResult({"result": Produced(TableBundle(frame, base | {"skipped": expl["skipped"]}), {"skipped": expl["skipped"]})})
            return PartitionResult({"result": _generate(spec, preset, llm, cond.explainer_model, expl, records[key], activation_fn(layer, feature), base)})

        yield from llm_partitions(context, compute, storage, spec)

    return [generated]


def _generate(
    spec: Preset,
    preset: PresetResource,
    llm: LLMResource,
    explainer_model: str | None,
    expl: dict,
    rec: TableBundle,
    activate: Callable[[np.ndarray], np.ndarray],
    base: dict,
) -> Produced:
    """One feature's candidates, their true activations, the counterexamples and the explanation's
    score on them (the same ``evaluate`` as the records' sources)."""
    settings, layer, feature = spec.generated, base["layer"], base["feature"]
    max_act = float(expl["max_act"])
    explanation = Explanation.from_record(expl["explanation"])
    top = split_records(rec.frame, POSITIVE_SOURCE, "train", None)[: settings.top_records]
    tok = preset.tokenizer()
    bos = bos_token_id(tok, spec.model.bos_token) if spec.prepend_bos else None
    seed = explain_seed(spec.seed, spec.name, f"{base['condition']}/generated", layer, feature)
    backend = llm.explainer(explainer_model)
    try:
        with tally_usage() as usage:
            gen = build_generated(backend, explanation, top, settings, seed, tok, activate, spec.seq_len, bos, max_act)
    except GenerationFailed as err:
        raise dg.Failure(
            description=f"no generated candidates for layer {layer} feature {feature}: {err.reason}",
            metadata={"completions": dg.MetadataValue.json(err.completions[:20])},
            allow_retries=False,
        ) from err
    positives = rec.frame.filter((pl.col("source") == POSITIVE_SOURCE) & (pl.col("split") == "test"))
    columns = ["source", "split", "rank", "row", "tokens", "acts"]
    frame = pl.concat([positives.select(columns), gen.frame.select(columns)], how="vertical_relaxed")
    simulator = llm.simulator()
    tokens_before = simulator.thread_tokens()  # this feature's passes only, when features share it
    ev = evaluate(
        simulator.simulate_explanation,
        explanation,
        frame,
        max_act,
        spec.scores,
        interval_seed=score_seed(spec, f"{base['condition']}/generated", layer, feature),
        sources=(GENERATED_SOURCE,),
    )
    per_source = ev.per_source[GENERATED_SOURCE]
    simulator_tokens = simulator.thread_tokens() - tokens_before
    n_counter = int(gen.frame["counterexample"].sum())
    meta = base | {
        "explanation": str(explanation),
        "per_source": {GENERATED_SOURCE: per_source},
        "counterexamples": n_counter,
        "candidates": len(gen.frame),
        "completions": gen.completions,
        "usage": usage.snapshot(),
        "simulator_tokens": simulator_tokens,
        "explainer": backend.name,
        "seed": seed,
        "fires_above": settings.fires_above,
    }
    metadata = {
        "explanation": str(explanation),
        "counterexamples": n_counter,
        "candidates": len(gen.frame),
        "per_source": source_table({GENERATED_SOURCE: per_source}),
        "table": dg.MetadataValue.md(counterexample_markdown(gen.frame, max_act)),
        "usage": usage_table(usage.snapshot()),
    }
    return Produced(TableBundle(gen.frame, meta), metadata)
