import pytest

from featureinterp.config import feature_key, layer_key, parse_feature_key, parse_layer_key
from featureinterp.errors import ConfigError
from featureinterp.presets import get_preset


def test_unknown_preset_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'gpt5'.*embedded.*gemma-2-9b"):
        get_preset("gpt5")


def test_preset_env_var_selects(monkeypatch):
    monkeypatch.setenv("FEATUREINTERP_PRESET", "gpt2-small")
    assert get_preset().name == "gpt2-small"
    monkeypatch.setenv("FEATUREINTERP_PRESET", "nope")
    with pytest.raises(ConfigError, match="FEATUREINTERP_PRESET"):
        get_preset()


def test_default_is_embedded(monkeypatch):
    monkeypatch.delenv("FEATUREINTERP_PRESET", raising=False)
    assert get_preset().name == "embedded"


def test_keys_round_trip_and_sort_numerically():
    keys = [layer_key(i) for i in (2, 10, 30)]
    assert sorted(keys) == keys and [parse_layer_key(k) for k in keys] == [2, 10, 30]
    assert parse_feature_key(feature_key(7)) == 7 and feature_key(7) == "F0007"
    with pytest.raises(ConfigError, match="'X3'"):
        parse_layer_key("X3")
    with pytest.raises(ConfigError, match="'F'"):
        parse_feature_key("F")


def test_bad_preset_values_are_rejected():
    base = get_preset("embedded")
    with pytest.raises(ConfigError, match="layers must not be empty"):
        base.replace(layers=())
    with pytest.raises(ConfigError, match="negative layer"):
        base.replace(layers=(-1,))


def test_faithful_presets_are_named_and_stored_apart():
    from featureinterp.presets import get_preset

    plain, faithful = get_preset("embedded"), get_preset("embedded-faithful")
    assert faithful.faithful and not plain.faithful and faithful.name == "embedded-faithful"
    # nothing else changes but the definition options, which a faithful preset sets to the paper's
    # (its parser's leniency is the one the default leaves out)
    from featureinterp.config import PAPER_EXPLAIN_OPTIONS

    assert {k: getattr(plain.explain, k) for k in PAPER_EXPLAIN_OPTIONS} != PAPER_EXPLAIN_OPTIONS
    unfaithful = faithful.replace(name="embedded", faithful=False)
    assert unfaithful.replace(explain=plain.explain) == plain
    assert get_preset("gemma-2-9b-standin-faithful").faithful


def test_an_api_route_serves_a_conditions_own_model_at_its_price():
    from featureinterp.config import ApiSpec
    from featureinterp.figures.grids import paper_conditions

    api = get_preset("gemma-2-9b").explain.explainer
    assert get_preset("gemma-2-9b").explain.conditions == paper_conditions()
    assert api.served() == api and api.served(api.model) == api
    gemini = api.served("google/gemini-flash-1.5-8b")
    assert (gemini.model, gemini.base_url) == ("google/gemini-flash-1.5-8b", api.base_url)
    assert (gemini.price_in_per_mtok, gemini.price_out_per_mtok) == (0.0375, 0.15)
    assert api.served("other/model").price_in_per_mtok == 0.0  # unknown price: cost not counted
    standin = ApiSpec(model="m", route_prefix="standin/")
    assert standin.served().model == "standin/m" and standin.served("x").model == "standin/x"


def test_reply_budgets_reach_every_condition_s_explainer():
    import dataclasses

    from featureinterp.explain.conditions import CONDITIONS, get_condition

    settings = dataclasses.replace(get_preset("embedded").explain, max_tokens=123, child_max_tokens=321)
    for name in CONDITIONS:
        config = get_condition(name).explainer_config(settings)
        assert (config.max_tokens, config.child_max_tokens) == (123, 321), name
    assert get_preset("gpt2-small").explain.max_tokens == 600  # the paper's one-shot budget


@pytest.mark.parametrize(
    "name", ["../../escaped", "..", ".hidden", "a/b", "a\\b", "", "x" * 101, "two words", "a..b", "/abs"]
)
def test_a_preset_name_that_is_not_a_plain_identifier_is_refused(name):
    """The name is joined into the paths of the instance, storage and exports: ``../..`` would
    write them outside FEATUREINTERP_HOME."""
    with pytest.raises(ConfigError) as err:
        get_preset("embedded-tiny").replace(name=name)
    text = str(err.value)
    assert f"preset name {name!r}" in text and "letters, digits" in text and "\n" not in text, text


def test_every_built_in_name_and_its_variants_are_plain_identifiers():
    from featureinterp.presets.builtin import PRESETS

    for name in [*PRESETS, "gemma-2-9b-standin", "embedded-faithful", "my_model.v2"]:
        assert get_preset("embedded-tiny").replace(name=name).name == name
