"""``baselines``: per (layer, feature), the scores an explanation's score is read against — the
empty explanation's (the simulator's prior), and on layer SYN the true and a wrong rule's
(featureinterp/simulate/baselines.py). One simulation per kind on the test records, the simulator loaded
once per ranged run like the explain stage."""

from collections.abc import Iterator

import dagster as dg

from featureinterp.config import layer_key
from featureinterp.names import SYNTHETIC_LAYER
from featureinterp.simulate.baselines import baseline_scores
from featureinterp.storage import TableBundle
from featureinterp_assets.assets.records import _layer_feature_of
from featureinterp_assets.automation import PER_PARTITION
from featureinterp_assets.batch import BATCH_POLICY, PartitionResult, Produced, StepEvent, each_partition
from featureinterp_assets.constants import GROUP_EXPLANATIONS, POOL_GPU, STORAGE_IO
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.resources import LLMResource


def build_baseline_asset(
    partitions: dg.MultiPartitionsDefinition, automate: bool = False
) -> dg.AssetsDefinition:
    @dg.asset(
        partitions_def=partitions,
        automation_condition=PER_PARTITION if automate else None,
        backfill_policy=BATCH_POLICY,
        group_name=GROUP_EXPLANATIONS,
        io_manager_key=STORAGE_IO,
        pool=POOL_GPU,
        code_version="1",
        ins={"records": dg.AssetIn("records")},
    )
    def baselines(
        context: dg.AssetExecutionContext,
        records: dict[str, TableBundle],
        llm: LLMResource,
        storage: dg.ResourceParam[StorageIOManager],
    ) -> Iterator[StepEvent]:
        """Null baseline (empty explanation) of every feature; true / other rule on SYN."""

        def compute(key: str) -> PartitionResult:
            layer, feature = _layer_feature_of(key)
            rec = records[key]
            max_act = float(rec.meta.get("max_act", 0.0))
            base = {"layer": layer_key(layer), "feature": feature, "max_act": max_act}
            if not max_act > 0:
                return PartitionResult(
                    {"result": Produced(base | {"skipped": "dead feature"}, {"skipped": "dead"})}
                )
            synthetic = feature if layer == SYNTHETIC_LAYER else None
            scores = baseline_scores(
                llm.simulator().simulate, rec.frame, max_act, synthetic, llm.score_settings()
            )
            metadata = {f"{kind}_score": v["score"] for kind, v in scores.items()}
            return PartitionResult({"result": Produced(base | scores, metadata)})

        yield from each_partition(context, compute, storage, as_you_go=False)

    return baselines


__all__ = ["build_baseline_asset"]
