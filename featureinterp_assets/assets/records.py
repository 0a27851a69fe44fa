"""Records stage: corpus embeddings in LanceDB, per-feature records and holistic activations."""

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
import numpy as np

from featureinterp.activations.holistic import holistic_activations as compute_holistic
from featureinterp.activations.holistic import holistic_corpus_max as compute_holistic_max
from featureinterp.activations.sae import LoadedSae, load_layer_sae
from featureinterp.config import Preset, layer_key, parse_feature_key, parse_layer_key
from featureinterp.data.corpus import decode_rows
from featureinterp.names import POSITIVE_SOURCE
from featureinterp.records.build import build_feature_records
from featureinterp.records.sources import RecordParams
from featureinterp.retrieval.index import CorpusIndex, embed_texts, table_name
from featureinterp.storage import ArrayBundle, TableBundle
from featureinterp_assets.automation import PER_PARTITION
from featureinterp_assets.batch import BATCH_POLICY, PartitionResult, Produced, StepEvent, each_partition
from featureinterp_assets.constants import GROUP_RECORDS, POOL_GPU, STORAGE_IO
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.metadata import counts_table
from featureinterp_assets.resources import LanceDBResource, PresetResource, shared_embedder

if TYPE_CHECKING:
    import polars as pl

RECORD_CHECKS = [
    "source_counts",
    "negatives_non_activating",
    "no_positive_leak",
    "rows_distinct",
    "splits_disjoint",
    "feature_alive",
]


class RecordsConfig(dg.Config):
    """Record sampling; defaults are the paper's values with its bugs fixed."""

    faithful: bool = False
    """Reproduce the paper's code (``RecordParams.faithful``): its random draws, top rows, retrieval
    loop and a validation split equal to the train slice."""
    per_split: int | None = None
    """Records per split and source; None: the preset's (10 for the paper-sized presets)."""
    top_sample_n: int | None = None
    """Positives sampled; None: 3 x per_split."""
    complementary_n: int | None = None
    """Rows per complementary source; None: 3 x per_split."""
    special_n: int = 400

    def params(self, preset_per_split: int, preset_faithful: bool = False) -> RecordParams:
        """The record parameters; ``preset_faithful`` (the preset-level switch) implies ``faithful``."""
        per_split = self.per_split or preset_per_split
        top_sample_n = self.top_sample_n or 3 * per_split
        complementary_n = self.complementary_n or 3 * per_split
        faithful = self.faithful or preset_faithful
        # the paper's first retrieval depth is positives + 4 x complementary rows (150 at its sizes)
        retrieve_n = top_sample_n + 4 * complementary_n if faithful else RecordParams.retrieve_n
        return RecordParams(
            top_sample_n=top_sample_n,
            complementary_n=complementary_n,
            special_n=self.special_n,
            per_split=per_split,
            retrieve_n=retrieve_n,
            faithful=faithful,
        )


@dg.asset(group_name=GROUP_RECORDS, io_manager_key=STORAGE_IO, code_version="1", kinds={"lancedb"})
def corpus_embeddings(
    context: dg.AssetExecutionContext,
    corpus_tokens: ArrayBundle,
    preset: PresetResource,
    lancedb: LanceDBResource,
) -> dict[str, Any]:
    """Every token row decoded (without BOS) and embedded with sentence-transformers, in a LanceDB table.

    The table name carries the token hash and the embedding model, so re-materializing the same
    corpus with the same model reuses the table instead of re-embedding, when it is whole
    (``CorpusIndex.build`` checks more than its row count; a damaged table is rebuilt).

    The stored value names the table, not where it lives: readers open it through the ``lancedb``
    resource (``LanceDBResource.corpus_index``), so a moved or copied home reads its own table.
    """
    spec = preset.spec()
    name = table_name(corpus_tokens.meta["hash"], spec.embedding_model)
    texts = decode_rows(preset.tokenizer(), corpus_tokens["tokens"], skip_first=spec.prepend_bos)
    embedder = None

    def embed(chunk: Sequence[str]) -> np.ndarray:
        nonlocal embedder
        embedder = embedder or shared_embedder(spec.embedding_model, preset.torch_device)
        return embed_texts(embedder, chunk)

    index, built = CorpusIndex.build(lancedb.uri, name, texts, embed, log=context.log.info)
    context.add_output_metadata(
        {
            "rows": len(index),
            "table": name,
            "embedding_model": spec.embedding_model,
            "search": "exact (every row scored)",
            "ann_index": index.has_ann_index,
            "re_embedded": built,
        }
    )
    return {"table": name, "rows": len(index)}


