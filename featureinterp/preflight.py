"""Checks made before any work starts: what `featureinterp run` and `featureinterp plan` refuse up front.

Without them a preset or flag that cannot work failed late, as a traceback or after minutes of
upstream work: a feature index beyond the SAE's width only after the SAE was trained, an unset
API key or an explainer server that refuses connections only when the first explanation was
requested (after tokens, SAEs and records), a layer beyond the model's depth only once the model
was loaded. Each check here reads local files only (the model's config, an SAE's ``cfg.json``) or
makes one short connection, and raises one ``ConfigError`` line naming the value and the fix.
A check that cannot be made on this machine (no local copy of a model's config: a paper preset
without its weights) is skipped; the run's own check, made where the model loads, still stands.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

from featureinterp.config import ApiSpec, Preset, models_dir
from featureinterp.errors import ConfigError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "check_api_key",
    "check_reachable",
    "parse_conditions",
    "parse_features",
    "parse_layers",
    "preflight",
    "split_items",
]

CONNECT_TIMEOUT_S = 2.0
"""Seconds one connection attempt to an explainer's host may take: a live server accepts within
milliseconds, and a run waits for nothing longer before its first stage."""


# ---------------------------------------------------------------- command-line lists


def split_items(flag: str, text: str, example: str) -> list[str]:
    """A comma-separated flag value as its items; an empty item (``0,,1``, ``L03,``) is refused:
    it is a typo, never a request for "everything"."""
    items = [item.strip() for item in text.split(",")]
    for number, item in enumerate(items, 1):
        if not item:
            raise ConfigError(
                f"{flag} {text}: item {number} is empty; give comma-separated values without empty "
                f"items, e.g. {flag} {example}"
            )
    return items


def parse_features(text: str) -> list[int]:
    """``--features 0,1,7`` as indices (non-negative integers)."""
    items = split_items("--features", text, "0,1,7")
    for item in items:
        if not re.fullmatch(r"\d+", item):
            raise ConfigError(
                f"--features {text}: {item!r} is not a feature index; give comma-separated "
                "non-negative integers, e.g. --features 0,1,7"
            )
    return [int(item) for item in items]


def parse_layers(text: str) -> list[str]:
    """``--layers L03,SYN`` as layer keys (whether the preset studies them is checked by the run)."""
    return split_items("--layers", text, "L03,L06")


def parse_conditions(text: str) -> list[str]:
    """``--conditions one_shot,tree`` as known condition names."""
    from featureinterp.explain.conditions import CONDITIONS

    names = split_items("--conditions", text, "one_shot,tree")
    unknown = [name for name in names if name not in CONDITIONS]
    if unknown:
        raise ConfigError(
            f"--conditions {text}: unknown condition {unknown[0]!r}; choose from {', '.join(CONDITIONS)}"
        )
    return names


# ---------------------------------------------------------------- the preset


def preflight(preset: Preset, *, api: bool = True, hub: bool = True) -> None:
    """Refuse, with one ``ConfigError`` line, a preset that cannot run here, before any work.

    ``api``: the run asks the preset's API explainer (explanations are requested), so its key
    must be set and its server must accept a connection. ``hub``: a released sae-lens SAE's
    width may be read through sae-lens (a config file, no weights; costs sae-lens's import), as
    a run does anyway; `featureinterp plan` passes False and reads local files only.
    """
    from featureinterp.activations.models import check_layer_range, local_config
    from featureinterp.activations.sae import check_features

    config = local_config(preset.model, models_dir())
    text = config.get_text_config(decoder=True) if config is not None else None
    depth = getattr(text, "num_hidden_layers", None)
    if isinstance(depth, int):
        check_layer_range(preset.layers, depth, repr(preset.model.name))
    d_model = getattr(text, "hidden_size", None)
    for layer, width, origin in _sae_widths(preset, d_model if isinstance(d_model, int) else None, hub):
        check_features(preset.features, width, layer, origin)
    explainer = preset.explain.explainer
    if api and isinstance(explainer, ApiSpec):
        check_api_key(explainer)
        check_reachable(explainer)


def _sae_widths(preset: Preset, d_model: int | None, hub: bool) -> Iterator[tuple[int, int, str]]:
    """(layer, SAE width, where the width comes from) for every layer whose width is known here."""
    from featureinterp.activations.sae import disk_sae_width, released_width

    spec = preset.sae
    for layer in preset.layers:
        if spec.source == "train" and d_model is not None:
            e = spec.train.expansion
            yield layer, e * d_model, f"sae.train.expansion {e} x the model's width {d_model}"
        elif spec.source == "disk":
            folder = spec.path(layer)
            yield layer, disk_sae_width(folder, layer), f"d_sae in {folder}/cfg.json"
        elif spec.source == "sae_lens" and hub and spec.release is not None:
            width = released_width(spec.release, spec.sae_id(layer))
            if width is not None:
                yield layer, width, f"d_sae of {spec.release} / {spec.sae_id(layer)}"


def check_api_key(spec: ApiSpec) -> None:
    """The explainer's key variable is set (its value is never read into a message)."""
    import os

    if not os.environ.get(spec.api_key_env):
        raise ConfigError(
            f"the explainer {spec.model!r} at {spec.base_url} reads its API key from "
            f"${spec.api_key_env}, which is not set: export {spec.api_key_env}=<your key>, or set "
            "explain.explainer.api_key_env in the preset to the variable that holds it, or run with "
            "--no-explain (records only)"
        )


def check_reachable(spec: ApiSpec, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """The explainer's server (or the proxy its requests go through) accepts a TCP connection.

    The cheapest test that tells a wrong URL or a stopped server from a working route: no request
    is sent, so no key travels and nothing is billed. The proxy of ``HTTP(S)_PROXY`` is what the
    OpenAI client connects to when one applies (``NO_PROXY`` respected), so that is what is tried.
    """
    url = spec.base_url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"explainer base_url {url!r} is not an http(s) URL; set explain.explainer.base_url in the "
            "preset, e.g. https://openrouter.ai/api/v1"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(
            f"explainer base_url {url!r} has an invalid port; fix explain.explainer.base_url in the preset"
        ) from None
    host, via = parts.hostname, ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxied.hostname:
            host, port, via = proxied.hostname, proxied.port or 80, f" (the proxy {parts.scheme}_proxy names)"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        if isinstance(err, ConnectionRefusedError):
            what = "connection refused: nothing listens there"
        elif isinstance(err, socket.gaierror):
            what = f"host name not resolved ({err.strerror})"
        elif isinstance(err, TimeoutError):
            what = f"no answer within {timeout:g} s"
        else:
            what = err.strerror or err.__class__.__name__
        raise ConfigError(
            f"explainer base_url {url}: cannot connect to {host}:{port}{via} ({what}); start the server "
            "there, fix explain.explainer.base_url in the preset, or run with --no-explain (records only)"
        ) from None
