"""Fingerprints: a changed preset field reaches exactly the stages that read it."""

import dataclasses

from featureinterp.presets import get_preset
from featureinterp.provenance import STAGES, asset_fingerprint, fingerprints


def _changed(before, after) -> set[str]:
    a, b = fingerprints(before), fingerprints(after)
    return {s for s in STAGES if a[s] != b[s]}


def test_a_changed_field_reaches_exactly_the_stages_downstream_of_it():
    preset = get_preset("embedded-tiny")
    every = set(STAGES)
    assert _changed(preset, preset) == set()
    assert _changed(preset, preset.replace(n_rows=1000)) == every
    assert _changed(preset, preset.replace(seed=7)) == every
    assert _changed(preset, preset.replace(embedding_model="other")) == every - {"corpus_tokens", "sae", "sae_activations"}
    model = dataclasses.replace(preset.model, dtype="bfloat16")
    assert _changed(preset, preset.replace(model=model)) == every - {"corpus_tokens", "corpus_embeddings"}
    explain = dataclasses.replace(preset.explain, temperature=0.3)
    downstream = {"explanations", "scores", "generated", "summaries"}
    assert _changed(preset, preset.replace(explain=explain)) == downstream
    scores = dataclasses.replace(preset.scores, fp_denominator="quiet")
    assert _changed(preset, preset.replace(scores=scores)) == downstream
    # the test intervals never reach the explanations (an upgrade that adds them keeps every one)
    intervals = dataclasses.replace(preset.scores, interval_resamples=200)
    assert _changed(preset, preset.replace(scores=intervals)) == {"scores", "generated", "summaries"}
    generated = dataclasses.replace(preset.generated, n_fire=preset.generated.n_fire + 1)
    assert _changed(preset, preset.replace(generated=generated)) == {"generated", "summaries"}
    holistic = dataclasses.replace(preset.explain, holistic_scale="corpus")
    assert _changed(preset, preset.replace(explain=holistic)) == {"holistic_activations", "summaries"}


def test_what_does_not_change_a_value_changes_no_fingerprint():
    """Batching, the grid of partitions and conditions, the name and an API route's transport."""
    preset = get_preset("gpt2-small")
    explain = dataclasses.replace(
        preset.explain,
        simulator_batch=3,
        scorer_batch=2,
        features_at_once=9,
        conditions=("one_shot",),
        explainer=dataclasses.replace(preset.explain.explainer, base_url="http://localhost:1/v1", timeout_s=5.0),
    )
    other = preset.replace(name="renamed", layers=(1,), features=(4, 5), batch_size=3, explain=explain)
    assert fingerprints(other) == fingerprints(preset)


def test_a_holistic_scale_reaches_only_the_conditions_that_prompt_with_holistic_values():
    preset = get_preset("embedded-tiny")
    other = preset.replace(explain=dataclasses.replace(preset.explain, holistic_scale="corpus"))
    for path, moves in (
        (["explanations", "one_shot_structured_holistic"], True),
        (["scores", "one_shot_structured_holistic"], True),
        (["explanations", "one_shot"], False),
        (["baselines"], False),
        (["records"], False),
    ):
        assert (asset_fingerprint(preset, path) != asset_fingerprint(other, path)) is moves, path
