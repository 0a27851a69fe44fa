"""Measured throughput of the paper presets' models: what ``featureinterp plan --calibration`` projects from.

``featureinterp plan`` projects GPU hours from FLOPs and an *assumed* utilisation. On a GPU,
``scripts/gpu-check`` measures instead, on full-size random-weight models of the paper's shapes:

- the simulator, gemma-2-27b-it's config (46 Gemma-2 layers, sliding windows, soft-capping) loaded
  through the preset's own 4-bit NF4 path (``load_subject_model`` with ``quantization="4bit"``),
  prompted with the paper simulator prompt over paper-sized records (10 + 10 test records of 32
  tokens, 5 rules): forward tokens per second, peak memory, the batch the free memory allows
  (``simulate.memory.batch_size_for_memory``), cached vs uncached equality and the load time;
- the subject, gemma-2-9b's config in bfloat16 with a Gemma Scope-shaped JumpReLU SAE: SAE-activation
  rows per second (``sae_activations``) and holistic rows per second (``holistic_activations``).

Full-size weights are not written to disk (gemma-2-27b in bfloat16 is 54 GB, more than the GPU
machine's disk holds next to everything else): a seeded state dict goes through the same
``from_pretrained`` call (``load_subject_model(..., state_dict=...)``), dtype and quantization
config as a real checkpoint; only the file read is skipped, so the load time measured is host to
device plus quantization, not disk. To keep the host from drawing 27 billion numbers, each weight
of a layer is drawn ``POOL`` times and layer ``i`` uses draw ``i % POOL``: the FLOPs,
memory and code paths are those of the real model.

``small=True`` (``scripts/gpu-check --cpu --small``) runs the same code on tiny configs in seconds,
so the check cannot rot before a GPU appears. The vocabulary is that of the Gemma tokenizer that
ships offline (Gemma-3's, 262k entries; Gemma-2's is 256k), so every id it produces exists.
"""

from __future__ import annotations

import json
import math
import re
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from featureinterp.errors import ConfigError

__all__ = [
    "FULL_SIZE",
    "Calibration",
    "build_folder",
    "load_calibration",
    "measure_simulator",
    "measure_subject",
    "model_config",
    "peak_memory_gib",
    "seeded_state_dict",
]

Role = Literal["simulator", "subject"]

FULL_SIZE: dict[Role, dict[str, Any]] = {
    # google/gemma-2-27b-it's published config
    "simulator": {
        "hidden_size": 4608,
        "intermediate_size": 36864,
        "num_hidden_layers": 46,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "head_dim": 128,
        "query_pre_attn_scalar": 144,
    },
    # google/gemma-2-9b's published config
    "subject": {
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
    },
}
SMALL: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "query_pre_attn_scalar": 24,  # != head_dim, as on the 27B
}
POOL = 2
"""Distinct random tensors per weight of a layer (see the module docstring)."""
_LAYER = re.compile(r"\.layers\.(\d+)\.")
PAPER_NAMES: dict[Role, str] = {"simulator": "google/gemma-2-27b-it", "subject": "google/gemma-2-9b"}


def model_config(role: Role, small: bool, tokenizer: Any) -> Any:
    """The Gemma-2 config of ``role`` at full size (or tiny), quirks included: alternating sliding
    and global layers, attention and final soft-capping, eager attention (SDPA drops the cap)."""
    from transformers import Gemma2Config

    widths = SMALL if small else FULL_SIZE[role]
    return Gemma2Config(
        vocab_size=len(tokenizer),
        **widths,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",  # type: ignore[call-arg]  # accepted; the stub omits it
    )


