from pathlib import Path

import pytest
import torch

from featureinterp.activations.models import (
    decoder_layers,
    layer_from_hook_name,
    load_subject_model,
    native_bf16,
    residuals,
    resolve_dtype,
)
from featureinterp.config import ModelSpec
from featureinterp.errors import ConfigError, UnavailableError
from tests.helpers import tiny_gpt2, tiny_llama


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_stop_at_layer_equals_full_run(build):
    model = build()
    ids = torch.randint(0, 101, (3, 17), generator=torch.Generator().manual_seed(1))
    full = model(ids, output_hidden_states=True).hidden_states
    got = residuals(model, ids, [0, 1])
    for layer in (0, 1):
        assert torch.allclose(got[layer], full[layer + 1], atol=1e-5, rtol=0)
    # the full run with the same hooks (no early stop) agrees too
    assert torch.allclose(residuals(model, ids, [1], stop=False)[1], got[1], atol=1e-5, rtol=0)


def test_stop_at_layer_skips_later_layers():
    model = tiny_llama(n_layers=4)
    seen = []
    handles = [
        blk.register_forward_hook(lambda m, a, o, i=i: seen.append(i))
        for i, blk in enumerate(decoder_layers(model))
    ]
    residuals(model, torch.zeros(1, 5, dtype=torch.long), [1])
    for h in handles:
        h.remove()
    assert seen == [0, 1]


def test_embedded_model_stop_at_layer_equals_full_run(embedded_model, embedded_rows):
    model = embedded_model[0]
    ids = torch.as_tensor(embedded_rows[:4], dtype=torch.long)
    full = model(ids, output_hidden_states=True).hidden_states
    got = residuals(model, ids, [5, 10])
    for layer in (5, 10):
        assert (got[layer] - full[layer + 1]).abs().max().item() <= 1e-5 * max(
            1.0, full[layer + 1].abs().max().item()
        )


def test_layer_outside_model_is_named():
    with pytest.raises(ConfigError, match=r"layer 9 is outside the model .* 4 layers: 0\.\.3"):
        residuals(tiny_llama(n_layers=4), torch.zeros(1, 3, dtype=torch.long), [1, 9])


def test_model_without_hook_point_is_named():
    with pytest.raises(ConfigError, match="Linear has no decoder-layer list"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_unsupported_hook_name():
    assert layer_from_hook_name("blocks.12.hook_resid_post") == 12
    with pytest.raises(ConfigError, match="'blocks.3.hook_mlp_out'"):
        layer_from_hook_name("blocks.3.hook_mlp_out")


def test_hub_model_offline_fails_with_a_clear_message(tmp_path):
    with pytest.raises(UnavailableError, match="google/gemma-2-9b.*needs the Hugging Face hub.*--standin"):
        load_subject_model(ModelSpec(name="google/gemma-2-9b"), tmp_path)


def test_embedded_model_reloads_from_its_converted_safetensors_copy(model_cache):
    from featureinterp.presets import get_preset

    load_subject_model(get_preset("embedded").model, model_cache)  # ensures the converted copy
    model, _ = load_subject_model(get_preset("embedded").model, model_cache)
    converted = model_cache / "SmolLM2-135M-Instruct"
    assert (converted / "model.safetensors").exists() and Path(model.name_or_path) == converted
    assert len(decoder_layers(model)) == 30 and model.config.hidden_size == 576


def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it_natively():
    assert resolve_dtype("float32") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
    with pytest.raises(ConfigError, match="'bf16'.*float32, bfloat16, float16 or auto"):
        resolve_dtype("bf16")


def test_the_embedded_default_loads_in_its_resolved_dtype(model_cache):
    """README command (1) runs SmolLM2 in ``auto``: the loaded weights are in the resolved dtype
    (bfloat16 on this CI's CPUs when oneDNN reports native support)."""
    from featureinterp.presets import get_preset

    spec = get_preset("embedded").model
    assert spec.dtype == "auto"
    model, _ = load_subject_model(spec, model_cache, device="cpu")
    assert {p.dtype for p in model.parameters()} == {resolve_dtype("auto", "cpu")}
