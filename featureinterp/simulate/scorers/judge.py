"""Asking an LLM a yes/no question about numbered texts, in batches: the detection and fuzzing
scorers' shared machinery.

One request shows the explanation and up to ``batch_size`` numbered texts and asks for one 0/1
label per text, in order, as ``{"labels": [...]}``. A local backend enforces that shape with a
grammar (exactly ``n`` labels, each 0 or 1), so its replies parse by construction; an API server
that ignores ``response_format`` is read with the same JSON finder as the explainer's replies
(featureinterp.explanations.replies). A reply that still does not parse is re-requested with the next seed, a
bounded number of times; after that the scorer fails (``ScorerFailed``, with every completion) —
never a guessed label, which would turn a provider failure into a plausible score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from featureinterp.explanations.replies import json_candidates
from featureinterp.llm.backend import ChatBackend, GenerationParams, completion_record, system, user

__all__ = ["JudgeConfig", "ScorerFailed", "ask_labels", "labels_schema", "parse_labels"]


class ScorerFailed(RuntimeError):
    """A scorer got no usable reply for some batch; ``completions`` holds every attempt."""

    def __init__(self, reason: str, completions: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.completions = completions


@dataclass(frozen=True)
class JudgeConfig:
    """How a scorer asks its questions."""

    batch_size: int = 10
    """Texts per request (delphi and SAEBench show 5-15 per prompt: enough context for the model to
    compare, short enough for small models to keep count)."""
    attempts: int = 3
    """Requests per batch before the scorer fails (each retry samples, with the next seed)."""
    temperature: float = 0.0
    """0: greedy (a deterministic judgement of a fixed prompt)."""
    max_tokens_per_text: int = 4
    """Reply budget per text (``0, `` is about two tokens; the rest is the JSON around it)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")


@dataclass
class Judgement:
    labels: list[bool]
    """One label per text, in the order the texts were given."""
    completions: list[dict[str, Any]] = field(default_factory=list)


def labels_schema(n: int) -> dict[str, Any]:
    """The reply shape for ``n`` texts: exactly ``n`` labels, each 0 or 1."""
    return {
        "type": "object",
        "properties": {
            "labels": {"type": "array", "items": {"type": "integer", "enum": [0, 1]}, "minItems": n, "maxItems": n}
        },
        "required": ["labels"],
        "additionalProperties": False,
    }


def _label(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "yes", "no", "true", "false"):
        return value.strip().lower() in ("1", "yes", "true")
    return None


def parse_labels(text: str, n: int) -> list[bool]:
    """The ``n`` labels in a reply: the first JSON object with a ``labels`` list of length ``n`` (or a
    bare list of ``n`` labels); raises ``ValueError`` naming what was found instead."""
    seen = []
    for cand in json_candidates(text):
        value = cand.value.get("labels") if isinstance(cand.value, dict) else cand.value
        if not isinstance(value, list):
            continue
        labels = [_label(v) for v in value]
        if len(labels) == n and all(v is not None for v in labels):
            return [bool(v) for v in labels]
        seen.append(f"{len(value)} values")
    found = ", ".join(seen) if seen else "no JSON list"
    raise ValueError(f"expected {n} labels (0 or 1) as {{\"labels\": [...]}}, found {found} in {text[:120]!r}")


def ask_labels(
    backend: ChatBackend,
    instructions: str,
    explanation: str,
    texts: Sequence[str],
    config: JudgeConfig,
    seed: int,
    stage: str,
) -> Judgement:
    """One label per text (``texts`` already in the order to show them), asked in batches of
    ``config.batch_size``: ``instructions`` is the system message, the user message holds the
    explanation and the numbered texts."""
    out = Judgement([])
    for start in range(0, len(texts), config.batch_size):
        batch = list(texts[start : start + config.batch_size])
        listing = "\n".join(f"{i + 1}. {t!r}" for i, t in enumerate(batch))
        messages = [
            system(instructions),
            user(
                f"Explanation: {explanation}\n\nTexts:\n{listing}\n\n"
                f'Reply with {{"labels": [...]}}: {len(batch)} labels, 0 or 1, one per text in order.'
            ),
        ]
        for attempt in range(config.attempts):
            params = GenerationParams(
                # a retry samples (at temperature 0 it would repeat the reply that failed)
                temperature=config.temperature if attempt == 0 else max(config.temperature, 0.7),
                max_tokens=16 + config.max_tokens_per_text * len(batch),
                json_schema=labels_schema(len(batch)),
                seed=seed + 1000 * start + attempt,
            )
            completion = backend.generate(messages, params)[0]
            try:
                labels = parse_labels(completion.text, len(batch))
            except ValueError as err:
                out.completions.append(completion_record(completion, stage, str(err)))
                if attempt + 1 == config.attempts:
                    raise ScorerFailed(
                        f"{stage}: no parseable reply for texts {start + 1}-{start + len(batch)} "
                        f"after {config.attempts} requests ({err})",
                        out.completions,
                    ) from err
                continue
            out.completions.append(completion_record(completion, stage, None))
            out.labels.extend(labels)
            break
    return out
