"""SAE-family conformance: our loading + encode path equals sae-lens's own encoding.

Each SAE family of the paper presets (JumpReLU: Gemma Scope and, in sae-lens 6.54, Llama Scope;
TopK: OpenAI's GPT-2 32k SAEs; standard ReLU with dataset-norm scaling) is built with sae-lens's
classes, saved in sae-lens's format and read back through ``load_sae_from_disk`` /
``load_sae_pretrained`` -> ``LoadedSae.bind`` -> ``LoadedSae.encode``. Part 1 compares with the
SAE's own ``encode`` on the same input; part 2 runs the tiny GPT-2 / Gemma-2 / Llama models of
``featureinterp.presets.architectures`` both through ``featureinterp.activations.models.residuals`` and through
TransformerLens + sae-lens's ``HookedSAETransformer.run_with_cache_with_saes``.

Every comparison also asserts that it is not vacuous: some latents fire and some do not, and the
reference moves when the SAE setting under test is flipped.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile

import pytest
import torch

from featureinterp.activations.models import residuals
from featureinterp.activations.sae import LoadedSae, load_sae_from_disk, load_sae_pretrained
from featureinterp.errors import ConfigError
from featureinterp.presets.architectures import TinySpec, tiny_model
from featureinterp.presets.sae_families import random_sae, save_sae

D_IN, D_SAE, VOCAB, LAYER = 64, 128, 211, 1
HOOK = f"blocks.{LAYER}.hook_resid_post"
NOT_TL = {"model_class_name": "AutoModelForCausalLM"}  # raw hidden states: never centred
MEASURED: dict[str, float] = {}  # max |ours - sae-lens| per check, printed at the end (-s)


def check_equal(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    """``ours == ref`` within ``tol`` on a reference where some latents fire and some do not."""
    assert ours.shape == ref.shape
    fired = ref > 0
    assert 0.01 < fired.float().mean().item() < 0.9, "vacuous: (almost) nothing or everything fires"
    per_latent = fired.flatten(0, -2).any(0)
    assert per_latent.float().mean().item() > 0.2, "vacuous: few latents ever fire"
    assert not fired.flatten(0, -2).all(0).all(), "vacuous: every latent fires everywhere"
    diff = (ours - ref).abs().max().item()
    MEASURED[name] = max(diff, MEASURED.get(name, 0.0))
    assert diff <= tol, f"{name}: max |ours - sae-lens| = {diff:.3g} > {tol}"
    return diff


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-2


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for name, diff in sorted(MEASURED.items()):
        print(f"\n  max |ours - sae-lens| {name}: {diff:.2e}", end="")


@pytest.fixture(scope="module")
def llama():
    """A width-64 RMSNorm model for ``bind`` (never centred), shared by the family checks."""
    return tiny_model(TinySpec("llama", vocab_size=VOCAB, n_layers=2))


def inputs(scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Residual-like inputs [4, 16, d]: random directions plus a shared offset, RMS ~ ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    offset = torch.randn(D_IN, generator=gen) * 0.5
    return (torch.randn(4, 16, D_IN, generator=gen) + offset) * scale


# -- 1. families through the disk format ---------------------------------------------------------

FAMILY_CASES = [
    ("jumprelu", {"apply_b_dec_to_input": False}),  # Gemma Scope (and Llama Scope)
    ("jumprelu", {"apply_b_dec_to_input": True}),
    ("topk", {"apply_b_dec_to_input": True, "k": 16}),  # GPT-2 v5 32k, our trained SAEs
    ("topk", {"apply_b_dec_to_input": False, "k": 16}),
    ("topk", {"normalize_activations": "layer_norm", "k": 16}),  # run-time normalisation in encode
    ("standard", {"apply_b_dec_to_input": True}),
    ("standard", {"apply_b_dec_to_input": False}),
]


@pytest.mark.parametrize(
    ("family", "cfg"),
    FAMILY_CASES,
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v}" for k, v in v.items()),
)
def test_family_from_disk_equals_sae_lens(family, cfg, tmp_path, llama):
    sae = random_sae(family, D_IN, D_SAE, HOOK, seed=1, metadata=NOT_TL, **cfg)
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae_from_disk(tmp_path / "sae")
    assert type(loaded) is type(sae)
    assert loaded.cfg.to_dict() == sae.cfg.to_dict()
    bound = LoadedSae.bind(loaded, llama, LAYER)
    assert bound.center is False

    x = inputs(seed=2)
    ref = sae.encode(x)
    name = f"disk/{family}/" + ",".join(f"{k}={v}" for k, v in cfg.items())
    check_equal(name, bound.encode(x), ref, 1e-5)
    assert torch.equal(bound.encode(x, [3, 7, 100]), ref[..., [3, 7, 100]])

    # the setting is load-bearing: had the loader dropped it, the check above would fail
    flipped = copy.deepcopy(sae)
    if "normalize_activations" in cfg:
        flipped.cfg.normalize_activations = "none"
        flipped._setup_activation_normalization()
    else:
        flipped.cfg.apply_b_dec_to_input = not cfg["apply_b_dec_to_input"]
    assert differs(flipped.encode(x), ref)


def test_jumprelu_thresholds_survive_the_round_trip(tmp_path, llama):
    """Gemma Scope's per-latent thresholds: zeroing them (a loader that drops them) fires far more."""
    sae = random_sae("jumprelu", D_IN, D_SAE, HOOK, seed=3, metadata=NOT_TL, apply_b_dec_to_input=False)
    save_sae(sae, tmp_path / "sae")
    bound = LoadedSae.bind(load_sae_from_disk(tmp_path / "sae"), llama, LAYER)
    x = inputs(seed=4)
    assert torch.equal(bound.sae.threshold, sae.threshold)
    no_threshold = copy.deepcopy(sae)
    with torch.no_grad():
        no_threshold.threshold.zero_()
    assert (no_threshold.encode(x) > 0).sum() > 1.5 * (bound.encode(x) > 0).sum()


