"""End to end: the README's main command from an empty Dagster home, then a rerun.

Runs ``featureinterp run`` in a subprocess with a fresh ``DAGSTER_HOME`` and ``FEATUREINTERP_HOME``
(the converted-model cache is shared, as on a machine that ran the install once), measures its
wall time and peak resident memory, then runs it again with nothing changed: the rerun must
recompute nothing, so ``rerun_speedup`` = first wall time / rerun wall time.

    python -m benchmarks.end_to_end                      # the embedded default (the goal: <= 15 min, <= 6 GiB)
    python -m benchmarks.end_to_end --preset embedded-tiny --conditions one_shot
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import report
from featureinterp.config import models_dir

BIN = Path(sys.executable).parent


def _run(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "featureinterp"), "run", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"featureinterp run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def stage_seconds(stdout: str) -> dict[str, float]:
    """Wall seconds per stage (summed over its partitions) from `featureinterp run`'s output:
    each "--> materializing ASSETS [partition]" line is followed by "    done in N s"."""
    out: dict[str, float] = {}
    stage = None
    for line in stdout.splitlines():
        if line.startswith("--> materializing "):
            stage = line[len("--> materializing ") :].split(" [")[0]
        elif line.startswith("    done in ") and stage is not None:
            out[stage] = round(out.get(stage, 0.0) + float(line.split()[2]), 1)
            stage = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--conditions", default=None)
    args = parser.parse_args()
    extra = ["--preset", args.preset] + (["--conditions", args.conditions] if args.conditions else [])
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "DAGSTER_HOME": str(Path(tmp) / "dagster_home"),
            "FEATUREINTERP_HOME": str(Path(tmp) / "home"),
            "FEATUREINTERP_MODELS": str(models_dir()),
        }
        first, out = _run(extra, env)
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
        rerun, again = _run(extra, env)
    report(
        "end_to_end",
        {"rerun_speedup": round(first / rerun, 1)},
        {
            "preset": args.preset,
            "wall_s": round(first, 1),
            "peak_rss_gib": round(peak_gib, 2),
            "rerun_wall_s": round(rerun, 1),
            "stage_s": stage_seconds(out),
            "stages_first": out.count("--> materializing"),
            "stages_rerun": again.count("--> materializing"),
        },
    )


if __name__ == "__main__":
    main()
