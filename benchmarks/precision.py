"""Precision of the embedded LLM roles: SmolLM2-135M-Instruct in bfloat16 vs float32 on the CPU.

The embedded default's model dtype is ``auto``: bfloat16 where the CPU computes it natively
(``featureinterp.activations.models.native_bf16``), which runs a prompt ~2.8x faster than float32 but changes
the numbers. ``benchmarks.explain_cost`` measures what that buys for explanations (and whether
they stay the same); this benchmark measures what it costs in simulation quality, on the same
records: ``benchmarks.simulator_choice``'s discrimination on the synthetic features (the true
rule vs another feature's rule vs an empty explanation), float32 vs bfloat16.

``ratios.bf16_discrimination_per_cpu_s``: bfloat16's discrimination per CPU second / float32's;
checks: both ways' discrimination, and ``quality_kept`` (bfloat16's mean discrimination is at
least float32's minus 0.01, and it tells the true rule from the wrong one on as many features).

    python -m benchmarks.precision [--rows 1500] [--top 6] [--random 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import torch

from benchmarks import simulator_choice
from benchmarks._common import report
from featureinterp.activations.models import load_subject_model, native_bf16
from featureinterp.config import models_dir
from featureinterp.data.corpus import build_tokens, decode_tokens
from featureinterp.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500, help="corpus rows the records come from")
    parser.add_argument("--top", type=int, default=6, help="top-activating records per feature")
    parser.add_argument("--random", type=int, default=4, help="random records per feature")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    preset = get_preset("embedded")
    fp32, tok = load_subject_model(dataclasses.replace(preset.model, dtype="float32"), models_dir(), "cpu")
    bf16, _ = load_subject_model(dataclasses.replace(preset.model, dtype="bfloat16"), models_dir(), "cpu")
    strings = decode_tokens(tok, build_tokens(preset.replace(n_rows=args.rows), tok))
    a = simulator_choice._measure(fp32, tok, strings, args)
    b = simulator_choice._measure(bf16, tok, strings, args)

    def mean(m: dict) -> float:
        return (m["diff_wrong"] + m["diff_empty"]) / 2

    per_cpu = simulator_choice.per_cpu_ratio(b, a)
    report(
        "precision",
        {"bf16_discrimination_per_cpu_s": round(per_cpu, 2)},
        {
            "native_bf16": native_bf16("cpu"),
            "float32": a,
            "bfloat16": b,
            "quality_kept": mean(b) >= mean(a) - 0.01
            and b["features_correct_beats_wrong"] >= a["features_correct_beats_wrong"],
        },
    )


if __name__ == "__main__":
    main()
