"""featureinterp_assets.outcome: each failed asset names its own step's error (not the first one
of the run), and a figure with nothing to draw says how to draw it instead of failing the run."""

import dagster as dg

from featureinterp.presets import get_preset
from featureinterp_assets.outcome import failures, not_drawn


def test_each_failed_asset_gets_its_own_steps_error():
    @dg.asset
    def first() -> int:
        raise ValueError("first broke")

    @dg.asset
    def second() -> int:
        raise KeyError("second broke")

    @dg.asset
    def fine() -> int:
        return 1

    result = dg.materialize([first, second, fine], raise_on_error=False)
    failed = failures(result, {"first": [None], "second": [None], "fine": [None]})
    assert set(failed) == {("first", None), ("second", None)}
    assert "first broke" in failed[("first", None)] and "second broke" in failed[("second", None)]


def test_a_figure_without_scores_names_the_command_that_draws_it(monkeypatch):
    monkeypatch.delenv("FEATUREINTERP_PRESET", raising=False)
    preset = get_preset("embedded")
    line = not_drawn("fig3", preset, {"scores/fig3_tree": ["F0000|L03", "F0001|L06"], "scores/tree": []})
    assert line.startswith("fig3: not drawn: no scores in its grid yet")
    assert line.endswith("featureinterp run --preset embedded --layers L03,L06 --conditions fig3_tree")
    assert "studies no cell" in not_drawn("fig4", preset, {})
