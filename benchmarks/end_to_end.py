"""End to end: the README's main command from an empty Dagster home, then a rerun.

Runs ``featureinterp run`` in a subprocess with a fresh ``DAGSTER_HOME`` and ``FEATUREINTERP_HOME``
(the converted-model cache is shared, as on a machine that ran the install once), measures its
wall time and peak resident memory, then runs it again with nothing changed: the rerun must
recompute nothing, so ``rerun_speedup`` = first wall time / rerun wall time.

    python -m benchmarks.end_to_end                      # the embedded default (the goal: <= 15 min, <= 3 GiB)
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


def _run(args: list[str], env: dict, log: Path | None) -> tuple[float, str]:
    """Run `featureinterp run`; its stdout (stage lines and times) is also appended to ``log`` as it
    comes, so an interrupted measurement still shows how far it got."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err, open(log or os.devnull, "a") as sink:
        # stderr (Dagster's event log) goes to a file: an unread pipe would block the child
        proc = subprocess.Popen(
            [str(BIN / "featureinterp"), "run", *args], env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        lines = []
        for line in proc.stdout:
            lines.append(line)
            sink.write(line)
            sink.flush()
        code = proc.wait()
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    if code != 0:
        sys.exit(f"featureinterp run failed ({code}):\n{stderr[-3000:]}")
    return wall, run_log("".join(lines))


def run_log(stdout: str) -> str:
    """The whole log of a quiet `featureinterp run` (its "log: PATH" line names the file): the
    per-run "--> materializing" and "done in" lines are there (on stdout only with --verbose)."""
    path = next((line.split("log: ", 1)[1] for line in stdout.splitlines() if line.startswith("log: ")), None)
    return Path(path.strip()).read_text() if path else stdout


def stage_seconds(log: str) -> dict[str, float]:
    """Wall seconds per stage (summed over its partitions) from `featureinterp run`'s log (or its
    --verbose output): each "--> materializing ASSETS [partition]" line is followed by "done in N s"."""
    out: dict[str, float] = {}
    stage = None
    marker, done = "--> materializing ", "    done in "
    for line in log.splitlines():
        if marker in line:  # after the "[elapsed m:ss, ETA m:ss]" prefix (and the log's own)
            stage = line.split(marker, 1)[1].split(" [")[0]
        elif done in line and stage is not None:
            out[stage] = round(out.get(stage, 0.0) + float(line.split(done, 1)[1].split()[0]), 1)
            stage = None
    return out


FIGURES = ("fig3", "fig4", "fig5", "fig_calibration")


def figures_complete(dagster_home: Path) -> dict[str, dict]:
    """Per figure of the run's instance: whether its grid is full (the figure asset's
    ``incomplete`` flag, set when a cell of its layers x features x conditions has no score) and
    its caption (which says "n of m features" when it is not)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    out = {}
    for name in FIGURES:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        if event is None:
            out[name] = {"complete": False, "caption": "not materialized"}
            continue
        meta = event.asset_materialization.metadata
        incomplete = meta.get("incomplete")
        caption = meta.get("caption")
        out[name] = {
            "complete": incomplete is not None and not incomplete.value,
            "caption": caption.value if caption is not None else "",
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--conditions", default=None)
    parser.add_argument(
        "--log", type=Path, default=None, help="append the runs' stage lines here as they come"
    )
    parser.add_argument(
        "--keep-figures", type=Path, default=None, help="copy the first run's figures folder here"
    )
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
        first, out = _run(extra, env, args.log)
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
        complete = figures_complete(Path(env["DAGSTER_HOME"]))
        if args.keep_figures:
            import shutil

            shutil.copytree(
                Path(env["FEATUREINTERP_HOME"]) / "storage" / args.preset / "figures",
                args.keep_figures,
                dirs_exist_ok=True,
            )
        rerun, again = _run(extra, env, args.log)
    report(
        "end_to_end",
        {"rerun_speedup": round(first / rerun, 1)},
        {
            "preset": args.preset,
            "wall_s": round(first, 1),
            "peak_rss_gib": round(peak_gib, 2),
            "rerun_wall_s": round(rerun, 1),
            "figures_complete": all(v["complete"] for v in complete.values()),
            "figures": complete,
            "stage_s": stage_seconds(out),
            "stages_first": out.count("--> materializing"),
            "stages_rerun": again.count("--> materializing"),
        },
    )


if __name__ == "__main__":
    main()