# -- dataset-norm scaling ("expected_average_only_in") -------------------------------------------
# sae-lens 6.54 never applies this normalisation at run time (its run-time hook is the identity):
# the trainer scales inputs by sqrt(d_in) / E|x| (ActivationScaler) and folds that factor into
# W_enc / W_dec / b_dec at the end of training, and from_pretrained folds the factor recorded in
# pretrained_saes.yaml (Llama Scope). An SAE whose cfg still says "expected_average_only_in" holds
# unfolded weights: a trainer checkpoint, whose factor is in activation_scaler.json beside it.

SCALE = 7.5  # the dataset-norm factor: raw residuals have RMS 1 / SCALE, the SAE saw RMS ~1


def _checkpoint(tmp_path, family="standard", with_scaler=True, input_scale=1.0, **cfg):
    from sae_lens.constants import ACTIVATION_SCALER_CFG_FILENAME
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = random_sae(
        family,
        D_IN,
        D_SAE,
        HOOK,
        seed=5,
        metadata=NOT_TL,
        input_scale=input_scale,
        normalize_activations="expected_average_only_in",
        **cfg,
    )
    path = save_sae(sae, tmp_path / "ckpt")
    if with_scaler:  # sae-lens's trainer writes this beside every checkpoint
        ActivationScaler(scaling_factor=SCALE).save(str(path / ACTIVATION_SCALER_CFG_FILENAME))
    return sae, path


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_dataset_norm_checkpoint_is_folded_like_sae_lens(apply_b_dec, tmp_path, llama):
    from sae_lens.training.activation_scaler import ActivationScaler

    sae, path = _checkpoint(tmp_path, apply_b_dec_to_input=apply_b_dec)
    bound = LoadedSae.bind(load_sae_from_disk(path), llama, LAYER)
    assert bound.sae.cfg.normalize_activations == "none"

    x = inputs(scale=1 / SCALE, seed=6)
    trained_on = sae.encode(ActivationScaler(scaling_factor=SCALE).scale(x))  # what the trainer computes
    folded = copy.deepcopy(sae)
    folded.fold_activation_norm_scaling_factor(SCALE)  # what the trainer saves at the end
    check_equal(
        f"disk/standard/expected_average_only_in,apply_b_dec={apply_b_dec}", bound.encode(x), trained_on, 1e-5
    )
    check_equal("sae-lens fold vs scaler (sanity)", folded.encode(x), trained_on, 1e-5)
    assert differs(sae.encode(x), trained_on)  # unscaled input: what a plain load_from_disk gives


def test_dataset_norm_checkpoint_without_its_factor_is_refused(tmp_path):
    from sae_lens import SAE

    sae, path = _checkpoint(tmp_path, with_scaler=False)
    # sae-lens loads it silently and would encode unscaled residuals:
    assert SAE.load_from_disk(path).cfg.normalize_activations == "expected_average_only_in"
    with pytest.raises(ConfigError, match="expected_average_only_in.*activation_scaler.json"):
        load_sae_from_disk(path)


