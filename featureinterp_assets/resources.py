"""Resources: the preset and the subject model it names."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import torch
from pydantic import PrivateAttr

from featureinterp.activations.models import load_subject_model, load_tokenizer, resolve_device
from featureinterp.activations.sae import SaeRef
from featureinterp.config import ExplainSettings, ModelSpec, Preset, ScoreSettings
from featureinterp.errors import ConfigError, CorruptFileError
from featureinterp.presets import get_preset
from featureinterp.presets.files import preset_from_json, preset_to_json

if TYPE_CHECKING:  # heavy imports, made where they are used
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from featureinterp.llm.backend import ChatBackend
    from featureinterp.llm.local import LocalChatBackend
    from featureinterp.retrieval.index import CorpusIndex
    from featureinterp.simulate.simulator import LocalSimulator

    LoadedModel = tuple[PreTrainedModel, PreTrainedTokenizerBase]
    """A model in eval mode and its tokenizer (``load_model``)."""

_LOADED: OrderedDict[tuple[str, ...], LoadedModel] = OrderedDict()
_LOADED_LOCK = threading.Lock()
_LOAD_NOTE = "(shared by the later runs of this process)"
LOAD_LINE = re.compile(rf"loading (\w+) model (\S+) {re.escape(_LOAD_NOTE)}")
"""Matches the event-log line of a model load; group 1: subject / simulator / explainer."""
_TOKENIZERS: dict[tuple[str, ...], PreTrainedTokenizerBase] = {}
_KEEP = 3
"""Models kept per process (subject, simulator, a local explainer)."""


def load_model(what: str, spec: ModelSpec, models_dir: Path, device: str) -> LoadedModel:
    """``(model, tokenizer)`` of ``spec``, loaded once per *process* and shared by its runs.

    A run covers a range of (layer, feature) partitions (single-run backfills,
    featureinterp_assets/batch.py) and `featureinterp run` executes its runs (one per layer and
    stage) in one process, so each model is read once per invocation; runs launched by the daemon
    or the UI get a process each and load once per run. Eval-mode models are only read (no state changes), so sharing them is safe; the least
    recently used model is dropped beyond three. Each real load writes one event-log line, which
    the stand-in tests count.
    """
    key = (
        spec.name,
        spec.source,
        spec.dtype,
        str(spec.quantization),
        str(models_dir),
        resolve_device(device),
    )
    with _LOADED_LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        dg.get_dagster_logger().info(f"loading {what} model {spec.name} {_LOAD_NOTE}")
        loaded = load_subject_model(spec, models_dir, device)
        _LOADED[key] = loaded
        while len(_LOADED) > _KEEP:
            _LOADED.popitem(last=False)
        return loaded


@functools.lru_cache(maxsize=1)
def shared_embedder(name: str, device: str) -> SentenceTransformer:
    """The sentence-embedding model ``name``, loaded once per process like the LLMs: the corpus
    index and every condition's embedding score use it, and a copy per asset (14 on the embedded
    default) would each be read from disk and left to the allocator."""
    from featureinterp.retrieval.index import load_embedder

    return load_embedder(name, resolve_device(device))


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
    preset_json: str = ""
    """The resolved preset as data (featureinterp.presets.files), so a run computes with the preset
    it was launched with (a preset file, CLI overrides); empty: the built-in preset ``name``."""

    _model: LoadedModel | None = PrivateAttr(default=None)

    def spec(self) -> Preset:
        preset = resolved_preset(self.name, self.preset_json)
        return preset if self.features is None else preset.replace(features=tuple(self.features))

    @property
    def torch_device(self) -> str:
        return resolve_device(self.device)

    def storage_dir(self) -> Path:
        return Path(self.home) / "storage" / self.name

    def sae_dir(self) -> Path:
        """Where the SAEs trained here are saved (one folder per layer, ``L03``...)."""
        return self.storage_dir() / "sae_files"

    def home_relative(self, path: Path | str) -> str:
        """``path`` as a stored value names it: relative to the home when inside it, so a home
        that is copied or moved (another disk, a container, a colleague's machine) reads its own
        files, never the original's; a path outside the home (a user's own SAE folder) stays as
        given."""
        try:
            return Path(path).resolve().relative_to(Path(self.home).resolve()).as_posix()
        except ValueError:
            return str(path)

    def in_home(self, stored: Path | str) -> Path:
        """The file a stored path names (``home_relative``'s inverse): a relative one under the
        current home; an absolute one as it is."""
        return Path(self.home) / stored

    def sae_ref(self, stored: SaeRef | dict) -> SaeRef:
        """The ``sae`` asset's stored reference with its folder resolved in the current home.

        A trained SAE stored before paths were stored relative holds the absolute folder in the
        home that trained it; that is rebased onto this home's ``sae_dir`` (same layout), so an
        older home that was moved never reads the original. A ``disk`` source's folder (trained
        elsewhere; no training metrics) is the user's own location and stays absolute.
        """
        ref = SaeRef.from_dict(stored)
        if ref.path is None:
            return ref
        path = Path(ref.path)
        if not path.is_absolute():
            path = self.in_home(path)
        elif ref.explained_variance is not None:
            path = self.sae_dir() / path.name
        return dataclasses.replace(ref, path=str(path))

    def model_and_tokenizer(self) -> LoadedModel:
        """(model, tokenizer), loaded on first use and kept for the rest of the run."""
        if self._model is None:
            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            self._model = load_model("subject", self.spec().model, Path(self.models_dir), self.device)
        return self._model

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The subject tokenizer without the model (records decode rows with it); read once per
        process like the models: a Gemma tokenizer takes seconds to parse, once per records run."""
        if self._model is not None:
            return self._model[1]
        spec = self.spec().model
        key = (spec.name, spec.source, self.models_dir)
        with _LOADED_LOCK:
            if key not in _TOKENIZERS:
                _TOKENIZERS[key] = load_tokenizer(spec, Path(self.models_dir))
            return _TOKENIZERS[key]

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._model = None


