"""What a stand-in run of a paper preset must show, checked on its Dagster instance and storage.

One definition of "the stand-in run worked", used by the CPU test (tests/featureinterp/presets/
test_standin.py) and by ``scripts/gpu-check`` on CUDA, so the GPU run asserts exactly what CI does:
every asset of the slice materialized, nearly every score finite (a NaN only where the random
explainer gave every rule strength 0), the explainer reached over the OpenAI-compatible API under
the condition's model id, the paper simulator prompt in use (chat layout, BOS, ``unknown``), the
three figures drawn, corpus-scale holistic values where a holistic condition ran, and each model
loaded once for the whole invocation.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np

from featureinterp.explain.conditions import get_condition
from featureinterp_assets.resources import LOAD_LINE

__all__ = ["StandinCheckError", "check_standin_run", "run_standin", "standin_conditions"]

LAYER, FEATURES = "L00", ("F0000", "F0001")


class StandinCheckError(AssertionError):
    """A stand-in run finished but does not show what it must (the message says what)."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise StandinCheckError(what)


def standin_conditions(preset: str) -> tuple[str, ...]:
    """Figure 4's structured cells; on Gemma also Figure 3's one-shot, whose explainer is another
    model on the same API route, and a holistic one-shot (the paper's corpus-wide holistic scale)."""
    gemma = ("fig3_one_shot", "one_shot_structured_holistic")
    return ("one_shot", "tree") + (gemma if preset == "gemma-2-9b" else ())


