"""Secondary score assets: ``detection/<condition>``, ``fuzzing/<condition>`` and
``embedding/<condition>``, per layer x feature like the simulation scores they sit next to.

Each reads the stored explanation of its condition and the feature's records, and judges the same
test records the simulation score did (featureinterp/scorers). Detection and fuzzing ask the
preset's explainer backend (the same model, disk cache and server fallbacks as the explanations;
one scorer for every condition, so their numbers compare) and run for the conditions
``secondary_conditions`` names; the embedding score needs no LLM and runs for every condition.
A reply that never parses fails its partition alone, with the completions in the metadata.
"""

from collections.abc import Iterator

import dagster as dg

from featureinterp.explain.conditions import Condition, get_condition
from featureinterp.retrieval.index import embed_texts
from featureinterp.simulate.scorers import JudgeConfig, ScorerFailed, scorer_seed
from featureinterp.simulate.scorers.feature import JUDGES, embed_feature, judge_feature
from featureinterp_assets.assets.explanations import (
    TRANSIENT_RETRY,
    llm_partitions,
    score_base,
    stored_explanation,
)
from featureinterp_assets.assets.records import _layer_feature_of
from featureinterp_assets.automation import PER_PARTITION
from featureinterp_assets.batch import BATCH_POLICY, PartitionResult, Produced, each_partition
from featureinterp_assets.constants import GROUP_EXPLANATIONS, POOL_GPU, STORAGE_IO
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.metadata import source_table
from featureinterp_assets.resources import LanceDBResource, LLMResource, PresetResource, shared_embedder

__all__ = ["SCORER_DESCRIPTIONS", "build_scorer_assets"]

SCORER_DESCRIPTIONS = {
    "detection": "Detection: the scorer model labels each test record 1/0 (does the feature fire in "
    "it?) from the explanation; balanced accuracy (primary set), precision, recall and F1 per source.",
    "fuzzing": "Fuzzing: test records with tokens highlighted, truly or at random; the scorer model "
    "says whether the highlights fit the explanation; same metrics as detection.",
    "embedding": "Embedding: AUROC of activating vs quiet test records ranked by sentence-embedding "
    "similarity to the explanation (no LLM), per source.",
}


def build_scorer_assets(
    partitions: dg.MultiPartitionsDefinition,
    conditions: list[str],
    judged: list[str],
    automate: bool = False,
) -> list[dg.AssetsDefinition]:
    """Per condition: the embedding score; for ``judged`` conditions also detection and fuzzing."""
    out = [_embedding_asset(get_condition(c), partitions, automate) for c in conditions]
    return out + [_judge_asset(get_condition(c), partitions, automate) for c in conditions if c in judged]


def _produced(cond: Condition, expl: dict, result: dict) -> Produced:
    value = score_base(cond, expl) | result
    metadata = {
        "score": result["score"],
        "scorer_model": result["scorer_model"],
        "per_source": source_table(result["per_source"]),
    }
    return Produced(value, metadata)


def _skipped(cond: Condition, expl: dict) -> Produced:
    value = score_base(cond, expl) | {"score": float("nan"), "reason": expl["skipped"], "per_source": {}}
    return Produced(value, {"skipped": expl["skipped"]})


def _judge_asset(cond: Condition, partitions: dg.MultiPartitionsDefinition, automate: bool) -> dg.AssetsDefinition:
    explanation_key = dg.AssetKey(["explanations", cond.name])
    tags = {"condition": cond.name, "method": cond.method}

    @dg.multi_asset(
        name=f"judge_{cond.name}",
        outs={
            scorer: dg.AssetOut(
                key=dg.AssetKey([scorer, cond.name]),
                is_required=False,
                io_manager_key=STORAGE_IO,
                code_version="1",
                tags=tags,
                automation_condition=PER_PARTITION if automate else None,
                description=SCORER_DESCRIPTIONS[scorer],
            )
            for scorer in JUDGES
        },
        internal_asset_deps={s: {explanation_key, dg.AssetKey("records")} for s in JUDGES},
        deps=[explanation_key],
        ins={"records": dg.AssetIn("records")},
        partitions_def=partitions,
        backfill_policy=BATCH_POLICY,
        group_name=GROUP_EXPLANATIONS,
        pool=POOL_GPU,
        retry_policy=TRANSIENT_RETRY,
        can_subset=True,
        op_tags=tags,
    )
    def judge(
        context: dg.AssetExecutionContext,
        preset: PresetResource,
        llm: LLMResource,
        storage: dg.ResourceParam[StorageIOManager],
        records: dict,
    ) -> Iterator[dg.Output | dg.AssetMaterialization | dg.AssetCheckResult]:
        spec = preset.spec()
        config = JudgeConfig(batch_size=spec.explain.scorer_batch)

        def compute(key: str) -> PartitionResult:
            layer, feature = _layer_feature_of(key)
            expl = stored_explanation(storage, cond.name, key)
            outputs = {}
            for scorer in context.selected_output_names:
                if expl.get("skipped"):
                    outputs[scorer] = _skipped(cond, expl)
                    continue
                seed = scorer_seed(spec.seed, spec.name, cond.name, scorer, layer, feature)
                try:
                    result = judge_feature(
                        scorer, llm.explainer(), expl["explanation"], records[key].frame, config, seed
                    )
                except ScorerFailed as err:
                    raise dg.Failure(
                        description=f"no {scorer} score for layer {layer} feature {feature}: {err.reason}",
                        metadata={"completions": dg.MetadataValue.json(err.completions[:20])},
                        allow_retries=False,
                    ) from err
                outputs[scorer] = _produced(cond, expl, result)
            return PartitionResult(outputs)

        yield from llm_partitions(context, compute, storage, spec)

    return judge


def _embedding_asset(
    cond: Condition, partitions: dg.MultiPartitionsDefinition, automate: bool
) -> dg.AssetsDefinition:
    explanation_key = dg.AssetKey(["explanations", cond.name])

    @dg.asset(
        key=dg.AssetKey(["embedding", cond.name]),
        deps=[explanation_key],
        ins={"records": dg.AssetIn("records"), "corpus_embeddings": dg.AssetIn("corpus_embeddings")},
        partitions_def=partitions,
        backfill_policy=BATCH_POLICY,
        group_name=GROUP_EXPLANATIONS,
        io_manager_key=STORAGE_IO,
        code_version="1",
        tags={"condition": cond.name, "method": cond.method},
        automation_condition=PER_PARTITION if automate else None,
        description=SCORER_DESCRIPTIONS["embedding"],
    )
    def embedding(
        context: dg.AssetExecutionContext,
        preset: PresetResource,
        lancedb: LanceDBResource,
        storage: dg.ResourceParam[StorageIOManager],
        records: dict,
        corpus_embeddings: dict,
    ) -> Iterator[dg.Output | dg.AssetMaterialization | dg.AssetCheckResult]:
        spec = preset.spec()
        index = lancedb.corpus_index(corpus_embeddings)  # at the current home's location
        embedder = shared_embedder(spec.embedding_model, preset.torch_device)

        def compute(key: str) -> PartitionResult:
            expl = stored_explanation(storage, cond.name, key)
            if expl.get("skipped"):
                return PartitionResult({"result": _skipped(cond, expl)})
            result = embed_feature(
                lambda texts: embed_texts(embedder, texts),
                expl["explanation"],
                records[key].frame,
                index.vectors_of,
                spec.embedding_model,
            )
            return PartitionResult({"result": _produced(cond, expl, result)})

        yield from each_partition(context, compute, storage, as_you_go=False)

    return embedding
