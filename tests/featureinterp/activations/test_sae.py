import json

import pytest
import torch

from featureinterp.activations.models import residuals
from featureinterp.activations.sae import LoadedSae, check_features, load_sae_from_disk, load_sae_pretrained
from featureinterp.errors import ConfigError, CorruptFileError, UnavailableError
from tests.helpers import random_sae, tiny_gpt2, tiny_llama


def _hooked_gpt2(hf, center: bool):
    """TransformerLens' processed copy of the tiny GPT-2, as sae-lens users load models."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    cfg = HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=128,
        d_vocab=101,
        n_ctx=64,
        act_fn="gelu_new",
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
        eps=1e-5,
    )
    tl = HookedSAETransformer(cfg)
    tl.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=True,
        center_writing_weights=center,
        center_unembed=True,
        fold_value_biases=True,
    )
    return tl


@pytest.mark.parametrize("center", [True, False])
def test_equals_sae_lens_run_with_cache_with_saes(center):
    hf = tiny_gpt2()
    meta = {"model_class_name": "HookedTransformer"}
    if not center:
        meta["model_from_pretrained_kwargs"] = {"center_writing_weights": False}
    sae = random_sae(32, layer=1, metadata=meta)
    ids = torch.randint(0, 101, (4, 12), generator=torch.Generator().manual_seed(3))
    _, cache = _hooked_gpt2(hf, center).run_with_cache_with_saes(ids, saes=[sae])
    ref = cache["blocks.1.hook_resid_post.hook_sae_acts_post"]
    ours = LoadedSae.bind(sae, hf, 1)
    assert ours.center is center
    resid = residuals(hf, ids, [1])[1]
    assert (ours.encode(resid) - ref).abs().max().item() <= 1e-5
    if center:  # the transform matters: raw hidden states give other latents
        assert (sae.encode(resid) - ref).abs().max().item() > 1e-3


def test_rms_models_are_never_centred():
    sae = random_sae(32, layer=1, metadata={"model_class_name": "HookedTransformer"})
    assert LoadedSae.bind(sae, tiny_llama(), 1).center is False


def test_bind_rejects_mismatches():
    with pytest.raises(
        ConfigError, match="reads hook 'blocks.1.hook_resid_post' but was requested for layer 2"
    ):
        LoadedSae.bind(random_sae(32, layer=1), tiny_llama(), 2)
    with pytest.raises(ConfigError, match="d_in=16 but the model's width is 32"):
        LoadedSae.bind(random_sae(16, layer=1), tiny_llama(), 1)


def test_feature_index_beyond_width():
    with pytest.raises(ConfigError, match=r"feature index 64 is outside the SAE of layer 3 \(width 64"):
        check_features([0, 64], 64, 3)


def test_missing_and_corrupt_sae_files(tmp_path):
    with pytest.raises(CorruptFileError, match="lacks cfg.json, sae_weights.safetensors"):
        load_sae_from_disk(tmp_path)
    random_sae(32).save_model(tmp_path)
    assert load_sae_from_disk(tmp_path).cfg.d_sae == 64
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CorruptFileError, match="unreadable"):
        load_sae_from_disk(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "topk"}))
    with pytest.raises(CorruptFileError):
        load_sae_from_disk(tmp_path)


def test_released_sae_offline_fails_with_a_clear_message():
    with pytest.raises(UnavailableError, match="gemma-scope-9b-pt-res-canonical.*hub"):
        load_sae_pretrained("gemma-scope-9b-pt-res-canonical", "layer_20/width_16k/canonical")


def test_layer_sae_refs_from_the_users_folders_and_a_release_without_a_name(tmp_path):
    """The ``sae`` stage's three sources, decided in the library: a user's folders are loaded to
    check them and recorded by path; a release source without a release name fails saying so;
    no layers, no work."""
    import dataclasses

    import numpy as np

    from featureinterp.activations.sae import SaeRef, layer_sae_refs
    from featureinterp.presets import get_preset

    for layer in (1, 2):
        random_sae(32, layer=layer).save_model(tmp_path / f"L{layer:02d}")
    base = get_preset("embedded-tiny")
    disk = base.replace(sae=dataclasses.replace(base.sae, source="disk", path_format=str(tmp_path / "L{layer:02d}")))
    tokens = np.zeros((1, 4), dtype=np.int32)
    refs = layer_sae_refs(disk, None, tokens, [1, 2], tmp_path / "unused", str)
    assert refs == {x: SaeRef(d_sae=64, path=str(tmp_path / f"L{x:02d}")) for x in (1, 2)}
    assert layer_sae_refs(disk, None, tokens, [], tmp_path, str) == {}
    released = base.replace(sae=dataclasses.replace(base.sae, source="sae_lens", release=None))
    with pytest.raises(ConfigError, match="release is not set"):
        layer_sae_refs(released, None, tokens, [1], tmp_path, str)
    with pytest.raises(ValueError, match="needs the subject model"):
        layer_sae_refs(base, None, tokens, [1], tmp_path, str)  # embedded-tiny trains its SAEs
