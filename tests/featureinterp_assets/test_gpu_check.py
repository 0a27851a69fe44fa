"""scripts/gpu-check in its CPU mode (`--cpu --small`), as CI runs it, and its report read by `plan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import CACHE, REPO


def test_gpu_check_cpu_small_runs_and_plan_reads_its_report(tmp_path):
    env = os.environ | {
        "FEATUREINTERP_HOME": str(tmp_path / "home"),
        "FEATUREINTERP_MODELS": str(CACHE / "models"),  # the converted Gemma tokenizer
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    out = tmp_path / "report.json"
    cmd = [str(REPO / "scripts" / "gpu-check"), "--cpu", "--small", "--out", str(out), "--work", str(tmp_path / "w")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])  # printed last
    assert report == json.loads(out.read_text())
    sim, subj = report["simulator"], report["subject"]
    assert report["small"] and report["device"].startswith("CPU") and report["measured_on"]
    # paper-sized simulation: 5 rules x 20 records of 32 tokens, cached and uncached
    assert (sim["rules"], sim["records"], sim["record_tokens"]) == (5, 20, 32)
    assert sim["cached"]["forward_tokens"] < sim["uncached"]["forward_tokens"]  # the header is shared
    assert sim["cached_vs_uncached_max_abs"] <= 1e-3 and sim["batch_size"] == 8
    assert sim["values_std"] > 1e-4 and report["checks"]["simulation_varies"]  # the equality says something
    assert sim["params"] > 0 and sim["load_s"] > 0 and sim["peak_memory_gib"] > 0
    assert subj["activation_rows_per_s"] > subj["holistic_rows_per_s"] > 0  # a sweep costs ~T forwards
    assert report["checks"]["cached_equals_uncached"] and report["checks"]["standins_pass"] is None
    assert report["versions"]["torch"] and "not run" in report["standins"]

    plan = subprocess.run(
        [sys.executable, "-m", "featureinterp_assets.cli", "plan", "--preset", "gemma-2-9b", "--calibration", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    bad = subprocess.run(
        [sys.executable, "-m", "featureinterp_assets.cli", "plan", "--calibration", str(tmp_path / "missing.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "run scripts/gpu-check on a GPU first" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_gpu_check_without_cuda_says_how_to_run_it_here(tmp_path):
    env = os.environ | {"FEATUREINTERP_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "featureinterp_assets.gpu_check"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "--cpu --small" in proc.stderr, proc.stderr[-2000:]