def build_records_assets(
    layers: dg.DynamicPartitionsDefinition,
    features: dg.StaticPartitionsDefinition,
    automate_holistic: bool = False,
) -> list[dg.AssetsDefinition]:
    """``records`` (automated: featureinterp_assets/automation.py) and ``holistic_activations``
    (automated only where a condition that needs them runs on every partition)."""
    layer_x_feature = dg.MultiPartitionsDefinition({"layer": layers, "feature": features})
    by_layer = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="layer")

    @dg.asset(
        partitions_def=layer_x_feature,
        backfill_policy=BATCH_POLICY,
        group_name=GROUP_RECORDS,
        io_manager_key=STORAGE_IO,
        code_version="1",
        kinds={"polars", "parquet"},
        automation_condition=PER_PARTITION,
        ins={"sae_activations": dg.AssetIn(partition_mapping=by_layer)},
        check_specs=[dg.AssetCheckSpec(name, asset="records") for name in RECORD_CHECKS],
    )
    def records(
        context: dg.AssetExecutionContext,
        config: RecordsConfig,
        corpus_tokens: ArrayBundle,
        sae_activations: dict[str, ArrayBundle],
        corpus_embeddings: dict[str, Any],
        preset: PresetResource,
        lancedb: LanceDBResource,
        storage: dg.ResourceParam[StorageIOManager],
    ) -> Iterator[StepEvent]:
        """The feature's records: 30 positives (from the top 100 rows) and 30 rows from each of six
        complementary sources (random, random-negative, similar, similar-negative and their projected
        variants), with train/valid/test splits of 10 + 10 per source. Similar rows come from a
        global search over the whole corpus in LanceDB.
        """
        spec = preset.spec()
        index = lancedb.corpus_index(corpus_embeddings)
        params = config.params(spec.per_split, spec.faithful)

        def compute(key: str) -> PartitionResult:
            layer, feature = _layer_feature_of(key)
            return _records_of(
                spec, preset, params, index, corpus_tokens, sae_activations[layer_key(layer)], layer, feature
            )

        yield from each_partition(context, compute, storage, as_you_go=False)

    @dg.asset(
        partitions_def=layer_x_feature,
        backfill_policy=BATCH_POLICY,
        group_name=GROUP_RECORDS,
        io_manager_key=STORAGE_IO,
        pool=POOL_GPU,
        code_version="2",
        kinds={"pytorch", "numpy"},
        automation_condition=PER_PARTITION if automate_holistic else None,
        ins={"sae": dg.AssetIn(partition_mapping=by_layer)},
    )
    def holistic_activations(
        context: dg.AssetExecutionContext,
        records: dict[str, TableBundle],
        sae: dict[str, dict[str, Any]],
        corpus_tokens: ArrayBundle,
        preset: PresetResource,
        storage: dg.ResourceParam[StorageIOManager],
    ) -> Iterator[StepEvent]:
        """Exact drop-one-token (holistic) activations of the feature on every row its records show.

        H_d = mean_t a_t(x) - mean_t a_t(x without token d); the 0..5 display normaliser
        `max_holistic` is the feature's maximum over the whole corpus (the paper's; one sweep per
        layer serves all of the run's features of that layer), or over the rows computed here
        when the preset's `explain.holistic_scale` is `records`.
        """
        spec = preset.spec()
        loaded_saes: dict[int, LoadedSae] = {}  # one SAE load per layer of the run
        corpus_max: dict[int, dict[int, float]] = {}  # layer -> feature -> max over the corpus
        run_features: dict[int, set[int]] = {}
        for key in context.partition_keys:
            lay, feat = _layer_feature_of(key)
            run_features.setdefault(lay, set()).add(feat)

        def scale_of(layer: int, feature: int, model: Any) -> float:
            """The feature's corpus-wide maximum; a feature's value does not depend on which
            other features share the sweep (each is its own maximum)."""
            if layer not in corpus_max:
                feats = sorted(run_features.get(layer, set()) | {feature})
                maxima = compute_holistic_max(
                    model,
                    loaded_saes[layer],
                    np.asarray(corpus_tokens["tokens"]),
                    feats,
                    spec.batch_size,
                    spec.prepend_bos,
                    log=context.log.info,
                )
                corpus_max[layer] = {f: float(m) for f, m in zip(feats, maxima, strict=True)}
            return corpus_max[layer][feature]

        def compute(key: str) -> PartitionResult:
            layer, feature = _layer_feature_of(key)
            rows = np.unique(records[key].frame["row"].to_numpy())
            ref = preset.sae_ref(sae[layer_key(layer)])
            if ref.synthetic:
                # A synthetic feature is a rule on tokens, not a latent of the model: no holistic values.
                zeros = np.zeros((len(rows), spec.row_len), dtype=np.float32)
                meta: dict[str, Any] = {"max_holistic": 0.0, "synthetic": True}
                return PartitionResult(
                    {
                        "result": Produced(
                            ArrayBundle({"rows": rows, "holistic": zeros}, meta), meta | {"rows": len(rows)}
                        )
                    }
                )
            model, _ = preset.model_and_tokenizer()
            if layer not in loaded_saes:
                loaded_saes[layer] = load_layer_sae(ref, model, layer, preset.torch_device)
            tokens = np.asarray(corpus_tokens["tokens"])[rows]
            h = compute_holistic(
                model,
                loaded_saes[layer],
                tokens,
                [feature],
                spec.batch_size,
                spec.prepend_bos,
                log=context.log.info,
            )[0]
            scale = spec.explain.holistic_scale
            if scale == "corpus":
                max_h = scale_of(layer, feature, model)
            else:
                max_h = float(h.max()) if len(rows) else 0.0
            meta = {"max_holistic": max_h, "holistic_scale": scale}
            value = ArrayBundle({"rows": rows, "holistic": h}, meta)
            return PartitionResult({"result": Produced(value, meta | {"rows": len(rows)})})

        yield from each_partition(context, compute, storage, as_you_go=False)

    return [records, holistic_activations]


