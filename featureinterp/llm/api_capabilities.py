"""What an OpenAI-compatible server accepts, learned from its rejections (used by ``llm.api``).

Servers differ in what they take: strict ``json_schema`` response formats, ``json_object``, ``n > 1``,
``seed``. Asking each user to know their server's limits up front would turn every new route into a
failed run; instead a rejection (HTTP 400/422) that names one of these parameters, or says a
parameter is unsupported, makes the backend send the request again without it, one rung at a
time, and what worked is remembered per (base URL, model) for the rest of the process (one
Dagster run), so the rejection is paid once.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, replace

from featureinterp.llm.backend import GenerationParams

__all__ = ["JSON_SCHEMA_MODES", "Capabilities", "describe", "fallback", "learn", "recall"]

JSON_SCHEMA_MODES = ("json_schema", "json_object", "none")
"""How ``GenerationParams.json_schema`` reaches the server: a strict ``json_schema`` response format,
a plain ``json_object`` one, or nothing (the caller parses and repairs the reply); in falling order."""


@dataclass(frozen=True)
class Capabilities:
    """What a server accepted: the response format rung, ``n > 1`` in one request, ``seed``."""

    response_format: str = "json_schema"
    n: bool = True
    seed: bool = True


_LEARNED: dict[tuple[str, str], Capabilities] = {}
"""Capabilities learned per (base URL, model) in this process (one Dagster run): later requests
start where the first fallback ended instead of paying the rejection again."""
_LEARNED_LOCK = threading.Lock()
FALLBACK_STATUSES = (400, 422)
"""Statuses a parameter rejection comes with; 401/403/404 are never a parameter's fault."""
_HINTS = {
    "response_format": re.compile(r"response_format|json_schema|json_object|schema|structured|guided", re.I),
    "n": re.compile(
        r"""(?<![\w.])['"`]?n['"`]?(?![\w.])|multiple (choices|completions|samples)|best_of""", re.I
    ),
    "seed": re.compile(r"\bseed\b", re.I),
}
_UNSUPPORTED = re.compile(
    r"unsupported|not supported|unknown|unrecognized|unexpected|extra (inputs|fields)|not permitted|"
    r"not allowed|invalid (parameter|argument|field)",
    re.I,
)


def recall(base_url: str, model: str, configured: str) -> Capabilities:
    """Where requests to this route start: what was learned, at or below the configured rung."""
    with _LEARNED_LOCK:
        learned = _LEARNED.get((base_url, model), Capabilities())
    rung = max(JSON_SCHEMA_MODES.index(learned.response_format), JSON_SCHEMA_MODES.index(configured))
    return replace(learned, response_format=JSON_SCHEMA_MODES[rung])


def learn(base_url: str, model: str, caps: Capabilities) -> None:
    """Remember what a request needed to get through (only ever narrowing what is allowed)."""
    with _LEARNED_LOCK:
        old = _LEARNED.get((base_url, model), Capabilities())
        rung = max(
            JSON_SCHEMA_MODES.index(old.response_format), JSON_SCHEMA_MODES.index(caps.response_format)
        )
        _LEARNED[(base_url, model)] = Capabilities(
            JSON_SCHEMA_MODES[rung], old.n and caps.n, old.seed and caps.seed
        )


def fallback(
    caps: Capabilities, params: GenerationParams, status: int, reason: str
) -> tuple[str, Capabilities] | None:
    """(the parameter given up, the capabilities to try next) after a rejection, or None when the
    rejection names nothing we can leave out (then it is the caller's error: raised as is)."""
    if status not in FALLBACK_STATUSES:
        return None
    options: list[tuple[str, Capabilities]] = []
    if params.json_schema is not None and caps.response_format != "none":
        rung = JSON_SCHEMA_MODES[JSON_SCHEMA_MODES.index(caps.response_format) + 1]
        options.append(("response_format", replace(caps, response_format=rung)))
    if params.n > 1 and caps.n:
        options.append(("n", replace(caps, n=False)))
    if params.seed is not None and caps.seed:
        options.append(("seed", replace(caps, seed=False)))
    hinted = [o for o in options if _HINTS[o[0]].search(reason)]
    if hinted:
        return hinted[0]
    if options and _UNSUPPORTED.search(reason):
        return options[0]
    return None


def describe(caps: Capabilities, name: str) -> str:
    if name == "response_format":
        return f"response_format {caps.response_format}"
    return "n separate requests" if name == "n" else "no seed"
