"""``scripts/gpu-check``: the GPU acceptance check of the paper presets, and the rates ``plan`` projects from.

On one CUDA device (<= 8 minutes on an H100, no hub access):

1. the three paper presets' stand-in runs on a slice (layer L00, features 0-1) in the presets' own
   dtypes (bfloat16 subject, 4-bit NF4 simulator: ``FEATUREINTERP_STANDIN_DTYPES=preset``),
   checked by ``standin_checks.check_standin_run``, the same checks as the CPU test;
2. a full-size gemma-2-27b-it-shaped simulator through the preset's 4-bit load path, prompted with
   the paper simulator prompt over paper-sized records (``featureinterp.throughput``);
3. a full-size gemma-2-9b-shaped subject in bfloat16 with a Gemma Scope-shaped SAE: activation and
   holistic rows per second;
4. one JSON report (device, versions, every figure, the checks) written to ``--out`` and printed as
   the last line; ``featureinterp plan --calibration FILE`` reads it. Exit 1 when a check fails.

``--cpu --small`` runs steps 2-4 on tiny configs on the CPU in seconds (CI runs it), so the script
cannot rot before a GPU appears; the stand-in runs are then left to the CPU test (name presets with
``--standins`` to run them anyway).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

__all__ = ["main"]

PAPER_PRESETS = ("gpt2-small", "gemma-2-9b", "llama-3.1-8b")
EQUALITY_TOLERANCE = 1e-3
"""Largest cached-vs-uncached difference of a simulated value (0..5 scale) accepted in 4-bit."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --small: the CI mode)")
    p.add_argument("--small", action="store_true", help="tiny configs instead of full-size models")
    p.add_argument("--out", help="where the JSON report goes (default: $FEATUREINTERP_HOME/gpu-check/DATE.json)")
    p.add_argument(
        "--standins",
        help="comma-separated paper presets whose stand-in runs to check, or 'none' "
        "(default: all three; none with --small)",
    )
    p.add_argument("--work", help="folder for stand-in homes and model folders (default: a temporary one)")
    return p


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "bitsandbytes", "sae-lens"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _simulator(device: str, small: bool, work: Path, models: Path) -> dict[str, Any]:
    import torch

    from featureinterp.activations.models import load_subject_model
    from featureinterp.config import ModelSpec
    from featureinterp.presets.standin import GEMMA_CHAT_TEMPLATE, gemma_tokenizer
    from featureinterp.simulate.memory import batch_for_free_memory
    from featureinterp.simulate.simulator import LocalSimulator, prompt_for
    from featureinterp.throughput import (
        build_folder,
        measure_simulator,
        model_config,
        parameter_count,
        peak_memory_gib,
        reset_peak,
        seeded_state_dict,
    )

    cuda = device == "cuda"
    tok = gemma_tokenizer(models)
    tok.chat_template = GEMMA_CHAT_TEMPLATE  # gemma-2-it's layout (the offline GGUF has none)
    config = model_config("simulator", small, tok)
    folder = build_folder(work / "simulator", config, tok)
    dtype: Literal["bfloat16", "float32"] = "bfloat16" if cuda else "float32"
    spec = ModelSpec(name=str(folder), source="hf", dtype=dtype, quantization="4bit" if cuda else None)
    start = time.perf_counter()
    # tiny widths need wider weights for the simulated values to vary between tokens
    weights = seeded_state_dict(config, seed=2, dtype=getattr(torch, dtype), std=0.2 if small else 0.02)
    draw_s = time.perf_counter() - start
    reset_peak(device)
    start = time.perf_counter()
    model, tok = load_subject_model(spec, models, device, state_dict=weights)
    load_s = time.perf_counter() - start
    del weights
    _free(device)
    probe = LocalSimulator(model, tok, prompt_for("paper"), batch_size=2)
    batch, free_gib = batch_for_free_memory(probe, record_tokens=32 * 4)
    if not cuda:
        batch = 8  # the presets' simulator_batch where no CUDA memory decides
    measured = measure_simulator(model, tok, batch)
    out = {
        "model": "gemma-2-27b-it shape" + (" (small)" if small else ""),
        "params": parameter_count(config),
        "layers": config.num_hidden_layers,
        "dtype": dtype,
        "quantization": spec.quantization or "none (CPU: the preset's 4-bit applies on CUDA only)",
        "quantized": bool(getattr(model, "is_quantized", False)),
        "weights_drawn_s": draw_s,
        "load_s": load_s,
        "free_gib_before_batches": free_gib,
        **measured,
        "peak_memory_gib": peak_memory_gib(device),
    }
    del model, probe
    _free(device)
    return out


