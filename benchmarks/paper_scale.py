"""Paper scale: model loads and wall time of the explain + score stage, per-partition processes vs
`featureinterp run`, on the `gemma-2-9b` stand-in (CPU, tiny random weights, same code paths).

The per-partition way is how a UI or daemon backfill runs today: one process per (layer, feature)
run (`dagster asset materialize --partition K`), each loading its models. The new way is
`featureinterp run`: the same per-partition runs, in one process that reads each model once. Both
start from the same records (built once per home beforehand, not timed).

    python -m benchmarks.paper_scale [--layers L05,L10] [--features 0,1,2,3]

Not measured yet (issue #13): the simulator-token savings against the paper's tree loop and the
RSS growth of `sae_activations` from 10k to 100k rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks._common import report
from featureinterp_assets.resources import LOAD_LINE

CONDITIONS = ("one_shot", "tree")


def _loads(dagster_home: Path) -> Counter:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    instance = dg.DagsterInstance.get()
    total: Counter = Counter()
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            match = LOAD_LINE.search(entry.user_message or "")
            if match:
                total[match.group(1)] += 1
    instance.dispose()
    return total


def _env(root: Path, models: Path) -> dict[str, str]:
    return os.environ | {
        "FEATUREINTERP_PRESET": "gemma-2-9b",
        "FEATUREINTERP_HOME": str(root / "home"),
        "FEATUREINTERP_MODELS": str(models),
        "DAGSTER_HOME": str(root / "dagster"),
        "HF_HUB_OFFLINE": "1",
    }


def _cli(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "featureinterp_assets.cli", "run", "--standin", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"featureinterp run failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="L05,L10")
    parser.add_argument("--features", default="0,1,2,3")
    args = parser.parse_args()
    models = Path(os.environ.get("FEATUREINTERP_MODELS") or Path.cwd() / ".cache" / "tests" / "models")
    slice_args = ["--layers", args.layers, "--features", args.features]
    keys = [f"F{int(f):04d}|{layer}" for layer in args.layers.split(",") for f in args.features.split(",")]
    selection = ",".join(f"{kind}/{c}" for c in CONDITIONS for kind in ("explanations", "scores"))
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp) / "per_partition", Path(tmp) / "one_process"
        for root in (old, new):  # shared upstream: tokens, SAEs, activations, embeddings, records
            _cli(_env(root, models), *slice_args, "--no-explain")

        # per-partition way: a process per (layer, feature) run, as a UI backfill launches them
        from featureinterp_assets import cli

        env = _env(old, models)
        os.environ.update({k: env[k] for k in ("FEATUREINTERP_HOME", "FEATUREINTERP_MODELS")})
        _, server = cli.start_standin("gemma-2-9b")
        env |= {k: os.environ[k] for k in ("FEATUREINTERP_STANDIN_API", "FEATUREINTERP_STANDIN_KEY")}
        env["FEATUREINTERP_PRESET"] = "gemma-2-9b-standin"
        start = time.perf_counter()
        try:
            for key in keys:
                cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m"]
                cmd += ["featureinterp_assets.definitions", "--select", selection, "--partition", key]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
                if proc.returncode != 0:
                    raise SystemExit(f"partition {key} failed:\n{proc.stderr[-3000:]}")
        finally:
            server.stop()
        t_old = time.perf_counter() - start

        # new way: featureinterp run, every partition its own run, one process
        t_new = _cli(_env(new, models), *slice_args, "--conditions", ",".join(CONDITIONS))
        loads_old, loads_new = _loads(old / "dagster"), _loads(new / "dagster")
    explain_old = {k: v for k, v in loads_old.items() if k != "subject"}
    explain_new = {k: v for k, v in loads_new.items() if k != "subject"}
    report(
        "paper_scale",
        {
            "load_savings": round(sum(explain_old.values()) / max(1, sum(explain_new.values())), 2),
            "wall_speedup": round(t_old / t_new, 2),
        },
        {
            "partitions": len(keys),
            "conditions": list(CONDITIONS),
            "explain_stage_loads_per_partition_way": explain_old,
            "explain_stage_loads_one_process": explain_new,
            "seconds_per_partition_way": round(t_old, 1),
            "seconds_one_process": round(t_new, 1),
        },
    )


if __name__ == "__main__":
    main()
