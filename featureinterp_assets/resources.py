"""Resources: the preset and the subject model it names."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import torch
from pydantic import PrivateAttr

from featureinterp.config import Preset, get_preset
from featureinterp.models import load_subject_model, load_tokenizer, resolve_device


def _loading(what: str, name: str) -> None:
    """One event-log line per model load: `featureinterp run` and the stand-in tests count them
    (a model must load at most once per run)."""
    dg.get_dagster_logger().info(f"loading {what} model {name} (once per run)")


class PresetResource(dg.ConfigurableResource):
    """The active preset (see featureinterp/config.py) and its subject model, loaded once per run.

    Select the preset with $FEATUREINTERP_PRESET; data lives under $FEATUREINTERP_HOME.
    """

    name: str
    """Preset name: embedded, embedded-tiny, gpt2-small, gemma-2-9b, llama-3.1-8b."""
    home: str
    """Root folder for trained SAEs and stored asset values."""
    models_dir: str
    """Cache of converted subject models (shared by presets and test runs)."""
    device: str = "auto"
    """Torch device for the subject model: auto (CUDA when present), cpu, cuda, cuda:1..."""
    torch_threads: int = 0
    """CPU threads for torch; 0 keeps torch's default."""
    features: list[int] | None = None
    """SAE latent indices to study instead of the preset's (None keeps the preset's)."""

    _model = PrivateAttr(default=None)

    def spec(self) -> Preset:
        preset = get_preset(self.name)
        return preset if self.features is None else preset.replace(features=tuple(self.features))

    @property
    def torch_device(self) -> str:
        return resolve_device(self.device)

    def storage_dir(self) -> Path:
        return Path(self.home) / "storage" / self.name

    def model_and_tokenizer(self):
        """(model, tokenizer), loaded on first use and kept for the rest of the run."""
        if self._model is None:
            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            _loading("subject", self.spec().model.name)
            self._model = load_subject_model(self.spec().model, Path(self.models_dir), self.device)
        return self._model

    def tokenizer(self):
        if self._model is not None:
            return self._model[1]
        return load_tokenizer(self.spec().model, Path(self.models_dir))

    def teardown_after_execution(self, context) -> None:
        self._model = None


def default_preset_resource(preset: Preset, home: Path, models: Path) -> PresetResource:
    return PresetResource(
        name=preset.name,
        home=str(home),
        models_dir=str(models),
        features=None if preset == get_preset(preset.name) else list(preset.features),
        device=os.environ.get("FEATUREINTERP_DEVICE", "auto"),
    )


class LanceDBResource(dg.ConfigurableResource):
    """Where the corpus-embedding tables live: a local folder by default, or any LanceDB URI
    (for example ``s3://bucket/path``)."""

    uri: str


class LLMResource(dg.ConfigurableResource):
    """The simulator (local model) and the explainer (local or OpenAI-compatible API) of a preset.

    The API key arrives through ``dg.EnvVar`` (see definitions.py); it is never logged or stored.
    Local models load once per run and are shared: on the embedded preset the simulator, the
    explainer and the complexity analyzer are one SmolLM2 instance.
    """

    preset: str
    home: str
    models_dir: str
    device: str = "auto"
    api_key: str | None = None
    """Explainer API key (set from the preset's ``api_key_env`` by definitions.py)."""

    _local = PrivateAttr(default=None)
    _explainer = PrivateAttr(default=None)
    _simulator = PrivateAttr(default=None)

    def settings(self):
        return get_preset(self.preset).explain

    def local_backend(self):
        from featureinterp.local_llm import LocalChatBackend

        if self._local is None:
            spec = self.settings().simulator or get_preset(self.preset).model
            _loading("simulator", spec.name)
            model, tok = load_subject_model(spec, Path(self.models_dir), self.device)
            self._local = LocalChatBackend(model, tok, name=spec.name)
        return self._local

    def simulator(self):
        from featureinterp.simulator import LocalSimulator, prompt_for

        if self._simulator is None:
            s = self.settings()
            local = self.local_backend()
            self._simulator = LocalSimulator(
                local.model, local.tok, prompt_for(s.simulator_prompt), batch_size=s.simulator_batch
            )
        return self._simulator

    def explainer(self):
        from featureinterp.api_llm import OpenAIChatBackend
        from featureinterp.config import ApiSpec
        from featureinterp.errors import ConfigError
        from featureinterp.local_llm import LocalChatBackend

        if self._explainer is None:
            spec = self.settings().explainer
            if spec is None:
                self._explainer = self.local_backend()
            elif isinstance(spec, ApiSpec):
                if not self.api_key:
                    raise ConfigError(
                        f"the explainer {spec.model!r} needs an API key in ${spec.api_key_env} "
                        f"(base URL {spec.base_url})"
                    )
                self._explainer = OpenAIChatBackend(
                    model=spec.model,
                    base_url=spec.base_url,
                    api_key=self.api_key,
                    cache_dir=Path(self.home) / "llm_cache",
                    json_schema_mode=spec.json_schema_mode,
                    price_in_per_mtok=spec.price_in_per_mtok,
                    price_out_per_mtok=spec.price_out_per_mtok,
                    max_concurrent=spec.max_concurrent,
                )
            else:
                _loading("explainer", spec.name)
                model, tok = load_subject_model(spec, Path(self.models_dir), self.device)
                self._explainer = LocalChatBackend(model, tok, name=spec.name)
        return self._explainer

    def teardown_after_execution(self, context) -> None:
        self._local = self._explainer = self._simulator = None
