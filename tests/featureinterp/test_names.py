"""featureinterp.names: the names defined once agree with what the code that uses them produces.

The synthetic layer's index and key match the partition keys featureinterp.config makes, the
source names match the sources featureinterp.records.sources really selects and tabulates (in the
documented order), and the default rule cap is the one the conditions and explainer run with.
"""

from __future__ import annotations

import inspect

import numpy as np

from featureinterp import config
from featureinterp.explain import conditions as experiments
from featureinterp.explain.config import ExplainerConfig
from featureinterp.figures import paper as figures
from featureinterp.names import (
    COMPLEMENTARY_SOURCES,
    DEFAULT_RULE_CAP,
    NEGATIVE_SOURCES,
    POSITIVE_SOURCE,
    PRIMARY_SOURCE,
    SYNTHETIC_KEY,
    SYNTHETIC_LAYER,
)
from featureinterp.presets import get_preset
from featureinterp.records.sources import RecordParams, assign_splits, feature_generator, select_rows
from featureinterp.simulate import evaluate, synthetic


def test_synthetic_key_is_the_partition_key_of_the_synthetic_layer() -> None:
    assert SYNTHETIC_KEY == config.layer_key(SYNTHETIC_LAYER)
    assert config.parse_layer_key(SYNTHETIC_KEY) == SYNTHETIC_LAYER
    assert not hasattr(synthetic, "SYNTHETIC_LAYER")  # one name per meaning: names.SYNTHETIC_KEY
    preset = get_preset("embedded")
    assert preset.explain.synthetic and preset.layer_keys[-1] == SYNTHETIC_KEY
    assert SYNTHETIC_LAYER not in preset.layers  # never a real layer (layers are >= 0)


def test_source_names_are_the_sources_records_select_and_tabulate() -> None:
    """A real selection on a small random corpus: its sources are exactly COMPLEMENTARY_SOURCES, in
    order, the split table adds POSITIVE_SOURCE, and the NEGATIVE_SOURCES rows never fire."""
    rng = np.random.default_rng(0)
    n = 400
    row_max = np.where(rng.random(n) < 0.3, rng.gamma(2.0, 1.0, n), 0.0).astype(np.float32)
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = RecordParams(top_sample_n=6, top_pool=20, complementary_n=6, special_n=40, per_split=2)
    sel = select_rows(row_max, vectors, None, params, feature_generator(0, "names", 1, 2))

    assert tuple(sel.sources) == COMPLEMENTARY_SOURCES
    table = assign_splits(sel, params)
    assert list(dict.fromkeys(source for _, source, _, _ in table)) == [
        POSITIVE_SOURCE,
        *COMPLEMENTARY_SOURCES,
    ]
    for source in NEGATIVE_SOURCES:
        assert len(sel.sources[source]) == 6 and (row_max[sel.sources[source]] == 0).all(), source


def test_negative_and_primary_sources_are_complementary_sources() -> None:
    assert NEGATIVE_SOURCES == tuple(s for s in COMPLEMENTARY_SOURCES if "_negative" in s)
    assert PRIMARY_SOURCE == "similar_negative" and PRIMARY_SOURCE in NEGATIVE_SOURCES
    assert POSITIVE_SOURCE not in COMPLEMENTARY_SOURCES
    assert len(set(COMPLEMENTARY_SOURCES)) == len(COMPLEMENTARY_SOURCES) == 6
    # the modules that re-export the names hand out these very objects
    assert evaluate.PRIMARY_SOURCE is PRIMARY_SOURCE
    assert evaluate.COMPLEMENTARY_SOURCES is COMPLEMENTARY_SOURCES
    assert figures.SOURCES is COMPLEMENTARY_SOURCES
    assert inspect.signature(figures.fig4).parameters["source"].default == PRIMARY_SOURCE


def test_default_rule_cap_is_the_cap_conditions_and_explainers_run_with() -> None:
    assert DEFAULT_RULE_CAP == 5  # the paper's cap
    assert ExplainerConfig().rule_cap == DEFAULT_RULE_CAP
    assert experiments.get_condition("one_shot").cap_run == DEFAULT_RULE_CAP
    caps = sorted(c.rule_cap for c in experiments.CONDITIONS.values() if c.name.startswith("one_shot_cap"))
    assert caps == list(range(1, DEFAULT_RULE_CAP))  # Figure 5: caps 1..4, cap 5 is "one_shot"
