"""`featureinterp plan`: counts follow from the preset, tokens from a stored stand-in measurement."""

from __future__ import annotations

import dataclasses
import json

import pytest

from featureinterp.config import get_preset
from featureinterp.plan import MODEL_PARAMS, GpuSpec, plan_preset


def _store(home, preset, cond, feature, layer, usage, explain_tokens, score_tokens):
    root = home / "storage" / f"{preset}-standin"
    for kind, value in (
        ("explanations", {"usage": usage, "simulator_tokens": explain_tokens}),
        ("scores", {"score": 0.1, "simulator_tokens": score_tokens}),
    ):
        path = root / kind / cond / feature / layer / "value.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _readers(home, preset):
    """Read stored values the way `featureinterp plan` does: through the IO manager."""
    import dagster as dg

    from featureinterp_assets.io_managers import StorageIOManager

    storages = [
        StorageIOManager(base_dir=str(home / "storage" / name)) for name in (f"{preset}-standin", preset)
    ]
    return [lambda key, part, s=s: s.stored(dg.AssetKey(list(key)), part) for s in storages]


def test_counts_without_a_measurement(tmp_path):
    plan = plan_preset(get_preset("gemma-2-9b"), _readers(tmp_path, "gemma-2-9b"))
    lf = 43 * 50  # 42 layers + SYN, features 0-49
    assert plan.partitions["records"] == plan.partitions["explanations/tree"] == lf
    cli, ui = plan.model_loads["featureinterp run"], plan.model_loads["one process per run (UI backfill)"]
    assert cli == {"subject (google/gemma-2-9b)": 1, "simulator (google/gemma-2-27b-it)": 1}
    assert ui == {"subject (google/gemma-2-9b)": 1, "simulator (google/gemma-2-27b-it)": lf}
    assert not plan.measured and not plan.gpu_hours and "not measured yet" in plan.text()


def test_projection_from_stored_stand_in_measurements(tmp_path):
    base = get_preset("gemma-2-9b")
    preset = base.replace(explain=dataclasses.replace(base.explain, conditions=("one_shot",)))
    usage = {"requests": 2, "prompt_tokens": 1000, "completion_tokens": 100}
    _store(tmp_path, "gemma-2-9b", "one_shot", "F0000", "L05", usage, 20_000, 10_000)
    _store(
        tmp_path, "gemma-2-9b", "one_shot", "F0001", "L05", usage | {"prompt_tokens": 3000}, 40_000, 10_000
    )
    gpu = GpuSpec(peak_flops=1e15, utilisation=0.5, load_gbps=2.0)
    plan = plan_preset(preset, _readers(tmp_path, "gemma-2-9b"), gpu=gpu)
    m = plan.measured["one_shot"]
    assert m["partitions"] == 2 and m["explainer_prompt_tokens"] == 2000 and m["simulator_tokens"] == 40_000
    lf = 43 * 50
    api = preset.explain.explainer
    assert plan.explainer["cost_usd"] == pytest.approx(
        lf * (2000 * api.price_in_per_mtok + 100 * api.price_out_per_mtok) / 1e6
    )
    sim = 2 * MODEL_PARAMS["google/gemma-2-27b-it"] * 40_000 * lf / 5e14 / 3600
    weights = 2 * MODEL_PARAMS["google/gemma-2-27b-it"], 2 * MODEL_PARAMS["google/gemma-2-9b"]
    one_load = sum(weights) / 2e9 / 3600
    ui_loads = (lf * weights[0] + weights[1]) / 2e9 / 3600
    subject = 2 * MODEL_PARAMS["google/gemma-2-9b"] * 100_000 * 33 / 5e14 / 3600
    assert plan.gpu_hours["of which simulator forward passes"] == pytest.approx(sim, abs=0.01)
    assert plan.gpu_hours["of which model loads"] == pytest.approx(one_load, abs=0.01)
    ui = plan.gpu_hours["one process per run (UI backfill): 1x H100 SXM"]
    assert ui == pytest.approx(sim + subject + ui_loads, abs=0.02)
    assert (
        plan.dominant == "simulator forward passes" and json.loads(plan.to_json())["preset"] == "gemma-2-9b"
    )


def test_plan_command_prints_json_without_loading_a_model(tmp_path):
    import os
    import subprocess
    import sys

    env = os.environ | {"FEATUREINTERP_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "featureinterp_assets.cli", "plan", "--preset", "llama-3.1-8b", "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads(out.stdout)
    assert plan["preset"] == "llama-3.1-8b" and plan["partitions"]["records"] == 33 * 50
    assert not (tmp_path / "models").exists()  # nothing was converted or downloaded