def _fake_llama_scope_hub(
    monkeypatch, tmp_path, sae_id: str, folded_threshold: float, seed: int = 7, encoder_scale: float = 1.0
):
    """Serve a width-64 Llama Scope checkpoint in fnlp's layout to sae-lens's own llama_scope loader.

    sae-lens's converter multiplies fnlp's ``jump_relu_threshold`` by sqrt(d) / E|x|, so the file
    holds ``folded_threshold`` divided by that factor. The encoder expects inputs of RMS ~1 after
    dataset-norm scaling; ``encoder_scale`` calibrates it to another input scale.
    """
    from sae_lens.loading import pretrained_sae_loaders
    from sae_lens.loading.pretrained_saes_directory import (
        get_norm_scaling_factor,
        get_repo_id_and_folder_name,
    )
    from safetensors.torch import save_file

    release = "llama_scope_lxr_8x"
    factor = get_norm_scaling_factor(release, sae_id)
    _, folder = get_repo_id_and_folder_name(release, sae_id)
    layer = int(sae_id[1:].split("r")[0])
    root = tmp_path / "hub"
    (root / folder / "checkpoints").mkdir(parents=True)
    (root / folder / "hyperparams.json").write_text(
        json.dumps(
            {
                "d_model": D_IN,
                "d_sae": D_SAE,
                "hook_point_in": f"blocks.{layer}.hook_resid_post",
                "jump_relu_threshold": folded_threshold / factor,
                # the converter's threshold factor sqrt(d) / E|x| equals the yaml's folded factor
                "dataset_average_activation_norm": {"in": math.sqrt(D_IN) / factor},
            }
        )
    )
    gen = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(D_SAE, D_IN, generator=gen)
    save_file(
        {
            "encoder.weight": w_enc / w_enc.norm(dim=1, keepdim=True) * encoder_scale,
            "encoder.bias": torch.randn(D_SAE, generator=gen) * 0.1,
            "decoder.weight": torch.randn(D_IN, D_SAE, generator=gen) / math.sqrt(D_IN),
            "decoder.bias": torch.randn(D_IN, generator=gen) * 0.5,
        },
        root / folder / "checkpoints" / "final.safetensors",
    )

    def hf_hub_download(repo_id, filename, subfolder=None, force_download=False, **_):
        return str(root / (f"{subfolder}/{filename}" if subfolder else filename))

    monkeypatch.setattr(pretrained_sae_loaders, "hf_hub_download", hf_hub_download)
    return release, factor


