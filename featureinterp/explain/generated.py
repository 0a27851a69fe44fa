"""The seventh complementary source: counterexamples an LLM writes from the explanation (ours).

The paper falsifies an explanation with *retrieved* rows: similar corpus rows that do not fire.
Here the explainer backend also *writes* candidates from the explanation itself:

- ``fire``: new sentences the explanation predicts should make the feature fire;
- ``edit``: edits of top-activating records that keep their topic but remove what the explanation
  names, which it therefore predicts should stay silent.

Each candidate is tokenized as the corpus is (no special tokens, cut to ``seq_len``, BOS first
when the preset prepends one) and run through the subject model and SAE by the same code as
``sae_activations``, so its activations are true ones, never guessed. A candidate that fires where
the explanation says it should not, or stays silent where it says it should, is a
counterexample. Candidates are then scored like any complementary source: positives plus the
candidates, one pooled correlation, false positives on their quiet tokens.

It lives with the explainer, not with ``records``, because it needs an explanation (the stage
packages are layered in pipeline order, and records come before explanations); the tree search can
use the same functions to feed a generated counterexample back.

Requests go through the explainer backend (its response cache, retries and fault handling); a
reply with no usable candidate is re-requested a bounded number of times and then fails with the
completions for audit. Nothing here makes up a sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from featureinterp.config import GeneratedSettings
from featureinterp.data.corpus import decode_tokens
from featureinterp.explanations.replies import ReplyError, json_candidates, split_reasoning
from featureinterp.explanations.rules import Explanation
from featureinterp.llm.backend import (
    BackendError,
    ChatBackend,
    GenerationParams,
    Message,
    completion_record,
    system,
    user,
)
from featureinterp.names import GENERATED_SOURCE
from featureinterp.records.sources import Record

__all__ = [
    "Candidate",
    "GeneratedSettings",
    "GenerationFailed",
    "Generated",
    "build_generated",
    "candidate_messages",
    "candidate_rows",
    "candidate_schema",
    "generated_frame",
    "parse_candidates",
    "write_candidates",
]

MAX_CANDIDATE_CHARS = 300
"""Longest candidate kept (characters): a record is ``seq_len`` tokens, a longer reply is cut there
anyway, and a runaway one is not a sentence."""


@dataclass(frozen=True)
class Candidate:
    kind: Literal["fire", "edit"]
    """``fire``: predicted to fire; ``edit``: a top record with the explained pattern removed,
    predicted silent."""
    text: str
    origin: int | None = None
    """The index (0-based, in the shown top records) an edit was made from."""

    @property
    def expected_fire(self) -> bool:
        return self.kind == "fire"


class GenerationFailed(RuntimeError):
    """No usable candidate after every attempt; ``completions`` holds what the backend said."""

    def __init__(self, reason: str, completions: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.completions = completions


def candidate_schema(settings: GeneratedSettings) -> dict[str, Any]:
    """JSON schema of a reply (an object at the top level, as servers and grammars want)."""
    text = {"type": "string", "minLength": 1, "maxLength": MAX_CANDIDATE_CHARS}
    edit = {
        "type": "object",
        "properties": {
            "record": {"type": "integer", "minimum": 1, "maximum": settings.top_records},
            "text": text,
        },
        "required": ["record", "text"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            # at least one of each asked for: a grammar-constrained model otherwise often closes
            # the list at once
            "fire": {"type": "array", "items": text, "minItems": min(1, settings.n_fire), "maxItems": settings.n_fire},
            "edits": {"type": "array", "items": edit, "minItems": min(1, settings.n_edits), "maxItems": settings.n_edits},
        },
        "required": ["fire", "edits"],
        "additionalProperties": False,
    }


def candidate_messages(
    explanation: Explanation, top: Sequence[Record], settings: GeneratedSettings
) -> list[Message]:
    """The request: the explanation, the top records as plain text, what to write and the format."""
    shown = "\n".join(f"{i + 1}. {''.join(r.tokens).strip()}" for i, r in enumerate(top[: settings.top_records]))
    ask = []
    if settings.n_fire:
        ask.append(
            f'- "fire": {settings.n_fire} new, varied sentences that contain exactly what the '
            "explanation describes, so the feature should activate on them."
        )
    if settings.n_edits:
        ask.append(
            f'- "edits": {settings.n_edits} edits of the numbered texts: keep the topic and most '
            "words, but remove or replace what the explanation describes, so the feature should not "
            'activate. Give the number of the text you edited as "record".'
        )
    return [
        system(
            "You test explanations of a neuron in a language model by writing sentences the "
            "explanation makes predictions about. Reply with JSON only."
        ),
        user(
            f"Explanation of the neuron: {explanation}\n\n"
            f"Texts on which it activates strongly:\n{shown}\n\n"
            "Write:\n" + "\n".join(ask) + "\n\n"
            'Reply as {"fire": ["...", ...], "edits": [{"record": 1, "text": "..."}, ...]}'
        ),
    ]


def _clean(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    return text if 0 < len(text) <= MAX_CANDIDATE_CHARS else None


def parse_candidates(reply: str, settings: GeneratedSettings) -> list[Candidate]:
    """The usable candidates of one reply: non-empty strings, at most ``n_fire`` / ``n_edits``,
    edits naming a shown record, no duplicates. Raises ``ReplyError`` when none is usable."""
    answer, _ = split_reasoning(reply)
    holder = next((c.value for c in json_candidates(answer) if isinstance(c.value, dict)), None)
    if holder is None:
        raise ReplyError("the reply has no JSON object")
    found: list[Candidate] = []
    seen: set[str] = set()
    for text in holder.get("fire") or []:
        clean = _clean(text)
        if clean and clean not in seen and sum(c.kind == "fire" for c in found) < settings.n_fire:
            found.append(Candidate("fire", clean))
            seen.add(clean)
    for item in holder.get("edits") or []:
        if not isinstance(item, dict):
            continue
        clean, record = _clean(item.get("text")), item.get("record")
        if (
            clean
            and clean not in seen
            and isinstance(record, int)
            and 1 <= record <= settings.top_records
            and sum(c.kind == "edit" for c in found) < settings.n_edits
        ):
            found.append(Candidate("edit", clean, record - 1))
            seen.add(clean)
    if not found:
        raise ReplyError('the reply has no usable candidate (non-empty "fire" strings or "edits" with a shown record)')
    return found


def write_candidates(
    backend: ChatBackend,
    explanation: Explanation,
    top: Sequence[Record],
    settings: GeneratedSettings,
    seed: int,
) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """(candidates, completions for audit): requests until one reply is usable, at most
    ``settings.attempts``; raises ``GenerationFailed`` when none is."""
    if not top:
        raise GenerationFailed("no top-activating train records to show the explainer", [])
    messages = candidate_messages(explanation, top, settings)
    completions: list[dict[str, Any]] = []
    last = "no completions returned"
    for attempt in range(settings.attempts):
        params = GenerationParams(
            n=1,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            json_schema=candidate_schema(settings),
            seed=seed + attempt,
        )
        try:
            replies = backend.generate(messages, params)
        except BackendError as err:
            completions.append(completion_record(None, "generated", f"backend: {err}"))
            raise GenerationFailed(f"the backend gave up: {err}", completions) from err
        for c in replies:
            try:
                found = parse_candidates(c.text, settings)
            except ReplyError as err:
                completions.append(completion_record(c, "generated", str(err)))
                last = str(err)
                continue
            completions.append(completion_record(c, "generated", None))
            return found, completions
    raise GenerationFailed(f"no usable candidate in {settings.attempts} replies: {last}", completions)


def candidate_rows(
    tokenizer: Any, texts: Sequence[str], seq_len: int, bos_id: int | None, pad_id: int
) -> tuple[np.ndarray, list[int]]:
    """``([N, (1 +) seq_len] int64 ids, lengths)``: each text tokenized as the corpus is (no special
    tokens, cut to ``seq_len``, BOS first when ``bos_id`` is set) and right-padded with ``pad_id``.
    A causal model's activation at a position never sees the padding after it, so the first
    ``lengths[i]`` positions of row ``i`` are exactly the unpadded row's."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    head = [] if bos_id is None else [bos_id]
    rows = [head + list(x[:seq_len]) for x in ids]
    width = len(head) + seq_len
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out, [len(r) for r in rows]


