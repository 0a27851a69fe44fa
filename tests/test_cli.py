"""End to end through the command lines a user types (real subprocesses, real instance on disk)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(args, env, timeout=1800):
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path, model_cache):
    (tmp_path / "dagster_home").mkdir()
    return {
        **os.environ,
        "FEATUREINTERP_PRESET": "embedded-tiny",
        "FEATUREINTERP_HOME": str(tmp_path / "home"),
        "FEATUREINTERP_MODELS": str(model_cache),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }


def test_dagster_cli_then_featureinterp_run_resumes(env, tmp_path):
    storage = tmp_path / "home" / "storage" / "embedded-tiny"
    first = _run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "featureinterp_assets.definitions",
            "--select",
            "corpus_tokens",
        ],
        env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert (storage / "corpus_tokens" / "__all__" / "tokens.npy").exists()
    stamp = (storage / "corpus_tokens" / "__all__" / "tokens.npy").stat().st_mtime_ns

    run = _run([BIN / "featureinterp", "run", "--conditions", "one_shot"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "materializing corpus_tokens" not in run.stdout  # resumed: tokens already there
    assert "materializing sae, sae_activations" in run.stdout
    assert (storage / "corpus_tokens" / "__all__" / "tokens.npy").stat().st_mtime_ns == stamp
    for key in ("L03", "L06"):
        assert (storage / "sae_activations" / key / "acts.npy").exists()

    for key in ("F0000/L03", "F0001/L06", "F0000/SYN"):
        assert (storage / "scores" / "one_shot" / key / "value.json").exists()
    assert (storage / "figures" / "fig5.png").exists()

    again = _run([BIN / "featureinterp", "run", "--conditions", "one_shot"], env)
    assert again.returncode == 0 and "materializing" not in again.stdout  # nothing left to do

    sim = _run(
        [BIN / "featureinterp", "simulate", "SYN", "F0000", "negation words such as not, no, never"], env
    )
    assert sim.returncode == 0, sim.stderr[-3000:]
    assert "test score" in sim.stdout and "similar_negative" in sim.stdout
    bad = _run([BIN / "featureinterp", "simulate", "L99", "F0000", "x"], env, timeout=300)
    assert bad.returncode != 0 and "no records for L99/F0000" in bad.stderr and "Traceback" not in bad.stderr

    one = _run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "featureinterp_assets.definitions",
            "--select",
            "sae_activations",
            "--partition",
            "L06",
        ],
        env,
    )
    assert one.returncode == 0, one.stderr[-3000:]


def test_bad_preset_and_offline_paper_preset_give_one_clear_line(env):
    bad = _run([BIN / "featureinterp", "run", "--preset", "nope"], env, timeout=120)
    assert bad.returncode != 0 and "unknown preset 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    offline = _run(
        [BIN / "featureinterp", "run", "--preset", "gemma-2-9b"], {**env, "HF_HUB_OFFLINE": "1"}, timeout=120
    )
    assert offline.returncode != 0 and "Traceback" not in offline.stderr
    assert "google/gemma-2-9b" in offline.stderr and "needs the" in offline.stderr