def _records_of(
    spec: Preset,
    preset: PresetResource,
    params: RecordParams,
    index: CorpusIndex,
    corpus_tokens: ArrayBundle,
    acts_bundle: ArrayBundle,
    layer: int,
    feature: int,
) -> PartitionResult:
    """One feature's records table, its metadata and its check outcomes."""
    stored = [int(f) for f in acts_bundle.meta["features"]]
    if feature not in stored:  # the preset gained features after the activations were written
        raise dg.Failure(
            description=f"sae_activations[{layer_key(layer)}] holds features {stored}, not {feature}: "
            f"rematerialize sae_activations for {layer_key(layer)} (`featureinterp run` does it)"
        )
    acts = np.asarray(acts_bundle["acts"][stored.index(feature)], dtype=np.float32)  # [N, T]
    built = build_feature_records(
        spec, params, index, corpus_tokens["tokens"], acts, preset.tokenizer(), layer, feature
    )
    meta, sel = built.meta, built.selection
    metadata = {
        "counts": counts_table(built.counts),
        "max_act": meta["max_act"],
        "dead": sel.dead,
        "short_sources": counts_table(sel.short),
        "preview": dg.MetadataValue.md(records_preview(built.frame, meta["max_act"])),
    }
    checks = [
        dg.AssetCheckResult(
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
            metadata={"detail": outcome.detail},
        )
        for outcome in built.checks
    ]
    return PartitionResult({"result": Produced(TableBundle(built.frame, meta), metadata)}, checks)


def _layer_feature_of(key: str) -> tuple[int, int]:
    """(layer, feature) indices of a layer × feature partition key ("F0003|L06")."""
    feature = [p for p in str(key).split("|") if p.startswith("F")]
    layer = [p for p in str(key).split("|") if not p.startswith("F")]
    if len(feature) != 1 or len(layer) != 1:
        raise ValueError(f"not a layer x feature partition key: {key!r}")
    return parse_layer_key(layer[0]), parse_feature_key(feature[0])


def records_preview(frame: "pl.DataFrame", max_act: float, n: int = 4) -> str:
    """Markdown: the top positive rows with activating tokens in bold (activation / max in brackets)."""
    import polars as pl

    lines = []
    pos = frame.filter(pl.col("source") == POSITIVE_SOURCE).unique("row").sort("row_max", descending=True).head(n)
    for r in pos.iter_rows(named=True):
        toks = [
            f"{t[: len(t) - len(t.lstrip())]}**{t.strip() or repr(t)}**[{a / max_act:.1f}]"
            if a > 0 and max_act > 0
            else t
            for t, a in zip(r["tokens"], r["acts"], strict=True)
        ]
        lines.append(f"- row {r['row']} (max {r['row_max']:.3g}): " + "".join(toks).replace("\n", " "))
    return "\n".join(lines) or "_no positive records (dead feature)_"