def run_standin(
    preset: str, root: Path, models: Path, extra_env: dict[str, str] | None = None, timeout: float = 1800
) -> tuple[subprocess.CompletedProcess, float]:
    """``featureinterp run --standin`` of ``preset`` on layer L00, features 0-1, in its own home
    and Dagster instance under ``root``; returns the process and its wall seconds."""
    env = os.environ | {
        "FEATUREINTERP_PRESET": preset,
        "FEATUREINTERP_HOME": str(root / "home"),
        "FEATUREINTERP_MODELS": str(models),  # converted tokenizers shared between runs
        "DAGSTER_HOME": str(root / "dagster"),
        "HF_HUB_OFFLINE": "1",
    } | (extra_env or {})
    (root / "dagster").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "featureinterp_assets.cli", "run", "--standin", "--layers", LAYER]
    cmd += ["--features", ",".join(str(int(f[1:])) for f in FEATURES)]
    cmd += ["--conditions", ",".join(standin_conditions(preset))]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def check_standin_run(preset: str, root: Path, proc: subprocess.CompletedProcess) -> dict:
    """Raise ``StandinCheckError`` naming the first thing the run under ``root`` lacks; else
    return what it showed (finite scores, the simulator's description, model loads)."""
    out = proc.stdout + proc.stderr
    _require(proc.returncode == 0, f"exit code {proc.returncode}:\n{out[-4000:]}")
    _require(proc.stdout.count("meaningless by design") == 2, "the run must say twice that its numbers mean nothing")
    conditions = standin_conditions(preset)
    instance = dg.DagsterInstance.from_config(str(root / "dagster"))
    try:
        for key in ("corpus_tokens", "corpus_embeddings", "fig3", "fig4", "fig5"):
            _require(instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, f"{key} missing")
        for key in ("sae", "sae_activations", "layer_results"):
            _require(LAYER in instance.get_materialized_partitions(dg.AssetKey(key)), f"{key} {LAYER} missing")
        keys = {dg.MultiPartitionKey({"layer": LAYER, "feature": f}) for f in FEATURES}
        for key in ["records"] + [f"{kind}/{c}" for c in conditions for kind in ("explanations", "scores")]:
            done = instance.get_materialized_partitions(dg.AssetKey(key.split("/")))
            _require(keys <= done, f"{key}: partitions missing")
        storage = root / "home" / "storage" / f"{preset}-standin"
        finite = 0
        simulator: dict = {}
        for cond in conditions:
            for feature in FEATURES:
                score = json.loads((storage / "scores" / cond / feature / LAYER / "value.json").read_text())
                expl = json.loads((storage / "explanations" / cond / feature / LAYER / "value.json").read_text())
                if math.isfinite(score["score"]):
                    finite += 1
                else:  # only legitimate when the random explainer gave every rule strength 0
                    rules = expl["explanation"]["rules"]
                    _require(
                        score["reason"] == "predictions are constant" and all(r["strength"] <= 0 for r in rules),
                        f"{cond} {feature}: NaN score ({score['reason']}) with rules {rules}",
                    )
                model = get_condition(cond).explainer_model or "meta-llama/llama-4-scout"
                _require(
                    expl["explainer"] == f"standin/{model}" and expl["usage"]["requests"] >= 1,
                    f"{cond} {feature}: explainer {expl['explainer']!r}, usage {expl['usage']}",
                )
            record = instance.fetch_materializations(dg.AssetKey(["scores", cond]), limit=1).records[0]
            simulator = record.asset_materialization.metadata["simulator"].value  # type: ignore[union-attr, assignment]
            _require(
                simulator["layout"] == "chat" and simulator["bos"] and simulator["placeholder"] == "unknown",
                f"{cond}: simulator prompt {simulator}",
            )
        _require(
            finite >= len(conditions) * len(FEATURES) - 1,
            f"only {finite} finite scores: the simulator path must score nearly every partition",
        )
        for name in ("fig3", "fig4", "fig5"):
            _require((storage / "figures" / f"{name}.png").stat().st_size > 10_000, f"{name}.png is empty")
        # the generated source (one_shot's explanations, the first features of each layer): real
        # candidates with true activations, scored like any source, requests through the API route
        for feature in FEATURES:
            gen = storage / "generated" / feature / LAYER / "meta.json"
            meta = json.loads(gen.read_text()) if gen.exists() else {}
            _require(
                meta.get("candidates", 0) >= 1 and "generated" in meta.get("per_source", {})
                and meta.get("usage", {}).get("requests", 0) >= 1 and str(meta.get("explainer", "")).startswith("standin/"),
                f"generated {feature}: {({k: meta.get(k) for k in ('candidates', 'per_source', 'usage', 'explainer')})}",
            )  # fmt: skip
        if "one_shot_structured_holistic" in conditions:  # the paper's scale: the whole corpus's maximum
            for feature in FEATURES:
                hol = storage / "holistic_activations" / feature / LAYER
                meta = json.loads((hol / "meta.json").read_text()) if (hol / "meta.json").exists() else None
                _require(meta is not None and meta["holistic_scale"] == "corpus", f"holistic {feature}: {meta}")
                shown = float(np.load(hol / "holistic.npy").max())  # the rows its records show
                _require(
                    meta is not None and meta["max_holistic"] >= shown - 1e-6 and meta["max_holistic"] > 0,
                    f"holistic {feature}: corpus max {meta} below the shown {shown}",
                )
        loads: Counter = Counter()
        for run in instance.get_runs():
            for entry in instance.all_logs(run.run_id):
                match = LOAD_LINE.search(entry.user_message or "")
                if match:
                    loads[match.group(1)] += 1
        # every partition runs in its own Dagster run, all in one process: each model read once
        _require(loads == Counter(subject=1, simulator=1), f"model loads {dict(loads)}, want one each")
    finally:
        instance.dispose()
    return {"finite_scores": finite, "scores": len(conditions) * len(FEATURES), "simulator": simulator}


def check_standins(presets: Sequence[str], root: Path, models: Path, extra_env: dict[str, str]) -> dict:
    """Run and check each preset's stand-in; a failure is recorded with its reason, not raised,
    so one broken preset does not hide the others' results."""
    out: dict[str, dict] = {}
    for preset in presets:
        proc, wall = run_standin(preset, root / preset, models, extra_env)
        try:
            facts = check_standin_run(preset, root / preset, proc)
            out[preset] = {"ok": True, "wall_s": round(wall, 1), **facts}
        except StandinCheckError as err:
            out[preset] = {"ok": False, "wall_s": round(wall, 1), "error": str(err)[-2000:]}
    return out
