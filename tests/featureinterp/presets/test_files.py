"""Presets as files: the printed form of every preset loads back equal, bad files fail with one
line naming the file and the field, and a run computes with the preset it was given (its data
travels in resource config), not with a built-in looked up again by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import numpy as np
import pytest

from featureinterp.errors import ConfigError
from featureinterp.presets import get_preset
from featureinterp.presets.builtin import PRESETS
from featureinterp.presets.files import FORMATS, dump_preset, load_preset_file, parse_preset

ALL = [*PRESETS, "gemma-2-9b-standin", "embedded-faithful"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_preset_prints_and_loads_back_equal(name, fmt, tmp_path):
    preset = get_preset(name)
    path = tmp_path / f"copy.{fmt}"
    path.write_text(dump_preset(preset, fmt))
    assert load_preset_file(path) == preset
    assert get_preset(str(path)) == preset  # what FEATUREINTERP_PRESET=<path> resolves to


def test_presets_show_from_the_command_line_round_trips(tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "featureinterp_assets.cli",
        "presets",
        "show",
        "llama-3.1-8b",
        "--format",
        "toml",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert parse_preset(out, "toml", "stdout") == get_preset("llama-3.1-8b")
    assert '[explain.explainer]\nkind = "api"' in out


def test_a_file_without_a_name_is_named_after_the_file(tmp_path):
    text = dump_preset(get_preset("embedded-tiny"), "toml").replace('name = "embedded-tiny"\n', "", 1)
    path = tmp_path / "my-model.toml"
    path.write_text(text)
    assert load_preset_file(path) == get_preset("embedded-tiny").replace(name="my-model")


ROWS = f"n_rows = {get_preset('embedded-tiny').n_rows}"
"""The line each edit below finds in embedded-tiny's TOML dump."""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace(ROWS, ROWS + "\nrows = 5"), "field rows is not a field; allowed: name, model"),
        (lambda t: t.replace('source = "debian"', 'source = "wikipedia"'), "field corpus.source must be one of 'debian', 'text_dir', 'hf_dataset', not 'wikipedia'"),
        (lambda t: t.replace(ROWS, 'n_rows = "many"'), "field n_rows must be an integer, not 'many'"),
        (lambda t: t.replace("layers = [3, 6]", "layers = [3, -6]"), "negative layer"),
        (lambda t: t.replace('conditions = ["one_shot", "tree"]', 'conditions = ["one_shot", "tree3"]'), "field explain.conditions has unknown 'tree3'; allowed: one_shot_unstructured"),
        (lambda t: t.replace(ROWS, ROWS.replace("=", "= =")), "not valid TOML"),
        (lambda t: t + '\n[explain.explainer]\nmodel = "x"\n', "field explain.explainer needs kind = 'local' or 'api'"),
    ],
)  # fmt: skip
def test_a_bad_file_fails_with_one_line_naming_file_and_field(edit, message, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(edit(dump_preset(get_preset("embedded-tiny"), "toml")))
    with pytest.raises(ConfigError) as err:
        get_preset(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text


def test_a_missing_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*FEATUREINTERP_PRESET"):
        get_preset(str(tmp_path / "nope.yaml"))


def test_a_run_computes_with_the_preset_it_was_launched_with(tmp_path, model_cache):
    """A real Dagster run of `corpus_tokens` for a preset file that changes the row count: the
    stored rows follow the file, although a built-in of the same name says otherwise."""
    from featureinterp_assets.definitions import build_definitions
    from featureinterp_assets.io_managers import StorageIOManager

    preset = get_preset("embedded-tiny").replace(name="embedded-tiny", n_rows=300)
    path = tmp_path / "tiny.json"
    path.write_text(dump_preset(preset, "json"))
    loaded = get_preset(str(path))
    assert loaded.n_rows == 300 != PRESETS["embedded-tiny"].n_rows
    defs = build_definitions(loaded, home=tmp_path / "home", models=model_cache)
    resource = defs.resources["preset"]
    assert json.loads(resource.preset_json)["n_rows"] == 300  # the data, not only the name
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            list(defs.assets), selection=["corpus_tokens"], instance=instance, resources=defs.resources
        )
        assert result.success
    stored = StorageIOManager(base_dir=str(tmp_path / "home" / "storage" / "embedded-tiny")).stored(
        dg.AssetKey("corpus_tokens"), None
    )
    assert np.asarray(stored["tokens"]).shape[0] == 300


def test_the_readme_example_file_loads():
    from pathlib import Path

    from featureinterp.config import ApiSpec

    preset = load_preset_file(Path(__file__).parents[3] / "presets" / "example-own-model.toml")
    assert (preset.name, preset.layers, preset.sae.source, preset.corpus.source) == (
        "my-model",
        (4, 8, 12),
        "disk",
        "text_dir",
    )
    assert preset.sae.path(8) == "/models/my-saes/layer_8"
    assert (
        isinstance(preset.explain.explainer, ApiSpec)
        and preset.explain.explainer.api_key_env == "MY_EXPLAINER_KEY"
    )
    assert preset.explain.simulator.quantization == "4bit"


def test_featureinterp_run_with_a_bad_file_stops_with_that_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(dump_preset(get_preset("embedded-tiny"), "yaml").replace("source: debian", "source: web"))
    env = os.environ | {
        "FEATUREINTERP_PRESET": str(path),
        "FEATUREINTERP_HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "featureinterp_assets.cli", "run"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last == (
        f"featureinterp: {path}: field corpus.source must be one of 'debian', 'text_dir', 'hf_dataset', not 'web'"
    ), out.stderr[-2000:]


def test_a_file_whose_name_escapes_the_home_is_refused_naming_file_field_and_value(tmp_path):
    data = json.loads(dump_preset(get_preset("embedded-tiny"), "json")) | {"name": "../../escaped"}
    path = tmp_path / "escape.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        get_preset(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: field name ") and "'../../escaped'" in text and "\n" not in text, text


def test_a_file_named_with_spaces_gets_a_name_to_set(tmp_path):
    """Without a ``name`` field the file's stem names the preset: a stem that is no plain
    identifier asks for a ``name`` (with a suggestion), not for a renamed file only."""
    text = dump_preset(get_preset("embedded-tiny"), "toml").replace('name = "embedded-tiny"\n', "", 1)
    path = tmp_path / "my model.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"'my model'.*name = \"my-model\""):
        load_preset_file(path)


def test_preset_reference_names_the_file_a_preset_came_from(tmp_path, monkeypatch):
    """What an error tells the user to rerun must resolve: a file's preset is not found by its name."""
    from featureinterp.presets.files import preset_reference

    path = tmp_path / "mine.toml"
    path.write_text(dump_preset(get_preset("embedded-tiny").replace(name="mine"), "toml"))
    monkeypatch.setenv("FEATUREINTERP_PRESET", str(path))
    assert preset_reference("mine") == str(path)
    assert preset_reference("embedded-tiny") == "embedded-tiny"  # not the file's preset
    monkeypatch.setenv("FEATUREINTERP_PRESET", "embedded")
    assert preset_reference("embedded") == "embedded"
