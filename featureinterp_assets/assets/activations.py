"""Per-layer GPU stages: the SAE of each layer and the studied features' activations.

Both are partitioned by layer and run as a single run over a range of layers (backfills, the
`featureinterp run` command), so one forward pass serves every layer of the run.
"""

import shutil
from collections.abc import Iterator
from typing import Any

import dagster as dg
import numpy as np

from featureinterp.activations.latents import FeatureActivations
from featureinterp.activations.latents import sae_activations as compute_sae_activations
from featureinterp.activations.models import check_layers
from featureinterp.activations.sae import SaeRef, layer_sae_refs, load_layer_sae
from featureinterp.config import SYNTHETIC_LAYER, layer_key, parse_layer_key
from featureinterp.data.corpus import decode_tokens
from featureinterp.names import SYNTHETIC_KEY
from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES, synthetic_activations
from featureinterp.storage import ArrayBundle
from featureinterp_assets.constants import GROUP_ACTIVATIONS, POOL_GPU, STORAGE_IO
from featureinterp_assets.resources import PresetResource


def build_activation_assets(layers: dg.DynamicPartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=layers,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP_ACTIVATIONS,
        io_manager_key=STORAGE_IO,
        pool=POOL_GPU,
        code_version="1",
        kinds={"pytorch"},
    )
    def sae(
        context: dg.AssetExecutionContext, corpus_tokens: ArrayBundle, preset: PresetResource
    ) -> dict[str, dict[str, Any]]:
        """The layer's SAE in sae-lens format: trained here (embedded presets) or a released one.

        Trained SAEs report explained variance, L0 and the dead-latent fraction; their latents are
        ordered so the live ones come first (so studied features F0000... are live).
        """
        spec = preset.spec()
        all_ids = [parse_layer_key(k) for k in context.partition_keys]
        layer_ids = [layer for layer in all_ids if layer != SYNTHETIC_LAYER]
        refs: dict[str, dict[str, Any]] = {}
        if SYNTHETIC_LAYER in all_ids:  # ground-truth features: no SAE to train or load
            refs[SYNTHETIC_KEY] = SaeRef(d_sae=len(SYNTHETIC_FEATURES), synthetic=True).to_dict()
        model = None
        if layer_ids:
            model, _ = preset.model_and_tokenizer()
            check_layers(model, layer_ids)
        for layer, sae_ref in layer_sae_refs(
            spec, model, corpus_tokens["tokens"], layer_ids, preset.sae_dir(), preset.home_relative, context.log.info
        ).items():
            refs[layer_key(layer)] = sae_ref.to_dict()
        for key, stored in refs.items():
            context.add_asset_metadata(
                {k: v for k, v in stored.items() if k != "path" or spec.sae.source == "disk"}
                | {"source": spec.sae.source},
                partition_key=key,
            )
        return refs

    @dg.asset(
        partitions_def=layers,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP_ACTIVATIONS,
        io_manager_key=STORAGE_IO,
        pool=POOL_GPU,
        code_version="1",
        kinds={"pytorch", "numpy"},
        check_specs=[
            dg.AssetCheckSpec("activations_finite", asset="sae_activations", blocking=True),
            dg.AssetCheckSpec("studied_features_alive", asset="sae_activations"),
        ],
    )
    def sae_activations(
        context: dg.AssetExecutionContext,
        corpus_tokens: ArrayBundle,
        sae: dict[str, dict[str, Any]],
        preset: PresetResource,
    ) -> Iterator[dg.Output[dict[str, ArrayBundle]] | dg.AssetCheckResult]:
        """Studied features' activations on every row and position, feature-major [F, N, T] float16.

        One forward pass per batch for all layers of the run, stopped after the deepest layer.
        Metadata: per-feature max, firing frequency and firing rows; dead features are listed
        (and the `studied_features_alive` check warns) instead of failing the run.
        """
        spec = preset.spec()
        results: dict[int, FeatureActivations] = {}
        refs = {k: preset.sae_ref(ref) for k, ref in sae.items()}
        real = {k: ref for k, ref in refs.items() if not ref.synthetic}
        if real:
            model, _ = preset.model_and_tokenizer()
            saes = {
                parse_layer_key(k): load_layer_sae(ref, model, parse_layer_key(k), preset.torch_device)
                for k, ref in real.items()
            }
            stage = preset.storage_dir() / ".staging" / context.run_id
            try:
                results = compute_sae_activations(
                    model,
                    saes,
                    corpus_tokens["tokens"],
                    spec.features,
                    spec.batch_size,
                    spec.prepend_bos,
                    context.log.info,
                    # streamed to files beside the storage (moved into place when stored): memory
                    # stays at one batch however many rows and layers the run covers
                    stage_dir=stage,
                )
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
        if len(real) < len(sae):
            strings = decode_tokens(preset.tokenizer(), corpus_tokens["tokens"])
            results[SYNTHETIC_LAYER] = synthetic_activations(strings, spec.features, spec.prepend_bos)
        out: dict[str, ArrayBundle] = {}
        dead: dict[str, list[int]] = {}
        finite = True
        for layer, r in results.items():
            key = layer_key(layer)
            out[key] = ArrayBundle(
                {
                    # a StagedNpy when streamed (save_arrays moves it into place); storage.py types
                    # ArrayBundle.arrays as ndarrays only
                    "acts": r.acts,  # type: ignore[dict-item]
                    "max": r.max,
                    "token_freq": r.token_freq,
                    "row_count": r.row_count,
                },
                {"layer": layer, "features": r.features},
            )
            finite &= bool(np.isfinite(r.max).all())
            dead[key] = r.dead()
            table = "| feature | max | token freq | rows firing |\n|---|---|---|---|\n" + "\n".join(
                f"| F{f:04d} | {m:.3g} | {q:.2e} | {c:,} |"
                for f, m, q, c in zip(r.features, r.max, r.token_freq, r.row_count, strict=False)
            )
            context.add_asset_metadata(
                {
                    "features": dg.MetadataValue.md(table),
                    "feature_indices": dg.MetadataValue.json([int(f) for f in r.features]),
                    "dead_features": str(dead[key] or "none"),
                    "rows": int(corpus_tokens["tokens"].shape[0]),
                },
                partition_key=key,
            )
        yield dg.Output(out)
        yield dg.AssetCheckResult(check_name="activations_finite", passed=finite)
        n_dead = sum(len(v) for v in dead.values())
        yield dg.AssetCheckResult(
            check_name="studied_features_alive",
            passed=n_dead == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "dead": str({k: v for k, v in dead.items() if v} or "none"),
                "studied": len(spec.features),
            },
        )

    return [sae, sae_activations]