def generated_frame(
    candidates: Sequence[Candidate],
    tokens: Sequence[Sequence[str]],
    acts: Sequence[np.ndarray],
    max_act: float,
    settings: GeneratedSettings,
    skip_first: bool,
) -> pl.DataFrame:
    """The candidates as test records of source ``generated`` (the records table's columns, plus
    ``kind``, ``text``, ``origin``, ``expected_fire``, ``fired``, ``counterexample``).

    ``tokens[i]`` / ``acts[i]``: candidate ``i``'s token strings and true activations over its own
    length, BOS first when ``skip_first`` (dropped here: records hold the text positions)."""
    start = int(skip_first)
    rows = []
    for i, (cand, toks, a) in enumerate(zip(candidates, tokens, acts, strict=True)):
        body = np.asarray(a, dtype=np.float32)[start:]
        fired = bool(body.size) and float(body.max()) > settings.fires_above * max_act
        rows.append(
            {
                "source": GENERATED_SOURCE,
                "split": "test",
                "rank": i,
                "row": -1,
                "tokens": list(toks[start:]),
                "acts": body.tolist(),
                "kind": cand.kind,
                "text": cand.text,
                "origin": cand.origin,
                "expected_fire": cand.expected_fire,
                "fired": fired,
                "counterexample": fired != cand.expected_fire,
            }
        )
    schema: dict[str, Any] = {
        "source": pl.Utf8, "split": pl.Utf8, "rank": pl.Int64, "row": pl.Int64,
        "tokens": pl.List(pl.Utf8), "acts": pl.List(pl.Float64), "kind": pl.Utf8, "text": pl.Utf8,
        "origin": pl.Int64, "expected_fire": pl.Boolean, "fired": pl.Boolean, "counterexample": pl.Boolean,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


@dataclass(frozen=True)
class Generated:
    """One feature's generated source."""

    frame: pl.DataFrame
    """The candidates as test records (``generated_frame``)."""
    completions: list[dict[str, Any]]
    """Every completion of the request(s), for audit."""

    @property
    def counterexamples(self) -> pl.DataFrame:
        return self.frame.filter(pl.col("counterexample"))


def build_generated(
    backend: ChatBackend,
    explanation: Explanation,
    top: Sequence[Record],
    settings: GeneratedSettings,
    seed: int,
    tokenizer: Any,
    activate: Callable[[np.ndarray], np.ndarray],
    seq_len: int,
    bos_id: int | None,
    max_act: float,
) -> Generated:
    """Write candidates from ``explanation`` and measure them: ``activate`` maps token rows
    [N, (1 +) seq_len] to the feature's true activations [N, (1 +) seq_len] (the subject model and
    SAE, by ``sae_activations``' code; or the synthetic rule). Token strings are decoded one id at
    a time, as records show them (``decode_tokens``)."""
    candidates, completions = write_candidates(backend, explanation, top, settings, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, lengths = candidate_rows(tokenizer, [c.text for c in candidates], seq_len, bos_id, int(pad or 0))
    acts = np.asarray(activate(rows), dtype=np.float32)  # [N, T]
    if acts.shape != rows.shape:
        raise ValueError(f"activations of shape {acts.shape} for token rows of shape {rows.shape}")
    strings = decode_tokens(tokenizer, rows)  # [N][T] token strings, each distinct id decoded once
    tokens = [row[:n] for row, n in zip(strings, lengths, strict=True)]
    cut = [acts[i, :n] for i, n in enumerate(lengths)]
    frame = generated_frame(candidates, tokens, cut, max_act, settings, skip_first=bos_id is not None)
    return Generated(frame, completions)
