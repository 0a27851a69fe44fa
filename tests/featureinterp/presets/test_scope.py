"""PresetScope (featureinterp/presets/scope.py): the one answer to "which partitions does each
condition and each per-feature asset run on", for a paper preset, the embedded default and a
preset without paper grids."""

import dataclasses

from featureinterp.figures.grids import condition_scope
from featureinterp.presets import get_preset
from featureinterp.presets.scope import PER_CONDITION_ASSETS, PresetScope


def test_a_paper_preset_runs_each_condition_on_its_figures_partitions():
    preset = get_preset("gemma-2-9b")
    scope = PresetScope.of(preset)
    grids = condition_scope(preset)
    assert scope.scoped and not scope.automate  # fig3's 21 layers are not every partition of Fig. 4's
    assert scope.conditions == preset.explain.conditions
    for cond in scope.conditions:
        assert scope.by_condition[cond] == grids.get(cond, scope.every) <= scope.every
    assets = scope.assets()
    for cond in scope.conditions:
        assert all(assets[f"{kind}/{cond}"] == scope.by_condition[cond] for kind in PER_CONDITION_ASSETS)
    assert assets["baselines"] == frozenset().union(*scope.by_condition.values())
    assert scope.holistic_conditions and all("holistic" in c for c in scope.holistic_conditions)
    assert assets["holistic_activations"] == scope.holistic == frozenset().union(
        *(scope.by_condition[c] for c in scope.holistic_conditions)
    )
    assert scope.holistic < scope.every  # holistic values only where Fig. 4's holistic cells run
    assert set(scope.secondary) <= set(scope.conditions)


def test_whole_grid_runs_every_condition_everywhere():
    scope = PresetScope.of(get_preset("gemma-2-9b"), whole_grid=True)
    # nothing scoped but the generated source, which always runs on a slice (the first 5 features
    # of every layer, whole grid or not)
    assert not scope.scoped and scope.assets() == {"generated": scope.generated}
    assert {k.split("|")[0] for k in scope.generated} == {f"F000{i}" for i in range(5)}
    assert {k.split("|")[1] for k in scope.generated} == set(get_preset("gemma-2-9b").layer_keys)
    assert all(keys == scope.every for keys in scope.by_condition.values())


def test_the_embedded_default_keeps_syn_to_two_conditions_and_still_automates():
    preset = get_preset("embedded")
    scope = PresetScope.of(preset)
    syn = {k for k in scope.every if k.endswith("|SYN")}
    assert syn and scope.own == scope.every - syn
    assert scope.automate  # every condition covers every real partition
    assert scope.by_condition["one_shot"] == scope.every and scope.by_condition["tree"] == scope.every
    others = [c for c in scope.conditions if c not in ("one_shot", "tree")]
    assert others and all(scope.by_condition[c] == scope.own for c in others)
    assert scope.assets()["baselines"] == scope.every  # SYN keeps its baselines (calibration figure)


def test_a_preset_without_paper_grids_is_not_scoped():
    scope = PresetScope.of(get_preset("embedded-large"))
    assert not scope.scoped and scope.assets() == {} and scope.automate


def test_the_generated_slice_lies_where_its_condition_runs():
    """gpt2-small's one-shot explanations exist on Figure 4's grid only: its generated source takes
    the first 5 features of each of those layers, never a partition without an explanation."""
    preset = get_preset("gpt2-small")
    scope = PresetScope.of(preset)
    assert scope.generated and scope.generated <= scope.by_condition["one_shot"]
    per_layer = {}
    for key in scope.generated:
        per_layer.setdefault(key.split("|")[1], []).append(key)
    assert all(len(keys) == 5 for keys in per_layer.values())
    off = PresetScope.of(preset.replace(generated=dataclasses.replace(preset.generated, condition=None)))
    assert off.generated == frozenset() and "generated" not in off.assets()