def _llama_scope_reference(release: str, sae_id: str):
    """sae-lens's llama_scope converter output as an (unfolded) SAE: the pre-folding representation."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import llama_scope_sae_huggingface_loader
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    cfg, state, _ = llama_scope_sae_huggingface_loader(
        *get_repo_id_and_folder_name(release, sae_id), cfg_overrides={"dtype": "float32"}
    )
    sae = SAE.from_dict(cfg)
    sae.load_state_dict(state)
    return sae.eval()


def test_llama_scope_release_equals_sae_lens(monkeypatch, tmp_path, llama):
    """The preset's release path: sae-lens's llama_scope loader + yaml norm factor, offline."""
    from sae_lens.training.activation_scaler import ActivationScaler

    release, factor = _fake_llama_scope_hub(monkeypatch, tmp_path, "l1r_8x", folded_threshold=0.6)
    sae = load_sae_pretrained(release, "l1r_8x")
    assert type(sae).__name__ == "JumpReLUSAE"
    assert sae.cfg.apply_b_dec_to_input is False and sae.cfg.normalize_activations == "none"
    assert sae.threshold.unique().numel() == 1  # one threshold for every latent, unlike Gemma Scope
    bound = LoadedSae.bind(sae, llama, LAYER)

    unfolded = _llama_scope_reference(release, "l1r_8x")
    assert unfolded.cfg.normalize_activations == "expected_average_only_in"
    x = inputs(scale=1 / factor, seed=8)
    ref = unfolded.encode(ActivationScaler(scaling_factor=factor).scale(x))
    check_equal("release/llama_scope (jumprelu, scalar threshold, folded factor)", bound.encode(x), ref, 1e-5)
    assert differs(unfolded.encode(x), ref)  # the factor is load-bearing


# -- 2. architectures: our residuals vs TransformerLens + HookedSAETransformer --------------------


def _gemma2_tl_config(hf_config) -> dict:
    """TransformerLens' google/gemma-2-* entries with this config's sizes.

    TransformerLens 3.9 builds Gemma-2 configs only for the named checkpoints (its HF-config route
    raises "Gemma2ForCausalLM is not currently supported"), so the tiny model gets the entry
    by hand; every key is the one of TL's gemma-2 entries, with the value read from ``hf_config``.
    """
    return {
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.head_dim,
        "n_heads": hf_config.num_attention_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings,
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_activation,
        "initializer_range": hf_config.initializer_range,
        "normalization_type": "RMS",
        "rotary_base": hf_config.rope_parameters["rope_theta"],
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": hf_config.query_pre_attn_scalar**0.5,  # gemma-2-27b: 12.0 = sqrt(144)
        "n_key_value_heads": hf_config.num_key_value_heads,
        "window_size": hf_config.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in hf_config.layer_types],
        "attn_scores_soft_cap": hf_config.attn_logit_softcapping,
        "output_logits_soft_cap": hf_config.final_logit_softcapping,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM",
    }


def hooked(hf, monkeypatch):
    """TransformerLens' processed copy of ``hf``: ``HookedSAETransformer.from_pretrained``'s steps.

    from_pretrained itself only takes TL's official model names; its own building blocks
    (config from a local folder, state-dict conversion, weight processing with from_pretrained's
    defaults) accept a local folder and the in-memory model.
    """
    import transformer_lens.loading_from_pretrained as loading
    from sae_lens import HookedSAETransformer
    from transformer_lens.utilities import softcap_enabled

    config = copy.deepcopy(hf.config)
    config.architectures = [type(hf).__name__]  # from_config leaves it unset; TL dispatches on it
    if config.model_type == "gpt2":
        config.n_ctx = config.n_positions  # TL reads GPT2Config.n_ctx, which transformers 5 dropped
    # TL picks the architecture from the *path* when it contains "llama" / "gemma" (and then has
    # no HF config to read), so the folder must not be named after the test
    with tempfile.TemporaryDirectory(prefix="tl-config-") as folder:
        if config.model_type == "gemma2":
            real = loading.convert_hf_model_config
            monkeypatch.setattr(
                loading,
                "convert_hf_model_config",
                lambda name, **kw: _gemma2_tl_config(config) if name == folder else real(name, **kw),
            )
        config.save_pretrained(folder)
        cfg = loading.get_pretrained_model_config(folder, fold_ln=True, device="cpu", dtype=torch.float32)
        state = loading.get_pretrained_state_dict(folder, cfg, hf, dtype=torch.float32)
    cfg.tokenizer_name = None  # ids go in directly; there is no tokenizer to load offline
    tl = HookedSAETransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(
        state,
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=not softcap_enabled(cfg.output_logits_soft_cap),
        fold_value_biases=True,
    )
    return tl.eval()


def ids(seed: int = 9, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, seq), generator=torch.Generator().manual_seed(seed))


def resid_rms(hf, tokens, center=False) -> float:
    r = residuals(hf, tokens, [LAYER])[LAYER]
    r = r - r.mean(-1, keepdim=True) if center else r
    return r.pow(2).mean().sqrt().item()


def compare_with_tl(name, hf, tl, sae, tokens, center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _, cache = tl.run_with_cache_with_saes(tokens, saes=[sae])
    ref = cache[f"{sae.cfg.metadata.hook_name}.hook_sae_acts_post"]
    bound = LoadedSae.bind(sae, hf, LAYER)
    assert bound.center is center
    ours = bound.encode(residuals(hf, tokens, [LAYER])[LAYER])
    check_equal(name, ours, ref, 1e-4)
    return ours, ref


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_gpt2_topk_equals_hooked_sae_transformer(apply_b_dec, tmp_path, monkeypatch):
    """GPT-2 + TopK (OpenAI's 32k SAEs): TL centres the residual stream of a LayerNorm model."""
    hf = tiny_model(TinySpec("gpt2", vocab_size=VOCAB, n_layers=4, max_positions=64))
    tl = hooked(hf, monkeypatch)
    tokens = ids()
    sae = random_sae(
        "topk",
        D_IN,
        D_SAE,
        HOOK,
        seed=10,
        k=16,
        apply_b_dec_to_input=apply_b_dec,
        input_scale=resid_rms(hf, tokens, center=True),
        metadata={"model_class_name": "HookedTransformer"},
    )
    save_sae(sae, tmp_path / "sae")
    ours, ref = compare_with_tl(
        f"tl/gpt2+topk,apply_b_dec={apply_b_dec}",
        hf,
        tl,
        load_sae_from_disk(tmp_path / "sae"),
        tokens,
        center=True,
    )
    assert differs(sae.encode(residuals(hf, tokens, [LAYER])[LAYER]), ref)  # uncentred: other latents


def test_gemma2_jumprelu_equals_hooked_sae_transformer(tmp_path, monkeypatch):
    """Gemma-2 + JumpReLU (Gemma Scope), with sliding layers narrower than the sequence,
    attention soft-capping and query_pre_attn_scalar != head_dim."""
    spec = TinySpec("gemma2", vocab_size=VOCAB, n_layers=4, sliding_window=4, max_positions=64)
    hf = tiny_model(spec)
    tl = hooked(hf, monkeypatch)
    tokens = ids(seq=16)
    sae = random_sae(
        "jumprelu", D_IN, D_SAE, HOOK, seed=11, apply_b_dec_to_input=False, input_scale=resid_rms(hf, tokens)
    )
    save_sae(sae, tmp_path / "sae")
    compare_with_tl("tl/gemma2+jumprelu", hf, tl, load_sae_from_disk(tmp_path / "sae"), tokens, center=False)
    # the window is load-bearing: a full-attention copy gives other residuals at later positions
    wide = tiny_model(TinySpec("gemma2", vocab_size=VOCAB, n_layers=4, sliding_window=64, max_positions=64))
    assert differs(residuals(wide, tokens, [LAYER])[LAYER], residuals(hf, tokens, [LAYER])[LAYER])


@pytest.fixture(scope="module")
def llama_pair():
    """Llama-3.1's quirks (GQA, llama3 RoPE scaling) in a tiny model and its TransformerLens copy."""
    hf = tiny_model(TinySpec("llama", vocab_size=VOCAB, n_layers=4, max_positions=64))
    with pytest.MonkeyPatch.context() as monkeypatch:
        tl = hooked(hf, monkeypatch)
    assert (
        tl.cfg.use_NTK_by_parts_rope and tl.cfg.NTK_by_parts_factor == 8.0 and tl.cfg.n_key_value_heads == 2
    )
    return hf, tl


def test_llama_scope_on_llama_equals_hooked_sae_transformer(llama_pair, tmp_path, monkeypatch):
    """The Llama Scope release path (JumpReLU, folded dataset norm) on Llama residuals."""
    from sae_lens.loading.pretrained_saes_directory import get_norm_scaling_factor

    hf, tl = llama_pair
    tokens = ids()
    factor = get_norm_scaling_factor("llama_scope_lxr_8x", "l1r_8x")
    release, _ = _fake_llama_scope_hub(
        monkeypatch,
        tmp_path,
        "l1r_8x",
        folded_threshold=0.8,
        seed=12,
        encoder_scale=1 / (resid_rms(hf, tokens) * factor),  # fire on this model's residual scale
    )
    compare_with_tl(
        "tl/llama+llama_scope", hf, tl, load_sae_pretrained(release, "l1r_8x"), tokens, center=False
    )


def test_dataset_norm_checkpoint_on_llama_equals_sae_lens_trainer(llama_pair, tmp_path):
    """A standard SAE trained with dataset-norm scaling, read from its trainer checkpoint.

    sae-lens's HookedSAETransformer never scales inputs, so the reference is what its trainer
    computes from TransformerLens' residuals: ``encode(ActivationScaler.scale(resid))``.
    """
    from sae_lens.training.activation_scaler import ActivationScaler

    hf, tl = llama_pair
    tokens = ids(seed=13)
    sae, path = _checkpoint(tmp_path, input_scale=resid_rms(hf, tokens) * SCALE)
    _, cache = tl.run_with_cache(tokens, names_filter=HOOK)
    ref = sae.encode(ActivationScaler(scaling_factor=SCALE).scale(cache[HOOK]))
    bound = LoadedSae.bind(load_sae_from_disk(path), hf, LAYER)
    assert bound.center is False
    check_equal(
        "tl/llama+standard(expected_average_only_in checkpoint)",
        bound.encode(residuals(hf, tokens, [LAYER])[LAYER]),
        ref,
        1e-4,
    )
