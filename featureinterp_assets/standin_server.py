"""Stand-in runs of the paper presets: their tiny random-weight files built once, and their
explainer served over the OpenAI protocol on 127.0.0.1 (the code path a paper preset's API
explainer takes), for `featureinterp run --standin` and the tests that exercise it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from featureinterp.config import Preset, models_dir
from featureinterp.llm.backend import ChatBackend
from featureinterp.llm.server import OpenAIServer
from featureinterp.presets import get_preset

__all__ = ["start_standin"]


def start_standin(
    preset_name: str | None, serve: Callable[[ChatBackend], ChatBackend] | None = None
) -> tuple[Preset, OpenAIServer]:
    """Build (once) the stand-in files of a paper preset and serve its explainer on 127.0.0.1;
    returns the stand-in preset and the running server. ``serve`` wraps the explainer backend
    before it is served (the backfill test makes one feature's replies fail)."""
    import secrets

    from featureinterp.activations.models import load_subject_model
    from featureinterp.config import ModelSpec
    from featureinterp.llm.local import LocalChatBackend
    from featureinterp.llm.server import start
    from featureinterp.presets import standin

    base = get_preset(preset_name)
    base_name = standin.base_name(base.name) or base.name
    print(f"featureinterp: {standin.MEANINGLESS}", flush=True)
    started = time.perf_counter()
    dirs = standin.build_standin(base_name)
    plan = standin.STANDINS[base_name]
    tokenizer = "Gemma (gemma3-270m GGUF)" if plan.subject_tokenizer == "gemma" else "the embedded SmolLM2"
    print(
        f"stand-in {base_name}: {plan.subject} x {plan.subject_layers} layers (tokenizer: {tokenizer}), "
        f"{plan.sae_family} SAEs, simulator {plan.simulator} x {plan.simulator_layers} layers, "
        f"explainer over an OpenAI-compatible server; files under {dirs['subject'].parent} "
        f"({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    model, tok = load_subject_model(ModelSpec(name=str(dirs["explainer"])), models_dir(), "cpu")
    key = secrets.token_hex(16)
    api = base.explain.explainer
    backend = LocalChatBackend(model, tok, name="standin-explainer")
    server = start(
        serve(backend) if serve else backend,
        model_name=getattr(api, "model", None),
        api_key=key,
    )
    os.environ[standin.STANDIN_URL_ENV] = server.base_url
    os.environ[standin.STANDIN_KEY_ENV] = key
    return get_preset(base_name + standin.SUFFIX), server