def _subject(device: str, small: bool, work: Path, models: Path) -> dict[str, Any]:
    import torch

    from featureinterp.activations.models import load_subject_model
    from featureinterp.activations.sae import LoadedSae
    from featureinterp.config import ModelSpec
    from featureinterp.presets.sae_families import random_sae
    from featureinterp.presets.standin import gemma_tokenizer
    from featureinterp.throughput import (
        build_folder,
        measure_subject,
        model_config,
        parameter_count,
        peak_memory_gib,
        reset_peak,
        seeded_state_dict,
    )

    cuda = device == "cuda"
    tok = gemma_tokenizer(models)
    config = model_config("subject", small, tok)
    folder = build_folder(work / "subject", config, tok)
    dtype: Literal["bfloat16", "float32"] = "bfloat16" if cuda else "float32"
    start = time.perf_counter()
    weights = seeded_state_dict(config, seed=1, dtype=getattr(torch, dtype))
    draw_s = time.perf_counter() - start
    reset_peak(device)
    start = time.perf_counter()
    model, _ = load_subject_model(ModelSpec(name=str(folder), dtype=dtype), models, device, state_dict=weights)
    load_s = time.perf_counter() - start
    del weights
    _free(device)
    layer = 1 if small else 20  # Gemma Scope's middle: the activation pass stops after it
    d_sae = 256 if small else 16_384
    sae = random_sae("jumprelu", config.hidden_size, d_sae, f"blocks.{layer}.hook_resid_post", seed=7)
    loaded = LoadedSae.bind(sae.to(device), model, layer)
    rows, holistic_rows = (64, 4) if small else (8192, 256)
    measured = measure_subject(model, loaded, rows, holistic_rows, batch_size=8 if small else 64)
    out = {
        "model": "gemma-2-9b shape" + (" (small)" if small else ""),
        "params": parameter_count(config),
        "layers": config.num_hidden_layers,
        "dtype": dtype,
        "weights_drawn_s": draw_s,
        "load_s": load_s,
        **measured,
        "peak_memory_gib": peak_memory_gib(device),
    }
    del model, loaded, sae
    _free(device)
    return out


def run_check(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """The report, and whether every check passed."""
    import torch

    from featureinterp.config import models_dir
    from featureinterp.errors import ConfigError

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA device here: scripts/gpu-check needs a GPU; `scripts/gpu-check --cpu --small` checks the code path")
    if device == "cuda" and _versions()["bitsandbytes"] is None:
        raise ConfigError("bitsandbytes is missing: the 4-bit simulator needs it (`pip install -e '.[gpu]'`)")
    standins = [s for s in (args.standins or ("none" if args.small else ",".join(PAPER_PRESETS))).split(",") if s]
    standins = [] if standins == ["none"] else standins
    unknown = sorted(set(standins) - set(PAPER_PRESETS))
    if unknown:
        raise ConfigError(f"--standins {','.join(unknown)}: choose from {', '.join(PAPER_PRESETS)} or 'none'")
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    models = models_dir()
    start = time.perf_counter()
    report: dict[str, Any] = {
        "device": _device_name(device),
        "measured_on": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "small": bool(args.small),
        "versions": _versions(),
    }
    if standins:
        from featureinterp.presets.standin import STANDIN_DTYPES_ENV
        from featureinterp_assets.standin_checks import check_standins

        print(f"gpu-check: stand-in runs of {', '.join(standins)} in the presets' dtypes ...", flush=True)
        report["standins"] = check_standins(standins, work / "standins", models, {STANDIN_DTYPES_ENV: "preset"})
    else:
        report["standins"] = "not run (--small: tests/featureinterp/presets/test_standin.py runs them on CPU)"
    print("gpu-check: simulator (gemma-2-27b-it shape) ...", flush=True)
    report["simulator"] = _simulator(device, args.small, work, models)
    print("gpu-check: subject (gemma-2-9b shape) ...", flush=True)
    report["subject"] = _subject(device, args.small, work, models)
    sim = report["simulator"]
    checks = {
        "cached_equals_uncached": sim["cached_vs_uncached_max_abs"] <= EQUALITY_TOLERANCE,
        "simulation_varies": sim["values_std"] > 1e-4,  # else the equality would say nothing
        "cached_is_faster": sim["cached"]["seconds"] < sim["uncached"]["seconds"],
        "quantized_on_cuda": sim["quantized"] or device != "cuda",
        "standins_pass": all(v["ok"] for v in report["standins"].values()) if standins else None,
    }
    report["checks"] = checks
    report["wall_s"] = time.perf_counter() - start
    return report, all(v is not False for v in checks.values())


def main(argv: list[str] | None = None) -> int:
    from featureinterp.config import data_home
    from featureinterp.errors import ConfigError
    from featureinterp.storage import atomic_write

    args = _parser().parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # no "Loading weights" bars between the step lines
    try:
        report, ok = run_check(args)
    except ConfigError as err:
        print(f"gpu-check: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else data_home() / "gpu-check" / f"{report['measured_on']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1)
    atomic_write(out, lambda tmp: tmp.write_text(text))
    print(f"gpu-check: report {out} ({'every check passed' if ok else 'a check FAILED'})")
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