def default_preset_resource(preset: Preset, home: Path, models: Path) -> PresetResource:
    return PresetResource(
        name=preset.name,
        home=str(home),
        models_dir=str(models),
        preset_json=preset_to_json(preset),
        device=os.environ.get("FEATUREINTERP_DEVICE", "auto"),
    )


@functools.lru_cache(maxsize=16)
def resolved_preset(name: str, preset_json: str) -> Preset:
    """The preset a resource carries: its data when given, else the built-in ``name`` (parsed
    once per process: every partition of a batched run asks for it)."""
    if not preset_json:
        return get_preset(name)
    preset = preset_from_json(preset_json)
    if preset.name != name:
        raise ConfigError(f"resource config: preset_json names preset {preset.name!r}, not {name!r}")
    return preset


class LanceDBResource(dg.ConfigurableResource):
    """Where the corpus-embedding tables live: a local folder by default, or any LanceDB URI
    (for example ``s3://bucket/path``).

    The ``corpus_embeddings`` value names its table, not this location: readers open it here, at
    the location of the current configuration (under the current home, or $FEATUREINTERP_LANCEDB),
    so a moved or copied home reads its own table, never the original's.
    """

    uri: str

    def corpus_index(self, value: dict) -> CorpusIndex:
        """The table a stored ``corpus_embeddings`` value names, opened here and checked against
        its row count (``CorpusIndex.open``: a damaged table raises ``CorruptFileError``). A
        ``uri`` in a value stored by older versions is ignored (it is the original home's)."""
        from featureinterp.retrieval.index import CorpusIndex

        return CorpusIndex.open(self.uri, value["table"], rows=value.get("rows"))

    def table_problem(self, value: dict) -> str | None:
        """None when the table a stored ``corpus_embeddings`` value names is whole here; else one
        line naming it and what is wrong (for `featureinterp run`: a stored value can be intact
        while its table is not). Reads the row ids and a sample (``CorpusIndex.problem``)."""
        try:
            self.corpus_index(value)
        except (ConfigError, CorruptFileError) as err:
            return str(err)
        return None


