"""Which preset fields each stored value depends on: one short fingerprint per stage.

A stored value is only as good as the settings it was computed from. A user who edits a preset
file and keeps its name (``n_rows`` 4000 -> 1000, ``seed`` 0 -> 7) must get values of the new
settings, not the old ones served as "done". Each stage's fingerprint hashes the preset fields
the stage reads *and* the fingerprints of the stages it reads from, so a changed field changes
exactly the fingerprints of the stages downstream of it: the tokens' ``n_rows`` reaches every
stage, an explainer's temperature only the explanations and what scores them.

The Dagster layer appends the fingerprint to each asset's code version
(``featureinterp_assets.definitions``); Dagster then shows the affected partitions as stale
("code version changed") and `featureinterp run` and the nightly backfill recompute them.

What a fingerprint leaves out, on purpose: the preset's name (a renamed preset is another
instance), its layer and feature lists (they add or drop partitions; a partition's value does not
depend on its neighbours), batch sizes (results must not depend on batching), and an API route's
transport (prices, timeouts, retries, concurrency, URL and key variable: the same model answers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from featureinterp.config import ApiSpec, ExplainSettings, Preset

STAGES = (
    "corpus_tokens",
    "sae",
    "sae_activations",
    "corpus_embeddings",
    "records",
    "holistic_activations",
    "explanations",
    "scores",
    "generated",
    "summaries",
)
"""Stages with a fingerprint; ``scores`` covers every value computed from an explanation
(simulation scores, baselines, the embedding / detection / fuzzing scorers), ``generated`` the
counterexamples written from one condition's explanations, ``summaries`` the layer tables,
figures and exports."""

_EXPLAIN_BATCHING = ("simulator_batch", "scorer_batch", "features_at_once")
"""How many things run at once: no result may depend on it."""
_EXPLAIN_GRID = ("conditions", "secondary_conditions", "synthetic", "synthetic_conditions")
"""Which partitions and conditions exist, not how one of them is computed."""
_API_TRANSPORT = (
    "base_url",
    "api_key_env",
    "price_in_per_mtok",
    "price_out_per_mtok",
    "other_prices",
    "max_concurrent",
    "timeout_s",
    "max_attempts",
    "backoff_initial_s",
    "backoff_max_s",
)


def _digest(*parts: Any) -> str:
    """8 hex digits of sha256 over a canonical JSON of ``parts`` (dataclasses as dicts)."""
    canonical = json.dumps(parts, sort_keys=True, default=_plain, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def _explain_fields(explain: ExplainSettings) -> dict[str, Any]:
    """The explain settings an explanation's value depends on."""
    fields = {
        f.name: getattr(explain, f.name)
        for f in dataclasses.fields(explain)
        if f.name not in _EXPLAIN_BATCHING + _EXPLAIN_GRID + ("holistic_scale",)  # in the holistic stage
    }
    if isinstance(explain.explainer, ApiSpec):
        fields["explainer"] = {
            f.name: getattr(explain.explainer, f.name)
            for f in dataclasses.fields(explain.explainer)
            if f.name not in _API_TRANSPORT
        }
    return fields


def fingerprints(preset: Preset) -> dict[str, str]:
    """Stage -> 8 hex digits identifying the preset fields (and upstream stages) it depends on."""
    model = preset.model
    tokens = _digest(
        "tokens", model.name, model.source, model.bos_token, preset.corpus, preset.n_rows,
        preset.seq_len, preset.prepend_bos, preset.seed,
    )
    # the SAE trains on (and activations read) the subject model's activations: its dtype and
    # quantization matter here, not for the tokens
    sae = _digest("sae", tokens, model, preset.sae)
    activations = _digest("sae_activations", sae)
    embeddings = _digest("corpus_embeddings", tokens, preset.embedding_model)
    records = _digest("records", activations, embeddings, preset.per_split, preset.seed, preset.faithful)
    holistic = _digest("holistic_activations", records, preset.explain.holistic_scale)
    # the explainer scores its candidates with the metrics, never with the test intervals: an
    # interval setting (or its arrival in an upgrade) leaves every explanation current
    explain_scores = {k: v for k, v in _plain(preset.scores).items() if not k.startswith("interval_")}
    explanations = _digest("explanations", records, _explain_fields(preset.explain), explain_scores, preset.faithful)
    scores = _digest("scores", explanations, preset.scores)
    return {
        "corpus_tokens": tokens,
        "sae": sae,
        "sae_activations": activations,
        "corpus_embeddings": embeddings,
        "records": records,
        "holistic_activations": holistic,
        "explanations": explanations,
        "scores": scores,
        "generated": _digest("generated", scores, preset.generated),
        "summaries": _digest("summaries", scores, holistic, preset.generated),
    }


def asset_fingerprint(preset: Preset, asset_path: list[str] | tuple[str, ...]) -> str:
    """The fingerprint of one asset (its key's path: ``["scores", "tree"]``): its stage's, and
    for a condition that prompts with holistic values also the holistic stage's, so a changed
    holistic scale reaches those conditions only."""
    from featureinterp.explain.conditions import get_condition

    prints = fingerprints(preset)
    head = asset_path[0]
    stage = head if head in prints else "scores" if head in _SCORE_KINDS else "summaries"
    if stage in ("explanations", "scores") and len(asset_path) > 1 and get_condition(asset_path[1]).holistic:
        return _digest(prints[stage], prints["holistic_activations"])
    return prints[stage]


_SCORE_KINDS = ("baselines", "embedding", "detection", "fuzzing")
"""Assets computed from explanations or records by the simulator or a scorer."""

__all__ = ["STAGES", "asset_fingerprint", "fingerprints"]