def parameter_count(config: Any) -> int:
    """Parameters of a model of ``config`` (counted on the meta device: nothing is allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for name, p in model.named_parameters() if name != "lm_head.weight" or not _tied(config))


def _tied(config: Any) -> bool:
    return bool(getattr(config, "tie_word_embeddings", True))


@torch.no_grad()
def seeded_state_dict(config: Any, seed: int, dtype: torch.dtype, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Random weights for a model of ``config`` from a private generator (the global RNG is never
    touched): matrices ~ N(0, std), drawn ``POOL`` times per module (``mlp.up_proj`` ...) and
    shared by the layers in turn (layer ``i`` uses draw ``i % POOL``); norm weights 0 (Gemma's
    RMSNorm scales by ``1 + w``). Tensors live on the host."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    pools: dict[str, list[torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if name == "lm_head.weight" and _tied(config):
            continue
        if param.dim() == 1:
            out[name] = torch.zeros(tuple(param.shape), dtype=dtype)
            continue
        match = _LAYER.search(name)
        role = _LAYER.sub(".", name)  # e.g. model.layers.mlp.up_proj.weight
        pool = pools.setdefault(role, [])
        index = int(match.group(1)) % POOL if match else 0
        while len(pool) <= index:
            pool.append((torch.randn(tuple(param.shape), generator=gen) * std).to(dtype))
        out[name] = pool[index]
    return out


def build_folder(folder: Path, config: Any, tokenizer: Any) -> Path:
    """A model folder with config.json and the tokenizer, no weights (they come as a state dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def peak_memory_gib(device: torch.device | str) -> float:
    """Peak accelerator memory allocated since the last reset (CUDA); the process's peak RSS on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def reset_peak(device: torch.device | str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paper_records(tokenizer: Any, n: int, length: int, seed: int) -> list[list[str]]:
    """``n`` records of ``length`` token strings drawn from the tokenizer's vocabulary (seeded):
    the simulator reads token texts, and no corpus exists on a GPU machine without the hub."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    words = [i for i in range(min(len(tokenizer), 50_000)) if i not in special]
    out = []
    for _ in range(n):
        ids = rng.choice(words, size=length)
        out.append([tokenizer.decode([int(i)]) or "?" for i in ids])
    return out


RULES = (
    "negation words such as not, no and never",
    "the names of months and days of the week",
    "digits inside dates and version numbers",
    "the word after 'the' at the start of a sentence",
    "first-person plural pronouns (we, us, our)",
)
"""Five rules of the length the paper's explainers write."""


def measure_simulator(
    model: Any, tokenizer: Any, batch_size: int, n_records: int = 20, length: int = 32, seed: int = 0
) -> dict[str, Any]:
    """Simulate ``RULES`` over ``n_records`` records with the paper prompt: cached (the header
    and each rule prefilled once, record batches reuse them) and uncached (every prompt whole);
    returns forward tokens per second of each and the largest difference between them."""
    from featureinterp.simulate.simulator import LocalSimulator, prompt_for

    records = paper_records(tokenizer, n_records, length, seed)
    device = next(model.parameters()).device
    out: dict[str, Any] = {"records": n_records, "record_tokens": length, "rules": len(RULES)}
    values: dict[bool, list[np.ndarray]] = {}
    for cached in (True, False):
        sim = LocalSimulator(model, tokenizer, prompt_for("paper"), batch_size=batch_size, memo_size=0)
        sim.simulate(RULES[0], records[:1], cached=cached)  # warm-up: kernels, the header's prefill
        _sync(device)
        before = sim.forward_tokens
        start = time.perf_counter()
        values[cached] = [v for rule in RULES for v in sim.simulate(rule, records, cached=cached)]
        _sync(device)
        seconds = time.perf_counter() - start
        tokens = sim.forward_tokens - before
        key = "cached" if cached else "uncached"
        out[key] = {"forward_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
        out["header_tokens"] = len(sim.header_ids)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(values[True], values[False], strict=True))
    out["cached_vs_uncached_max_abs"] = diff
    # the equality above means something only where the simulated values differ between tokens
    out["values_std"] = float(np.concatenate(values[True]).std())
    out["batch_size"] = batch_size
    return out


def measure_subject(
    model: Any, sae: Any, rows: int, holistic_rows: int, row_len: int = 33, batch_size: int = 32, seed: int = 0
) -> dict[str, Any]:
    """SAE-activation rows per second (``sae_activations``: every row through the model up to the
    SAE's layer, encoded) and holistic rows per second (``holistic_activations``: a row's
    drop-one-token sweep) on seeded random token rows of ``row_len`` (BOS + 32, as the presets)."""
    from featureinterp.activations.holistic import holistic_activations
    from featureinterp.activations.latents import sae_activations

    rng = np.random.default_rng(seed)
    vocab = int(model.config.vocab_size)
    tokens = rng.integers(3, min(vocab, 50_000), size=(rows, row_len), dtype=np.int64)
    device = next(model.parameters()).device
    features = list(range(16))
    sae_activations(model, {sae.layer: sae}, tokens[:batch_size], features, batch_size)  # warm-up
    _sync(device)
    start = time.perf_counter()
    sae_activations(model, {sae.layer: sae}, tokens, features, batch_size)
    _sync(device)
    act_s = time.perf_counter() - start
    start = time.perf_counter()
    holistic_activations(model, sae, tokens[:holistic_rows], features, batch_size)
    _sync(device)
    hol_s = time.perf_counter() - start
    return {
        "rows": rows,
        "row_len": row_len,
        "batch_size": batch_size,
        "activation_rows_per_s": rows / act_s,
        "holistic_rows": holistic_rows,
        "holistic_rows_per_s": holistic_rows / hol_s,
        "sae_layer": sae.layer,
        "d_sae": sae.d_sae,
    }


@dataclass(frozen=True)
class Calibration:
    """Rates ``scripts/gpu-check`` measured, as ``featureinterp plan --calibration`` reads them.

    Rates are converted to *effective FLOP/s* (2 x parameters x tokens per second), so a preset
    whose models differ from the measured ones is projected by parameter count."""

    device: str
    measured_on: str
    """Date (UTC) of the measurement."""
    simulator_params: float
    simulator_tokens_per_s: float
    """Cached forward tokens per second of the simulator (the prompt layout runs use)."""
    subject_params: float
    subject_layers: int
    activation_rows_per_s: float
    """Rows (``row_len`` tokens) per second through the subject up to the SAE's layer, encoded."""
    holistic_rows_per_s: float
    row_len: int
    sae_layer: int
    """The layer the activation rates were measured at (the pass stops after the deepest layer)."""
    small: bool = False
    """Measured on tiny configs (``--small``): a check of the code path, not a rate to plan with."""
    load_s: dict[str, float] = field(default_factory=dict)
    source: str = ""
    """The file it was read from."""

    @property
    def simulator_flops(self) -> float:
        return 2 * self.simulator_params * self.simulator_tokens_per_s

    @property
    def activation_flops(self) -> float:
        """Effective FLOP/s of the activation pass (tokens through the layers it runs)."""
        share = (self.sae_layer + 1) / self.subject_layers
        return 2 * self.subject_params * share * self.activation_rows_per_s * self.row_len

    @property
    def holistic_flops(self) -> float:
        """Effective FLOP/s of the holistic sweep, counting ~T(T+1)/2 tokens per row (each dropped
        token recomputes its suffix) through the layers up to the SAE's."""
        share = (self.sae_layer + 1) / self.subject_layers
        per_row = self.row_len * (self.row_len + 1) / 2
        return 2 * self.subject_params * share * self.holistic_rows_per_s * per_row

    def describe(self) -> str:
        return f"{self.source or 'calibration'} ({self.device}, {self.measured_on}{', SMALL configs' if self.small else ''})"


def calibration_from_report(report: dict[str, Any], source: str = "") -> Calibration:
    """The rates of a ``scripts/gpu-check`` report (its JSON)."""
    try:
        sim, subj = report["simulator"], report["subject"]
        return Calibration(
            device=str(report["device"]),
            measured_on=str(report["measured_on"]),
            simulator_params=float(sim["params"]),
            simulator_tokens_per_s=float(sim["cached"]["tokens_per_s"]),
            subject_params=float(subj["params"]),
            subject_layers=int(subj["layers"]),
            activation_rows_per_s=float(subj["activation_rows_per_s"]),
            holistic_rows_per_s=float(subj["holistic_rows_per_s"]),
            row_len=int(subj["row_len"]),
            sae_layer=int(subj["sae_layer"]),
            small=bool(report.get("small", False)),
            load_s={k: float(report[k]["load_s"]) for k in ("simulator", "subject") if "load_s" in report[k]},
            source=source,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(
            f"calibration {source or 'report'} lacks {err}: pass the JSON file scripts/gpu-check wrote "
            "(its last printed line)"
        ) from err


def load_calibration(path: Path | str) -> Calibration:
    """Read a ``scripts/gpu-check`` JSON file; a clear error when it is not one."""
    p = Path(path)
    try:
        report = json.loads(p.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"calibration file {p} does not exist: run scripts/gpu-check on a GPU first") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"calibration file {p} is not JSON ({err}): pass the file scripts/gpu-check wrote") from err
    cal = calibration_from_report(report, str(p))
    bad = [k for k, v in asdict(cal).items() if isinstance(v, float) and not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"calibration file {p} has non-positive or non-finite {', '.join(bad)}")
    return cal
