"""One Dagster instance per preset: presets share asset and partition keys, so a second preset in
the same instance would find the first one's materializations and skip its own stages."""

import pytest

from featureinterp.errors import ConfigError
from featureinterp_assets import cli


def test_an_instance_serves_one_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    instance = cli._instance("embedded-tiny")
    assert instance.root_directory == str(tmp_path / ".dagster_home" / "embedded-tiny")
    instance.dispose()
    # the same folder asked to hold another preset's runs: one clear line naming the fix
    with pytest.raises(
        ConfigError, match=r"holds the runs of preset 'embedded-tiny', not 'gpt2-small'.*DAGSTER_HOME"
    ):
        cli._instance("gpt2-small")
    again = cli._instance("embedded-tiny")  # its own preset is welcome back
    assert again.root_directory == str(tmp_path / ".dagster_home" / "embedded-tiny")
    again.dispose()