def _batch_from_memory(simulator: LocalSimulator) -> int:
    """The simulator batch that the free CUDA memory holds (the paper's 2 on other devices)."""
    from featureinterp.simulate.memory import batch_for_free_memory

    size, free = batch_for_free_memory(simulator)
    if simulator.device.type == "cuda":
        dg.get_dagster_logger().info(f"simulator batch {size} from {free:.1f} GiB free on {simulator.device}")
    return size


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
    preset_json: str = ""
    """The resolved preset as data (see ``PresetResource.preset_json``)."""
    """Explainer API key (set from the preset's ``api_key_env`` by definitions.py)."""

    _local: LocalChatBackend | None = PrivateAttr(default=None)
    _explainer: dict[str, ChatBackend] = PrivateAttr(default_factory=dict)
    _simulator: LocalSimulator | None = PrivateAttr(default=None)

    def settings(self) -> ExplainSettings:
        return resolved_preset(self.preset, self.preset_json).explain

    def score_settings(self) -> ScoreSettings:
        """How the preset defines scores and false positives (the paper's by default)."""
        return resolved_preset(self.preset, self.preset_json).scores

    def local_backend(self) -> LocalChatBackend:
        from featureinterp.llm.local import LocalChatBackend

        if self._local is None:
            spec = self.settings().simulator or resolved_preset(self.preset, self.preset_json).model
            model, tok = load_model("simulator", spec, Path(self.models_dir), self.device)
            self._local = LocalChatBackend(model, tok, name=spec.name)
        return self._local

    def simulator(self) -> LocalSimulator:
        from featureinterp.simulate.simulator import LocalSimulator, prompt_for

        if self._simulator is None:
            s = self.settings()
            local = self.local_backend()
            self._simulator = LocalSimulator(
                local.model, local.tok, prompt_for(s.simulator_prompt), batch_size=s.simulator_batch or 2
            )
            if not s.simulator_batch:
                self._simulator.batch_size = _batch_from_memory(self._simulator)
        return self._simulator

    def explainer(self, model: str | None = None) -> ChatBackend:
        """The explainer backend; ``model``: another model id on the preset's API route (a
        condition's ``explainer_model``), one backend per model id and run."""
        from featureinterp.config import ApiSpec
        from featureinterp.errors import ConfigError
        from featureinterp.llm.api import OpenAIChatBackend
        from featureinterp.llm.local import LocalChatBackend

        spec = self.settings().explainer
        if model is not None and not isinstance(spec, ApiSpec):
            local = "the simulator model" if spec is None else spec.name
            raise ConfigError(
                f"a condition asks for the explainer {model!r}, but preset {self.preset!r} explains "
                f"with a local model ({local}); give the preset an API explainer (ApiSpec) or drop "
                "the condition"
            )
        key = model or ""
        if key not in self._explainer:
            if spec is None:
                self._explainer[key] = self.local_backend()
            elif isinstance(spec, ApiSpec):
                if not self.api_key:
                    raise ConfigError(
                        f"the explainer {spec.model!r} needs an API key in ${spec.api_key_env} "
                        f"(base URL {spec.base_url})"
                    )
                route = spec.served(model)
                self._explainer[key] = OpenAIChatBackend(
                    model=route.model,
                    base_url=route.base_url,
                    api_key=self.api_key,
                    cache_dir=Path(self.home) / "llm_cache",
                    json_schema_mode=route.json_schema_mode,
                    price_in_per_mtok=route.price_in_per_mtok,
                    price_out_per_mtok=route.price_out_per_mtok,
                    max_concurrent=route.max_concurrent,
                    timeout_s=route.timeout_s,
                    max_attempts=route.max_attempts,
                    backoff_initial_s=route.backoff_initial_s,
                    backoff_max_s=route.backoff_max_s,
                )
            else:
                model_, tok = load_model("explainer", spec, Path(self.models_dir), self.device)
                self._explainer[key] = LocalChatBackend(model_, tok, name=spec.name)
        return self._explainer[key]

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._local = self._simulator = None
        self._explainer = {}
