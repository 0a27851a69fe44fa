"""Paper scale on the `gemma-2-9b` stand-in (CPU, tiny random weights, same code paths).

1. Model loads and wall time of the explain + score stage. The per-partition way is a process per
   (layer, feature) run (`dagster asset materialize --partition K`), each loading its models, as
   the paper's scripts and Dagster's default backfills do. The new way is `featureinterp run`: one
   ranged run per layer, every partition recorded on its own, each model read once. Both start
   from the same records (built once per home beforehand, not timed).
2. Simulator tokens: what the paper code's tree loop (paper-method.md 4.6-4.7, 5.5) would run for
   the very tree nodes our search scored, against what ours ran (its per-call rule cache).
3. Peak RSS of `sae_activations` for 5k and 50k rows over the first --rss-layers layers of the stand-in (a child
   process each), streamed to disk as the asset does, and held in memory as before.

    python -m benchmarks.paper_scale [--layers L00,L06] [--features 0,1] [--rss-layers 4]

The default slice (2 layers x 2 features = 4 partitions) keeps the benchmark under 10 minutes on
2 cores; ``load_savings`` equals the number of partitions by construction (one simulator load per
partition vs one per run), and ``wall_speedup`` grows with it (the one-process run's fixed start
is spread over more partitions): 8 partitions gave 1.59 on 2026-12-06 in 11 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks._common import report, sized
from featureinterp_assets.resources import LOAD_LINE

CONDITIONS = ("one_shot", "tree")
RSS_ROWS = (sized(5_000, 200), sized(50_000, 2_000))
PAPER_SIMULATOR_BATCH = 2
"""The paper's simulator batch (paper-method.md 9): its padded chunks are counted at this size."""


