"""SAEs in sae-lens format: loading, validation, and reading the residual stream they were trained on.

Released sae-lens SAEs were trained on TransformerLens hook points. TransformerLens loads a model
with ``center_writing_weights=True`` by default; for LayerNorm models (GPT-2) that makes every
write to the residual stream mean-free, so its ``hook_resid_post`` equals the Hugging Face hidden
state minus its per-token mean (LayerNorm subtracts the mean anyway, so nothing downstream
changes). ``LoadedSae.encode`` applies that transform whenever the SAE's metadata says the model
was processed that way; RMSNorm models (Gemma, Llama, SmolLM2) are never centred by
TransformerLens. ``tests/featureinterp/activations/test_sae.py`` pins equality with sae-lens's ``run_with_cache_with_saes``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from featureinterp.activations.models import decoder_layers, layer_from_hook_name
from featureinterp.errors import ConfigError, CorruptFileError, UnavailableError

if TYPE_CHECKING:
    import numpy as np
    from sae_lens import SAE

    from featureinterp.config import Preset

__all__ = [
    "LoadedSae",
    "SaeRef",
    "check_features",
    "disk_sae_width",
    "load_layer_sae",
    "load_sae_from_disk",
    "load_sae_pretrained",
    "layer_sae_refs",
    "own_folder_fix",
    "released_width",
    "uses_layernorm",
]

logger = logging.getLogger(__name__)

_TL_CLASSES = (None, "HookedTransformer", "HookedSAETransformer")
_TRAINING_NORMALIZATIONS = ("expected_average_only_in", "covariance_whitening")
"""Input normalisations sae-lens applies only by folding statistics into the weights, never in ``encode``."""


def uses_layernorm(model: torch.nn.Module) -> bool:
    """True when the blocks normalise with LayerNorm (mean-subtracting), as GPT-2 does."""
    return any(isinstance(m, torch.nn.LayerNorm) for m in decoder_layers(model)[0].modules())


@dataclass
class LoadedSae:
    """An sae-lens SAE bound to one layer of one subject model."""

    sae: SAE
    layer: int
    center: bool
    """Subtract the per-token residual mean before encoding (TransformerLens centred writing weights)."""

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @torch.no_grad()
    def encode(self, resid: torch.Tensor, features: Sequence[int] | None = None) -> torch.Tensor:
        """Latent activations (``hook_sae_acts_post``) for a residual tensor [..., d_model] -> [..., F]."""
        x = resid - resid.mean(-1, keepdim=True) if self.center else resid
        acts = self.sae.encode(x.to(self.sae.W_enc.dtype))
        return acts if features is None else acts[..., list(features)]

    @classmethod
    def bind(cls, sae: SAE, model: torch.nn.Module, layer: int) -> LoadedSae:
        meta = sae.cfg.metadata
        hook = meta.get("hook_name")
        if hook is not None and layer_from_hook_name(hook) != layer:
            raise ConfigError(f"SAE reads hook {hook!r} but was requested for layer {layer}")
        d_model = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None)
        if d_model is not None and sae.cfg.d_in != d_model:
            raise ConfigError(
                f"SAE for layer {layer} expects d_in={sae.cfg.d_in} but the model's width is {d_model}"
            )
        kwargs = meta.get("model_from_pretrained_kwargs") or {}
        center = (
            meta.get("model_class_name") in _TL_CLASSES
            and bool(kwargs.get("center_writing_weights", True))
            and uses_layernorm(model)
        )
        return cls(sae=sae.eval(), layer=layer, center=center)


def check_features(features: Sequence[int], d_sae: int, layer: int, origin: str = "") -> None:
    """Every feature index is a latent of the SAE; ``origin``: where the width was read (said in
    the error when it was known before the SAE existed, so the user sees which setting bounds it)."""
    bad = [f for f in features if not 0 <= f < d_sae]
    if bad:
        raise ConfigError(
            f"feature index {bad[0]} is outside the SAE of layer {layer} (width {d_sae}: 0..{d_sae - 1}"
            f"{'; ' + origin if origin else ''}); fix the preset's features"
        )


def own_folder_fix() -> str:
    """The fix for a broken SAE folder of the user's own (source ``disk``): rematerializing the
    ``sae`` asset would only read the same folder again."""
    return (
        "fix or replace that folder (the preset's sae.path_format names it) with an SAE in sae-lens's "
        "on-disk format: cfg.json + sae_weights.safetensors, as SAE.save_model writes them"
    )


def disk_sae_width(folder: Path | str, layer: int) -> int:
    """The width (``d_sae`` of ``cfg.json``) of a ``disk`` source's SAE folder, read without its
    weights; a folder that cannot be loaded is refused with the folder named."""
    import json

    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"SAE folder {path} of layer {layer} does not exist: {own_folder_fix()}")
    missing = [f for f in ("cfg.json", "sae_weights.safetensors") if not (path / f).is_file()]
    if missing:
        raise ConfigError(f"SAE folder {path} of layer {layer} lacks {', '.join(missing)}: {own_folder_fix()}")
    try:
        width = json.loads((path / "cfg.json").read_text()).get("d_sae")
    except (OSError, ValueError, AttributeError) as err:  # unreadable, not JSON, not an object
        raise ConfigError(
            f"SAE folder {path} of layer {layer}: cfg.json is unreadable ({err}): {own_folder_fix()}"
        ) from None
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(
            f"SAE folder {path} of layer {layer}: cfg.json has no positive integer d_sae ({width!r}): "
            f"{own_folder_fix()}"
        )
    return width


def released_width(release: str, sae_id: str) -> int | None:
    """A released sae-lens SAE's width from its config (sae-lens's own config reader: a config
    file from the hub or its cache, never the weights); None where it cannot be read here."""
    try:
        from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

        width = load_sae_config_from_huggingface(release, sae_id).get("d_sae")
    except Exception:  # offline without a cache, an unknown release: the sae asset reports it
        return None
    return width if isinstance(width, int) and not isinstance(width, bool) else None


def load_sae_from_disk(path: Path | str, device: str = "cpu", own: bool = False) -> SAE:
    """An SAE saved with sae-lens's ``save_model`` (cfg.json + sae_weights.safetensors).

    ``own``: the folder is the user's (source ``disk``), so a broken one is theirs to fix or
    replace; otherwise the ``sae`` asset wrote it and rematerializing it writes it again.
    A trainer checkpoint with unfolded dataset-norm scaling / whitening gets its statistics folded
    in (see ``_fold_training_normalization``); without them it is refused rather than misread.
    """
    path = Path(path)
    fix = own_folder_fix() if own else "rematerialize the 'sae' asset"
    missing = [f for f in ("cfg.json", "sae_weights.safetensors") if not (path / f).exists()]
    if missing:
        raise CorruptFileError(f"SAE folder {path} lacks {', '.join(missing)}: {fix}")
    from sae_lens import SAE  # after the cheap check: its import takes seconds

    try:
        sae = SAE.load_from_disk(path, device=device)
    except Exception as err:  # safetensors/json/sae-lens raise assorted types for a damaged file
        raise CorruptFileError(f"SAE at {path} is unreadable ({err}): {fix}") from err
    return _fold_training_normalization(sae, path)


def _fold_training_normalization(sae: SAE, path: Path) -> SAE:
    """Fold a trainer checkpoint's input normalisation into its weights, as sae-lens's trainer does.

    sae-lens's ``encode`` never applies ``expected_average_only_in`` (dataset-norm scaling, Llama
    Scope) or ``covariance_whitening``: its trainer scales / whitens the inputs itself and folds
    the statistics into ``W_enc``/``W_dec``/``b_dec`` before saving the final SAE, and
    ``from_pretrained`` folds a release's factor from ``pretrained_saes.yaml``. Folding resets the
    cfg to ``"none"``, so an SAE whose cfg still names one holds unfolded weights: a trainer
    checkpoint, whose statistics lie beside it in ``activation_scaler.json``. sae-lens's
    ``load_from_disk`` ignores that file and would encode unscaled residuals (sae-lens issue #381).
    """
    norm = sae.cfg.normalize_activations
    if norm not in _TRAINING_NORMALIZATIONS:
        return sae
    from sae_lens.constants import ACTIVATION_SCALER_CFG_FILENAME
    from sae_lens.training.activation_scaler import ActivationScaler

    scaler, scaler_path = ActivationScaler(), path / ACTIVATION_SCALER_CFG_FILENAME
    if scaler_path.exists():
        try:
            scaler.load(scaler_path)
        except Exception as err:  # json / safetensors errors
            raise CorruptFileError(
                f"{scaler_path} is unreadable ({err}): rematerialize the 'sae' asset"
            ) from err
    needed = scaler.scaling_factor if norm == "expected_average_only_in" else scaler.whitening
    if needed is None:
        raise ConfigError(
            f"SAE at {path} says normalize_activations={norm!r} but its weights are unfolded and "
            f"{ACTIVATION_SCALER_CFG_FILENAME} (the trainer's statistics) is missing: sae-lens applies that "
            "normalisation only by folding it into the weights, so latents of raw residuals cannot be computed. "
            "Fold it (fold_activation_norm_scaling_factor / fold_activation_whitening) and save the SAE again"
        )
    if scaler.scaling_factor is not None:  # the trainer's order: scale, then whiten
        sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
    if scaler.whitening is not None:
        w = scaler.whitening
        sae.fold_activation_whitening(
            mean=w.mean, whitening_matrix=w.matrix, unwhitening_matrix=w.inverse_matrix
        )
    return sae


def load_sae_pretrained(release: str, sae_id: str, device: str = "cpu") -> SAE:
    """A released SAE through sae-lens (needs the hub or a warm Hugging Face cache)."""
    from sae_lens import SAE

    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as err:  # offline: OSError, HF errors, ValueError from sae-lens lookups
        raise UnavailableError(
            f"cannot load SAE {release!r} / {sae_id!r}: {err.__class__.__name__}: {str(err)[:200]}. "
            "Released SAEs need the Hugging Face hub (unset HF_HUB_OFFLINE) or a warm cache; "
            "to check the preset's code paths offline, run its CPU stand-in (`featureinterp run "
            "--standin`); the offline default is FEATUREINTERP_PRESET=embedded"
        ) from err
    if sae.cfg.normalize_activations in _TRAINING_NORMALIZATIONS:  # sae-lens only warns
        raise ConfigError(
            f"SAE {release!r} / {sae_id!r} needs normalize_activations={sae.cfg.normalize_activations!r} but "
            "sae-lens's pretrained_saes.yaml records no statistics to fold into it, so its latents of raw "
            "residuals would be wrong; use a release that records them"
        )
    return sae


@dataclass(frozen=True)
class SaeRef:
    """Where a layer's SAE comes from, as the ``sae`` asset records it (stored as :meth:`to_dict`).

    Exactly one of: ``path`` (a folder in sae-lens's on-disk format: trained here, or a ``disk``
    source), ``release`` + ``sae_id`` (a released sae-lens SAE), or ``synthetic`` (the ground-truth
    features of layer ``SYN``, which have no SAE).
    """

    d_sae: int
    """Dictionary width (latents)."""
    path: str | None = None
    """Folder of the SAE (``cfg.json`` + ``sae_weights.safetensors``)."""
    release: str | None = None
    """sae-lens release name."""
    sae_id: str | None = None
    """SAE id within ``release``."""
    synthetic: bool = False
    """The synthetic ground-truth features (featureinterp.simulate.synthetic): nothing to load."""
    explained_variance: float | None = None
    """Trained here: fraction of the residual variance the SAE reconstructs."""
    l0: float | None = None
    """Trained here: mean active latents per token."""
    dead_fraction: float | None = None
    """Trained here: fraction of latents that never fired."""
    live_latents: int | None = None
    """Trained here: latents in the live band (ordered first)."""

    @property
    def own_folder(self) -> bool:
        """A folder the preset points at (source ``disk``), not one the ``sae`` asset trained
        (trained references always carry their training metrics)."""
        return self.path is not None and self.explained_variance is None

    def to_dict(self) -> dict[str, Any]:
        """The stored form: only the fields set, in the order the ``sae`` asset has always written."""
        if self.synthetic:
            return {"synthetic": True, "d_sae": self.d_sae}
        if self.release is not None:
            return {"release": self.release, "sae_id": self.sae_id, "d_sae": self.d_sae}
        out: dict[str, Any] = {"path": self.path}
        if self.explained_variance is not None:
            out |= {
                "explained_variance": self.explained_variance,
                "l0": self.l0,
                "dead_fraction": self.dead_fraction,
                "live_latents": self.live_latents,
            }
        return out | {"d_sae": self.d_sae}

    @classmethod
    def from_dict(cls, ref: SaeRef | dict[str, Any]) -> SaeRef:
        """The reference a stored ``sae`` value holds (an ``SaeRef`` is returned as it is)."""
        if isinstance(ref, SaeRef):
            return ref
        known = {f.name for f in dataclasses.fields(cls)} - {"d_sae"}
        return cls(d_sae=ref.get("d_sae", 0), **{k: v for k, v in ref.items() if k in known})


def load_layer_sae(
    ref: SaeRef | dict[str, Any], model: torch.nn.Module, layer: int, device: str = "cpu"
) -> LoadedSae:
    """Load the SAE an ``sae`` asset recorded (an :class:`SaeRef`, or its stored dict)."""
    ref = SaeRef.from_dict(ref)
    if ref.path is not None:
        sae = load_sae_from_disk(ref.path, device=device, own=ref.own_folder)
    elif ref.release is not None and ref.sae_id is not None:
        sae = load_sae_pretrained(ref.release, ref.sae_id, device=device)
    else:
        raise CorruptFileError(
            f"SAE reference for layer {layer} names neither a path nor a release and sae_id: {ref.to_dict()}"
        )
    return LoadedSae.bind(sae, model, layer)


def layer_sae_refs(
    preset: Preset,
    model: torch.nn.Module | None,
    tokens: np.ndarray,
    layers: list[int],
    sae_dir: Path,
    stored_path: Callable[[Path], str],
    log: Callable[[str], None] | None = None,
) -> dict[int, SaeRef]:
    """The SAE of each of ``layers`` from the preset's source, as the ``sae`` stage records it:
    trained here on ``tokens`` (saved under ``sae_dir``, with explained variance, L0 and dead
    fraction; live latents first, so studied features F0000... are live), the user's own folders
    (checked by loading each), or a released sae-lens SAE (checked by loading it).

    ``stored_path`` turns a trained SAE's folder into the path the stored value keeps (relative to
    the home, so a moved home reads its own files); ``model`` is needed only to train."""
    from featureinterp.activations.sae_training import train_layer_saes

    refs: dict[int, SaeRef] = {}
    if not layers:
        return refs
    source = preset.sae.source
    if source == "train":
        if model is None:
            raise ValueError("training SAEs needs the subject model")
        for layer, (path, r) in train_layer_saes(model, tokens, preset, layers, sae_dir, log).items():
            refs[layer] = SaeRef(
                d_sae=int(r.sae.cfg.d_sae),
                path=stored_path(path),
                explained_variance=r.explained_variance,
                l0=r.l0,
                dead_fraction=r.dead_fraction,
                live_latents=r.live_count,
            )
    elif source == "disk":
        for layer in layers:
            folder = preset.sae.path(layer)
            loaded = load_sae_from_disk(folder, own=True)  # the user's folder: theirs to fix
            refs[layer] = SaeRef(d_sae=int(loaded.cfg.d_sae), path=folder)
    else:
        if preset.sae.release is None:
            raise ConfigError("release is not set for an sae_lens SAE source")
        for layer in layers:
            sae_id = preset.sae.sae_id(layer)
            loaded = load_sae_pretrained(preset.sae.release, sae_id, device="cpu")
            refs[layer] = SaeRef(d_sae=int(loaded.cfg.d_sae), release=preset.sae.release, sae_id=sae_id)
    return refs