def _rss_child(rows: int, layers: int, streamed: bool, root: Path) -> None:
    """Child process: sae_activations of ``rows`` random rows over the first ``layers`` stand-in
    layers (50 features each); prints the peak RSS in MiB."""
    import resource

    import numpy as np
    import torch

    from featureinterp.activations.latents import sae_activations
    from featureinterp.activations.models import load_subject_model
    from featureinterp.activations.sae import load_layer_sae
    from featureinterp.config import ModelSpec, models_dir
    from featureinterp.presets import get_preset
    from featureinterp.presets.standin import build_standin

    torch.set_num_threads(2)
    dirs = build_standin("gemma-2-9b")
    preset = get_preset("gemma-2-9b-standin")
    model, tok = load_subject_model(ModelSpec(name=str(dirs["subject"])), models_dir(), "cpu")
    saes = {
        layer: load_layer_sae({"path": preset.sae.path(layer)}, model, layer, "cpu")
        for layer in list(preset.layers)[:layers]
    }
    tokens = np.random.default_rng(0).integers(10, len(tok) - 1, size=(rows, preset.row_len), dtype=np.int32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = sae_activations(
        model, saes, tokens, preset.features, 64, True, stage_dir=root / "stage" if streamed else None
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(out) == layers
    print(json.dumps({"rows": rows, "peak_mib": round(peak, 1), "before_mib": round(before, 1)}))


def _rss(rows: int, layers: int, streamed: bool, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.paper_scale",
            "--rss-child",
            str(rows),
            "--rss-layers",
            str(layers),
        ]
        cmd += ["--rss-dir", tmp] + (["--streamed"] if streamed else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"rss child failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _token_counts(root: Path, keys: list[str]) -> tuple[dict, int, int]:
    """Per-condition mean simulator / explainer tokens per feature, and the tree's simulator
    tokens: the paper loop's for our nodes, and ours."""
    from featureinterp.activations.models import load_subject_model
    from featureinterp.config import ModelSpec, models_dir
    from featureinterp.explain.conditions import feature_records, get_condition
    from featureinterp.explain.tree import paper_tree_tokens
    from featureinterp.explanations.rules import Explanation
    from featureinterp.presets import get_preset
    from featureinterp.presets.standin import build_standin
    from featureinterp.simulate.simulator import LocalSimulator, prompt_for
    from featureinterp_assets.io_managers import StorageIOManager

    preset = get_preset("gemma-2-9b-standin")
    storage = StorageIOManager(base_dir=str(root / "home" / "storage" / preset.name))
    model, tok = load_subject_model(
        ModelSpec(name=str(build_standin("gemma-2-9b")["simulator"])), models_dir(), "cpu"
    )
    sim = LocalSimulator(
        model, tok, prompt_for(preset.explain.simulator_prompt), preset.explain.simulator_batch
    )
    import dagster as dg

    per_feature, paper, ours = {}, 0, 0
    occurrences, distinct = 0, 0  # rules over all scored nodes, and distinct rules per feature
    for cond in CONDITIONS:
        rows = []
        for key in keys:
            expl = storage.stored(dg.AssetKey(["explanations", cond]), key)
            score = storage.stored(dg.AssetKey(["scores", cond]), key)
            rows.append(
                (
                    expl["simulator_tokens"],
                    score["simulator_tokens"],
                    expl["usage"]["prompt_tokens"],
                    expl["usage"]["completion_tokens"],
                )
            )
            if cond == "tree":
                rec = storage.stored(dg.AssetKey("records"), key)
                records = feature_records(rec.frame, expl["max_act"], get_condition(cond), None, 0.0)
                lengths = [len(sim.record_ids(r.tokens)[0]) for r in (*records.train, *records.valid)]
                nodes = [Explanation.from_record(n["explanation"]) for n in expl["nodes"]]
                rules = [r.activates_on for e in nodes for r in e.rules if r.strength > 0]
                occurrences, distinct = occurrences + len(rules), distinct + len(set(rules))
                paper += paper_tree_tokens(
                    lambda text: len(sim.rule_ids(text)),
                    lengths,
                    len(records.train),
                    [[r.activates_on for r in e.rules] for e in nodes],
                    PAPER_SIMULATOR_BATCH,
                )
                ours += expl["simulator_tokens"]
        means = [round(sum(c) / len(rows)) for c in zip(*rows, strict=True)]
        per_feature[cond] = dict(
            zip(
                ("simulator_explain", "simulator_score", "explainer_prompt", "explainer_completion"),
                means,
                strict=True,
            )
        )
    per_feature["tree_rule_reuse"] = round(occurrences / max(1, distinct), 2)
    return per_feature, paper, ours


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


def _run_seconds(dagster_home: Path, skip: set[str]) -> dict[str, float]:
    """Wall seconds of the instance's runs (those in ``skip`` left out), by what they materialized:
    ``explain`` (a run that materialized explanations) and ``other`` (records, scorers, tables,
    figures, exports: work the per-partition way is not asked to do)."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    instance = dg.DagsterInstance.get()
    out = {"explain": 0.0, "other": 0.0}
    for run in instance.get_runs():
        if run.run_id in skip:
            continue
        stats = instance.get_run_stats(run.run_id)
        seconds = (stats.end_time or 0.0) - (stats.start_time or 0.0)
        made = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        explained = any(e.dagster_event and e.dagster_event.asset_key.path[0] == "explanations" for e in made)
        out["explain" if explained else "other"] += max(0.0, seconds)
    instance.dispose()
    return out


def _run_ids(dagster_home: Path) -> set[str]:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    instance = dg.DagsterInstance.get()
    ids = {r.run_id for r in instance.get_runs()}
    instance.dispose()
    return ids


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
    parser.add_argument("--layers", default="L00,L06")  # inside every paper figure grid
    parser.add_argument("--features", default="0,1")
    parser.add_argument("--rss-layers", type=int, default=4, help="stand-in layers of the RSS check")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-dir", help=argparse.SUPPRESS)
    parser.add_argument("--streamed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return _rss_child(args.rss_child, args.rss_layers, args.streamed, Path(args.rss_dir))
    models = Path(os.environ.get("FEATUREINTERP_MODELS") or Path.cwd() / ".cache" / "tests" / "models")
    slice_args = ["--layers", args.layers, "--features", args.features]
    keys = [f"F{int(f):04d}|{layer}" for layer in args.layers.split(",") for f in args.features.split(",")]
    selection = ",".join(f"{kind}/{c}" for c in CONDITIONS for kind in ("explanations", "scores"))
    phases: dict[str, float] = {}  # where the benchmark's own time goes (goal: under 10 minutes)
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp) / "per_partition", Path(tmp) / "one_process"
        # the upstream both ways start from (tokens, SAEs, activations, embeddings, records), built
        # once and copied: the files and the Dagster instance that recorded them (SQLite, paths
        # relative to DAGSTER_HOME), so each way has its own home and neither sees the other's runs
        _cli(_env(old, models), *slice_args, "--no-explain")
        shutil.copytree(old, new, symlinks=True)
        upstream_runs = {way: _loads(root / "dagster") for way, root in (("old", old), ("new", new))}
        upstream_ids = _run_ids(new / "dagster")
        phases["upstream"] = time.perf_counter() - clock

        # per-partition way: a process per (layer, feature) run, as a UI backfill launches them
        from featureinterp_assets.standin_server import start_standin

        env = _env(old, models)
        os.environ.update({k: env[k] for k in ("FEATUREINTERP_HOME", "FEATUREINTERP_MODELS")})
        _, server = start_standin("gemma-2-9b")
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

        # new way: featureinterp run, a ranged run per layer, one process
        t_new = _cli(_env(new, models), *slice_args, "--conditions", ",".join(CONDITIONS))
        phases["per_partition_way"], phases["one_process_way"] = t_old, t_new
        # `featureinterp run` also builds what the per-partition way is not asked to (embedding
        # scores, layer tables, figures, exports): compare the explain stage, i.e. the process's
        # wall time less its runs that materialized no explanation
        runs = _run_seconds(new / "dagster", upstream_ids)
        t_new_explain = t_new - runs["other"]
        # the explain stage's loads: each home's, less the upstream run's (the same in both)
        loads_old = _loads(old / "dagster") - upstream_runs["old"]
        loads_new = _loads(new / "dagster") - upstream_runs["new"]
        os.environ.update({k: v for k, v in _env(new, models).items() if k.startswith("FEATUREINTERP")})
        per_feature, paper_tokens, our_tokens = _token_counts(new, keys)
        phases["explain_both_ways"] = time.perf_counter() - clock - phases["upstream"]
        rss_env = _env(new, models)  # the stand-in files built above
        rss = {
            way: [_rss(rows, args.rss_layers, way == "streamed", rss_env) for rows in RSS_ROWS]
            for way in ("streamed", "in_memory")
        }
    phases["rss"] = time.perf_counter() - clock - phases["upstream"] - phases["explain_both_ways"]
    growth = {way: round(r[1]["peak_mib"] / r[0]["peak_mib"], 2) for way, r in rss.items()}
    explain_old = {k: v for k, v in loads_old.items() if k != "subject"}
    explain_new = {k: v for k, v in loads_new.items() if k != "subject"}
    report(
        "paper_scale",
        {
            "load_savings": round(sum(explain_old.values()) / max(1, sum(explain_new.values())), 2),
            "wall_speedup": round(t_old / t_new_explain, 2),
            "simulator_token_savings": round(paper_tokens / max(1, our_tokens), 2),
            "rss_growth_in_memory_over_streamed": round(growth["in_memory"] / growth["streamed"], 2),
        },
        {
            "rss_growth": growth["streamed"],
            "rss_growth_in_memory": growth["in_memory"],
            "rss_peak_mib": {way: [x["peak_mib"] for x in r] for way, r in rss.items()},
            "rss_rows": list(RSS_ROWS),
            "rss_layers": args.rss_layers,
            "tree_simulator_tokens_paper_loop": paper_tokens,
            "tree_simulator_tokens_ours": our_tokens,
            "tokens_per_feature": per_feature,
            "partitions": len(keys),
            "conditions": list(CONDITIONS),
            "explain_stage_loads_per_partition_way": explain_old,
            "explain_stage_loads_one_process": explain_new,
            "seconds_per_partition_way": round(t_old, 1),
            "seconds_one_process": round(t_new, 1),
            "seconds_one_process_explain_stage": round(t_new_explain, 1),
            "seconds_one_process_runs": {k: round(v, 1) for k, v in runs.items()},
            "benchmark_phases_s": {k: round(v, 1) for k, v in phases.items()},
        },
    )


if __name__ == "__main__":
    main()
